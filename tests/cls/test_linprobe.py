"""Linear probe (MAE protocol): the encoder stays exactly as loaded; only BN (no affine) + linear learn."""
import json

import torch

from backbone import build_vit, export_checkpoint
from benchmarks.synthetic import synthesize
from cls.finetune import CONFIGS_DIR
from cls.linprobe import build_linprobe_runner
from engine import load_config


def test_linprobe_trains_only_the_head_and_keeps_the_encoder(tmp_path):
    synthesize(tmp_path / "data", num_images=80, size=64, seed=0)
    torch.manual_seed(0)
    encoder = build_vit("tiny", img_size=64, depth=4)
    export_checkpoint(encoder, tmp_path / "encoder.safetensors")
    cfg = load_config("linprobe_tiny_synth", {
        "ckpt": str(tmp_path / "encoder.safetensors"), "data.root": str(tmp_path / "data"),
        "work_dir": str(tmp_path / "run"), "model.img_size": 64, "batch_size": 16, "effective_batch": 32,
        "schedule.epochs": 2}, configs_dir=CONFIGS_DIR)
    runner = build_linprobe_runner(cfg)
    probe = runner.model.net
    head = probe.head
    assert isinstance(head[0], torch.nn.BatchNorm1d) and not head[0].affine
    trainable = {name for name, p in probe.named_parameters() if p.requires_grad}
    assert trainable == {"head.1.weight", "head.1.bias"}
    before = {k: v.clone() for k, v in probe.state_dict().items()}
    runner.model.train()
    assert not probe.blocks.training and head.training
    runner.train()
    after = probe.state_dict()
    for key, value in before.items():
        changed = not torch.equal(value, after[key])
        assert changed == key.startswith("head."), key  # BN statistics and the linear layer move, nothing else
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
