"""A stand-in for mmcv's compiled ops, so mmsegmentation runs on mmcv-lite.

mmcv-lite is mmcv without its compiled extension `mmcv._ext`; the full mmcv exists only as a source package
whose build takes about 40 minutes. mmseg imports mmcv.ops (and so `mmcv._ext`) when it loads, although
nothing in UperNet, its data pipeline or IoUMetric calls a compiled op. `install()` registers a module that
answers every op name with a function raising a clear error, unless a real `mmcv._ext` is installed.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

MODULE = "mmcv._ext"


class MissingCompiledOp(RuntimeError):
    """A compiled mmcv op was called, but only mmcv-lite (no compiled ops) is installed."""


class _StandInOps(types.ModuleType):
    """Every attribute is an op that raises MissingCompiledOp naming itself."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise MissingCompiledOp(f"mmcv's compiled op {name!r} was called, but mmcv-lite has no compiled ops; "
                                    "the configs shipped here never need one. For models that do, install the full "
                                    "mmcv built for this torch (pip install mmcv, a source build).")

        missing.__name__ = name
        return missing


def install() -> bool:
    """Register the stand-in as `mmcv._ext` unless a compiled one exists; True when the stand-in is in place."""
    existing = sys.modules.get(MODULE)
    if existing is not None:
        return isinstance(existing, _StandInOps)
    if importlib.util.find_spec("mmcv") is None:
        raise ModuleNotFoundError("mmcv (mmcv-lite) is not installed; the seg task needs it: pip install mmcv-lite")
    if importlib.util.find_spec(MODULE) is not None:
        return False
    module = _StandInOps(MODULE, "stand-in for mmcv's compiled ops (droppos-bench seg.mmcv_ops)")
    module.__spec__ = importlib.machinery.ModuleSpec(MODULE, loader=None)
    sys.modules[MODULE] = module
    return True
