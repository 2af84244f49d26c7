"""The detection benchmark runs its real pipelines end to end on a tiny model."""
import re
import sys
from functools import partial

import pytest

from benchmarks import det_throughput
from det.model import build_mask_rcnn


def test_prints_train_inference_and_paste_rates(monkeypatch, capsys):
    narrow = partial(build_mask_rcnn, out_channels=32, head_channels=32, fc_channels=64, roi_batch_size=32)
    monkeypatch.setattr(det_throughput, "build_mask_rcnn", narrow)  # the real heads take a minute per CPU step
    monkeypatch.setattr(sys, "argv", ["det_throughput", "--size", "tiny", "--depth", "1", "--img-size", "128",
                                      "--scene-size", "96", "--steps", "1", "--rounds", "1", "--device", "cpu"])
    det_throughput.main()
    out = capsys.readouterr().out
    train, iterations, versus_vitdet, infer = map(float, re.search(
        r"batch 2: train ([\d.]+) images/s \(([\d.]+) it/s\), = ([\d.]+) x ViTDet's 3.2 images/s per A100; "
        r"inference ([\d.]+) images/s", out).groups())
    assert train > 0 and infer > 0  # both pipelines ran; every other figure is computed from the measured rate
    assert iterations == pytest.approx(train / 2, abs=0.006) and versus_vitdet == pytest.approx(
        train / det_throughput.VITDET_IMAGES_PER_SECOND, abs=0.006)
    ours, theirs, ratio = map(float, re.search(
        r"mask pasting .*: ours ([\d.]+) images/s, torchvision ([\d.]+) images/s, ratio ([\d.]+)x", out).groups())
    assert ours > 0 and theirs > 0 and ratio == pytest.approx(ours / theirs, rel=0.02, abs=0.06)
