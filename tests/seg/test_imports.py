"""mmsegmentation loads on mmcv-lite through our stand-in for mmcv's compiled ops, which fails loudly if used; an
mmcv or mmseg for which the stand-in no longer suffices fails here saying so."""
import subprocess
import sys

import pytest
import torch

import seg  # installs the stand-in before anything imports mmcv.ops
from seg.mmcv_ops import MissingCompiledOp


def python(code: str) -> subprocess.CompletedProcess:
    """`code` run in a fresh interpreter, where nothing has imported mmcv or mmseg yet."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_mmseg_models_datasets_and_metrics_import_in_a_fresh_interpreter():
    result = python("import seg, mmseg.models, mmseg.datasets, mmseg.evaluation; "
                    "from mmseg.models.decode_heads import UPerHead, FCNHead; "
                    "from mmseg.evaluation import IoUMetric; import mmcv.ops; print('ok')")
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (
        f"mmseg no longer imports on mmcv-lite with seg.mmcv_ops's stand-in:\n{result.stderr[-2000:]}")


def test_without_the_stand_in_mmseg_cannot_load_on_mmcv_lite():
    result = python("import mmseg.models")
    assert result.returncode != 0 and "mmcv._ext" in result.stderr, (
        "mmseg.models now imports on mmcv-lite without seg.mmcv_ops's stand-in for mmcv._ext: the stand-in and "
        f"seg.load_mmseg may go\n{result.stderr[-2000:]}")


def test_loading_mmseg_again_is_a_no_op():
    stand_in = sys.modules["mmcv._ext"]
    seg.load_mmseg()
    assert sys.modules["mmcv._ext"] is stand_in and type(stand_in).__module__ == "seg.mmcv_ops"


def test_a_stand_in_that_no_longer_suffices_fails_naming_the_versions():
    """An unimportable mmcv.ops plays an mmcv or mmseg that needs a compiled piece the stand-in does not cover."""
    result = python("import sys; sys.modules['mmcv.ops'] = None; import seg")
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError: mmsegmentation 1.2.2 does not import on mmcv 2.1.0"), last_line
    assert "stand-in no longer suffices" in last_line and "mmcv.ops" in last_line


def test_a_compiled_op_raises_a_clear_error():
    from mmcv.ops import nms

    with pytest.raises(MissingCompiledOp, match="compiled op 'nms'"):
        nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
