"""`seg train` / `seg eval` on synthetic ADE20K-layout scenes: learning, exact resume, evaluation, bf16, the
optimizer groups, pre-trained weights and the shipped configs."""
import json
from pathlib import Path

import pytest
import torch
from mmengine.dataset import pseudo_collate
from torch.utils.data import DataLoader

from backbone import VisionTransformer, export_checkpoint, load_model
from backbone.pos_embed import resample_pos_embed
from benchmarks.cli import main
from benchmarks.synthetic import SEMANTIC_CLASSES, synthesize
from engine import load_config
from seg.data import build_seg_dataset
from seg.evaluate import evaluate_segmentor
from seg.metric import SegMetric
from seg.train import CONFIGS_DIR, build_seg_runner, build_segmentor

STEPS = 100  # enough for sky and ground: mIoU 3.3 -> 15.8
SHORT = {"schedule.iterations": 4, "schedule.warmup_iters": 2, "checkpoint.interval": 2, "batch_size": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, num_images=40, size=128, seed=0)
    return root / "ade" / "ADEChallengeData2016"


def overrides(data, work_dir, **extra):
    return {"data.root": str(data), "work_dir": str(work_dir), **extra}


def config(data, work_dir, **extra):
    return load_config("upernet_tiny_synth", overrides(data, work_dir, **extra), configs_dir=CONFIGS_DIR)


def args(values):
    return [f"{key}={value}" for key, value in values.items()]


def untrained_metrics(cfg):
    val = build_seg_dataset(cfg.data, "val")
    model = build_segmentor(cfg, len(val.metainfo["classes"]))
    return evaluate_segmentor(model, DataLoader(val, batch_size=1, collate_fn=pseudo_collate), SegMetric())


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("trained")
    assert main(["seg", "train", "upernet_tiny_synth",
                 *args(overrides(data, work_dir, **{"schedule.iterations": STEPS}))]) == 0
    return work_dir


def test_training_beats_the_untrained_model_and_seg_eval_reproduces_it(data, trained, tmp_path):
    before = untrained_metrics(config(data, tmp_path))
    after = json.loads((trained / "metrics.json").read_text())["last"]
    message = (f"mIoU {before['mIoU']:.2f} -> {after['mIoU']:.2f}, aAcc {before['aAcc']:.2f} -> {after['aAcc']:.2f} "
               f"after {STEPS} steps")
    print(message)
    assert after["iteration"] == STEPS
    assert after["mIoU"] > before["mIoU"] + 5 and after["aAcc"] > before["aAcc"] + 20, message
    assert after["IoU.sky"] > 50, message

    assert main(["seg", "eval", "upernet_tiny_synth",
                 *args(overrides(data, tmp_path, ckpt=trained / f"iter_{STEPS}.pth"))]) == 0
    evaluated = json.loads((tmp_path / "metrics.json").read_text())
    assert evaluated["images"] == 8
    for name in ("mIoU", "mAcc", "aAcc", *(f"IoU.{c}" for c in SEMANTIC_CLASSES[1:] if f"IoU.{c}" in after)):
        assert evaluated[name] == after[name], name


def test_resume_after_interruption_matches_the_uninterrupted_run(data, tmp_path, stop_after):
    full = build_seg_runner(config(data, tmp_path / "full", **SHORT))
    full.train()
    cut = build_seg_runner(config(data, tmp_path / "cut", **SHORT))
    cut.register_hook(stop_after(iteration=2))  # 2 optimizer steps of 2 accumulated batches
    with pytest.raises(InterruptedError):
        cut.train()
    resumed = build_seg_runner(config(data, tmp_path / "cut", **SHORT, resume=True))
    resumed.train()
    assert resumed.iter == full.iter == 4
    expected, got = full.model.state_dict(), resumed.model.state_dict()
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name
    assert (json.loads((tmp_path / "cut" / "metrics.json").read_text())["last"]
            == json.loads((tmp_path / "full" / "metrics.json").read_text())["last"])


def test_the_fine_tuned_backbone_is_readable(trained):
    vit, report = load_model(trained / f"iter_{STEPS}.pth")
    assert not report.missing and vit.embed_dim == 192 and len(vit.blocks) == 4
    assert vit.config["img_size"] == [64, 64]


def test_bf16_autocast_in_training_and_sliding_window_inference(data, tmp_path):
    runner = build_seg_runner(config(data, tmp_path, precision="bf16", **SHORT))
    model = runner.model
    seen = []
    model.backbone.net.blocks[0].attn.qkv.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    batch = next(iter(runner.train_dataloader.loader))
    model.train_step(batch, runner.optim_wrapper)
    assert seen == [torch.bfloat16]
    model.eval()
    outputs = model.val_step(pseudo_collate([runner.val_dataloader.dataset[0]]))
    assert set(seen[1:]) == {torch.bfloat16} and len(seen) == 1 + 9  # 128 px resized image: 3 x 3 windows
    assert outputs[0].seg_logits.data.dtype == torch.float32


