"""Every shipped pre-training config loads, states its batch semantics, and builds the model it names."""
import pytest
import torch

from engine import load_config
from pretrain.build import build_pretrain_model
from pretrain.train import CONFIGS_DIR

SHIPPED = sorted(str(p.relative_to(CONFIGS_DIR).with_suffix("")) for p in CONFIGS_DIR.rglob("*.py")
                 if "_base_" not in p.parts)
BASE = load_config("droppos_vit_base_200ep", configs_dir=CONFIGS_DIR)


def flat(cfg):
    """Config as {dotted key: value}."""
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in flat(value).items()})
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("name", SHIPPED)
def test_config_loads_and_builds(name):
    cfg = load_config(name, configs_dir=CONFIGS_DIR)
    assert cfg.effective_batch % cfg.batch_size == 0, "effective batch must be a whole number of per-GPU batches"
    with torch.device("meta"):
        model = build_pretrain_model(dict(cfg.model))
    assert model.pos_embed.requires_grad == cfg.model.get("pos_embed_trainable", False)


@pytest.mark.parametrize("name, changed", [
    ("ablations/tab1_gamma_0.00", {"model.mask_ratio": 0.0}),
    ("ablations/tab1_gamma_0.90", {"model.mask_ratio": 0.9}),
    ("ablations/tab2_gamma_pos_1.00", {"model.pos_mask_ratio": 1.0}),
    ("ablations/tab3_sigma_0", {"smoothing.sigma0": 0.0}),
    ("ablations/tab3_sigma_2", {"smoothing.sigma0": 2.0, "smoothing.sigma_t": 2.0}),
    ("ablations/tab4_tau_inf", {"model.tau": None}),
    ("ablations/tabS1_random_learnable", {"model.pos_embed": "random", "model.pos_embed_trainable": True}),
    ("droppos_vit_base_800ep", {"schedule.epochs": 800}),
])
def test_ablation_changes_only_its_own_keys(name, changed):
    base = {k: v for k, v in flat(BASE.to_dict()).items() if k != "config_name"}
    cfg = {k: v for k, v in flat(load_config(name, configs_dir=CONFIGS_DIR).to_dict()).items() if k != "config_name"}
    assert {k: v for k, v in cfg.items() if base.get(k, object()) != v} == changed


def test_paper_recipe_values():
    assert (BASE.effective_batch, BASE.optim.base_lr, BASE.optim.weight_decay, tuple(BASE.optim.betas)) == (
        4096, 1.5e-4, 0.05, (0.9, 0.95))
    assert (BASE.schedule.epochs, BASE.schedule.warmup_epochs) == (200, 10)
    assert (BASE.model.mask_ratio, BASE.model.pos_mask_ratio, BASE.model.tau) == (0.75, 0.75, 0.1)
    assert (BASE.model.decoder_depth, BASE.model.decoder_dim) == (2, 512)
    assert (BASE.optim.clip_grad, BASE.optim.clip_mode) == (5.0, "per_param")  # the release's default clipping
    large = load_config("droppos_vit_large_800ep", configs_dir=CONFIGS_DIR)
    assert (large.model.size, large.schedule.epochs, large.schedule.warmup_epochs) == ("large", 800, 40)


ADPE = {"model.arch": "adpe", "model.adv_mode": "embedding", "model.adv_norm": "l2", "model.adv_eps": 1.0,
        "optim.adv_base_lr": 1.5e-4}
LONG = {"schedule.epochs": 1600, "schedule.warmup_epochs": 40}


@pytest.mark.parametrize("name, base, changed", [
    ("mae_plus_vit_base_1600ep", "mae_plus_vit_base_400ep", LONG),
    ("adpe_vit_base_400ep", "mae_plus_vit_base_400ep", ADPE),
    ("adpe_vit_base_1600ep", "mae_plus_vit_base_1600ep", ADPE),
    ("adpe_coord_vit_base_400ep", "adpe_vit_base_400ep", {"model.adv_mode": "coordinate"}),
    ("adpe_coord_vit_base_1600ep", "adpe_coord_vit_base_400ep", LONG),
])
def test_mae_plus_and_adpe_recipes_differ_only_where_they_say(name, base, changed):
    def values(config):
        return {k: v for k, v in flat(load_config(config, configs_dir=CONFIGS_DIR).to_dict()).items()
                if k != "config_name"}
    reference = values(base)
    assert {k: v for k, v in values(name).items() if reference.get(k, object()) != v} == changed


def test_mae_plus_recipe_values():
    """The authors' public commands: 4 crops of 112 px at scale 0.08-1 per image, 4096 images per optimizer step
    (128 x 8 GPUs x 4), base lr 1.5e-4, 20 warmup epochs of 400."""
    cfg = load_config("mae_plus_vit_base_400ep", configs_dir=CONFIGS_DIR)
    assert (cfg.data.crops, tuple(cfg.data.crop_scale), cfg.model.img_size) == (4, (0.08, 1.0), 112)
    assert (cfg.effective_batch, cfg.batch_size, cfg.optim.base_lr, cfg.optim.weight_decay) == (4096, 128, 1.5e-4, 0.05)
    assert (cfg.schedule.epochs, cfg.schedule.warmup_epochs, cfg.model.mask_ratio) == (400, 20, 0.75)
    assert (cfg.model.decoder_dim, cfg.model.decoder_depth, cfg.model.norm_pix_loss) == (512, 8, True)
