"""The segmentation benchmark runs its real pipeline and mmseg's sliding window end to end on a tiny model, and
by default times the model of the mmseg figures it prints beside its own."""
import re
import sys

import pytest
import torch

from benchmarks import seg_throughput


def test_prints_train_and_sliding_window_rates(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["seg_throughput", "--size", "tiny", "--depth", "2", "--img-size", "64",
                                      "--test-size", "64", "100", "--batch", "2", "--steps", "1", "--rounds", "1",
                                      "--device", "cpu"])
    seg_throughput.main()
    out = capsys.readouterr().out
    iterations, images = map(float, re.search(r"batch 2: train ([\d.]+) it/s \(([\d.]+) images/s", out).groups())
    assert images > 0 and iterations == pytest.approx(images / 2, abs=0.006)  # both from one measured rate
    rate, ms, ratio = map(float, re.search(r"64 x 100 images: ([\d.]+) images/s \((\d+) ms/image\) = ([\d.]+) x "
                                           r"mmseg's 140 ms/image", out).groups())
    assert ms == pytest.approx(1000 / rate, rel=0.01, abs=1) and ratio == pytest.approx(rate * 0.140, abs=0.01)
    assert "upernet_vit_base_160k_mae's model (stride 43)" in out  # 341 of 512, at 64 px


def test_the_default_model_is_mmseg_mae_recipes_and_plain_opts_out():
    """mmseg's 140 ms/image and 9.96 GB are for MAE UperNet: BEiT relative position tables and layer scale in every
    block, stride 341 of 512; --plain is the paper's 80k model (neither, stride 256)."""
    cpu = torch.device("cpu")
    mae = seg_throughput.build_model("tiny", 512, 2, False, cpu)
    plain = seg_throughput.build_model("tiny", 512, 2, False, cpu, plain=True)
    for block in mae.backbone.net.blocks:
        assert block.attn.relative_position_bias_table is not None
        assert torch.equal(block.ls1.gamma, torch.ones(192)) and torch.equal(block.ls2.gamma, torch.ones(192))
    assert mae.test_cfg.stride == (341, 341) and mae.test_cfg.crop_size == (512, 512)
    assert all(block.attn.relative_position_bias_table is None for block in plain.backbone.net.blocks)
    assert not any("gamma" in name for name, _ in plain.named_parameters())
    assert plain.test_cfg.stride == (256, 256)
