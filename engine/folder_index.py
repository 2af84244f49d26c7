"""The files of an ImageNet-layout split as a few arrays, built once and cached.

torchvision's ImageFolder keeps a list of (path, class) tuples: about 260 MB of Python objects for ImageNet-1k,
and every loader worker copies the pages it reads, because reading an object writes its reference count. Here
the index is class names, a class per file and the paths (relative to the split folder) packed into one byte
buffer: about 50 MB for ImageNet, shared by the workers without copies. Scanning 1.28M files takes a while on a
network file system, so the index is cached, keyed by the modification times of the split and class folders
(adding, removing or renaming a file changes its folder's time); the order and classes are ImageFolder's.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from mmengine.logging import print_log
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from .safe_io import atomic_path

# A folder changed this recently may change again within its time stamp's resolution, unseen by the cache key.
SETTLED_SECONDS = 2.0


def cache_dir() -> Path:
    """Where indices are cached: $DROPPOS_BENCH_CACHE, else $XDG_CACHE_HOME/droppos-bench (~/.cache/...)."""
    if path := os.environ.get("DROPPOS_BENCH_CACHE"):
        return Path(path)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "droppos-bench"


class FolderIndex:
    """The image files of `root/<class>/...` in ImageFolder's order: `classes` (sorted folder names),
    `targets` (class index per file) and each file's path, read with `path(i)`."""

    def __init__(self, root: Path, classes: list[str], targets: np.ndarray, names: np.ndarray, ends: np.ndarray):
        self.root, self.classes, self.targets = root, classes, targets
        self._names, self._ends = names, ends  # the relative paths, utf-8, end to end; where each one ends

    def __len__(self) -> int:
        return len(self.targets)

    def digest(self) -> str:
        """sha256 of the classes, relative paths and labels: equal for the same files in the same order."""
        digest = hashlib.sha256(json.dumps(self.classes).encode())
        for array in (self._names, self._ends, self.targets):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def path(self, index: int) -> str:
        start = self._ends[index - 1] if index else 0
        return os.path.join(self.root, self._names[start:self._ends[index]].tobytes().decode())

    @classmethod
    def scan(cls, root: Path) -> tuple[FolderIndex, bool]:
        """Walk the folder as ImageFolder does; also say whether any class folder has sub-folders (whose changes
        the cache key would not see)."""
        classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
        names, targets, nested = [], [], False
        for target, name in enumerate(classes):
            for folder, subfolders, files in sorted(os.walk(root / name, followlinks=True)):
                nested = nested or bool(subfolders)
                relative = os.path.relpath(folder, root)
                names += [os.path.join(relative, file).encode() for file in sorted(files)
                          if has_file_allowed_extension(file, IMG_EXTENSIONS)]
                targets += [target] * (len(names) - len(targets))
        ends = np.cumsum([len(name) for name in names], dtype=np.int64)
        buffer = np.frombuffer(b"".join(names), np.uint8)
        return cls(root, classes, np.asarray(targets, np.int32), buffer, ends), nested

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as file:
            np.savez(file, classes=np.asarray(self.classes, dtype=str), targets=self.targets, names=self._names,
                     ends=self._ends)

    @classmethod
    def load(cls, root: Path, path: Path) -> FolderIndex:
        with np.load(path) as arrays:
            return cls(root, arrays["classes"].tolist(), arrays["targets"], arrays["names"], arrays["ends"])


def folder_stamps(root: Path) -> list[tuple[str, int]]:
    """Modification times of the split folder and its class folders: a file added, removed or renamed in a class
    folder (a dataset written again) changes one."""
    stats = [(".", os.stat(root).st_mtime_ns)]
    return stats + sorted((entry.name, entry.stat().st_mtime_ns) for entry in os.scandir(root) if entry.is_dir())


def folder_key(root: Path) -> str | None:
    """A digest of the split folder's path and `folder_stamps`, or None when one of them changed in the last
    SETTLED_SECONDS (not cached: a change in the same clock tick would not show)."""
    stats = folder_stamps(root)
    if max(mtime for _, mtime in stats) > (time.time() - SETTLED_SECONDS) * 1e9:
        return None
    return hashlib.sha256(repr((str(root.resolve()), stats)).encode()).hexdigest()[:32]


def folder_index(root: str | os.PathLike) -> FolderIndex:
    """The index of `root`, from the cache when the folders have not changed since it was written."""
    root = Path(root)
    key = folder_key(root)
    cached = cache_dir() / f"folder-index-{key}.npz"
    if key and cached.is_file():
        try:
            return FolderIndex.load(root, cached)
        except (OSError, ValueError, KeyError) as error:
            print_log(f"{cached}: unreadable folder index cache ({error}); scanning {root} again", logger="current",
                      level=logging.WARNING)
    start = time.perf_counter()
    index, nested = FolderIndex.scan(root)
    print_log(f"{root}: {len(index)} images in {len(index.classes)} class folders, indexed in "
              f"{time.perf_counter() - start:.1f} s", logger="current", level=logging.INFO)
    if key and not nested:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            index.save(cached)
        except OSError as error:
            print_log(f"{cached}: cannot cache the folder index ({error}); the next start scans {root} again "
                      "(set DROPPOS_BENCH_CACHE to a writable folder)", logger="current", level=logging.WARNING)
    return index
