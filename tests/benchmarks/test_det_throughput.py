"""The detection benchmark runs its real pipelines end to end on a tiny model."""
import sys

from benchmarks import det_throughput


def test_prints_train_inference_and_paste_rates(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["det_throughput", "--size", "tiny", "--depth", "1", "--img-size", "128",
                                      "--scene-size", "96", "--steps", "1", "--rounds", "1", "--device", "cpu"])
    det_throughput.main()
    out = capsys.readouterr().out
    assert "batch 2: train" in out and "x ViTDet's 3.2 images/s per A100" in out and "inference" in out
    paste = next(line for line in out.splitlines() if line.startswith("mask pasting"))
    assert paste.endswith("x") and "torchvision" in paste
