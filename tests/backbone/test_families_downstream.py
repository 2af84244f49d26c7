"""Every downstream task takes the release files of the other pre-training families (issue 22): classification builds
the layer scales and BEiT's relative position tables the file has, detection keeps the layer scales and leaves
BEiT's tables out for ViTDet's own, segmentation keeps both; and a tiny run of each task trains from a BEiT file.
The files are timm's classes with random weights at ViT-Tiny width, saved in each release's layout."""
import json

import pytest
import torch

from benchmarks.cli import main
from benchmarks.synthetic import synthesize
from cls.finetune import CONFIGS_DIR as CLS_CONFIGS
from cls.finetune import build_classifier
from det.train import CONFIGS_DIR as DET_CONFIGS
from det.train import build_detector
from engine import load_config
from seg.train import CONFIGS_DIR as SEG_CONFIGS
from seg.train import build_segmentor
from tests.backbone.release_files import random_timm, timm_to_deit3_release

DET = {"model.patch_size": 16, "schedule.iterations": 2, "schedule.warmup_iters": 1, "schedule.steps": [1],
       "batch_size": 2, "effective_batch": 2}
SEG = {"model.patch_size": 16, "data.crop_size": 96, "schedule.iterations": 2, "schedule.warmup_iters": 1,
       "batch_size": 2, "effective_batch": 2}
CLS = {"schedule.epochs": 1, "schedule.warmup_epochs": 0, "batch_size": 8, "effective_batch": 8}


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """BEiT (per-block tables, q / v biases, gamma_1 / gamma_2), DeiT III (gamma_1 / gamma_2) and a DINO training
    checkpoint (teacher under 'backbone.'), each as its release writes it."""
    root = tmp_path_factory.mktemp("releases")
    beit = {k: v for k, v in random_timm("beit_base_patch16_224", img_size=96, global_pool="token").items()
            if not k.endswith("relative_position_index")}
    torch.save({"model": beit}, root / "beit.pth")
    deit3 = random_timm("deit3_base_patch16_224", img_size=96)
    torch.save(timm_to_deit3_release(deit3), root / "deit3.pth")
    teacher = {f"backbone.{k}": v for k, v in random_timm("vit_base_patch16_224", img_size=96).items()}
    student = {f"module.{k}": v for k, v in teacher.items()}
    torch.save({"teacher": teacher, "student": student, "epoch": 1}, root / "dino.pth")
    return root, beit, deit3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    synthesize(root, num_images=24, size=96, seed=0, progress=False)
    return root


def test_classification_builds_what_each_file_has(releases, data, tmp_path):
    root, beit, deit3 = releases
    cfg = lambda name: load_config("finetune_tiny_synth", {"data.root": str(data), "ckpt": str(root / name)},  # noqa: E731
                                   configs_dir=CLS_CONFIGS)
    net = build_classifier(cfg("beit.pth"), 8)
    table = beit["blocks.3.attn.relative_position_bias_table"]
    assert torch.equal(net.blocks[3].attn.relative_position_bias_table, table)
    assert torch.equal(net.blocks[3].ls2.gamma, beit["blocks.3.gamma_2"])
    assert torch.equal(net.blocks[0].attn.qkv.bias[192:384], torch.zeros(192))  # BEiT has no key bias
    net = build_classifier(cfg("deit3.pth"), 8)
    assert torch.equal(net.blocks[1].ls1.gamma, deit3["blocks.1.ls1.gamma"])
    assert net.blocks[1].attn.relative_position_bias_table is None
    net = build_classifier(cfg("dino.pth"), 8)
    assert isinstance(net.blocks[0].ls1, torch.nn.Identity) and net.blocks[0].attn.relative_position_bias_table is None


def test_detection_keeps_layer_scales_and_adds_vitdets_own_relative_positions(releases, data, tmp_path):
    root, beit, _ = releases
    cfg = load_config("mask_rcnn_tiny_synth", {"data.root": str(data), "ckpt": str(root / "beit.pth"),
                                               "model.patch_size": 16}, configs_dir=DET_CONFIGS)
    net = build_detector(cfg, 8).backbone.net
    assert torch.equal(net.blocks[2].ls1.gamma, beit["blocks.2.gamma_1"])
    assert net.blocks[2].attn.relative_position_bias_table is None
    assert torch.count_nonzero(net.blocks[2].attn.rel_pos_h) == 0


def test_segmentation_keeps_tables_and_layer_scales(releases, data, tmp_path):
    root, beit, _ = releases
    cfg = load_config("upernet_tiny_synth", {"data.root": str(data / "ade" / "ADEChallengeData2016"),
                                             "ckpt": str(root / "beit.pth"), **SEG}, configs_dir=SEG_CONFIGS)
    net = build_segmentor(cfg, 10).backbone.net
    table = beit["blocks.1.attn.relative_position_bias_table"]
    assert torch.equal(net.blocks[1].attn.relative_position_bias_table, table)
    assert torch.equal(net.blocks[1].ls2.gamma, beit["blocks.1.gamma_2"])


@pytest.mark.parametrize("task", ["cls", "det", "seg"])
def test_a_tiny_run_of_each_task_trains_from_a_beit_file(releases, data, tmp_path, task):
    root = releases[0]
    words, config, values = {
        "cls": (["cls", "finetune"], "finetune_tiny_synth", {"data.root": data, **CLS}),
        "det": (["det", "train"], "mask_rcnn_tiny_synth", {"data.root": data, **DET}),
        "seg": (["seg", "train"], "upernet_tiny_synth", {"data.root": data / "ade" / "ADEChallengeData2016", **SEG}),
    }[task]
    values |= {"ckpt": root / "beit.pth", "work_dir": tmp_path / task}
    assert main([*words, config, *(f"{key}={_cli(value)}" for key, value in values.items())]) == 0
    assert json.loads((tmp_path / task / "metrics.json").read_text())["last"]


def _cli(value):
    return "[" + ",".join(map(str, value)) + "]" if isinstance(value, list) else value
