"""The SQLite results store: one row per job, one transaction per state change, so a killed harness loses nothing
it had finished and a re-run knows exactly what is left to do.

A job runs in a process of the harness (its pid and host are stored), or under a scheduler such as SLURM (the
scheduler's job id is stored as `external_id`): such a job outlives the harness, so a later harness waits for it
instead of running it again."""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path

from engine.errors import UserInputError
from engine.safe_io import pid_alive

from .job_lock import lock_held

STATES = ("pending", "running", "done", "failed")
SCHEMA_VERSION = 2  # 2: external_id
BUSY_TIMEOUT_MS = 30_000  # a second harness or `bench status` holds the write lock for milliseconds, never this long

_SCHEMA = f"""
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    suite TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    benchmark TEXT NOT NULL,
    config TEXT NOT NULL,
    work_dir TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN {STATES!r}),
    metrics TEXT,
    wall_time_s REAL,
    log_tail TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL,
    pid INTEGER,
    host TEXT,
    external_id TEXT
)"""


@dataclass(frozen=True)
class JobRecord:
    """One job as stored: what it is (suite, checkpoint label, benchmark, resolved config) and how it went."""

    job_id: str
    suite: str
    checkpoint: str
    benchmark: str
    config: dict
    work_dir: str
    state: str
    metrics: dict | None
    wall_time_s: float | None
    log_tail: str | None
    attempts: int
    updated_at: str
    pid: int | None  # the harness process that runs the job or waits for it
    host: str | None
    external_id: str | None  # the scheduler's job id while a scheduler runs it


_COLUMNS = ", ".join(field.name for field in fields(JobRecord))


