"""One job's process: its command run with the output appended to <job work dir>/job.log, the log's tail, and the
metrics.json it leaves. Kept apart from run.py (which imports the report and so torch) because a SLURM job's
wrapper process imports this module on its node."""
from __future__ import annotations

import json
import subprocess
from collections import deque
from pathlib import Path
from typing import Any

from .job_lock import LOG_FILE, command_under_lock, lock_held, wait_for_status
from .suite import BENCHMARKS, Job

TAIL_LINES = 20


def run_logged(command: list[str], work_dir: Path, log_file: str = LOG_FILE) -> int:
    """Run `command` under the job's lock (job_lock.py) with its output appended to work_dir/`log_file` (after the
    command line itself); its exit status. If the job is already running, started by a harness that was killed,
    wait for it and take its status instead (run it again only if it ended without recording one)."""
    if lock_held(work_dir, log_file):
        print(f"{work_dir}: the job an earlier harness started is still running; waiting for it", flush=True)
        status = wait_for_status(work_dir, log_file)
        if status is not None:
            return status
    return subprocess.run(command_under_lock(command, work_dir, log_file)).returncode


def log_tail(job: Job, lines: int = TAIL_LINES) -> str:
    """The last lines of the job's log ('' before there is one): what a failure is recorded with."""
    path = job.work_dir / LOG_FILE
    if not path.is_file():
        return ""
    with open(path, errors="replace") as log:
        return "".join(deque(log, maxlen=lines))


def read_metrics(job: Job) -> dict[str, Any]:
    """The job's metrics in the report's keys and percent: the last evaluation of a training run, or the position
    accuracy average (plus its grid)."""
    path = job.work_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the job finished without writing its metrics")
    written = json.loads(path.read_text())
    values = written if job.benchmark == "posacc" else written["last"]
    metrics = {key: values[name] * factor for name, (key, factor) in BENCHMARKS[job.benchmark][2].items()}
    if job.benchmark == "posacc":
        metrics["grid"] = written["grid"]
    return metrics
