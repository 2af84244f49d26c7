"""`det train` / `det eval` end to end on synthetic scenes: exact resume, evaluation, exports, errors, learning."""
import copy
import json
import logging
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from backbone import LAYOUTS, CheckpointError, ViTDetViT, build_vit, export_checkpoint, load_model
from backbone.checkpoint import read_checkpoint
from backbone.checkpoint_load import resolve_extensions
from backbone.pos_embed import resample_pos_embed
from benchmarks.cli import main
from benchmarks.synthetic import synthesize
from det.checkpoint import CLASS_SPECIFIC, save_detectron2
from det.coco_metric import CocoMetric
from det.data import collate
from det.evaluate import evaluate_detector
from det.model import build_mask_rcnn
from det.train import CONFIGS_DIR, build_det_runner, build_detector, coco_dataset
from engine import load_config

# 4 optimizer steps of 2 accumulated batches; every detection kept, so an untrained model's AP is not just 0
SHORT = {"schedule.iterations": 4, "schedule.warmup_iters": 2, "schedule.steps": (3,), "checkpoint.interval": 2,
         "batch_size": 4, "data.scale_range": (0.3, 2.0), "model.score_thresh": 0.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, num_images=40, size=128, seed=0)
    return root


def overrides(data, work_dir, **extra):
    return {"data.root": str(data), "work_dir": str(work_dir), **SHORT, **extra}


def config(data, work_dir, **extra):
    return load_config("mask_rcnn_tiny_synth", overrides(data, work_dir, **extra), configs_dir=CONFIGS_DIR)


def args(values):
    return [f"{key}={value}" for key, value in values.items()]


@pytest.fixture(scope="module")
def short_run(data, tmp_path_factory):
    runner = build_det_runner(config(data, tmp_path_factory.mktemp("short")))
    runner.train()
    return runner


def test_resume_after_interruption_matches_the_uninterrupted_run(data, short_run, tmp_path, stop_after):
    cut = build_det_runner(config(data, tmp_path))
    cut.register_hook(stop_after(iteration=2))
    with pytest.raises(InterruptedError):
        cut.train()
    resumed = build_det_runner(config(data, tmp_path, resume=True))
    resumed.train()
    assert resumed.iter == short_run.iter == 4
    expected, got = short_run.model.state_dict(), resumed.model.state_dict()
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name
    first = json.loads((tmp_path / "metrics.json").read_text())["last"]
    assert first == json.loads((Path(short_run.work_dir) / "metrics.json").read_text())["last"]


