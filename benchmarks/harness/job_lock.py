"""One writer per job work dir, whatever happens to the harness.

The harness runs a job as `python -m benchmarks.harness.job_lock WORK_DIR LOG -- COMMAND`: a small process that
holds an exclusive lock on WORK_DIR/job.lock while COMMAND runs (COMMAND inherits it), appends COMMAND's output to
WORK_DIR/LOG, and writes COMMAND's exit status to WORK_DIR/job.exit before it lets go (the other nodes of a
multi-node job log to job.node<i>.log under job.node<i>.lock). A harness killed even with
kill -9 leaves this process and its job running and holding the lock: a harness started again sees the lock held,
waits for it and takes the recorded status, instead of starting a second copy that would write into the same
folder. Standard library only: it starts in milliseconds.
"""
from __future__ import annotations

import fcntl
import os
import shlex
import subprocess
import sys
from pathlib import Path

LOG_FILE = "job.log"
BUSY = 75  # EX_TEMPFAIL: another process holds the lock


def lock_path(work_dir: Path, log_file: str = LOG_FILE) -> Path:
    """The lock of the process that logs to `log_file` (job.lock for job.log)."""
    return Path(work_dir) / f"{Path(log_file).stem}.lock"


def status_path(work_dir: Path, log_file: str = LOG_FILE) -> Path:
    """Where that process's exit status is recorded (job.exit for job.log)."""
    return Path(work_dir) / f"{Path(log_file).stem}.exit"


def lock_held(work_dir: Path, log_file: str = LOG_FILE) -> bool:
    """A process holds the lock of the job (of its part that logs to `log_file`): it is running."""
    path = lock_path(work_dir, log_file)
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def wait_for_status(work_dir: Path, log_file: str = LOG_FILE) -> int | None:
    """Wait until the job holding the lock has ended; its exit status, or None if it ended without one (killed)."""
    fd = os.open(lock_path(work_dir, log_file), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)
    status = status_path(work_dir, log_file)
    return int(status.read_text()) if status.is_file() else None


def command_under_lock(command: list[str], work_dir: Path, log_file: str) -> list[str]:
    """The command line that runs `command` under the job's lock (this module as a process)."""
    return [sys.executable, "-m", "benchmarks.harness.job_lock", str(work_dir), log_file, "--", *command]


def run_under_lock(command: list[str], work_dir: Path, log_file: str) -> int:
    """Take the lock, run `command` (the lock's file descriptor inherited), record its status; BUSY if taken."""
    work_dir.mkdir(parents=True, exist_ok=True)
    lock, status_file = lock_path(work_dir, log_file), status_path(work_dir, log_file)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"{lock}: another process runs this job; not starting a second copy", file=sys.stderr)
        return BUSY
    status_file.unlink(missing_ok=True)
    with open(work_dir / log_file, "ab") as log:
        log.write(f"$ {shlex.join(command)}\n".encode())
        log.flush()
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, pass_fds=(fd,)).returncode
    tmp = status_file.with_name(f".{status_file.name}.tmp")
    tmp.write_text(f"{status}\n")
    os.replace(tmp, status_file)
    os.close(fd)
    return status


if __name__ == "__main__":
    work_dir, log_file, separator, *job = sys.argv[1:]
    if separator != "--" or not job:
        sys.exit("usage: python -m benchmarks.harness.job_lock WORK_DIR LOG -- COMMAND ...")
    sys.exit(run_under_lock(job, Path(work_dir), log_file))
