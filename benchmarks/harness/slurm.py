"""The SLURM backend, through submitit: each job of a suite is a scheduler job of its own (one node, or `nodes`
nodes running torchrun together), all submitted at once to run in parallel; the harness then waits, polling, and
records each job as it ends.

The scheduler's job id goes into the results store, so a harness that is stopped (Ctrl-C, a lost login session) and
started again waits for the same SLURM jobs instead of submitting them twice. submitit's "local" and "debug"
clusters run the jobs on this machine (tests, trying a suite out); those jobs end with the harness, so their ids are
not kept and a stopped run submits them again.
"""
from __future__ import annotations

import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import submitit

from .process import LOG_FILE, log_tail, read_metrics, run_logged
from .store import ResultsStore, failure_tail
from .suite import Job, Suite

POLL_S = 15.0  # between looks at the jobs' result files; submitit asks SLURM itself (sacct) less often


def node_command(command: list[str], node: int, hostnames: list[str], job_id: str) -> list[str] | None:
    """The command one node of a scheduler job runs. On several nodes torchrun's `--standalone` becomes a static
    rendezvous at the first node, on a port drawn from the job id (two jobs sharing a node do not collide); a
    command that is not torchrun (position accuracy) runs on the first node only (None elsewhere)."""
    if len(hostnames) == 1:
        return command
    if "--standalone" not in command:
        return command if node == 0 else None
    at = command.index("--standalone")
    port = 20000 + zlib.crc32(job_id.encode()) % 20000
    return [*command[:at], f"--nnodes={len(hostnames)}", f"--node_rank={node}", f"--master_addr={hostnames[0]}",
            f"--master_port={port}", *command[at + 1:]]


def run_on_node(command: list[str], work_dir: Path) -> tuple[int, float]:
    """What each node of a scheduler job runs: its part of the job's command, logged to job.log (the first node)
    or job.node<i>.log; (exit status, seconds it ran)."""
    start = time.monotonic()
    env = submitit.JobEnvironment()
    command = node_command(command, env.node, env.hostnames, env.job_id)
    if command is None:
        return 0, 0.0
    log_file = LOG_FILE if env.node == 0 else f"job.node{env.node}.log"
    return run_logged(command, work_dir, log_file), time.monotonic() - start


def make_executor(suite: Suite) -> submitit.AutoExecutor:
    """A submitit executor for jobs of `nodes` nodes (one task each) with the suite's resources, its logs in
    <work dir>/slurm/; the local clusters ignore what only SLURM understands (partition, account, constraint)."""
    backend = suite.backend
    executor = submitit.AutoExecutor(folder=suite.work_dir / "slurm", cluster=backend.get("cluster"))
    executor.update_parameters(timeout_min=backend["timeout_min"], nodes=backend.get("nodes", 1),
                               tasks_per_node=1,
                               gpus_per_node=backend.get("gpus"), cpus_per_task=backend.get("cpus_per_task"),
                               mem_gb=backend.get("mem_gb"), slurm_partition=backend.get("partition"),
                               slurm_account=backend.get("account"), slurm_constraint=backend.get("constraint"))
    return executor


def attach_job(folder: Path, external_id: str) -> submitit.Job:
    """The SLURM job behind an id that an earlier harness stored (only SLURM ids are stored)."""
    return submitit.SlurmJob(folder, external_id)