def test_det_eval_of_the_checkpoint_reproduces_the_last_evaluation(data, short_run, tmp_path):
    work_dir = Path(short_run.work_dir)
    last = json.loads((work_dir / "metrics.json").read_text())["last"]
    assert last["iteration"] == 4  # optimizer steps, as in the log and iter_4.pth
    assert main(["det", "eval", "mask_rcnn_tiny_synth",
                 *args(overrides(data, tmp_path, ckpt=work_dir / "iter_4.pth"))]) == 0
    evaluated = json.loads((tmp_path / "metrics.json").read_text())
    for name in ("APb", "APb50", "ARb100", "APm", "APm75"):
        assert evaluated[name] == pytest.approx(last[name], abs=1e-9), name
    assert evaluated["images"] == 8
    results = json.loads((tmp_path / "detections.json").read_text())
    assert len(results) == 8 * 100 and results == json.loads((work_dir / "detections.json").read_text())
    assert {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(results[0])


def test_the_fine_tuned_backbone_is_readable_and_converts(short_run, tmp_path):
    checkpoint_path = Path(short_run.work_dir) / "iter_4.pth"
    checkpoint = read_checkpoint(checkpoint_path)
    assert "blocks.0.attn.rel_pos_h" in checkpoint.state and not any(k.startswith("rpn") for k in checkpoint.state)
    vit, _ = load_model(checkpoint_path)
    assert vit.embed_dim == 192 and len(vit.blocks) == 4
    torch.testing.assert_close(vit.state_dict()["blocks.3.mlp.fc2.weight"],
                               short_run.model.backbone.net.state_dict()["blocks.3.mlp.fc2.weight"])
    assert main(["convert", str(checkpoint_path), str(tmp_path / "d2.pth"), "--to", "detectron2"]) == 0
    exported = torch.load(tmp_path / "d2.pth", weights_only=True)["model"]
    assert exported["backbone.net.pos_embed"].shape == (1, 1 + 12 * 12, 192)  # ViTDet's: pre-training grid + [CLS]
    torch.testing.assert_close(exported["backbone.net.blocks.3.mlp.fc2.weight"],
                               vit.state_dict()["blocks.3.mlp.fc2.weight"])


def test_errors_name_what_is_wrong(data, tmp_path, capsys):
    assert main(["det", "eval", "mask_rcnn_tiny_synth", *args(overrides(data, tmp_path))]) == 2
    assert "det eval needs ckpt=PATH" in capsys.readouterr().err
    assert main(["det", "train", "mask_rcnn_tiny_synth", *args(overrides(tmp_path / "nowhere", tmp_path))]) == 2
    assert "instances_train2017.json" in capsys.readouterr().err
    encoder = tmp_path / "encoder.pth"
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(192, 3, 8, 8)}}, encoder)
    assert main(["det", "eval", "mask_rcnn_tiny_synth", *args(overrides(data, tmp_path, ckpt=encoder))]) == 2
    assert "encoder.pth: not a whole detector" in capsys.readouterr().err


def memorisation_set(root, images):
    """The first `images` annotated training scenes as both train and val split: a detector that learns at all
    must find them again (a tiny ViT trained from scratch does not generalise in CPU minutes)."""
    synthesize(root / "synth", num_images=40, size=128, seed=0)
    coco = root / "synth" / "coco"
    data = json.loads((coco / "annotations" / "instances_train2017.json").read_text())
    annotated = {a["image_id"] for a in data["annotations"] if not a["iscrowd"]}
    keep = [image for image in data["images"] if image["id"] in annotated][:images]
    ids = {image["id"] for image in keep}
    subset = dict(data, images=keep, annotations=[a for a in data["annotations"] if a["image_id"] in ids])
    (root / "memo" / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / "memo" / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(subset))
        os.symlink(coco / "train2017", root / "memo" / f"{split}2017")
    return root / "memo"


@pytest.mark.slow
def test_training_improves_box_and_mask_ap_over_the_untrained_model(tmp_path):
    steps = 300
    data = memorisation_set(tmp_path, 8)
    extra = {"schedule.iterations": steps, "schedule.warmup_iters": 10, "schedule.steps": (270,),
             "checkpoint.interval": steps, "batch_size": 4, "effective_batch": 4, "optim.lr": 2e-3,
             "data.scale_range": (1.0, 1.0), "model.score_thresh": 0.05}
    cfg = config(data, tmp_path / "run", **extra)
    val = coco_dataset(cfg, "val")
    before = evaluate_detector(build_detector(cfg, len(val.category_ids)), DataLoader(val, 4, collate_fn=collate),
                               CocoMetric(val.annotation_file, val.category_ids))
    runner = build_det_runner(cfg)
    runner.train()
    after = json.loads((tmp_path / "run" / "metrics.json").read_text())["last"]
    message = (f"APb {before['APb']:.4f} -> {after['APb']:.4f}, APb50 {before['APb50']:.4f} -> {after['APb50']:.4f}, "
               f"APm {before['APm']:.4f} -> {after['APm']:.4f} after {steps} steps on 8 scenes")
    print(message)
    assert after["APb50"] > before["APb50"] + 0.01 and after["APb"] > before["APb"], message
    assert after["APm"] > before["APm"], message


