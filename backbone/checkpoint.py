"""Reading pre-trained ViT checkpoints of every supported release format, safely.

One place for checkpoint adaptation (as timm does it): read the file with `weights_only=True`, safetensors, or (for
detectron2's pickled model-zoo files) an unpickler that rebuilds numpy arrays and nothing else, recognise its format,
unwrap it, strip prefixes, and hand back a flat encoder state dict. Fitting that state dict to a model lives in
`checkpoint_load.py`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from engine.errors import MissingInputError, UserInputError

from .families import FAMILY_FORMATS, FAMILY_HELP, FamilyError, detect_family, read_family
from .families_dinov2_clip import (
    TOWER_FORMATS,
    TOWER_HELP,
    detect_tower,
    detect_tower_format,
    is_torchscript_archive,
    read_tower,
    torchscript_refusal,
    torchscript_state,
    wrong_family_hint,
)
from .families_hf_mim import HF_FORMATS, hf_meta, hf_model_file

OURS_TAG = "droppos-bench"
FORMATS = ("droppos", "mae", "timm", "mocov3", "detectron2", "ours", "state_dict", *FAMILY_FORMATS, *TOWER_FORMATS)
FORMAT_HELP = {
    "droppos": "authors' DropPos release: {'state_dict': DDP state dict with 'module.' prefixes, 'model': arch name}",
    "mae": "MAE / DeiT release: {'model': state dict}",
    "timm": "flat state dict (timm, .pth or .safetensors)",
    "mocov3": "MoCo v3 release: {'state_dict': {'module.base_encoder.*', 'module.momentum_encoder.*', ...}}",
    "detectron2": "detectron2 ViTDet (.pth, or a model-zoo .pkl of numpy arrays): {'model': {'backbone.net.*', ...}}",
    "ours": "droppos-bench .safetensors with json metadata",
    "state_dict": "any other {'state_dict': ...} wrapper (mmengine runs, ours included, DDP)",
    **FAMILY_HELP,
    **TOWER_HELP,
}
# Pre-training-only parts and classification heads (DeiT's head_dist too), dropped on request before loading an
# encoder. Not fc_norm: average pooling's features pass through it (timm's pre-logits), so it stays with the encoder.
DECODER_KEYS = ("decoder", "mask_token", "mask_pos_token")
HEAD_KEYS = ("head",)
# Plain records that MAE / DeiT training scripts store beside the weights; safe to rebuild.
SAFE_EXTRA_GLOBALS = [argparse.Namespace]
# What a pickle of numpy arrays in plain containers names (detectron2's model-zoo .pkl files), under numpy 1's and
# numpy 2's module names; `_codecs.encode` turns the latin-1 strings of protocol-2 pickles back into bytes, and
# protocol 5 rebuilds arrays with `_frombuffer`.
PICKLE_ARRAY_GLOBALS = {
    **{(f"{core}.{module}", name): (f"numpy._core.{module}", name) for core in ("numpy.core", "numpy._core")
       for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))},
    ("numpy", "ndarray"): ("numpy", "ndarray"), ("numpy", "dtype"): ("numpy", "dtype"),
    ("collections", "OrderedDict"): ("collections", "OrderedDict"), ("_codecs", "encode"): ("_codecs", "encode"),
}

# What the files torch.save and pickle.dump write start with: a zip archive, or a pickle's protocol (2 to 5) opcode.
CHECKPOINT_STARTS = (b"PK\x03\x04", *(bytes([0x80, protocol]) for protocol in range(2, 6)))


class CheckpointError(UserInputError):
    """A checkpoint cannot be read or does not fit; the message names the file, key and what was expected."""


@dataclass
class Checkpoint:
    """An encoder state dict as read from `path`, with prefixes stripped; `meta` holds our own metadata, `notes` what
    reading a family's release layout changed beyond renaming keys."""

    path: str
    format: str
    state: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays in plain containers and nothing else: a pickle that names any other global (a function
    it would call) is refused before anything in it runs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in PICKLE_ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name}")
        module, name = PICKLE_ARRAY_GLOBALS[module, name]
        return getattr(importlib.import_module(module), name)