def run_on_scheduler(store: ResultsStore, jobs: dict[str, Job], suite: Suite,
                     command: Callable[[Job], list[str]]) -> dict[str, str]:
    """Submit every job that is not done, all at once, take over the SLURM jobs a stopped harness left, wait and
    record each job as it ends; {job id: final state}. Stopping the harness stops the waiting, not SLURM's jobs."""
    waiting: dict[str, submitit.Job] = {}
    states: dict[str, str] = {}
    executor = None
    for job_id, job in jobs.items():
        external_id = store.get(job_id).external_id
        if external_id is not None and store.adopt(job_id):
            waiting[job_id] = attach_job(suite.work_dir / "slurm", external_id)
            _say(job, f"waiting again for SLURM job {external_id}")
        elif store.claim(job_id):
            try:
                executor = executor or make_executor(suite)
                waiting[job_id] = _submit(store, executor, job, command(job))
            except Exception as error:  # a refused submission (bad partition, no SLURM here) fails this job only
                states[job_id] = _fail(store, job, error, 0.0)
        else:
            state = store.get(job_id).state
            states[job_id] = "skipped" if state == "done" else state
    if waiting:
        print(f"waiting for {len(waiting)} scheduler job(s); submitit's files in {suite.work_dir / 'slurm'}",
              flush=True)
    states.update(_wait(store, jobs, waiting))
    return {job_id: states[job_id] for job_id in jobs}


def _submit(store: ResultsStore, executor: submitit.AutoExecutor, job: Job, command: list[str]) -> submitit.Job:
    executor.update_parameters(name=job.job_id)
    submitted = executor.submit(run_on_node, command, job.work_dir)
    if executor.cluster == "slurm":  # a local cluster's job ends with this process: nothing to wait for later
        store.set_external_id(job.job_id, submitted.job_id)
    _say(job, f"submitted as {executor.cluster} job {submitted.job_id}, log in {job.work_dir / LOG_FILE}")
    return submitted


def _wait(store: ResultsStore, jobs: dict[str, Job], waiting: dict[str, submitit.Job]) -> dict[str, str]:
    """Poll until every job has ended, printing a line whenever one's scheduler state changes."""
    started = {job_id: time.monotonic() for job_id in waiting}
    shown: dict[str, str] = {}
    states = {}
    while waiting:
        for job_id, submitted in list(waiting.items()):
            if submitted.done():
                del waiting[job_id]
                shown.pop(job_id, None)
                states[job_id] = _record_end(store, jobs[job_id], submitted, time.monotonic() - started[job_id])
                _say(jobs[job_id], states[job_id] + _still_waiting(waiting, shown))
            elif (state := submitted.state) != shown.get(job_id):
                shown[job_id] = state
                _say(jobs[job_id], state + _still_waiting(waiting, shown))
        if waiting:
            time.sleep(POLL_S)
    return states


def _record_end(store: ResultsStore, job: Job, submitted: submitit.Job, waited_s: float) -> str:
    """Record a scheduler job that ended: done with the metrics its command wrote, or failed with its log tail."""
    seconds = waited_s
    try:
        status, seconds = _command_result(submitted)
        if status:
            raise RuntimeError(f"exit status {status}")
        metrics = read_metrics(job)
    except Exception as error:
        return _fail(store, job, error, seconds)
    store.finish(job.job_id, metrics, seconds)
    return "done"


def _fail(store: ResultsStore, job: Job, error: Exception, seconds: float) -> str:
    store.fail(job.job_id, failure_tail(store.get(job.job_id), error, lambda _: log_tail(job)), seconds)
    return "failed"


def _command_result(submitted: submitit.Job) -> tuple[int, float]:
    """(exit status, seconds) of the job's command: the first node's time, the first failing node's status; a job
    the scheduler ended first (time limit, memory, node failure, scancel) gives no result, which is an error naming
    the scheduler's log."""
    try:
        nodes = submitted.results()
        return next((status for status, _ in nodes if status), 0), nodes[0][1]
    except Exception as error:
        raise RuntimeError(f"scheduler job {submitted.job_id} ended without a result (state {submitted.state}); "
                           f"its log: {submitted.paths.stderr}") from error


def _still_waiting(waiting: dict[str, submitit.Job], shown: dict[str, str]) -> str:
    """How many jobs are still out, by their last seen scheduler state (e.g. '; 3 still out: 1 PENDING, 2 RUNNING')."""
    if not waiting:
        return ""
    counts = Counter(shown.get(job_id, "submitted") for job_id in waiting)
    return f"; {len(waiting)} still out: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


def _say(job: Job, what: str) -> None:
    print(f"{job.checkpoint.label} / {job.benchmark}: {what}", flush=True)