def test_a_pretrained_encoder_initialises_the_backbone_with_its_pos_embed_on_the_pretraining_grid(data, tmp_path):
    torch.manual_seed(1)
    encoder = build_vit("tiny", img_size=64, patch_size=8, depth=4, global_pool="avg")  # [CLS], 8 x 8 grid
    export_checkpoint(encoder, tmp_path / "encoder.safetensors")
    cfg = config(data, tmp_path, ckpt=tmp_path / "encoder.safetensors", **{"model.pretrain_img_size": 64})
    net = build_detector(cfg, 8).backbone.net
    torch.testing.assert_close(net.blocks[2].attn.qkv.weight, encoder.blocks[2].attn.qkv.weight)
    torch.testing.assert_close(net.pos_embed, encoder.pos_embed[:, 1:])  # [CLS] slot dropped, 8 x 8 kept as is
    assert torch.count_nonzero(net.blocks[0].attn.rel_pos_h) == 0  # ViTDet's tables start at zero
    net = build_detector(config(data, tmp_path, ckpt=tmp_path / "encoder.safetensors"), 8).backbone.net
    expected = resample_pos_embed(encoder.pos_embed.detach(), (12, 12), 1, 0, (8, 8))
    torch.testing.assert_close(net.pos_embed, expected)  # the config's pre-training grid: 96 px / 8 = 12 x 12
    wider = build_vit("small", img_size=64, patch_size=8, depth=4)
    export_checkpoint(wider, tmp_path / "small.safetensors")
    with pytest.raises(CheckpointError, match="width 384"):
        build_detector(config(data, tmp_path, ckpt=tmp_path / "small.safetensors"), 8)


@pytest.fixture(scope="module")
def detector_files(short_run, tmp_path_factory):
    """Every form a trained detector's weights take: the run checkpoint, the encoder exported from its ViT in our
    layout, and the whole detector in detectron2's layout as .pth and as a model-zoo .pkl of numpy arrays."""
    out = tmp_path_factory.mktemp("detector_files")
    run = Path(short_run.work_dir) / "iter_4.pth"
    export_checkpoint(short_run.model.backbone.net, out / "enc.safetensors")
    assert main(["convert", str(run), str(out / "model_final.pth"), "--to", "detectron2"]) == 0
    model = torch.load(out / "model_final.pth", weights_only=True)["model"]
    assert any(k.startswith("roi_heads.") for k in model)  # the whole detector, not only its ViT
    with (out / "model_final_f00000.pkl").open("wb") as handle:
        pickle.dump({"model": {k: v.numpy() for k, v in model.items()}, "__author__": "test"}, handle)
    return {"run": run, "encoder": out / "enc.safetensors", "detectron2_pth": out / "model_final.pth",
            "detectron2_pkl": out / "model_final_f00000.pkl"}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("source", ["run", "encoder", "detectron2_pth", "detectron2_pkl"])
def test_every_detector_checkpoint_converts_to_every_layout_with_the_detectors_features(
        detector_files, short_run, tmp_path, source, layout):
    net = copy.deepcopy(short_run.model.backbone.net).eval()
    assert net.blocks[0].attn.rel_pos_h.abs().sum() > 0  # trained tables, which a plain ViT could not hold
    out = tmp_path / ("vit.safetensors" if layout == "ours" else f"{layout}.pth")
    assert main(["convert", str(detector_files[source]), str(out), "--to", layout]) == 0
    if layout == "mmseg":  # another ViT (BEiT's relative position tables): the weights under mmseg's names
        state = torch.load(out, weights_only=True)
        assert torch.equal(state["layers.3.ln1.weight"], net.blocks[3].norm1.weight)
        assert torch.equal(state["layers.1.attn.qkv.weight"], net.blocks[1].attn.qkv.weight)
        return
    vit, report = load_model(out)
    assert not report.missing and not report.unexpected, str(report)
    assert type(vit) is ViTDetViT and {k: vit.config[k] for k in ("img_size", "window_size", "global_blocks",
                                                                  "pretrain_img_size")} == {
        k: net.config[k] for k in ("img_size", "window_size", "global_blocks", "pretrain_img_size")}
    torch.manual_seed(0)
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(vit.eval().forward_feature_maps(images, [-1])[0], net.forward_feature_maps(images, [-1])[0])


