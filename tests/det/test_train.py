"""`det train` / `det eval` end to end on synthetic scenes: learning, exact resume, evaluation, exports, errors."""
import json

import pytest
import torch
from mmengine.hooks import Hook
from torch.utils.data import DataLoader

from backbone import load_model
from backbone.checkpoint import read_checkpoint
from benchmarks.cli import main
from benchmarks.synthetic import synthesize
from det.coco_metric import CocoMetric
from det.data import collate
from det.evaluate import evaluate_detector
from det.train import CONFIGS_DIR, build_det_runner, build_detector, coco_dataset
from engine import load_config

LEARN_STEPS = 200


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, num_images=200, size=128, seed=0)
    return root


def overrides(data, work_dir, **extra):
    return {"data.root": str(data), "work_dir": str(work_dir), **extra}


def args(values):
    return [f"{key}={value}" for key, value in values.items()]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("trained")
    steps = dict(**{"schedule.iterations": LEARN_STEPS, "schedule.steps": f"({LEARN_STEPS - 40},)",
                    "checkpoint.interval": LEARN_STEPS})
    assert main(["det", "train", "mask_rcnn_tiny_synth", *args(overrides(data, work_dir, **steps))]) == 0
    return work_dir


def test_training_improves_box_and_mask_ap_over_the_untrained_model(data, trained, tmp_path):
    cfg = load_config("mask_rcnn_tiny_synth", overrides(data, tmp_path), configs_dir=CONFIGS_DIR)
    val = coco_dataset(cfg, "val")
    untrained = build_detector(cfg, len(val.category_ids))
    before = evaluate_detector(untrained, DataLoader(val, batch_size=8, collate_fn=collate),
                               CocoMetric(val.annotation_file, val.category_ids))
    after = json.loads((trained / "metrics.json").read_text())["last"]
    message = (f"APb {before['APb']:.3f} -> {after['APb']:.3f}, APb50 {before['APb50']:.3f} -> {after['APb50']:.3f}, "
               f"APm {before['APm']:.3f} -> {after['APm']:.3f} after {LEARN_STEPS} steps")
    print(message)
    assert after["APb50"] > before["APb50"] + 0.05 and after["APb"] > before["APb"], message
    assert after["APm"] > before["APm"], message
    assert after["iteration"] == LEARN_STEPS * 1  # one accumulation step per optimizer step here
    results = json.loads((trained / "detections.json").read_text())
    assert results and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(results[0])


def test_det_eval_of_the_checkpoint_reproduces_the_last_evaluation(data, trained, tmp_path):
    checkpoint = trained / f"iter_{LEARN_STEPS}.pth"
    assert main(["det", "eval", "mask_rcnn_tiny_synth", *args(overrides(data, tmp_path, ckpt=checkpoint))]) == 0
    evaluated = json.loads((tmp_path / "metrics.json").read_text())
    last = json.loads((trained / "metrics.json").read_text())["last"]
    assert evaluated["APb"] == pytest.approx(last["APb"], abs=1e-6)
    assert evaluated["APm"] == pytest.approx(last["APm"], abs=1e-6)
    assert evaluated["images"] == 40 and (tmp_path / "detections.json").is_file()


def test_the_fine_tuned_backbone_is_readable_and_converts(trained, tmp_path):
    checkpoint = read_checkpoint(trained / f"iter_{LEARN_STEPS}.pth")
    assert "blocks.0.attn.rel_pos_h" in checkpoint.state and not any(k.startswith("rpn") for k in checkpoint.state)
    vit, report = load_model(trained / f"iter_{LEARN_STEPS}.pth")
    assert vit.embed_dim == 192 and len(vit.blocks) == 4
    assert main(["convert", str(trained / f"iter_{LEARN_STEPS}.pth"), str(tmp_path / "d2.pth"),
                 "--to", "detectron2"]) == 0
    exported = torch.load(tmp_path / "d2.pth", weights_only=True)["model"]
    assert "backbone.net.blocks.0.attn.rel_pos_h" in exported


class Interrupt(Exception):
    pass


class InterruptAfter(Hook):
    priority = "LOWEST"  # after the checkpoint of that iteration is written

    def __init__(self, iteration):
        self.iteration = iteration

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.iteration:
            raise Interrupt


def test_resume_after_interruption_matches_the_uninterrupted_run(data, tmp_path):
    short = {"schedule.iterations": 4, "schedule.warmup_iters": 2, "schedule.steps": (3,),
             "checkpoint.interval": 2, "batch_size": 4, "data.scale_range": (0.3, 2.0)}  # accumulation 2
    full = build_det_runner(load_config("mask_rcnn_tiny_synth", overrides(data, tmp_path / "full", **short),
                                        configs_dir=CONFIGS_DIR))
    full.train()
    cut = build_det_runner(load_config("mask_rcnn_tiny_synth", overrides(data, tmp_path / "cut", **short),
                                       configs_dir=CONFIGS_DIR))
    cut.register_hook(InterruptAfter(4))  # 4 loop iterations = 2 optimizer steps
    with pytest.raises(Interrupt):
        cut.train()
    resumed = build_det_runner(load_config("mask_rcnn_tiny_synth",
                                           overrides(data, tmp_path / "cut", resume=True, **short),
                                           configs_dir=CONFIGS_DIR))
    resumed.train()
    assert resumed.iter == full.iter == 8
    expected, got = full.model.state_dict(), resumed.model.state_dict()
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name
    first = json.loads((tmp_path / "full" / "metrics.json").read_text())["last"]
    second = json.loads((tmp_path / "cut" / "metrics.json").read_text())["last"]
    assert first == second


def test_errors_name_what_is_wrong(data, tmp_path, capsys):
    assert main(["det", "eval", "mask_rcnn_tiny_synth", *args(overrides(data, tmp_path))]) == 2
    assert "det eval needs ckpt=PATH" in capsys.readouterr().err
    assert main(["det", "train", "mask_rcnn_tiny_synth", *args(overrides(tmp_path / "nowhere", tmp_path))]) == 2
    assert "instances_train2017.json" in capsys.readouterr().err
    encoder = tmp_path / "encoder.pth"
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(192, 3, 16, 16)}}, encoder)
    assert main(["det", "eval", "mask_rcnn_tiny_synth", *args(overrides(data, tmp_path, ckpt=encoder))]) == 2
    assert "not a detector of this config" in capsys.readouterr().err