class ResultsStore:
    """The jobs of every suite in one SQLite file; safe to share between a running harness and `bench status`."""

    def __init__(self, path: str | os.PathLike, stale_after_s: float = 24 * 3600):
        self.path = Path(path)
        self.stale_after_s = stale_after_s
        self._host = socket.gethostname()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._check_version()  # before WAL: a file we refuse is left exactly as it was
        self._db.execute("PRAGMA journal_mode = WAL")
        # FULL, not NORMAL: in WAL mode NORMAL survives a killed process but can drop the last commits on power
        # loss. A commit here ends hours of GPU work and there are a handful per job, so the fsync is free.
        self._db.execute("PRAGMA synchronous = FULL")
        with self._transaction() as db:  # a new file or a migration is all there or not at all
            version = self._check_version()
            if version == 0:
                db.execute(_SCHEMA)
            elif version == 1:
                db.execute("ALTER TABLE jobs ADD COLUMN external_id TEXT")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_version(self) -> int:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: results store schema version {version} is newer than this harness "
                               f"understands ({SCHEMA_VERSION}); use a newer droppos-bench to read it")
        return version

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One state change = one transaction; IMMEDIATE takes the write lock up front, so a read-then-write
        (claim) cannot interleave with another process doing the same."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            if self._db.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_jobs(self, jobs: Iterable[tuple[str, str, str, str, dict, str]]) -> None:
        """Insert (job_id, suite, checkpoint, benchmark, config, work_dir) as pending; known jobs keep their state.
        A known job id with another config is refused, so a result is never credited to a config it did not run."""
        with self._transaction() as db:
            for job_id, suite, checkpoint, benchmark, config, work_dir in jobs:
                config_json = _canonical_json(config)
                row = db.execute("SELECT config FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
                if row is None:
                    db.execute("INSERT INTO jobs (job_id, suite, checkpoint, benchmark, config, work_dir, state, "
                               "updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                               (job_id, suite, checkpoint, benchmark, config_json, work_dir, _now()))
                elif row[0] != config_json:
                    raise UserInputError(f"job {job_id!r} is already stored with a different config; "
                                         "give the new config a new job id")

    def claim(self, job_id: str) -> bool:
        """Mark a pending, failed or interrupted job as running in this process; False if it is done, another
        live process runs it, or a scheduler runs it (see `adopt`)."""
        with self._transaction() as db:
            record = self.get(job_id)
            if record is None:
                raise KeyError(f"no job {job_id!r} in {self.path}")
            running = record.state == "running" and (record.external_id is not None or self._is_live(record)
                                                     or lock_held(Path(record.work_dir)))
            if record.state == "done" or running:
                return False
            db.execute("UPDATE jobs SET state = 'running', attempts = attempts + 1, pid = ?, host = ?, metrics = NULL, "
                       "wall_time_s = NULL, log_tail = NULL, external_id = NULL, updated_at = ? WHERE job_id = ?",
                       (os.getpid(), self._host, _now(), job_id))
            return True

    def set_external_id(self, job_id: str, external_id: str) -> None:
        """Record the scheduler's id of a job this process claimed and submitted: from now on the job is the
        scheduler's, and a harness that is stopped and started again waits for it instead of submitting it twice."""
        with self._transaction() as db:
            updated = db.execute("UPDATE jobs SET external_id = ?, updated_at = ? "
                                 "WHERE job_id = ? AND state = 'running' AND pid = ? AND host = ?",
                                 (external_id, _now(), job_id, os.getpid(), self._host))
            if updated.rowcount != 1:
                raise RuntimeError(f"job {job_id!r} in {self.path} is not running in this process; not recording "
                                   f"scheduler job {external_id!r} for it")

    def adopt(self, job_id: str) -> bool:
        """Make this process the one that waits for a job a scheduler runs (and records its end), taking over from
        a harness that is gone; False if the job is not with a scheduler or a live harness still waits for it."""
        return self._take_over(job_id, scheduled=True)

    def adopt_orphan(self, job_id: str) -> bool:
        """Make this process the one that waits for a job process still running after its harness was killed (it
        holds its work dir's lock) and records its end; False if there is none or a live harness waits for it."""
        return self._take_over(job_id, scheduled=False)

    def _take_over(self, job_id: str, scheduled: bool) -> bool:
        with self._transaction() as db:
            record = self.get(job_id)
            if record is None or record.state != "running" or self._is_live(record):
                return False
            if (record.external_id is not None) != scheduled:
                return False
            if not scheduled and not lock_held(Path(record.work_dir)):
                return False
            db.execute("UPDATE jobs SET pid = ?, host = ?, updated_at = ? WHERE job_id = ?",
                       (os.getpid(), self._host, _now(), job_id))
            return True

    def finish(self, job_id: str, metrics: dict, wall_time_s: float) -> None:
        """Record a job this process runs as done with its metrics."""
        if not isinstance(metrics, dict):
            raise TypeError(f"job {job_id!r}: metrics must be a dict, got {type(metrics).__name__}")
        self._end(job_id, "done", metrics=json.dumps(metrics), wall_time_s=wall_time_s, log_tail=None)

    def fail(self, job_id: str, log_tail: str, wall_time_s: float) -> None:
        """Record a job this process runs as failed, keeping the end of its log for `bench status`."""
        self._end(job_id, "failed", metrics=None, wall_time_s=wall_time_s, log_tail=log_tail)

    def _end(self, job_id: str, state: str, metrics: str | None, wall_time_s: float, log_tail: str | None) -> None:
        # only the claiming process may end a job: a late writer must never overwrite a result it does not own
        with self._transaction() as db:
            ended = db.execute("UPDATE jobs SET state = ?, metrics = ?, wall_time_s = ?, log_tail = ?, updated_at = ? "
                               "WHERE job_id = ? AND state = 'running' AND pid = ? AND host = ?",
                               (state, metrics, wall_time_s, log_tail, _now(), job_id, os.getpid(), self._host))
            if ended.rowcount != 1:
                raise RuntimeError(f"job {job_id!r} in {self.path} is not running in this process; not marking it "
                                   f"{state}")

    def reset_interrupted(self) -> list[str]:
        """Put running jobs whose process is gone back to pending, so they show as interrupted, not running; a job
        with a scheduler id, or whose job process still holds its work dir's lock, is left running."""
        with self._transaction() as db:
            dead = [record.job_id for record in self.jobs()
                    if record.state == "running" and record.external_id is None and not self._is_live(record)
                    and not lock_held(Path(record.work_dir))]
            db.executemany("UPDATE jobs SET state = 'pending', pid = NULL, host = NULL, updated_at = ? "
                           "WHERE job_id = ?", [(_now(), job_id) for job_id in dead])
        return dead

    def _is_live(self, record: JobRecord) -> bool:
        """A running job's process is alive: by pid on this host; elsewhere we cannot look, so trust it until
        `stale_after_s` have passed since its last state change."""
        if record.host == self._host and record.pid is not None:
            return pid_alive(record.pid)
        age_s = (datetime.now(timezone.utc) - datetime.fromisoformat(record.updated_at)).total_seconds()
        return age_s < self.stale_after_s

    def get(self, job_id: str) -> JobRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    def jobs(self, suite: str | None = None) -> list[JobRecord]:
        """Jobs in the order they were added, of one suite or of all."""
        if suite is None:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY seq")
        else:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE suite = ? ORDER BY seq", (suite,))
        return [_record(row) for row in rows]

    def status_table(self, suite: str | None = None, tail_lines: int = 5) -> str:
        """A plain-text table of jobs, then the last log lines of each failure; no timestamps, so it is testable."""
        records = self.jobs(suite)
        if not records:
            return "no jobs"
        header = ("job", "checkpoint", "benchmark", "state", "attempts", "wall time", "metrics")
        rows = [(r.job_id, r.checkpoint, r.benchmark, _shown_state(r), str(r.attempts), _duration(r.wall_time_s),
                 _short_metrics(r.metrics)) for r in records]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = [_aligned(row, widths) for row in [header, tuple("-" * width for width in widths), *rows]]
        for r in records:
            if r.state == "failed":
                lines += ["", f"{r.job_id} failed (attempt {r.attempts}):"]
                lines += ["    " + line for line in (r.log_tail or "").splitlines()[-tail_lines:]]
        return "\n".join(lines)


def run_jobs(store: ResultsStore, jobs: Sequence[str], execute: Callable[[JobRecord], dict],
             log_tail: Callable[[JobRecord], str]) -> dict[str, str]:
    """Run every claimable job in order; a failure is recorded with its log tail and the suite goes on.
    KeyboardInterrupt propagates and leaves the job running, so the next run sees it as interrupted."""
    states = {}
    for job_id in jobs:
        if not store.claim(job_id) and not store.adopt_orphan(job_id):
            state = store.get(job_id).state
            states[job_id] = "skipped" if state == "done" else state
            continue
        record = store.get(job_id)
        start = time.monotonic()
        try:
            store.finish(job_id, execute(record), time.monotonic() - start)
            states[job_id] = "done"
        except Exception as error:
            store.fail(job_id, failure_tail(record, error, log_tail), time.monotonic() - start)
            states[job_id] = "failed"
    return states


def failure_tail(record: JobRecord, error: Exception, log_tail: Callable[[JobRecord], str]) -> str:
    """The job's log tail plus the exception in one line; an unreadable log must not stop the suite."""
    try:
        tail = log_tail(record).rstrip("\n")
    except Exception as log_error:
        tail = f"(log tail unavailable: {_one_line(log_error)})"
    return f"{tail}\n{_one_line(error)}" if tail else _one_line(error)


def _one_line(error: BaseException) -> str:
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__




def _record(row: tuple) -> JobRecord:
    record = JobRecord(*row)  # config and metrics still JSON text here
    metrics = None if record.metrics is None else json.loads(record.metrics)
    return replace(record, config=json.loads(record.config), metrics=metrics)


def _canonical_json(value: dict) -> str:
    # sorted keys: equal configs compare equal as text whatever order their keys were built in
    return json.dumps(value, sort_keys=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _shown_state(record: JobRecord) -> str:
    # a pending job with attempts was started and interrupted: say so, it is what the user wants to know
    return "interrupted" if record.state == "pending" and record.attempts else record.state


def _aligned(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes = int(seconds // 60)
    return f"{minutes}m{int(seconds % 60):02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _short_metrics(metrics: dict | None, shown: int = 3) -> str:
    """The first few metrics as key=value, numbers to 4 significant digits, so the table fits a terminal."""
    if not metrics:
        return "-"
    items = [f"{key}={value:.4g}" if isinstance(value, (int, float)) else f"{key}={str(value)[:16]}"
             for key, value in list(metrics.items())[:shown]]
    if len(metrics) > shown:
        items.append(f"+{len(metrics) - shown} more")
    return ", ".join(items)
