"""Config files (mmengine Python configs with `_base_` inheritance) and checked `key=value` overrides."""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config

from .errors import MissingInputError, UserInputError

IN_CONTAINER = "DROPPOS_IN_CONTAINER"  # set by docker/Dockerfile


class NoGPUError(UserInputError, RuntimeError):
    """A config that needs a GPU, on a machine (or in a container) where torch sees none."""


def resolve_config_path(name: str | Path, configs_dir: Path) -> Path:
    """A config file path, or the name of a config shipped in `configs_dir` (with or without '.py')."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = configs_dir / (str(name) if path.suffix == ".py" else f"{name}.py")
    if shipped.is_file():
        return shipped
    names = sorted(str(p.relative_to(configs_dir).with_suffix("")) for p in configs_dir.rglob("*.py")
                   if "_base_" not in p.parts)
    raise MissingInputError(f"config not found: {name} (neither a file nor one of the shipped configs in "
                            f"{configs_dir}: {', '.join(names)})")


NoneType = type(None)
# Keys that take more kinds of value than the shipped defaults show (None switches a feature off, "auto" lets the
# checkpoint decide, `tuple` here: a sequence of any length); every other key takes the kind of its default, and
# where that is None any value, having nothing to go by.
KINDS: dict[str, tuple[type, ...]] = {
    "resume": (bool, str),  # True: the last checkpoint in work_dir; or the path of one
    "ckpt": (str, NoneType),
    "work_dir": (str, NoneType),
    "aug.auto_augment": (str, NoneType),
    "data.classes": (tuple, NoneType),
    "model.tau": (float, NoneType),
    "model.rel_pos_bias": (bool, str),
    "model.layer_scale_init": (float, str, NoneType),
    "model.global_blocks": (tuple,),
    "model.pool_scales": (tuple,),
    "model.layers": (tuple,),  # seg linear: the blocks whose patch features the head reads
    "knn.ks": (tuple,),
    "linear.features": (tuple,),
    "linear.base_lrs": (tuple,),
    "linear.head": (str, NoneType),  # a released head's file (cls linear scores it, trains nothing)
    "head": (str, NoneType),  # the same for seg linear
    "optim.clip_grad": (float, NoneType),
    "schedule.steps": (tuple,),
    "schedule.val_interval": (int, NoneType),
    "schedule.warmup_epochs": (float,),  # a fraction of an epoch is still whole steps
    "schedule.warmup_iters": (int, NoneType),
}
# Counts and rates the code divides by or counts with, so that a wrong sign stops here and not deep in a run.
POSITIVE = frozenset({"batch_size", "effective_batch", "schedule.epochs", "schedule.iterations", "log_interval",
                      "checkpoint.interval", "optim.base_lr", "optim.lr"})
NON_NEGATIVE = frozenset({"data.num_workers", "schedule.warmup_epochs", "schedule.warmup_iters", "schedule.min_lr",
                          "optim.weight_decay"})
KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", NoneType: "None",
              tuple: "a list of values", dict: "a dict"}


def _value_at(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for depth, part in enumerate(dotted.split(".")):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(dotted.split(".")[:depth]) or "the top level"
            known = sorted(node) if isinstance(node, dict) else []
            close = difflib.get_close_matches(part, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserInputError(f"override {dotted!r}: no key {part!r} at {where} (keys: {', '.join(known)}){hint}")
        node = node[part]
    return node


def _fits(value: Any, kinds: tuple[type, ...]) -> bool:
    """Whether `value` is one of `kinds`, where a bool is no number, an int is also a float, a list a tuple and a
    path (from Python callers) a string."""
    if isinstance(value, os.PathLike):
        return str in kinds
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int):
        return int in kinds or float in kinds
    return (isinstance(value, list) and tuple in kinds) or isinstance(value, kinds)


def _kind_name(kind: type) -> str:
    return KIND_NAMES.get(kind, kind.__name__)


def _mismatch(value: Any, default: Any) -> str | None:
    """What a value replacing `default` must be, or None when `value` is that (or `default` is None)."""
    if isinstance(default, (tuple, list)):
        same = isinstance(value, (tuple, list)) and len(value) == len(default) and all(
            _mismatch(item, was) is None for item, was in zip(value, default, strict=True))
        return None if same else f"{len(default)} values: " + ", ".join(_kind_name(type(item)) for item in default)
    return None if default is None or _fits(value, (type(default),)) else _kind_name(type(default))


def _wrong_kind(key: str, value: Any, default: Any) -> str | None:
    if key in KINDS:
        return None if _fits(value, KINDS[key]) else " or ".join(_kind_name(kind) for kind in KINDS[key])
    return _mismatch(value, default)


def _out_of_range(key: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if key in POSITIVE and not value > 0:
        return "a number > 0"
    return "a number >= 0" if key in NON_NEGATIVE and not value >= 0 else None


def check_override(key: str, value: Any, default: Any) -> None:
    """Stop on an override of the wrong kind or sign before anything starts (rather than in mmengine, or hours
    into a run), naming key, value and what it must be."""
    wrong = _wrong_kind(key, value, default) or _out_of_range(key, value)
    if wrong:
        raise UserInputError(f"override {key}={value!r}: expected {wrong} (the config has {default!r})")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None,
                configs_dir: Path | None = None) -> Config:
    """Read a config and apply `key=value` overrides; an override must name a key the config already has and give
    it a value of the kind and range it takes."""
    path = resolve_config_path(path, configs_dir) if configs_dir else Path(path)
    if not path.is_file():
        raise MissingInputError(f"config not found: {path}")
    cfg = Config.fromfile(str(path))
    tree = cfg.to_dict()
    for key, value in (overrides or {}).items():
        check_override(key, value, _value_at(tree, key))
    cfg.merge_from_dict(overrides or {})
    cfg.config_name = path.stem
    return cfg


def check_gpu(cfg: Config) -> None:
    """Stop before any work when the config asks for a GPU (`require_gpu=True`: the paper's recipes) and torch
    sees none, saying what to check; hours of a ViT-B recipe on the CPU are never what was meant."""
    if not cfg.get("require_gpu", False) or torch.cuda.is_available():
        return
    seen = (f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}), "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}")
    if os.environ.get(IN_CONTAINER):
        where = ("Inside this container no GPU is visible: start it with --gpus all (docker/run.sh does), and check "
                 "that the host has the NVIDIA driver and the NVIDIA Container Toolkit: "
                 "`docker run --rm --gpus all --entrypoint nvidia-smi droppos-bench` must list the GPUs.")
    else:
        where = ("Check that `nvidia-smi` lists a GPU, that this torch is a CUDA build matching the driver, and "
                 "that CUDA_VISIBLE_DEVICES (or the scheduler's GPU request) leaves a device to this process.")
    raise NoGPUError(f"{cfg.config_name}: the config asks for a GPU (require_gpu=True) but torch sees none; {seen}. "
                     f"{where} To run it on the CPU anyway (slowly, e.g. to debug), add require_gpu=False.")
