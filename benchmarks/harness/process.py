"""One job's process: its command run with the output appended to <job work dir>/job.log, the log's tail, and the
metrics.json it leaves. Kept apart from run.py (which imports the report and so torch) because a SLURM job's
wrapper process imports this module on its node."""
from __future__ import annotations

import json
import shlex
import subprocess
from collections import deque
from pathlib import Path
from typing import Any

from .suite import BENCHMARKS, Job

LOG_FILE = "job.log"
TAIL_LINES = 20


def run_logged(command: list[str], work_dir: Path, log_file: str = LOG_FILE) -> int:
    """Run `command` with its output appended to work_dir/`log_file` (after the command line itself); its exit
    status."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(work_dir / log_file, "ab") as log:
        log.write(f"$ {shlex.join(command)}\n".encode())
        log.flush()
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode


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
