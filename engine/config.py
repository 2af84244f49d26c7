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


def _check_key(cfg: Config, dotted: str) -> None:
    node: Any = cfg.to_dict()
    for depth, part in enumerate(dotted.split(".")):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(dotted.split(".")[:depth]) or "the top level"
            known = sorted(node) if isinstance(node, dict) else []
            close = difflib.get_close_matches(part, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserInputError(f"override {dotted!r}: no key {part!r} at {where} (keys: {', '.join(known)}){hint}")
        node = node[part]


def load_config(path: str | Path, overrides: dict[str, Any] | None = None,
                configs_dir: Path | None = None) -> Config:
    """Read a config and apply `key=value` overrides; an override must name a key the config already has."""
    path = resolve_config_path(path, configs_dir) if configs_dir else Path(path)
    if not path.is_file():
        raise MissingInputError(f"config not found: {path}")
    cfg = Config.fromfile(str(path))
    for key in overrides or {}:
        _check_key(cfg, key)
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