def arrays_to_tensors(obj: Any) -> Any:
    """Numpy arrays (also inside dicts) as CPU tensors; everything else unchanged."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    if isinstance(obj, dict):
        return {key: arrays_to_tensors(value) for key, value in obj.items()}
    return obj


def load_pickle_safely(path: Path, allow_pickle: bool = False) -> Any:
    """A plain pickle (.pkl, detectron2's model zoo) of numpy arrays, as tensors; other globals need `allow_pickle`."""
    try:
        with path.open("rb") as handle:
            if allow_pickle:
                return arrays_to_tensors(pickle.load(handle, encoding="latin1"))
            return arrays_to_tensors(ArrayUnpickler(handle, encoding="latin1").load())
    except pickle.UnpicklingError as err:
        if not str(err).startswith("global "):
            raise CheckpointError(f"{path}: cannot unpickle ({err}); the file may be truncated") from err
        raise CheckpointError(
            f"{path}: refusing to load: it names the Python {err}, beyond numpy arrays and plain containers. "
            "Loading it would run code from the file. If you trust its source, pass --allow-pickle "
            "(Python: allow_pickle=True).") from err
    except (EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise CheckpointError(f"{path}: cannot read as a pickle of arrays ({type(err).__name__}: {err}); the file "
                              "may be truncated or not a checkpoint") from err


def check_checkpoint_start(path: Path) -> None:
    """Refuse a file that is neither a zip archive nor a pickle before unpickling it: noise would fail somewhere deep
    in the unpickler, with a message about Python globals or truncation."""
    with path.open("rb") as handle:
        start = handle.read(8)
    if not start.startswith(CHECKPOINT_STARTS):
        raise CheckpointError(f"{path}: not a checkpoint (it starts with {start!r}); expected a PyTorch file "
                              "(torch.save: a zip archive or a pickle), a .safetensors file or a .pkl of numpy arrays")


def load_file_safely(path: str | os.PathLike, allow_pickle: bool = False) -> tuple[Any, dict[str, str]]:
    """Load a .safetensors, .pkl or torch file; returns (object, safetensors header metadata or {})."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"checkpoint not found: {path}")
    if path.suffix != ".safetensors":
        check_checkpoint_start(path)
    if path.suffix == ".pkl":
        return load_pickle_safely(path, allow_pickle), {}
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            return load_file(str(path)), metadata
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable .safetensors file ({err}); it may be truncated") from err
    if is_torchscript_archive(path):  # OpenAI's CLIP downloads
        if not allow_pickle:
            raise CheckpointError(torchscript_refusal(path))
        return torchscript_state(path), {}
    try:
        if allow_pickle:
            return torch.load(path, map_location="cpu", weights_only=False), {}
        with torch.serialization.safe_globals(SAFE_EXTRA_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True), {}
    except pickle.UnpicklingError as err:
        if "weights_only" not in str(err) and "Weights only" not in str(err):
            raise CheckpointError(f"{path}: cannot unpickle ({err}); the file may be truncated") from err
        names = _unsafe_globals(path)
        raise CheckpointError(
            f"{path}: refusing to load: it needs Python objects beyond tensors and plain containers "
            f"({names}). Loading it would run code from the file. If you trust its source, pass "
            f"--allow-pickle (Python: allow_pickle=True)."
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: cannot read as a PyTorch checkpoint ({type(err).__name__}: {err}); "
            "the file may be truncated or not a checkpoint"
        ) from err


def _unsafe_globals(path: Path) -> str:
    try:
        return ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or "unknown globals"
    except Exception:  # the file is already known to be unloadable; the names are only a hint
        return "unknown globals"


def detect_format(obj: Any, file_meta: dict[str, str]) -> str:
    """Name of the release format of a loaded checkpoint object (see FORMAT_HELP)."""
    if file_meta.get("format") == OURS_TAG:
        return "ours"
    if not isinstance(obj, dict):
        raise CheckpointError(f"the checkpoint holds a {type(obj).__name__}, expected a dict")
    family = detect_family(obj) or detect_tower_format(obj)
    if family is not None:
        return family
    state = obj.get("state_dict")
    if isinstance(state, dict):
        if _run_meta(obj):
            return "state_dict"
        if any(k.startswith(("module.base_encoder.", "base_encoder.")) for k in state):
            return "mocov3"
        if isinstance(obj.get("model"), str) or any(k.endswith("mask_pos_token") for k in state):
            return "droppos"
        return "state_dict"
    model = obj.get("model")
    if isinstance(model, dict) and any(str(k).startswith("backbone.net.") for k in model):
        return "detectron2"
    if isinstance(model, dict):
        return "mae"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "timm"
    summary = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:8])
    known = "\n".join(f"  {name}: {text}" for name, text in FORMAT_HELP.items())
    raise CheckpointError(f"unknown checkpoint format (top-level keys {{{summary}}}); supported:\n{known}")


def _run_meta(obj: dict) -> dict[str, Any]:
    """What our mmengine runs record in a checkpoint's meta (model config, model prefix), else {}."""
    meta = obj.get("meta")
    return meta.get("droppos_bench", {}) if isinstance(meta, dict) else {}


def _unwrap(obj: Any, fmt: str) -> dict[str, Any]:
    wrapper = {"mae": "model", "detectron2": "model", "droppos": "state_dict", "mocov3": "state_dict",
               "state_dict": "state_dict"}.get(fmt)
    if wrapper is None:
        return obj
    if not isinstance(obj, dict) or not isinstance(obj.get(wrapper), dict):
        raise CheckpointError(f"format {fmt!r} expects a dict with a state dict under {wrapper!r}")
    return obj[wrapper]


def strip_prefix(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Keep only keys under `prefix` (all keys when empty), without it."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def last_run_checkpoint(work_dir: str | os.PathLike) -> Path:
    """The last checkpoint a training run saved in `work_dir`, as mmengine records it in `last_checkpoint` (looked
    up beside that file when the recorded path no longer exists: a moved run, another mount point)."""
    record = Path(work_dir) / "last_checkpoint"
    if not record.is_file():
        raise CheckpointError(f"{work_dir}: a folder without a last_checkpoint file: not the work dir of a training "
                              "run that saved a checkpoint; give a checkpoint file")
    path = Path(record.read_text().strip())
    return path if path.is_file() else Path(work_dir) / path.name


def read_checkpoint(
    path: str | os.PathLike, fmt: str = "auto", prefix: str | None = None, allow_pickle: bool = False
) -> Checkpoint:
    """Read any supported checkpoint into a flat encoder state dict.

    DDP's 'module.' prefix is always stripped; `prefix` then selects a sub-module (default: the format's
    encoder, e.g. 'base_encoder.' for MoCo v3, 'backbone.net.' for detectron2; '' keeps every key). The formats of
    other families (FAMILY_FORMATS) select their encoder themselves, e.g. DINO's teacher ('dino') or student
    ('dino:student'), and convert it to our layout. A training run's work dir stands for its last checkpoint.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise CheckpointError(f"unknown format {fmt!r}; expected 'auto' or one of {FORMATS}")
    if Path(path).is_dir():
        path = hf_model_file(path) or last_run_checkpoint(path)
    obj, file_meta = load_file_safely(path, allow_pickle)
    try:
        fmt = detect_format(obj, file_meta) if fmt == "auto" else fmt
        if fmt in TOWER_FORMATS:
            state, notes = read_tower(obj, fmt)
        else:
            state, notes = read_family(obj, fmt) if fmt in FAMILY_FORMATS else (_unwrap(obj, fmt), [])
        hf_config, more = hf_meta(path, state) if fmt in HF_FORMATS else ({}, [])  # heads, eps: its config.json
        notes = notes + more
    except FamilyError as err:
        hint = wrong_family_hint(detect_tower(obj)) if fmt in FAMILY_FORMATS and isinstance(obj, dict) else ""
        raise CheckpointError(f"{path}: {err}{hint}") from None
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    while state and all(k.startswith("module.") for k in state):
        state = strip_prefix(state, "module.")
    run_meta = _run_meta(obj) if fmt == "state_dict" else {}
    encoder_prefix = {"mocov3": "base_encoder.", "detectron2": "backbone.net."}
    default_prefix = encoder_prefix.get(fmt, run_meta.get("model_prefix", ""))
    prefix = default_prefix if prefix is None else prefix
    state = {k: v for k, v in strip_prefix(state, prefix).items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path}: no tensors found under prefix {prefix!r} (format {fmt!r})")
    meta = json.loads(file_meta.get("meta", "{}")) if fmt == "ours" else (run_meta or hf_config)
    return Checkpoint(str(path), fmt, state, meta, notes)


def split_pretraining_keys(
    state: dict[str, torch.Tensor], drop_decoder: bool = True, drop_head: bool = True
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove decoder / mask-token keys and classification-head keys on request; returns (kept, dropped)."""
    prefixes = (DECODER_KEYS if drop_decoder else ()) + (HEAD_KEYS if drop_head else ())
    dropped = [k for k in state if k.split(".")[0].startswith(prefixes)]
    return {k: v for k, v in state.items() if k not in dropped}, dropped


def load_state_exactly(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike,
                       hint: str = "") -> None:
    """Load `state` (read from `source`) into `model`; every key must fit by name and shape, or the error names the
    keys that do not (`hint`, if given, ends the message: what to load instead)."""
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in state.items()
              if k in target and v.shape != target[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{source}: not a model of this config: {len(missing)} keys missing ({', '.join(missing[:5]) or '-'}), "
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:5]) or '-'}), {len(shapes)} of another shape "
            f"(checkpoint vs model: {', '.join(shapes[:5]) or '-'})" + (f"; {hint}" if hint else ""))
    model.load_state_dict(state)


def load_trained_model(model: torch.nn.Module, path: str | Path, trained_by: str, allow_pickle: bool = False) -> None:
    """Load a whole model written by the command `trained_by` (a run checkpoint or its state dict) for evaluation;
    every key must fit."""
    state = read_checkpoint(path, prefix="", allow_pickle=allow_pickle).state
    load_state_exactly(model, state, path, f"evaluate a checkpoint written by {trained_by}")
