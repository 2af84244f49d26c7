"""The frame every evaluation command shares (cls / det / seg eval): its checked config and its metrics.json."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mmengine.config import Config

from .config import check_gpu, load_config
from .errors import UserInputError
from .runner import default_eval_dir, require_one_process
from .safe_io import write_json_atomic


def eval_config(command: str, config: str | Path, overrides: dict[str, Any] | None, configs_dir: Path,
                checkpoint_kind: str | None) -> Config:
    """The config of `droppos-bench <command>`, checked before any work: one process, a GPU where the config asks
    for one, and `ckpt` set (`checkpoint_kind` says what it must be; None: a random init is allowed)."""
    require_one_process(command)
    cfg = load_config(config, overrides, configs_dir=configs_dir)
    check_gpu(cfg)
    if checkpoint_kind is not None and not cfg.ckpt:
        raise UserInputError(f"{command} needs ckpt=PATH: {checkpoint_kind}")
    return cfg


def write_eval_metrics(cfg: Config, images: int, metrics: dict[str, Any], **extra: Any) -> Path:
    """Write the metrics of `cfg.ckpt` on the val split of `cfg.data.root` (`images` of them) to the evaluation's
    metrics.json, atomically; returns its path."""
    out = default_eval_dir(cfg) / "metrics.json"
    write_json_atomic(out, dict(checkpoint=str(cfg.ckpt), data=str(cfg.data.root), split="val", images=images,
                                **extra, **metrics))
    return out
