"""Running a suite's jobs through a backend and turning the results store into a report.

Each job is one `droppos-bench` command in its own process (so a crash or an out-of-memory kill takes down one
job, not the harness), logging to <job work dir>/job.log; its metrics.json is read back into the results store.
Backends: local and torchrun run the jobs one after another here, docker the same inside a container, slurm
submits them all at once (slurm.py).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from engine.errors import UserInputError

from .process import LOG_FILE, log_tail, read_metrics, run_logged
from .report import Result, write_report
from .slurm import run_on_scheduler
from .store import JobRecord, ResultsStore, run_jobs
from .suite import Job, Suite, expand_jobs

STORE_FILE = "results.sqlite"


class JobsFailedError(UserInputError):
    """Jobs of a suite failed: their logs hold the tracebacks, so the command that ran them ends with one line."""


def store_path(suite: Suite) -> Path:
    return suite.work_dir / STORE_FILE


def job_command(job: Job, backend: dict[str, Any]) -> list[str]:
    """The process that runs `job` (inside the container for docker): the CLI, under torchrun with `gpus`
    processes for torchrun and SLURM, and for docker when `gpus` > 1 (position accuracy runs in one process: it is
    an evaluation). Docker runs the image's own entry point, not this interpreter."""
    kind, gpus = backend["type"], backend.get("gpus", 1)
    distributed = job.benchmark != "posacc" and (kind in ("torchrun", "slurm") or (kind == "docker" and gpus > 1))
    if kind == "docker":
        if distributed:
            return ["torchrun", "--standalone", f"--nproc_per_node={gpus}", "-m", "benchmarks.cli", *job.args]
        return ["droppos-bench", *job.args]
    if distributed:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                "-m", "benchmarks.cli", *job.args]
    return [sys.executable, "-m", "benchmarks.cli", *job.args]


def docker_mounts(suite: Suite) -> list[Path]:
    """The folders a job reads or writes: the current folder (relative paths), every data root, each checkpoint's
    folder (and its link target's), the suite's work dir, every existing absolute path an override names (a
    `data.root` of its own); absolute, a folder inside another one left out."""
    paths = [Path.cwd(), suite.work_dir, *map(Path, suite.data.values())]
    overrides = [benchmark.overrides for benchmark in suite.benchmarks]
    for checkpoint in suite.checkpoints:
        if checkpoint.path is not None:
            paths += [Path(checkpoint.path).parent, Path(checkpoint.path).resolve().parent]
        overrides += checkpoint.overrides.values()
    named = [Path(value) for values in overrides for value in values.values()
             if isinstance(value, str) and os.path.isabs(value) and os.path.exists(value)]
    paths += [path if path.is_dir() else path.parent for path in named]
    mounts: list[Path] = []
    for folder in sorted({Path(os.path.abspath(path)) for path in paths}):  # a folder sorts before those inside it
        if not any(folder.is_relative_to(mount) for mount in mounts):
            mounts.append(folder)
    return mounts


def docker_run(suite: Suite) -> list[str]:
    """`docker run` up to the image: every folder of `docker_mounts` at its own path and the current folder as
    working directory, so the job's paths mean the same inside; this user's ids, so its files are ours."""
    backend = suite.backend
    command = [backend["docker"], "run", "--rm", "--ipc=host", *(["--gpus", "all"] if "gpus" in backend else [])]
    for folder in docker_mounts(suite):
        command += ["-v", f"{folder}:{folder}"]
    return [*command, "-w", os.getcwd(), "--user", f"{os.getuid()}:{os.getgid()}", "-e", "PYTHONUNBUFFERED=1",
            backend["image"]]


def launch_command(job: Job, suite: Suite) -> list[str]:
    """What the harness starts for `job`: its command, wrapped in `docker run` for the docker backend."""
    command = job_command(job, suite.backend)
    return docker_run(suite) + command if suite.backend["type"] == "docker" else command


def execute(job: Job, command: list[str]) -> dict[str, Any]:
    """Run the job's command with its output appended to job.log; raise if it fails."""
    status = run_logged(command, job.work_dir)
    if status:
        raise RuntimeError(f"exit status {status}")
    return read_metrics(job)


def run_suite(suite: Suite) -> dict[str, str]:
    """Run every job of the suite that is not done yet: one after another, or all at once through SLURM (then
    also waiting for the SLURM jobs a stopped harness left); returns {job id: final state}."""
    jobs = {job.job_id: job for job in expand_jobs(suite)}
    with ResultsStore(store_path(suite)) as store:
        store.add_jobs((job.job_id, suite.name, job.checkpoint.label, job.benchmark, job.config, str(job.work_dir))
                       for job in jobs.values())
        store.reset_interrupted()
        if suite.backend["type"] == "slurm":  # in two waves: jobs that read another job's model after it
            states: dict[str, str] = {}
            for wave in ({i: j for i, j in jobs.items() if j.after is None},
                         {i: j for i, j in jobs.items() if j.after is not None}):
                states.update(run_on_scheduler(store, wave, suite, lambda job: job_command(job, suite.backend)))
            return {job_id: states[job_id] for job_id in jobs}
        return run_jobs(store, list(jobs), lambda record: _run(jobs, record, suite, len(jobs)),
                        lambda record: log_tail(jobs[record.job_id]))


def _run(jobs: dict[str, Job], record: JobRecord, suite: Suite, total: int) -> dict[str, Any]:
    position = list(jobs).index(record.job_id) + 1
    print(f"[{position}/{total}] {record.checkpoint} / {record.benchmark}: running, log in "
          f"{jobs[record.job_id].work_dir / LOG_FILE}", flush=True)
    return execute(jobs[record.job_id], launch_command(jobs[record.job_id], suite))


def loss_curve(job: Job) -> list[tuple[int, float]]:
    """(optimizer step, training loss) as the job's runs logged them (mmengine's vis_data/scalars.json, one folder per
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
        results.append(Result(checkpoint.label, checkpoint.reference, metrics, grids, curves, checkpoint.reported))
    return results


def report_suite(suite: Suite, out_dir: Path) -> Path:
    """Write the suite's report (Markdown, CSV, LaTeX, plots, one HTML page); returns the HTML path."""
    return write_report(suite_results(suite), out_dir, synthetic=suite.synthetic, chance=suite.chance)
