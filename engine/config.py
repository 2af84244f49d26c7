"""Config files (mmengine Python configs with `_base_` inheritance) and checked `key=value` overrides."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from mmengine.config import Config


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
    raise FileNotFoundError(f"config not found: {name} (neither a file nor one of the shipped configs in "
                            f"{configs_dir}: {', '.join(names)})")


def _check_key(cfg: Config, dotted: str) -> None:
    node: Any = cfg.to_dict()
    for depth, part in enumerate(dotted.split(".")):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(dotted.split(".")[:depth]) or "the top level"
            known = sorted(node) if isinstance(node, dict) else []
            close = difflib.get_close_matches(part, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"override {dotted!r}: no key {part!r} at {where} (keys: {', '.join(known)}){hint}")
        node = node[part]


def load_config(path: str | Path, overrides: dict[str, Any] | None = None,
                configs_dir: Path | None = None) -> Config:
    """Read a config and apply `key=value` overrides; an override must name a key the config already has."""
    path = resolve_config_path(path, configs_dir) if configs_dir else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    cfg = Config.fromfile(str(path))
    for key in overrides or {}:
        _check_key(cfg, key)
    cfg.merge_from_dict(overrides or {})
    cfg.config_name = path.stem
    return cfg
