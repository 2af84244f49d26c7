"""Atomic file writes shared by every task: a crash mid-write never leaves a half-written checkpoint or result, and a
file system that refuses the write (read-only, full, a file where a folder should be) stops with one line naming the
path and the reason."""
from __future__ import annotations

import errno
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import OutputWriteError, UserInputError

# atomic_path's temporary files: .<name>.<pid>.<8 hex>.tmp beside the target
TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d{1,7})\.[0-9a-f]{8}\.tmp")
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# A writer that reports a full disk as its own exception (torch.save: RuntimeError 'unexpected pos') is recognised by
# failing to write this much more beside its partial file.
SPACE_PROBE_BYTES = 1 << 20


def temporary_path(path: Path) -> Path:
    """A name beside `path` that no other process or write uses (see TEMPORARY_NAME)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of `path` (or `path` itself) that is not a folder, if any."""
    for part in (path, *path.parents):
        if part.exists():
            return None if part.is_dir() else part
    return None


def write_error(err: OSError, path: Path) -> OutputWriteError | None:
    """`err` from writing `path` as the user's problem in one line, or None where it is not one we can name."""
    if err.errno in NO_SPACE:
        return OutputWriteError(f"{path.parent}: no space left on device while writing {path.name}; free space or "
                                "choose another folder (work_dir)")
    if err.errno == errno.EROFS:
        return OutputWriteError(f"{path.parent}: cannot write (read-only file system)")
    if err.errno in (errno.EACCES, errno.EPERM):
        return OutputWriteError(f"{path.parent}: cannot write (permission denied)")
    if err.errno in (errno.ENOTDIR, errno.EEXIST) and (blocker := file_above(path.parent)) is not None:
        return OutputWriteError(f"{path.parent}: cannot create this folder ({blocker} is a file, not a folder)")
    return None


def disk_full(tmp: Path) -> OSError | None:
    """The no-space error that writing more to `tmp` raises now, or None where the disk takes it."""
    try:
        with tmp.open("ab") as f:
            f.write(bytes(SPACE_PROBE_BYTES))
    except OSError as err:
        return err if err.errno in NO_SPACE else None
    return None


@contextmanager
def user_write_errors(path: Path) -> Iterator[None]:
    """Raise the OSErrors of writing `path` that write_error names as the user's problem in one line."""
    try:
        yield
    except OSError as err:
        if (user_error := write_error(err, path)) is None:
            raise
        raise user_error from err


@contextmanager
def full_or_read_only_under(folder: Path) -> Iterator[None]:
    """For writes into `folder` by code that is not ours (mmengine's logs, scalars.json and last_checkpoint): a full
    or read-only file system is named in one line, by the file where the error names one, else by `folder`."""
    try:
        yield
    except OSError as err:
        if err.errno not in (*NO_SPACE, errno.EROFS):
            raise
        raise write_error(err, Path(err.filename) if err.filename else folder / "its logs") from err


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block finishes without error.

    The result gets the umask's permissions, as a plain open() would give: some writers create files
    readable by their owner only (safetensors, tempfile), which breaks checkpoints shared on a cluster. A write the
    file system refuses (read-only, full, below a file, no permission) raises OutputWriteError naming the folder.
    """
    path = Path(path)
    tmp = temporary_path(path)
    with user_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.touch()
    try:
        with user_write_errors(path):
            mode = tmp.stat().st_mode & 0o777
            yield tmp
            os.chmod(tmp, mode)
            os.replace(tmp, path)
    except (OSError, UserInputError):
        raise
    except Exception as err:
        if (full := disk_full(tmp)) is not None:
            raise write_error(full, path) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


def check_output_dir(folder: str | os.PathLike) -> None:
    """Create `folder` and a file in it, so that an unwritable work_dir stops the run before anything starts."""
    probe = temporary_path(Path(folder) / ".write_check")
    with user_write_errors(probe):
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete atomic_path's temporary files in `folder` whose writer is gone (killed mid-write): each can be a whole
    checkpoint. Call it where only this machine writes `folder`: a pid means nothing on another host."""
    stale = [p for p in Path(folder).glob(".*.tmp")
             if (m := TEMPORARY_NAME.fullmatch(p.name)) and p.is_file() and not pid_alive(int(m["pid"]))]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write `obj` as json with stable bytes (sorted keys; compact separators when `indent` is None)."""
    separators = (",", ":") if indent is None else None
    text = json.dumps(obj, indent=indent, sort_keys=True, separators=separators)
    write_bytes_atomic(path, (text + "\n").encode())
