"""`seg linear` (DINOv2's linear segmentation) on synthetic ADE20K-layout scenes: it learns and writes metrics.json,
the ViT stays frozen, the features are the checkpoint's normed patch tokens, logits reach the label size, and the
shipped recipe is DINOv2's."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmengine.dataset import pseudo_collate
from mmengine.hooks import Hook
from torch.utils.data import DataLoader

from backbone import VisionTransformer, export_checkpoint
from engine import load_config
from engine.errors import UserInputError
from engine.runner import TrainSpec, lr_schedule
from seg.data import build_seg_dataset
from seg.evaluate import evaluate_segmentor
from seg.linear import build_linear_runner, build_linear_segmentor, center_pad, run_seg_linear
from seg.metric import SegMetric
from seg.train import CONFIGS_DIR

STEPS = 60
# DINOv2's dinov2_vitb14_ade20k_linear_config.py (dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/), as the config cites
DINOV2_LINEAR_ADE20K = {
    "data.crop_size": 512, "data.scale": (2048, 512), "data.ratio_range": (0.5, 2.0), "data.cat_max_ratio": 0.75,
    "data.reduce_zero_label": True, "data.classes": None, "optim.lr": 1e-3, "optim.weight_decay": 1e-4,
    "optim.betas": (0.9, 0.999), "optim.clip_grad": None, "schedule.iterations": 40_000,
    "schedule.warmup_iters": 1500, "schedule.warmup_factor": 1e-6, "schedule.poly_power": 1.0,
    "schedule.val_interval": 10_000, "effective_batch": 16, "batch_size": 2, "model.layers": (-1,),
    "model.slide_stride": 341, "model.norm": "SyncBN",
}


def config(data, work_dir, name="linear_tiny_synth", **extra):
    overrides = {"data.root": str(data / "ade" / "ADEChallengeData2016"), "work_dir": str(work_dir), **extra}
    return load_config(name, overrides, configs_dir=CONFIGS_DIR)


class FrozenCheck(Hook):
    """Records, after every training step, whether any part of the ViT was in training mode or holds a gradient."""

    def __init__(self, net):
        self.net, self.training, self.grads = net, [], []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.training.append(any(module.training for module in self.net.modules()))
        self.grads.append(any(p.grad is not None for p in self.net.parameters()))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    runner = build_linear_runner(config(data, tmp_path_factory.mktemp("linear"), **{"schedule.iterations": STEPS}))
    model = runner.model
    before = {key: value.clone() for key, value in model.backbone.state_dict().items()}
    head_before = {key: value.clone() for key, value in model.decode_head.state_dict().items()}
    check = FrozenCheck(model.backbone.net)
    runner.register_hook(check)
    runner.train()
    return runner, before, head_before, check


def test_the_head_learns_and_metrics_json_holds_miou_and_aacc(data, trained, tmp_path):
    runner, *_ = trained
    cfg = config(data, tmp_path)
    val = build_seg_dataset(cfg.data, "val")
    untrained = evaluate_segmentor(build_linear_segmentor(cfg, len(val.metainfo["classes"])),
                                   DataLoader(val, batch_size=1, collate_fn=pseudo_collate), SegMetric())
    last = json.loads((Path(runner.work_dir) / "metrics.json").read_text())["last"]
    message = f"aAcc {untrained['aAcc']} -> {last['aAcc']}, mIoU {untrained['mIoU']} -> {last['mIoU']}"
    print(message)
    assert last["iteration"] == STEPS
    assert last["aAcc"] > untrained["aAcc"] + 20 and last["mIoU"] > untrained["mIoU"] + 5, message


def test_the_vit_stays_frozen_in_eval_mode_without_gradients(trained):
    runner, before, head_before, check = trained
    model = runner.model
    after = model.backbone.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[key], before[key]) for key in before), "the frozen ViT changed"
    assert len(check.training) == STEPS and not any(check.training) and not any(check.grads)
    assert any(not torch.equal(value, head_before[key]) for key, value in model.decode_head.state_dict().items())
    optimized = {id(p) for group in runner.optim_wrapper.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.decode_head.parameters()}


def test_run_seg_linear_writes_metrics_json(data, tmp_path):
    out = run_seg_linear("linear_tiny_synth", {"data.root": str(data / "ade" / "ADEChallengeData2016"),
                                               "work_dir": str(tmp_path), "schedule.iterations": 2,
                                               "schedule.warmup_iters": 1})
    assert out == tmp_path / "metrics.json"
    last = json.loads(out.read_text())["last"]
    assert last["iteration"] == 2 and {"mIoU", "aAcc"} <= last.keys()


def test_features_are_the_checkpoints_normed_patch_tokens_without_cls_and_registers(data, tmp_path):
    """Patch 12 on 64 px crops: center-padded to 72 px (6 x 6 tokens) as DINOv2 pads patch 14 to 518 px."""
    torch.manual_seed(1)
    reference = VisionTransformer(img_size=72, patch_size=12, embed_dim=192, depth=2, num_heads=3, reg_tokens=2).eval()
    with torch.no_grad():
        reference.norm.weight.normal_()
        reference.norm.bias.normal_()
    ckpt = export_checkpoint(reference, tmp_path / "encoder.safetensors")
    cfg = config(data, tmp_path, ckpt=str(ckpt), **{"model.patch_size": 12, "model.depth": 2})
    model = build_linear_segmentor(cfg, 10).train()
    loaded = model.backbone.net.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in reference.state_dict().items())

    images = torch.randn(2, 3, 64, 64)
    with torch.enable_grad():
        (features,) = model.backbone(images)
    assert not features.requires_grad and features.shape == (2, 192, 6, 6)
    with torch.no_grad():
        tokens = reference.forward_tokens(F.pad(images, (4, 4, 4, 4)))[:, 3:]  # [CLS] and 2 registers dropped
    torch.testing.assert_close(features, tokens.transpose(1, 2).reshape(2, 192, 6, 6))

    cfg.model.layers = (0, -1)  # "+ms"-style multi-layer input: block 0 and the last, each after the final norm
    first, last = build_linear_segmentor(cfg, 10).backbone(images)
    with torch.no_grad():
        x, grid = reference.embed(F.pad(images, (4, 4, 4, 4)))
        block0 = reference.norm(reference.blocks[0](x, grid))[:, 3:]
    torch.testing.assert_close(first, block0.transpose(1, 2).reshape(2, 192, 6, 6))
    torch.testing.assert_close(last, features)

    random_init = build_linear_segmentor(config(data, tmp_path, **{"model.patch_size": 12, "model.depth": 2}), 10)
    assert not torch.allclose(random_init.backbone(images)[0], features, atol=1e-2)
    logits = model.eval().encode_decode(images, [dict(img_shape=(64, 64))] * 2)
    assert logits.shape == (2, 10, 64, 64)


def test_center_pad_splits_the_padding_like_dinov2():
    padded = center_pad(torch.ones(1, 3, 512, 500), 14)
    assert padded.shape[-2:] == (518, 504)
    rows, cols = padded[0, 0].sum(1), padded[0, 0].sum(0)
    assert rows[:3].sum() == 0 and rows[3:515].min() > 0 and rows[515:].sum() == 0
    assert cols[:2].sum() == 0 and cols[2:502].min() > 0 and cols[502:].sum() == 0


def test_logits_are_the_low_res_map_upsampled_bilinearly_to_the_label_size(data, tmp_path):
    cfg = config(data, tmp_path)
    val = build_seg_dataset(cfg.data, "val")
    model = build_linear_segmentor(cfg, len(val.metainfo["classes"])).eval()
    batch = model.data_preprocessor(pseudo_collate([val[0]]), False)
    inputs, metas = batch["inputs"], [sample.metainfo for sample in batch["data_samples"]]
    low_res = model.decode_head(model.backbone(inputs))
    assert low_res.shape == (1, 10, inputs.shape[2] // 8, inputs.shape[3] // 8)
    upsampled = F.interpolate(low_res, size=inputs.shape[2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(model.encode_decode(inputs, metas), upsampled)
    sample = val[0]["data_samples"]
    (prediction,) = model.val_step(pseudo_collate([val[0]]))
    assert prediction.pred_sem_seg.shape == sample.gt_sem_seg.shape == tuple(sample.ori_shape)


def test_the_shipped_recipe_is_dinov2s_linear_ade20k_protocol(data, tmp_path):
    cfg = load_config("linear_vit_base_ade", configs_dir=CONFIGS_DIR)
    for key, value in DINOV2_LINEAR_ADE20K.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert (tuple(node) if isinstance(node, list) else node) == value, key
    assert cfg.precision == "bf16" and cfg.require_gpu
    schedule = lr_schedule(TrainSpec.from_config(cfg), None, cfg.optim.lr)
    assert [(s["type"], s["begin"], s["end"]) for s in schedule] == [("LinearLR", 0, 1500), ("PolyLR", 1500, 40_000)]
    assert schedule[0]["start_factor"] == 1e-6 and schedule[1]["power"] == 1.0 and schedule[1]["eta_min"] == 0.0


def released(head_state: dict, path: Path) -> Path:
    """The head's weights as mmseg saves a whole segmentor (DINOv2's released heads): under state_dict, with meta."""
    torch.save({"meta": {"CLASSES": ("sky", "ground")}, "state_dict": {f"decode_head.{key}": value.clone()
                                                                       for key, value in head_state.items()}}, path)
    return path


def test_a_released_head_scores_val_as_the_model_it_came_from(data, trained, tmp_path):
    """seg linear with head=<file>: the trained probe's head, saved as DINOv2 releases its heads, scores val as
    that probe does (same frozen ViT, same weights); nothing is trained."""
    runner, *_ = trained
    model = runner.model
    ckpt = export_checkpoint(model.backbone.net, tmp_path / "encoder.safetensors")
    head = released(model.decode_head.state_dict(), tmp_path / "ade20k_linear_head.pth")
    cfg = config(data, tmp_path / "probe")
    val = build_seg_dataset(cfg.data, "val")
    expected = evaluate_segmentor(model, DataLoader(val, batch_size=1, collate_fn=pseudo_collate), SegMetric())
    out = run_seg_linear("linear_tiny_synth", {"data.root": str(data / "ade" / "ADEChallengeData2016"),
                                               "work_dir": str(tmp_path / "scored"), "ckpt": str(ckpt),
                                               "head": str(head)})
    written = json.loads(out.read_text())
    assert out == tmp_path / "scored" / "metrics.json" and written["head"] == str(head)
    assert written["last"] == pytest.approx(expected)
    assert not (tmp_path / "scored" / "tensorboard").exists()  # no training run


def test_a_head_that_does_not_fit_names_what_it_holds(data, trained, tmp_path):
    runner, *_ = trained
    state = dict(runner.model.decode_head.state_dict())
    state["conv_seg.weight"] = state["conv_seg.weight"][:3]  # 3 classes, not 10
    head = released(state, tmp_path / "head.pth")
    with pytest.raises(UserInputError, match=r"not a model of this config: .*conv_seg.weight \(3, 192, 1, 1\) "
                                             r"vs \(10, 192, 1, 1\).*a BNHead over the patch features"):
        run_seg_linear("linear_tiny_synth", {"data.root": str(data / "ade" / "ADEChallengeData2016"),
                                             "work_dir": str(tmp_path), "head": str(head)})
