"""The segmentation benchmark runs its real pipeline and mmseg's sliding window end to end on a tiny model."""
import sys

from benchmarks import seg_throughput


def test_prints_train_and_sliding_window_rates(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["seg_throughput", "--size", "tiny", "--depth", "2", "--img-size", "64",
                                      "--test-size", "64", "100", "--batch", "2", "--steps", "1", "--rounds", "1",
                                      "--device", "cpu"])
    seg_throughput.main()
    out = capsys.readouterr().out
    train = next(line for line in out.splitlines() if "batch 2: train" in line)
    assert "it/s" in train and "images/s" in train
    assert "64 x 100 images" in out and "x mmseg's 140 ms/image" in out
