"""Our configs against mmseg's own MAE UperNet recipe, read with mmengine from the installed mmseg's shipped
mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py: model, sliding window, pipelines, optimizer and schedule. The
paper's 80k configs differ from it only in lr and steps (tested in test_train) and the sliding-window stride."""
from pathlib import Path

import mmseg
import pytest
from mmengine.config import Config

from backbone import VIT_SIZES
from engine import load_config
from engine.runner import TrainSpec, lr_schedule
from seg import data as seg_data  # not its test_pipeline by name: pytest would collect it
from seg.model import build_mmseg_model
from seg.train import CONFIGS_DIR, build_segmentor

MMSEG_CONFIGS = Path(mmseg.__file__).parent / ".mim" / "configs"
MAE_RECIPE = "upernet_vit_base_160k_mae"
PAPER_RECIPES = ("upernet_vit_base_80k", "upernet_vit_base_80k_lr1e-4", "upernet_vit_base_80k_lr4e-4")
GPUS = 8  # mmseg's "8xb2"


def mmseg_config(name: str) -> Config:
    return Config.fromfile(str(MMSEG_CONFIGS / name))


@pytest.fixture(scope="module")
def mmseg_mae() -> Config:
    return mmseg_config("mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py")


def ours(name: str) -> Config:
    return load_config(name, configs_dir=CONFIGS_DIR)


def shapes(module) -> list[tuple[int, ...]]:
    return sorted(tuple(p.shape) for p in module.parameters())


def without(settings: dict, *keys: str) -> dict:
    return {k: v for k, v in settings.items() if k not in keys}


def head_settings(head) -> dict:
    loss = head.loss_decode
    return dict(in_channels=head.in_channels, in_index=head.in_index, channels=head.channels,
                num_classes=head.num_classes, dropout=head.dropout.p, ignore_index=head.ignore_index,
                align_corners=head.align_corners, loss=(type(loss).__name__, loss.use_sigmoid, loss.loss_weight))


def test_our_vit_b_upernet_is_mmseg_mae_upernet(mmseg_mae):
    """Built from our 160k config through seg train's code against mmseg's MAE UperNet built from its own config:
    the same parameters part by part, the same heads, losses, normalisation and sliding window."""
    model = build_segmentor(ours(MAE_RECIPE), 150)
    reference = build_mmseg_model(mmseg_mae.model)
    for part in ("backbone", "neck", "decode_head", "auxiliary_head"):
        assert shapes(getattr(model, part)) == shapes(getattr(reference, part)), part
    for part in ("decode_head", "auxiliary_head"):
        assert head_settings(getattr(model, part)) == head_settings(getattr(reference, part)), part
    assert head_settings(model.auxiliary_head)["loss"][2] == 0.4
    assert model.decode_head.psp_modules.pool_scales == reference.decode_head.psp_modules.pool_scales == (1, 2, 3, 6)
    assert model.test_cfg == reference.test_cfg == dict(mode="slide", crop_size=(512, 512), stride=(341, 341))
    ours_pre, theirs_pre = model.data_preprocessor, reference.data_preprocessor
    for name in ("mean", "std"):
        assert getattr(ours_pre, name).tolist() == getattr(theirs_pre, name).tolist(), name
    for name in ("size", "pad_val", "seg_pad_val"):
        assert getattr(ours_pre, name) == getattr(theirs_pre, name), name
    assert ours_pre.swap_channels == theirs_pre.channel_conversion is True  # ours swaps in forward, by flip


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_the_paper_recipes_take_stride_256_and_mmsegs_model_otherwise(name):
    """The 160k config's model is mmseg's (above); the paper's configs change only the stride and the extensions."""
    model, reference = ours(name).model, ours(MAE_RECIPE).model
    assert model.slide_stride == 256 and reference.slide_stride == 341
    differ = ("slide_stride", "rel_pos_bias", "layer_scale_init")  # "auto" here: on when the checkpoint has them
    assert without(model, *differ) == without(reference, *differ)


@pytest.mark.parametrize("name", (MAE_RECIPE, *PAPER_RECIPES, "upernet_vit_large_80k"))
def test_pipelines_are_mmsegs_ade20k_pipelines(name, mmseg_mae):
    """Ours add the label check after loading and set reduce_zero_label on the dataset, not on LoadAnnotations."""
    data = ours(name).data
    assert data.reduce_zero_label is True and data.classes is None
    assert all(step["reduce_zero_label"] is True for step in mmseg_mae.train_pipeline + mmseg_mae.test_pipeline
               if step["type"] == "LoadAnnotations")
    train = seg_data.train_pipeline(data.crop_size, data.scale, data.ratio_range, data.cat_max_ratio, 150, True)
    test = seg_data.test_pipeline(data.scale, 150, True)
    for pipeline, reference in ((train, mmseg_mae.train_pipeline), (test, mmseg_mae.test_pipeline)):
        assert [step for step in pipeline if step["type"] != "CheckSegLabels"] == [
            without(step, "reduce_zero_label") for step in reference]
        check = next(i for i, step in enumerate(pipeline) if step["type"] == "CheckSegLabels")
        assert pipeline[check - 1]["type"] == "LoadAnnotations"


@pytest.mark.parametrize("name", (MAE_RECIPE, *PAPER_RECIPES))
def test_optimizer_batch_and_schedule_are_mmsegs(name, mmseg_mae):
    cfg = ours(name)
    optimizer, layers = mmseg_mae.optim_wrapper.optimizer, mmseg_mae.optim_wrapper.paramwise_cfg
    assert optimizer.type == "AdamW" and layers.num_layers == VIT_SIZES[cfg.model.size]["depth"] == 12
    assert (tuple(cfg.optim.betas), cfg.optim.weight_decay, cfg.optim.layer_decay) == (
        optimizer.betas, optimizer.weight_decay, layers.layer_decay_rate) == ((0.9, 0.999), 0.05, 0.65)
    if name == MAE_RECIPE:
        assert cfg.optim.lr == optimizer.lr == 1e-4 and cfg.schedule.iterations == mmseg_mae.train_cfg.max_iters
    assert cfg.batch_size == mmseg_mae.train_dataloader.batch_size == 2 and cfg.effective_batch == 2 * GPUS
    schedule = lr_schedule(TrainSpec.from_config(cfg), 1, cfg.optim.lr)  # 8 GPUs x 2 = 16: no accumulation
    expected = [dict(step, end=cfg.schedule.iterations) if step["type"] == "PolyLR" else step
                for step in mmseg_mae.param_scheduler]
    assert schedule == expected
    assert expected[0]["end"] == expected[1]["begin"] == 1500 and expected[1]["eta_min"] == 0.0


def test_vit_large_layer_decay_follows_mmsegs_beit_practice_not_vit_bs():
    """0.65 per block over 24 blocks would all but freeze the lower ones; mmseg ships BEiT-B at 0.9 over 12 layers
    and BEiT-L at 0.95 over 24 (the config's comment cites both)."""
    cfg = ours("upernet_vit_large_80k")
    assert cfg.optim.layer_decay == 0.9 and VIT_SIZES[cfg.model.size]["depth"] == 24
    beit = {name: mmseg_config(f"beit/{name}_upernet_8xb{b}-{extra}160k_ade20k-640x640.py").optim_wrapper.paramwise_cfg
            for name, b, extra in (("beit-base", 2, ""), ("beit-large", 1, "amp-"))}
    assert (beit["beit-base"].num_layers, beit["beit-base"].layer_decay_rate) == (12, 0.9)
    assert (beit["beit-large"].num_layers, beit["beit-large"].layer_decay_rate) == (24, 0.95)
