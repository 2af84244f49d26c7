"""Linear probe (MAE protocol): the encoder stays exactly as loaded; only BN (no affine) + linear learn."""
import json
import math
import shutil

import pytest
import torch
from mmengine.hooks import Hook

from backbone import build_vit, export_checkpoint
from benchmarks.synthetic import synthesize
from cls.finetune import CONFIGS_DIR
from cls.linprobe import build_linprobe_runner, probe_head, probe_optimizer
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


def mae_lars(weight, grads, lr, weight_decay=0.0, momentum=0.9, trust=1e-3):
    """MAE's LARS on a weight matrix, written out: update = grad + wd w, scaled by trust ||w|| / ||update|| (1 when
    either norm is 0), into a momentum buffer that starts at zero."""
    buffer = torch.zeros_like(weight)
    for grad in grads:
        update = grad + weight_decay * weight
        w_norm, u_norm = weight.norm(), update.norm()
        ratio = trust * w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        buffer = momentum * buffer + ratio * update
        weight = weight - lr * buffer
    return weight


def lars_steps(weight_decay, grads, lr=6.4):
    """(initial weight, initial bias), linear layer after LARS steps with `grads` on a probe head."""
    torch.manual_seed(0)
    head = probe_head(16, 4)
    start = head[1].weight.detach().clone(), head[1].bias.detach().clone()
    optimizer = probe_optimizer({"type": "lars", "weight_decay": weight_decay}, head, lr)
    for grad_w, grad_b in grads:
        head[1].weight.grad, head[1].bias.grad = grad_w.clone(), grad_b.clone()
        optimizer.step()
    return start, head[1]


def test_lars_steps_the_weight_as_mae_and_the_bias_as_sgd():
    torch.manual_seed(1)
    grads = [(torch.randn(4, 16), torch.randn(4)) for _ in range(2)]
    (weight, bias), linear = lars_steps(0.0, grads)  # the recipe's weight decay
    torch.testing.assert_close(linear.weight.detach(), mae_lars(weight, [grad for grad, _ in grads], lr=6.4))
    sgd = weight - 6.4 * (1.9 * grads[0][0] + grads[1][0])  # two momentum-0.9 steps
    assert not torch.allclose(linear.weight, sgd, atol=0.1)
    sgd_bias = bias - 6.4 * (1.9 * grads[0][1] + grads[1][1])
    torch.testing.assert_close(linear.bias.detach(), sgd_bias)  # biases: no trust ratio
    _, decayed = lars_steps(0.05, grads)
    torch.testing.assert_close(decayed.bias.detach(), sgd_bias)  # and no weight decay


class FirstStep(Hook):
    """Records the probe's linear weight before training and after the first iteration."""

    def before_train(self, runner):
        self.before = runner.model.net.head[1].weight.detach().clone()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter == 0:
            self.after = runner.model.net.head[1].weight.detach().clone()


def test_lars_config_runs_maes_lars(tmp_path, data):
    """Through the config: the first LARS step moves the weight by lr x 0.001 x its norm, whatever the gradient."""
    cfg = load_config("linprobe_tiny_synth", {
        "data.root": str(data), "work_dir": str(tmp_path / "run"), "model.img_size": 64, "batch_size": 32,
        "effective_batch": 32, "schedule.epochs": 1, "schedule.warmup_epochs": 0, "optim.type": "lars"},
        configs_dir=CONFIGS_DIR)
    runner = build_linprobe_runner(cfg)
    weights, biases = runner.optim_wrapper.optimizer.param_groups
    assert weights["always_adapt"] and weights["params"] == [runner.model.net.head[1].weight]
    assert not biases["always_adapt"] and biases["weight_decay"] == 0.0
    step = FirstStep()
    runner.register_hook(step)
    runner.train()
    lr = cfg.optim.base_lr * 32 / 256
    torch.testing.assert_close((step.after - step.before).norm(), lr * 1e-3 * step.before.norm())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["last"]
    assert math.isfinite(metrics["top1"]) and math.isfinite(metrics["top5"])


def test_train_and_val_must_have_the_same_classes(tmp_path, data):
    copy = tmp_path / "data"
    shutil.copytree(data / "imagenet", copy)
    (copy / "val" / "star").rename(copy / "val" / "stars")
    cfg = load_config("linprobe_tiny_synth", {"data.root": str(copy), "work_dir": str(tmp_path / "run"),
                                              "model.img_size": 64}, configs_dir=CONFIGS_DIR)
    with pytest.raises(ValueError, match=r"train and val have different class folders: star, stars \(2 in only"):
        build_linprobe_runner(cfg)
