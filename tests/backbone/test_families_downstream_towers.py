"""DINOv2 (with registers) and CLIP towers through every downstream task (issue 22): each builder takes what the
checkpoint's architecture has beyond the recipe (register tokens, pre-norm, bias-free patch embedding, patch size,
the activation and LayerNorm epsilon its format fixes); detection drops the registers as it drops [CLS],
segmentation carries them through the blocks and out of the feature maps. The files are timm's classes with random
weights at ViT-Tiny width, saved in each release's layout (DINOv2's hub file; OpenAI's CLIP state dict converted to
ours, as CLIP files are named by format)."""
import json

import pytest
import torch
from timm.layers import QuickGELU, resample_patch_embed

from backbone import CheckpointError, export_checkpoint, load_model, read_checkpoint
from backbone.checkpoint_load import checkpoint_architecture
from benchmarks.cli import main
from benchmarks.synthetic import synthesize
from cls.finetune import CONFIGS_DIR as CLS_CONFIGS
from cls.finetune import build_classifier
from cls.position_probe import PositionProbe
from det.train import CONFIGS_DIR as DET_CONFIGS
from det.train import build_detector
from engine import load_config
from engine.errors import UserInputError
from seg.train import CONFIGS_DIR as SEG_CONFIGS
from seg.train import build_segmentor
from tests.backbone.release_files import clip_release, dinov2_release, random_timm

CLS = {"schedule.epochs": 1, "schedule.warmup_epochs": 0, "batch_size": 8, "effective_batch": 8}
DET = {"schedule.iterations": 2, "schedule.warmup_iters": 1, "schedule.steps": [1], "batch_size": 2,
       "effective_batch": 2}
SEG = {"schedule.iterations": 2, "schedule.warmup_iters": 1, "batch_size": 2, "effective_batch": 2}


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """DINOv2 reg4 at patch 14 (the release's) and at patch 16 (for ViTDet's pyramid), and CLIP (QuickGELU) read
    with format 'clip' and exported in our layout."""
    root = tmp_path_factory.mktemp("towers")
    dinov2 = dinov2_release(random_timm("vit_base_patch14_reg4_dinov2", img_size=56))
    torch.save(dinov2, root / "dinov2.pth")
    dinov2_16 = dinov2_release(random_timm("vit_base_patch14_reg4_dinov2", img_size=64, patch_size=16))
    torch.save(dinov2_16, root / "dinov2_p16.pth")
    torch.save(clip_release(random_timm("vit_base_patch16_clip_quickgelu_224", img_size=64), embed_dim=64,
                            text_tower=False), root / "clip.pt")
    clip, _ = load_model(root / "clip.pt", fmt="clip")
    export_checkpoint(clip, root / "clip.safetensors")
    return root, dinov2, dinov2_16, clip.state_dict()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    synthesize(root, num_images=24, size=96, seed=0, progress=False)
    return root


def test_one_place_completes_a_recipe_from_the_checkpoint(releases):
    root = releases[0]
    options = checkpoint_architecture({"size": "tiny", "layer_scale_init": "auto"}, read_checkpoint(root / "clip.pt",
                                                                                                    "clip"))
    assert options == {"size": "tiny", "layer_scale_init": None, "patch_size": 16, "pre_norm": True,
                       "patch_bias": False, "act_layer": "quick_gelu", "norm_eps": 1e-5}
    options = checkpoint_architecture({"size": "tiny"}, read_checkpoint(root / "clip.safetensors"))
    assert options["act_layer"] == "quick_gelu" and options["norm_eps"] == 1e-5  # recorded in our export
    with pytest.raises(CheckpointError, match=r"patch size 14, the model's 16: set model.patch_size=14"):
        checkpoint_architecture({"size": "tiny", "patch_size": 16}, read_checkpoint(root / "dinov2.pth"))


def test_classification_from_dinov2_and_clip(releases, data):
    root, dinov2, _, clip = releases
    cfg = lambda name, size: load_config("finetune_tiny_synth", {  # noqa: E731
        "data.root": str(data), "ckpt": str(root / name), "model.img_size": size}, configs_dir=CLS_CONFIGS)
    net = build_classifier(cfg("dinov2.pth", 56), 8)
    assert net.config["patch_size"] == 14 and net.config["reg_tokens"] == 4
    assert torch.equal(net.reg_token, dinov2["register_tokens"])
    assert torch.equal(net.blocks[3].ls2.gamma, dinov2["blocks.3.ls2.gamma"])
    net = build_classifier(cfg("clip.safetensors", 64), 8)
    assert isinstance(net.blocks[0].mlp.act, QuickGELU) and net.blocks[0].norm1.eps == 1e-5
    assert net.patch_embed.proj.bias is None and torch.equal(net.norm_pre.weight, clip["norm_pre.weight"])
    reference, _ = load_model(root / "clip.safetensors")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net.eval().forward_feature_maps(x, [3])[0], reference.eval().forward_feature_maps(x, [3])[0])


def test_a_release_file_named_by_ckpt_format_needs_no_conversion(releases, data):
    """A CLIP file does not say its activation: `ckpt_format=clip` (a suite's `format:`) reads it as released."""
    root, _, _, clip = releases
    cfg = load_config("finetune_tiny_synth", {"data.root": str(data), "ckpt": str(root / "clip.pt"),
                                              "ckpt_format": "clip", "model.img_size": 64}, configs_dir=CLS_CONFIGS)
    net = build_classifier(cfg, 8)
    assert isinstance(net.blocks[0].mlp.act, QuickGELU) and torch.equal(net.norm_pre.weight, clip["norm_pre.weight"])
    with pytest.raises(CheckpointError, match="clip"):
        build_classifier(load_config("finetune_tiny_synth", {"data.root": str(data), "ckpt": str(root / "clip.pt"),
                                                             "model.img_size": 64}, configs_dir=CLS_CONFIGS), 8)


