"""Semantic segmentation: UperNet on ADE20K through mmsegmentation with our ViT.

mmseg imports mmcv's compiled ops (`mmcv._ext`) when it loads, and mmcv-lite has none: importing seg puts
seg.mmcv_ops's stand-in in first and loads mmseg's models, once, here.
"""
import importlib
import importlib.metadata

from .mmcv_ops import install as install_mmcv_ops_stand_in


def load_mmseg() -> None:
    """Import mmseg's models with the stand-in for `mmcv._ext` in place (nothing to stand in for with a compiled mmcv;
    repeating is a no-op); if they still fail, this mmcv / mmseg pair needs more than the stand-in, and the error
    says so instead of naming some module deep inside mmcv."""
    if not install_mmcv_ops_stand_in():
        return
    try:
        importlib.import_module("mmseg.models")
    except ImportError as error:
        if error.name == "mmseg":
            raise
        import mmcv

        raise ImportError(
            f"mmsegmentation {importlib.metadata.version('mmsegmentation')} does not import on mmcv "
            f"{mmcv.__version__} even with seg.mmcv_ops's stand-in for the compiled mmcv._ext ({error}): the stand-in "
            "no longer suffices for this mmcv / mmseg pair; install the versions pinned in pyproject.toml or extend "
            "seg/mmcv_ops.py") from error


load_mmseg()
