"""The results store: round trips, done jobs never rerun, failures keep their log tail, a SIGKILLed harness
resumes without losing or repeating finished jobs, interrupted jobs are found, newer schemas are refused."""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path

import pytest

from benchmarks.harness.store import ResultsStore, run_jobs

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def claim_in_a_dead_process(store, job_id):
    """Leave `job_id` running under a pid that has exited: what a killed harness leaves behind."""
    claim = "import sys; from benchmarks.harness.store import ResultsStore as S; S(sys.argv[1]).claim(sys.argv[2])"
    subprocess.run([sys.executable, "-c", claim, str(store.path), job_id], env=ENV, check=True)


def job(job_id, config=None, suite="s1"):
    return (job_id, suite, f"ckpt-{job_id}", "linprobe", config or {"lr": 0.1, "epochs": 2}, f"/w/{job_id}")


@pytest.fixture()
def store(tmp_path):
    with ResultsStore(tmp_path / "sub" / "results.db") as store:
        yield store


def test_round_trip_records_every_field_and_uses_wal(store, tmp_path):
    store.add_jobs([job("a"), job("b", suite="s2")])
    assert store.get("a").state == "pending" and store.get("a").attempts == 0 and store.get("nope") is None
    with pytest.raises(KeyError, match="'nope'"):
        store.claim("nope")
    assert store.claim("a")
    running = store.get("a")
    assert (running.state, running.attempts, running.pid, running.host) == ("running", 1, os.getpid(),
                                                                            socket.gethostname())
    metrics = {"top1": 81.25, "per_class": [0.5, 1.0], "nested": {"miou": 47.5}}
    store.finish("a", metrics, 12.5)
    done = store.get("a")
    assert done.job_id == "a" and done.suite == "s1" and done.checkpoint == "ckpt-a" and done.benchmark == "linprobe"
    assert done.config == {"lr": 0.1, "epochs": 2} and done.work_dir == "/w/a"
    assert (done.state, done.metrics, done.wall_time_s, done.log_tail, done.attempts) == ("done", metrics, 12.5,
                                                                                          None, 1)
    assert done.updated_at.endswith("+00:00")
    assert [r.job_id for r in store.jobs()] == ["a", "b"] and [r.job_id for r in store.jobs("s2")] == ["b"]

    store.claim("b")
    store.fail("b", "oom", 1.0)
    assert store.claim("b") and store.get("b").attempts == 2 and store.get("b").log_tail is None  # a fresh attempt
    with closing(sqlite3.connect(tmp_path / "sub" / "results.db")) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_done_job_is_never_claimed_again_and_keeps_its_metrics(store):
    store.add_jobs([job("a"), job("b")])
    store.claim("a")
    store.finish("a", {"top1": 80.0}, 3.0)
    store.add_jobs([job("a"), job("b")])  # the same suite again
    assert not store.claim("a")
    assert store.get("a").metrics == {"top1": 80.0} and store.get("a").attempts == 1
    with pytest.raises(RuntimeError, match="'a'"):
        store.fail("a", "late writer", 1.0)  # a result is never overwritten by a process that does not run it
    assert store.get("a").state == "done"

    with pytest.raises(ValueError, match="'a'"):
        store.add_jobs([job("c"), job("a", config={"lr": 0.2, "epochs": 2})])
    assert store.get("c") is None  # the refused batch left nothing behind
    store.add_jobs([job("a", config={"epochs": 2, "lr": 0.1})])  # key order does not make a config different


def test_failing_job_keeps_its_log_tail_and_the_others_run(store):
    store.add_jobs([job("a"), job("b"), job("c")])
    ran = []

    def execute(record):
        ran.append(record.job_id)
        if record.job_id == "b":
            raise RuntimeError("CUDA out of memory\nsecond line of the message")
        return {"top1": 70.0}

    logs = "\n".join(f"log line {i}" for i in range(1, 9)) + "\n"
    states = run_jobs(store, ["a", "b", "c"], execute, lambda record: logs)
    assert states == {"a": "done", "b": "failed", "c": "done"} and ran == ["a", "b", "c"]
    failed = store.get("b")
    assert failed.log_tail.splitlines()[-2:] == ["log line 8", "RuntimeError: CUDA out of memory"]
    assert failed.wall_time_s is not None and failed.metrics is None
    table = store.status_table(tail_lines=3)
    assert table.endswith("b failed (attempt 1):\n    log line 7\n    log line 8\n    RuntimeError: CUDA out of memory")
    assert "log line 6" not in table

    def missing_log(record):
        raise FileNotFoundError(f"{record.work_dir}/log.txt")

    states = run_jobs(store, ["a", "b", "c"], execute, missing_log)  # a rerun retries only the failure
    assert states == {"a": "skipped", "b": "failed", "c": "skipped"} and ran == ["a", "b", "c", "b"]
    assert store.get("b").attempts == 2 and store.get("b").log_tail == (
        "(log tail unavailable: FileNotFoundError: /w/b/log.txt)\nRuntimeError: CUDA out of memory")


