"""Semantic segmentation: UperNet on ADE20K through mmsegmentation with our ViT.

mmseg needs mmcv's compiled ops at import time; the stand-in goes in first (see seg.mmcv_ops).
"""
from .mmcv_ops import install as _install_mmcv_ops

_install_mmcv_ops()
