"""Position probe (paper Tab. 7): frozen backbone, dropped fraction, deterministic evaluation, learns."""
import json
import math

import pytest
import torch

from backbone import build_vit, export_checkpoint
from benchmarks.cli import main
from benchmarks.synthetic import synthesize
from cls.finetune import CONFIGS_DIR
from cls.position_probe import PositionProbe, build_posprobe_runner
from engine import load_config


def probe(drop_ratio=0.75, class_token=True):
    torch.manual_seed(0)
    encoder = build_vit("tiny", img_size=64, depth=2, class_token=class_token,
                        global_pool="token" if class_token else "avg")
    return PositionProbe(encoder, drop_ratio, seed=0)


def test_drops_the_configured_fraction_and_only_trains_token_and_head():
    model = probe()
    logits, dropped = model.logits(torch.randn(5, 3, 64, 64), None)
    assert logits.shape == (5, 16, 16) and (dropped.sum(1) == 12).all()  # 75% of 16 patches
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {
        "mask_pos_token", "head.weight", "head.bias"}
    model.train()
    assert model.training and not model.net.training  # no drop path in the frozen encoder
    out = model(torch.randn(4, 3, 64, 64), mode="loss")
    out["loss"].backward()
    assert model.mask_pos_token.grad.abs().sum() > 0  # reaches the token through the frozen encoder


@pytest.mark.parametrize("class_token", [True, False])
def test_dropped_patches_carry_the_mask_token_and_the_rest_their_own_position(class_token):
    model = probe(0.5, class_token)
    prefix = int(class_token)
    seen = {}

    def capture(x):
        seen["x"] = x
        return torch.zeros(x.shape[0], prefix + x.shape[1], x.shape[2])

    model.net.encode_patches = capture
    images = torch.randn(2, 3, 64, 64)
    logits, dropped = model.logits(images, torch.Generator().manual_seed(1))
    patches = model.net.patch_embed(images).flatten(1, 2)
    expected = torch.where(dropped.unsqueeze(-1), model.mask_pos_token, model.net.pos_embed[:, prefix:])
    torch.testing.assert_close(seen["x"], patches + expected)
    assert logits.shape == (2, 16, 16)


def test_evaluation_scores_the_dropped_patches_as_boolean_indexing_would():
    model = probe().eval()
    images = torch.randn(3, 3, 64, 64)
    logits, dropped = model.logits(images, torch.Generator().manual_seed(5))
    model.val_generator = torch.Generator().manual_seed(5)
    [out] = model(images, mode="predict")
    targets = torch.arange(16).expand(3, -1)
    assert torch.equal(out["logits"], logits[dropped]) and torch.equal(out["labels"], targets[dropped])


def test_probe_learns_positions_above_chance(tmp_path):
    synthesize(tmp_path / "data", num_images=160, size=64, seed=0)
    torch.manual_seed(0)
    export_checkpoint(build_vit("tiny", img_size=64, depth=4), tmp_path / "encoder.safetensors")
    args = [f"ckpt={tmp_path / 'encoder.safetensors'}", f"data.root={tmp_path / 'data'}",
            f"work_dir={tmp_path / 'run'}", "batch_size=32", "effective_batch=32", "schedule.epochs=8"]
    assert main(["cls", "posprobe", "posprobe_tiny_synth", *args]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    chance = 100 / 16
    assert metrics["best"]["top1"] > 2 * chance, (
        f"probe top-1 {metrics['best']['top1']:.1f}% (chance {chance}%); this random-init ViT-Tiny reached 18.5% "
        "when the test was written (the rows are visible in the scenes: sky above, ground below)")


def test_probes_a_fine_tuned_checkpoint(tmp_path, data):
    """The classifier's head is dropped; the probed encoder, its fc_norm included, is the fine-tuned one."""
    finetuned = tmp_path / "finetune"
    args = [f"data.root={data}", f"work_dir={finetuned}", "model.img_size=64", "batch_size=32", "effective_batch=32",
            "schedule.epochs=1", "schedule.warmup_epochs=0"]
    assert main(["cls", "finetune", "finetune_tiny_synth", *args]) == 0
    ckpt = finetuned / "epoch_1.pth"
    cfg = load_config("posprobe_tiny_synth", {
        "ckpt": str(ckpt), "data.root": str(data), "work_dir": str(tmp_path / "probe"), "batch_size": 32,
        "effective_batch": 32, "schedule.epochs": 1, "schedule.warmup_epochs": 0}, configs_dir=CONFIGS_DIR)
    runner = build_posprobe_runner(cfg)
    net = runner.model.net
    assert isinstance(net.head, torch.nn.Identity)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert "net.head.weight" in state and torch.equal(net.fc_norm.weight, state["net.fc_norm.weight"])
    assert torch.equal(net.blocks[3].mlp.fc2.weight, state["net.blocks.3.mlp.fc2.weight"])
    runner.train()
    metrics = json.loads((tmp_path / "probe" / "metrics.json").read_text())["last"]
    assert math.isfinite(metrics["top1"]) and 0 <= metrics["top1"] <= 100