def test_status_table_is_exact(store):
    store.add_jobs([job("vit-b"), job("bad"), job("todo"), job("cut")])
    store.claim("vit-b")
    store.finish("vit-b", {"top1": 81.234567, "top5": 95.5, "loss": 0.71, "epochs": 90}, 3725.0)
    store.claim("bad")
    store.fail("bad", "line 1\nline 2\nline 3", 42.25)
    claim_in_a_dead_process(store, "cut")
    assert store.reset_interrupted() == ["cut"]
    assert store.status_table(tail_lines=2) == textwrap.dedent("""\
        job    checkpoint  benchmark  state        attempts  wall time  metrics
        -----  ----------  ---------  -----------  --------  ---------  -----------------------------------------
        vit-b  ckpt-vit-b  linprobe   done         1         1h02m      top1=81.23, top5=95.5, loss=0.71, +1 more
        bad    ckpt-bad    linprobe   failed       1         42.2s      -
        todo   ckpt-todo   linprobe   pending      0         -          -
        cut    ckpt-cut    linprobe   interrupted  1         -          -

        bad failed (attempt 1):
            line 2
            line 3""")
    assert store.status_table(suite="other") == "no jobs"


HARNESS = """
import json, os, sys, time
from benchmarks.harness.store import ResultsStore, run_jobs

db, ran = sys.argv[1:]
ids = [f"job{i}" for i in range(6)]

def execute(record):
    with open(ran, "a") as f:
        f.write(record.job_id + "\\n")
        f.flush()
        os.fsync(f.fileno())
    time.sleep(0.3)
    return {"value": record.config["i"]}

with ResultsStore(db) as store:
    store.add_jobs((job_id, "suite", "ckpt", "bench", {"i": i}, "/w") for i, job_id in enumerate(ids))
    print(json.dumps(run_jobs(store, ids, execute, lambda record: "")))
"""


def test_sigkilled_harness_resumes_without_losing_or_repeating_finished_jobs(tmp_path):
    script, db, ran = tmp_path / "harness.py", tmp_path / "results.db", tmp_path / "ran.txt"
    script.write_text(HARNESS)
    command = [sys.executable, str(script), str(db), str(ran)]
    with subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as first:
        try:
            deadline = time.monotonic() + 30
            while not (ran.exists() and len(ran.read_text().splitlines()) >= 3):
                assert first.poll() is None, first.stderr.read().decode()
                assert time.monotonic() < deadline, "the harness never got to its third job"
                time.sleep(0.01)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()  # reap it: os.kill(pid, 0) still finds an unreaped (zombie) child, which would look alive

    with ResultsStore(db) as store:
        before = {r.job_id: r for r in store.jobs()}
    done_before = [job_id for job_id, r in before.items() if r.state == "done"]
    cut = [job_id for job_id, r in before.items() if r.state == "running"]
    ran_before = ran.read_text().splitlines()
    assert len(done_before) >= 2 and len(cut) == 1 and ran_before.count(cut[0]) == 1  # killed while it ran

    second = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    states = json.loads(second.stdout)
    ran_after = ran.read_text().splitlines()[len(ran_before):]

    with ResultsStore(db) as store:
        after = {r.job_id: r for r in store.jobs()}
    assert [r.state for r in after.values()] == ["done"] * 6
    assert {job_id: r.metrics for job_id, r in after.items()} == {f"job{i}": {"value": i} for i in range(6)}
    for job_id in done_before:  # finished before the kill: kept as they were, not run again
        assert after[job_id] == before[job_id] and ran_before.count(job_id) == 1
        assert job_id not in ran_after and states[job_id] == "skipped"
    for job_id in set(after) - set(done_before):  # the interrupted one runs again (twice in all), the rest once
        assert ran_after.count(job_id) == 1 and states[job_id] == "done"
        assert after[job_id].attempts == (2 if job_id in cut else 1)
    assert sorted(set(ran_before + ran_after)) == sorted(after)


def test_reset_interrupted_frees_dead_pids_only(store):
    store.add_jobs([job("dead"), job("live")])
    claim_in_a_dead_process(store, "dead")
    dead = store.get("dead")
    assert dead.state == "running" and dead.pid != os.getpid()
    store.claim("live")

    assert store.reset_interrupted() == ["dead"]
    assert store.get("dead").state == "pending" and store.get("dead").pid is None
    assert store.get("live").state == "running" and not store.claim("live")
    assert store.reset_interrupted() == []
    assert store.claim("dead") and store.get("dead").attempts == 2


def test_running_job_on_another_host_is_trusted_until_stale(tmp_path, monkeypatch):
    path = tmp_path / "results.db"
    monkeypatch.setattr(socket, "gethostname", lambda: "gpu-node-7")
    with ResultsStore(path) as remote:
        remote.add_jobs([job("a")])
        remote.claim("a")
    monkeypatch.undo()
    with ResultsStore(path) as here:
        assert not here.claim("a") and here.reset_interrupted() == []
    time.sleep(0.01)
    with ResultsStore(path, stale_after_s=0.005) as here:
        assert here.claim("a") and here.get("a").host == socket.gethostname()


def test_newer_schema_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "from-the-future.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="from-the-future.db.*version 99"):
        ResultsStore(path)
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # left as it was