def test_position_probe_reads_patch_positions_past_cls_only(releases):
    net, _ = load_model(releases[0] / "dinov2.pth", img_size=56)
    probe = PositionProbe(net, drop_ratio=0.0, seed=0).eval()
    with torch.no_grad():
        logits, _ = probe.logits(torch.randn(2, 3, 56, 56), None)
        tokens = net.forward_tokens(torch.randn(2, 3, 56, 56))
    assert logits.shape == (2, 16, 16) and tokens.shape[1] == 1 + 4 + 16


def test_detection_drops_registers_and_keeps_the_rest(releases, data):
    root, _, dinov2, clip = releases
    cfg = lambda name: load_config("mask_rcnn_tiny_synth", {  # noqa: E731
        "data.root": str(data), "ckpt": str(root / name), "model.patch_size": 16}, configs_dir=DET_CONFIGS)
    net = build_detector(cfg("dinov2_p16.pth"), 8).backbone.net
    assert net.reg_token is None and net.num_prefix_tokens == 0
    assert torch.equal(net.blocks[2].ls1.gamma, dinov2["blocks.2.ls1.gamma"])
    net = build_detector(cfg("clip.safetensors"), 8).backbone.net
    assert isinstance(net.blocks[0].mlp.act, QuickGELU) and net.blocks[0].norm1.eps == 1e-5
    assert torch.equal(net.norm_pre.weight, clip["norm_pre.weight"]) and net.patch_embed.proj.bias is None
    with pytest.raises(UserInputError, match="patch sizes 4, 8 and 16 fit it"):
        build_detector(load_config("mask_rcnn_tiny_synth", {"data.root": str(data), "ckpt": str(root / "dinov2.pth"),
                                                            "model.patch_size": 14, "model.img_size": 112,
                                                            "model.pretrain_img_size": 56},
                                   configs_dir=DET_CONFIGS), 8)


def test_segmentation_carries_registers_and_drops_them_from_the_maps(releases, data):
    root, dinov2, _, clip = releases
    cfg = lambda name, patch, crop: load_config("upernet_tiny_synth", {  # noqa: E731
        "data.root": str(data / "ade" / "ADEChallengeData2016"), "ckpt": str(root / name), "model.patch_size": patch,
        "data.crop_size": crop}, configs_dir=SEG_CONFIGS)
    backbone = build_segmentor(cfg("dinov2.pth", 14, 56), 10).backbone
    assert torch.equal(backbone.net.reg_token, dinov2["register_tokens"])
    maps = backbone(torch.randn(2, 3, 56, 56))
    assert [m.shape for m in maps] == [(2, 192, 4, 4)] * 4
    net = build_segmentor(cfg("clip.safetensors", 16, 64), 10).backbone.net
    assert isinstance(net.blocks[0].mlp.act, QuickGELU) and net.norm_pre.weight.equal(clip["norm_pre.weight"])


def test_detection_resamples_a_patch_14_encoder_to_the_recipes_patch_size(releases, data):
    """DINOv2's patch 14 fits no stride of ViTDet's pyramid: its patch embedding is resampled (FlexiViT's resize, as
    timm's resample_patch_embed computes it) to the recipe's patch size, here the tiny recipe's 8; or refused."""
    root, dinov2, _, _ = releases
    overrides = {"data.root": str(data), "ckpt": str(root / "dinov2.pth"), "model.pretrain_img_size": 56}
    net = build_detector(load_config("mask_rcnn_tiny_synth", overrides, configs_dir=DET_CONFIGS), 8).backbone.net
    expected = resample_patch_embed(dinov2["patch_embed.proj.weight"], [8, 8])
    assert net.config["patch_size"] == 8 and torch.equal(net.patch_embed.proj.weight, expected)
    assert torch.equal(net.blocks[1].attn.qkv.weight, dinov2["blocks.1.attn.qkv.weight"])  # the rest as it was
    refused = load_config("mask_rcnn_tiny_synth", {**overrides, "model.resample_patch": False}, configs_dir=DET_CONFIGS)
    with pytest.raises(CheckpointError, match="patch size 14, the model's 8"):
        build_detector(refused, 8)


@pytest.mark.parametrize("task", ["cls", "posprobe", "det", "seg"])
def test_a_tiny_run_of_each_task_trains_from_a_dinov2_file(releases, data, tmp_path, task):
    root = releases[0]
    words, config, values = {
        "cls": (["cls", "finetune"], "finetune_tiny_synth", {"data.root": data, "model.img_size": 56, **CLS}),
        "posprobe": (["cls", "posprobe"], "posprobe_tiny_synth", {"data.root": data, "model.img_size": 56, **CLS}),
        "det": (["det", "train"], "mask_rcnn_tiny_synth", {"data.root": data, "model.pretrain_img_size": 56, **DET}),
        "seg": (["seg", "train"], "upernet_tiny_synth", {"data.root": data / "ade" / "ADEChallengeData2016",
                                                         "model.patch_size": 14, "data.crop_size": 56, **SEG}),
    }[task]
    values = {"ckpt": root / "dinov2.pth", **values, "work_dir": tmp_path / task}
    assert main([*words, config, *(f"{key}={_cli(value)}" for key, value in values.items())]) == 0
    assert json.loads((tmp_path / task / "metrics.json").read_text())["last"]


def _cli(value):
    return "[" + ",".join(map(str, value)) + "]" if isinstance(value, list) else value
