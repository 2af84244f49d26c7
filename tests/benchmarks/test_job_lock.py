"""A job's work dir has one writer: a harness killed with kill -9 leaves its job running under the job's lock, and a
harness started again waits for that job and records its result instead of starting a second copy."""
import os
import signal
import subprocess
import sys
import textwrap
import time

from benchmarks.harness.job_lock import BUSY, lock_held, run_under_lock
from benchmarks.harness.process import LOG_FILE, run_logged
from benchmarks.harness.store import ResultsStore, run_jobs

# the job: sleeps, then appends one line to writes.txt (two copies would append two)
JOB = [sys.executable, "-c", "import time; time.sleep(4); open('writes.txt', 'a').write('written\\n')"]

HARNESS = textwrap.dedent("""
    import sys
    from pathlib import Path
    from benchmarks.harness.process import run_logged
    from benchmarks.harness.store import ResultsStore, run_jobs
    store_path, work_dir, job = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    with ResultsStore(store_path) as store:
        run_jobs(store, ["job"], lambda record: {"status": run_logged(job, work_dir)}, lambda record: "")
""")


def add_job(store, work_dir):
    store.add_jobs([("job", "suite", "ckpt", "cls", {"args": []}, str(work_dir))])


def wait_until(condition, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_killed_harness_leaves_one_writer_and_the_next_harness_waits_for_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the job writes writes.txt here
    store_path, work_dir = tmp_path / "results.sqlite", tmp_path / "job"
    with ResultsStore(store_path) as store:
        add_job(store, work_dir)
    harness = subprocess.Popen([sys.executable, "-c", HARNESS, str(store_path), str(work_dir), *JOB], cwd=tmp_path)
    wait_until(lambda: lock_held(work_dir))
    os.kill(harness.pid, signal.SIGKILL)
    harness.wait()
    with ResultsStore(store_path) as store:
        assert store.reset_interrupted() == [] and "running" in store.status_table()  # its job is alive
        assert lock_held(work_dir)
        states = run_jobs(store, ["job"], lambda record: {"status": run_logged(JOB, work_dir)}, lambda record: "")
        assert states == {"job": "done"} and store.get("job").metrics == {"status": 0}
    assert (tmp_path / "writes.txt").read_text() == "written\n"  # one copy ran
    assert (work_dir / LOG_FILE).read_text().count("$ ") == 1
    assert not lock_held(work_dir)


def test_a_job_whose_lock_is_taken_is_not_started(tmp_path):
    holder = subprocess.Popen([sys.executable, "-m", "benchmarks.harness.job_lock", str(tmp_path), LOG_FILE, "--",
                               sys.executable, "-c", "import time; time.sleep(3)"])
    wait_until(lambda: lock_held(tmp_path))
    never = tmp_path / "never"
    assert run_under_lock([sys.executable, "-c", f"open({str(never)!r}, 'w')"], tmp_path, LOG_FILE) == BUSY
    assert not never.exists()
    assert holder.wait() == 0 and (tmp_path / "job.exit").read_text() == "0\n"


def test_a_job_that_ended_without_a_status_runs_again(tmp_path):
    """Its lock free and no job.exit: killed before it could record one, so its result is unknown."""
    (tmp_path / "job.lock").touch()
    assert run_logged([sys.executable, "-c", "raise SystemExit(3)"], tmp_path) == 3
    assert (tmp_path / "job.exit").read_text() == "3\n"
