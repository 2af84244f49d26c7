"""Running a suite's jobs through a backend and turning the results store into a report.

Each job is one `droppos-bench` command in its own process (so a crash or an out-of-memory kill takes down one
job, not the harness), logging to <job work dir>/job.log; its metrics.json is read back into the results store.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

from .report import Result, write_report
from .store import JobRecord, ResultsStore, run_jobs
from .suite import BENCHMARKS, Job, Suite, expand_jobs

STORE_FILE = "results.sqlite"
LOG_FILE = "job.log"
TAIL_LINES = 20


def store_path(suite: Suite) -> Path:
    return suite.work_dir / STORE_FILE


def job_command(job: Job, backend: dict[str, Any]) -> list[str]:
    """The process that runs `job`: the CLI in this interpreter, under torchrun with `gpus` processes for the
    torchrun backend (position accuracy runs in one process: it is an evaluation)."""
    if backend["type"] == "torchrun" and job.benchmark != "posacc":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={backend.get('gpus', 1)}", "-m", "benchmarks.cli", *job.args]
    return [sys.executable, "-m", "benchmarks.cli", *job.args]


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


def execute(job: Job, backend: dict[str, Any]) -> dict[str, Any]:
    """Run the job's command with its output appended to job.log; raise if it fails."""
    job.work_dir.mkdir(parents=True, exist_ok=True)
    command = job_command(job, backend)
    with open(job.work_dir / LOG_FILE, "ab") as log:
        log.write(("$ " + " ".join(command) + "\n").encode())
        log.flush()
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    if result.returncode:
        raise RuntimeError(f"exit status {result.returncode}")
    return read_metrics(job)


def log_tail(job: Job, lines: int = TAIL_LINES) -> str:
    path = job.work_dir / LOG_FILE
    if not path.is_file():
        return ""
    with open(path, errors="replace") as log:
        return "".join(deque(log, maxlen=lines))


def run_suite(suite: Suite) -> dict[str, str]:
    """Run every job of the suite that is not done yet, one after another; returns {job id: final state}."""
    jobs = {job.job_id: job for job in expand_jobs(suite)}
    with ResultsStore(store_path(suite)) as store:
        store.add_jobs((job.job_id, suite.name, job.checkpoint.label, job.benchmark, job.config, str(job.work_dir))
                       for job in jobs.values())
        store.reset_interrupted()
        return run_jobs(store, list(jobs), lambda record: _run(jobs, record, suite, len(jobs)),
                        lambda record: log_tail(jobs[record.job_id]))


def _run(jobs: dict[str, Job], record: JobRecord, suite: Suite, total: int) -> dict[str, Any]:
    position = list(jobs).index(record.job_id) + 1
    print(f"[{position}/{total}] {record.checkpoint} / {record.benchmark}: running, log in "
          f"{jobs[record.job_id].work_dir / LOG_FILE}", flush=True)
    return execute(jobs[record.job_id], suite.backend)


def loss_curve(job: Job) -> list[tuple[int, float]]:
    """(iteration, training loss) as the job's runs logged them (mmengine's vis_data/scalars.json, one folder per
    run, so a resumed job has several); a later run's value replaces an earlier one's at the same iteration."""
    points: dict[int, float] = {}
    for path in sorted(job.work_dir.glob("*/vis_data/scalars.json")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "loss" in row:
                points[int(row["step"])] = float(row["loss"])
    return sorted(points.items())


def suite_results(suite: Suite) -> list[Result]:
    """One report row per checkpoint of the suite, with the metrics and loss curves of its finished jobs."""
    jobs = expand_jobs(suite)
    with ResultsStore(store_path(suite)) as store:
        done = {record.job_id: record for record in store.jobs(suite.name) if record.state == "done"}
    results = []
    for checkpoint in suite.checkpoints:
        metrics: dict[str, float] = {}
        grids: dict[str, list[list[float]]] = {}
        curves: dict[str, list[tuple[int, float]]] = {}
        for job in jobs:
            record = done.get(job.job_id)
            if job.checkpoint == checkpoint and record is not None:
                values = dict(record.metrics)
                if "grid" in values:
                    grids["position"] = values.pop("grid")
                metrics.update(values)
                if curve := loss_curve(job):
                    curves[job.benchmark] = curve
        results.append(Result(checkpoint.label, checkpoint.reference, metrics, grids, curves))
    return results


def report_suite(suite: Suite, out_dir: Path) -> Path:
    """Write the suite's report (Markdown, CSV, LaTeX, plots, one HTML page); returns the HTML path."""
    return write_report(suite_results(suite), out_dir, synthetic=suite.synthetic)