def test_layer_decay_groups_of_the_segmentor(data, tmp_path):
    cfg = config(data, tmp_path, **{"optim.layer_decay": 0.5})
    runner = build_seg_runner(cfg)
    groups = runner.optim_wrapper.optimizer.param_groups
    scale = {name: (group["lr_scale"], group["weight_decay"]) for group in groups for name in group["param_names"]}
    depth = 4
    for name, (lr_scale, _) in scale.items():
        if name.startswith("backbone.net.blocks."):
            block = int(name.split(".")[3])
            assert lr_scale == 0.5 ** (depth - block), name
        elif name.startswith("backbone.net."):
            assert lr_scale == 0.5 ** (depth + 1), name  # embeddings
        else:
            assert name.startswith(("neck.", "decode_head.", "auxiliary_head.")) and lr_scale == 1.0, name
    no_decay = {name for name, (_, decay) in scale.items() if decay == 0}
    assert {"backbone.net.cls_token", "backbone.net.pos_embed", "backbone.net.blocks.0.norm1.weight",
            "decode_head.bottleneck.bn.weight", "neck.upsample_4x.1.weight"} <= no_decay
    assert scale["backbone.net.blocks.0.attn.qkv.weight"][1] == 0.05
    assert scale["decode_head.conv_seg.weight"][1] == 0.05


def test_a_pre_trained_encoder_initialises_the_backbone(data, tmp_path):
    torch.manual_seed(0)
    encoder = VisionTransformer(img_size=32, patch_size=8, embed_dim=192, depth=4, num_heads=3)
    export_checkpoint(encoder, tmp_path / "encoder.safetensors")
    model = build_segmentor(config(data, tmp_path, ckpt=tmp_path / "encoder.safetensors"), 10)
    net = model.backbone.net
    assert net.config["rel_pos_bias"] is False and net.config["layer_scale_init"] is None  # "auto", none in ckpt
    torch.testing.assert_close(net.blocks[2].mlp.fc1.weight, encoder.blocks[2].mlp.fc1.weight)
    torch.testing.assert_close(net.pos_embed, resample_pos_embed(encoder.pos_embed, (8, 8), 1, 1, (4, 4)))

    forced = build_segmentor(config(data, tmp_path, ckpt=tmp_path / "encoder.safetensors",
                                    **{"model.rel_pos_bias": True, "model.layer_scale_init": 1.0}), 10)
    attn = forced.backbone.net.blocks[0].attn
    assert attn.relative_position_bias_table.shape == (15 * 15 + 3, 3) and not attn.relative_position_bias_table.any()
    torch.testing.assert_close(forced.backbone.net.blocks[2].mlp.fc1.weight, encoder.blocks[2].mlp.fc1.weight)


@pytest.mark.parametrize("name", ["upernet_vit_base_80k", "upernet_vit_base_80k_lr1e-4", "upernet_vit_base_80k_lr4e-4",
                                  "upernet_vit_base_160k_mae", "upernet_vit_large_80k", "upernet_tiny_synth"])
def test_shipped_configs_load_with_the_recipes(name):
    cfg = load_config(name, configs_dir=CONFIGS_DIR)
    lr = {"upernet_vit_base_80k": 7e-4, "upernet_vit_base_80k_lr1e-4": 1e-4, "upernet_vit_base_80k_lr4e-4": 4e-4,
          "upernet_vit_base_160k_mae": 1e-4, "upernet_vit_large_80k": 7e-4}
    if name in lr:
        assert cfg.optim.lr == lr[name] and cfg.effective_batch == 16 and cfg.data.crop_size == 512
        assert cfg.schedule.warmup_iters == 1500 and cfg.schedule.poly_power == 1.0
        assert cfg.schedule.iterations == (160_000 if "160k" in name else 80_000)
        assert cfg.model.out_indices == ((7, 11, 15, 23) if "large" in name else (3, 5, 7, 11))
    else:
        assert tuple(cfg.data.classes) == SEMANTIC_CLASSES[1:]


def test_errors_name_what_is_wrong(data, tmp_path, capsys):
    assert main(["seg", "eval", "upernet_tiny_synth", *args(overrides(data, tmp_path))]) == 2
    assert "seg eval needs ckpt=PATH" in capsys.readouterr().err
    assert main(["seg", "train", "upernet_tiny_synth", *args(overrides(Path(tmp_path / "nowhere"), tmp_path))]) == 2
    assert "split folder not found" in capsys.readouterr().err
