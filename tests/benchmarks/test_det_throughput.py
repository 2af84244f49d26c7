"""The detection benchmark runs its real pipelines end to end on a tiny model."""
import sys
from functools import partial

from benchmarks import det_throughput
from det.model import build_mask_rcnn


def test_prints_train_inference_and_paste_rates(monkeypatch, capsys):
    narrow = partial(build_mask_rcnn, out_channels=32, head_channels=32, fc_channels=64, roi_batch_size=32)
    monkeypatch.setattr(det_throughput, "build_mask_rcnn", narrow)  # the real heads take a minute per CPU step
    monkeypatch.setattr(sys, "argv", ["det_throughput", "--size", "tiny", "--depth", "1", "--img-size", "128",
                                      "--scene-size", "96", "--steps", "1", "--rounds", "1", "--device", "cpu"])
    det_throughput.main()
    out = capsys.readouterr().out
    assert "batch 2: train" in out and "x ViTDet's 3.2 images/s per A100" in out and "inference" in out
    paste = next(line for line in out.splitlines() if line.startswith("mask pasting"))
    assert paste.endswith("x") and "torchvision" in paste
