"""mmsegmentation loads on mmcv-lite through our stand-in for mmcv's compiled ops, which fails loudly if used."""
import subprocess
import sys

import pytest
import torch

import seg  # noqa: F401  (installs the stand-in before anything imports mmcv.ops)
from seg.mmcv_ops import MissingCompiledOp


def test_mmseg_models_datasets_and_metrics_import_in_a_fresh_interpreter():
    code = ("import seg, mmseg.models, mmseg.datasets, mmseg.evaluation; "
            "from mmseg.models.decode_heads import UPerHead, FCNHead; "
            "from mmseg.evaluation import IoUMetric; import mmcv.ops; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_without_the_stand_in_mmseg_cannot_load_on_mmcv_lite():
    result = subprocess.run([sys.executable, "-c", "import mmseg.models"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0 and "mmcv._ext" in result.stderr  # what the stand-in is for


def test_a_compiled_op_raises_a_clear_error():
    from mmcv.ops import nms

    with pytest.raises(MissingCompiledOp, match="compiled op 'nms'"):
        nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