def test_det_eval_of_a_detectron2_file_equals_det_eval_of_the_run_checkpoint(data, short_run, detector_files,
                                                                             tmp_path):
    work_dir = Path(short_run.work_dir)
    last = json.loads((work_dir / "metrics.json").read_text())["last"]
    ckpt = detector_files["detectron2_pkl"]
    assert main(["det", "eval", "mask_rcnn_tiny_synth", *args(overrides(data, tmp_path, ckpt=ckpt))]) == 0
    evaluated = json.loads((tmp_path / "metrics.json").read_text())
    names = [name for name in last if name.startswith(("APb", "ARb", "APm", "ARm"))]
    assert len(names) == 24 and all(evaluated[name] == pytest.approx(last[name], abs=1e-9) for name in names)
    assert json.loads((tmp_path / "detections.json").read_text()) == json.loads(
        (work_dir / "detections.json").read_text())


def assert_loaded(model, expected, zero_background=False, fresh=None):
    """Every weight of `model` is `expected`'s, but the rows torchvision adds for the background class (zero after a
    detectron2 import) and, with `fresh`, the class-specific predictors (then `fresh`'s: their initialisation)."""
    for key, value in model.state_dict().items():
        if fresh is not None and key.startswith(CLASS_SPECIFIC):
            assert torch.equal(value, fresh[key]), key
            continue
        rows = {"roi_heads.box_predictor.bbox_pred": 4, "roi_heads.mask_predictor.mask_fcn_logits": 1}.get(
            key.rsplit(".", 1)[0], 0) if zero_background else 0
        assert torch.equal(value[rows:], expected[key][rows:]) and not value[:rows].any(), key


def test_det_train_starts_from_a_whole_detector_ours_or_detectron2s(data, short_run, detector_files, tmp_path,
                                                                    caplog, capsys):
    trained = short_run.model.state_dict()
    assert_loaded(build_detector(config(data, tmp_path, ckpt=detector_files["run"]), 8), trained)
    assert_loaded(build_detector(config(data, tmp_path, ckpt=detector_files["detectron2_pkl"]), 8), trained,
                  zero_background=True)
    cfg = config(data, tmp_path)
    model_cfg = resolve_extensions(dict(cfg.model), None)  # layer scale "auto": none without a checkpoint
    model_cfg.pop("resample_patch")  # what build_detector does to a checkpoint, not a model option
    torch.manual_seed(5)
    five = build_mask_rcnn(5, model_cfg.pop("size"), **model_cfg).state_dict()  # trained on another class set
    save_detectron2(five, tmp_path / "five_classes.pth")
    with caplog.at_level(logging.INFO, logger="droppos_bench"):
        model = build_detector(config(data, tmp_path, ckpt=tmp_path / "five_classes.pth"), 8)
    assert_loaded(model, five, zero_background=True, fresh=build_detector(cfg, 8).state_dict())
    assert "five_classes.pth has 5 classes, the dataset 8: its class-specific predictors" in caplog.text
    narrow = build_mask_rcnn(8, "tiny", **{**model_cfg, "head_channels": 32}).state_dict()
    save_detectron2(narrow, tmp_path / "narrow.pth")
    assert main(["det", "train", "mask_rcnn_tiny_synth",
                 *args(overrides(data, tmp_path, ckpt=tmp_path / "narrow.pth"))]) == 2
    message = capsys.readouterr().err
    assert "narrow.pth: not a model of this config" in message and "roi_heads.box_head.0.0.weight" in message
