"""Fine-tuning on the mmengine Runner: metric, checkpoint policy, evaluation files, exact resume."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from mmengine.hooks import EMAHook, Hook

from backbone import CheckpointError, build_vit, export_checkpoint
from benchmarks.cli import main
from cls.finetune import CONFIGS_DIR, build_classifier, build_finetune_runner
from cls.metric import TopKAccuracy
from engine import load_config

RUN = {"model.img_size": 64, "schedule.epochs": 3, "batch_size": 16, "effective_batch": 32, "log_interval": 1}


def test_topk_accuracy_equals_direct_count():
    torch.manual_seed(0)
    logits, labels = torch.randn(10, 6), torch.randint(0, 6, (10,))
    metric = TopKAccuracy((1, 5))
    metric.process(None, [{"logits": logits[:4], "labels": labels[:4]}])
    metric.process(None, [{"logits": logits[4:], "labels": labels[4:]}])
    result = metric.evaluate(10)
    ranks = (logits > logits.gather(1, labels[:, None])).sum(1)  # how many classes score above the true one
    assert result["top1"] == pytest.approx(100 * (ranks < 1).float().mean().item())
    assert result["top5"] == pytest.approx(100 * (ranks < 5).float().mean().item())
    few = TopKAccuracy((1, 5))
    few.process(None, [{"logits": torch.randn(3, 2), "labels": torch.tensor([0, 1, 1])}])
    assert few.evaluate(3)["top5"] == 100.0  # fewer classes than k: every label is within the top 2


def cfg_for(data, work_dir, **extra):
    overrides = {"data.root": str(data), "work_dir": str(work_dir), **RUN, **extra}
    return load_config("finetune_tiny_synth", overrides, configs_dir=CONFIGS_DIR)


def test_only_head_and_fc_norm_may_be_missing(tmp_path, data):
    encoder = build_vit("tiny", img_size=64, depth=4)
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("blocks.3.mlp")}
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"keys missing from the checkpoint: blocks\.3\.mlp"):
        build_classifier(cfg_for(data, tmp_path, ckpt=str(tmp_path / "partial.pth")), num_classes=8)
    export_checkpoint(build_vit("small", img_size=64, depth=4), tmp_path / "small.safetensors")
    wider = r"(?s)small\.safetensors: .*width 384 \(small\) vs model width 192 \(tiny\)"
    with pytest.raises(CheckpointError, match=wider):
        build_classifier(cfg_for(data, tmp_path, ckpt=str(tmp_path / "small.safetensors")), num_classes=8)


def test_loads_encoder_with_fresh_small_head(tmp_path, data):
    torch.manual_seed(1)
    encoder = build_vit("tiny", img_size=64, depth=4)
    path = export_checkpoint(encoder, tmp_path / "enc.safetensors")
    net = build_classifier(cfg_for(data, tmp_path, ckpt=str(path)), num_classes=8)
    torch.testing.assert_close(net.blocks[2].attn.qkv.weight, encoder.blocks[2].attn.qkv.weight)
    assert net.head.weight.std() < 1e-4 and net.pos_embed.requires_grad  # MAE head init; pos embed trainable
    frozen = build_classifier(cfg_for(data, tmp_path, ckpt=str(path), **{"model.pos_embed_trainable": False}), 8)
    assert not frozen.pos_embed.requires_grad


def test_finetune_eval_and_exact_resume(tmp_path, data, capsys, stop_after):
    full = tmp_path / "full"
    args = [f"{k}={v}" for k, v in {"data.root": data, "work_dir": full, **RUN}.items()]
    assert main(["cls", "finetune", "finetune_tiny_synth", *args]) == 0
    metrics = json.loads((full / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3]
    assert {"top1", "top5"} <= set(metrics["last"]) and metrics["best"]["top1"] == max(
        row["top1"] for row in metrics["history"])
    assert len(list(full.glob("best_top1_epoch_*.pth"))) == 1

    evaluated = tmp_path / "eval"
    eval_args = [f"data.root={data}", f"work_dir={evaluated}", "model.img_size=64", "batch_size=16"]
    assert main(["cls", "eval", "finetune_tiny_synth", f"ckpt={full / 'epoch_3.pth'}", *eval_args]) == 0
    result = json.loads((evaluated / "metrics.json").read_text())
    assert (result["top1"], result["top5"]) == (metrics["last"]["top1"], metrics["last"]["top5"])
    encoder_only = tmp_path / "encoder.safetensors"
    export_checkpoint(build_vit("tiny", img_size=64, depth=4), encoder_only)
    capsys.readouterr()
    assert main(["cls", "eval", "finetune_tiny_synth", f"ckpt={encoder_only}", *eval_args]) == 2
    assert "keys missing from the checkpoint" in capsys.readouterr().err  # no head: not a fine-tuned model

    runner = build_finetune_runner(cfg_for(data, tmp_path / "split"))
    runner.register_hook(stop_after(epoch=2))
    with pytest.raises(InterruptedError):
        runner.train()
    resumed = build_finetune_runner(cfg_for(data, tmp_path / "split", resume=True))
    resumed.train()
    ours = torch.load(tmp_path / "split" / "epoch_3.pth", weights_only=True)["state_dict"]
    reference = torch.load(full / "epoch_3.pth", weights_only=True)["state_dict"]
    for key, value in reference.items():
        assert torch.equal(ours[key], value), key
    split = json.loads((tmp_path / "split" / "metrics.json").read_text())
    assert [row["epoch"] for row in split["history"]] == [1, 3]  # interrupted before epoch 2's evaluation
    assert split["history"][0] == metrics["history"][0] and split["last"] == metrics["last"]


def test_ema_is_evaluated_checkpointed_and_resumed_exactly(tmp_path, data, stop_after):
    ema = {"ema.enabled": True, "ema.decay": 0.9, "schedule.epochs": 2}
    full = build_finetune_runner(cfg_for(data, tmp_path / "full", **ema))
    full.train()
    checkpoint = torch.load(tmp_path / "full" / "epoch_2.pth", weights_only=True)
    averaged, raw = checkpoint["state_dict"], checkpoint["ema_state_dict"]
    key = "net.blocks.0.attn.qkv.weight"
    assert not torch.equal(averaged[key], raw["module." + key])  # deployed weights are the average

    evaluated = tmp_path / "eval"
    args = [f"data.root={data}", f"work_dir={evaluated}", "model.img_size=64", "batch_size=16"]
    assert main(["cls", "eval", "finetune_tiny_synth", f"ckpt={tmp_path / 'full' / 'epoch_2.pth'}", *args]) == 0
    last = json.loads((tmp_path / "full" / "metrics.json").read_text())["last"]
    assert json.loads((evaluated / "metrics.json").read_text())["top1"] == last["top1"]  # val scored the average

    split = build_finetune_runner(cfg_for(data, tmp_path / "split", **ema))
    split.register_hook(stop_after(epoch=1))
    with pytest.raises(InterruptedError):
        split.train()
    build_finetune_runner(cfg_for(data, tmp_path / "split", resume=True, **ema)).train()
    resumed = torch.load(tmp_path / "split" / "epoch_2.pth", weights_only=True)
    for name in ("state_dict", "ema_state_dict"):
        for key, value in checkpoint[name].items():
            assert torch.equal(resumed[name][key], value), (name, key)


class Snapshots(Hook):
    """A copy of one parameter after every optimizer step (loop iteration)."""

    def __init__(self, name):
        self.name, self.values = name, []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.values.append(runner.model.get_parameter(self.name).detach().clone())


def test_ema_updates_once_per_optimizer_step(tmp_path, data):
    """With 2 accumulated batches per step, 4 batches make 2 optimizer steps: the average is of those 2 weights, not
    of 4 updates (which would make the decay per step depend on the number of GPUs)."""
    ema = {"ema.enabled": True, "ema.decay": 0.9, "schedule.epochs": 1, "schedule.warmup_epochs": 0}
    runner = build_finetune_runner(cfg_for(data, tmp_path, **ema))  # batch 16, effective batch 32
    name = "net.blocks.0.attn.qkv.weight"
    snapshots = Snapshots(name)
    runner.register_hook(snapshots)
    runner.train()
    after_step_1, after_step_2 = snapshots.values
    [hook] = [hook for hook in runner.hooks if isinstance(hook, EMAHook)]
    assert hook.ema_model.steps == 2
    assert torch.equal(hook.ema_model.module.get_parameter(name), after_step_1.lerp(after_step_2, 0.1))


def test_unreadable_training_image_is_named_or_skipped_and_counted(tmp_path, data, capsys):
    copy = tmp_path / "data"
    shutil.copytree(data / "imagenet", copy)
    broken = sorted((copy / "train").rglob("*.JPEG"))[5]
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    args = [f"data.root={copy}", "model.img_size=64", "batch_size=16", "effective_batch=16", "schedule.epochs=1",
            "schedule.warmup_epochs=0"]
    assert main(["cls", "finetune", "finetune_tiny_synth", f"work_dir={tmp_path / 'stop'}", *args]) == 2
    assert f"{broken}: unreadable image" in capsys.readouterr().err
    skip = tmp_path / "skip"
    assert main(["cls", "finetune", "finetune_tiny_synth", f"work_dir={skip}", "data.skip_invalid=True",
                 *args]) == 0
    log = next(skip.glob("*/*.log")).read_text()
    assert f"{broken}: unreadable image skipped" in log
    assert "1 invalid items (images or annotations) skipped so far" in log


def test_runners_built_in_the_same_second_log_to_their_own_folders(tmp_path, data, monkeypatch):
    monkeypatch.setattr("mmengine.runner.runner.time.strftime", lambda fmt, t=None: "20261123_120000")
    first = build_finetune_runner(cfg_for(data, tmp_path / "first"))
    second = build_finetune_runner(cfg_for(data, tmp_path / "second"))  # same timestamp as the first
    assert first.logger is not second.logger and first.message_hub is not second.message_hub
    assert first.visualizer is not second.visualizer
    for runner in (first, second):
        assert list(Path(runner.log_dir).glob("*.log")), f"no log file in {runner.log_dir}"
