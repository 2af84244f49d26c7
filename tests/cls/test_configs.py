"""Every shipped fine-tuning config loads, states its batch semantics, and builds its ViT."""
import pytest
import torch

from backbone import build_vit
from backbone.checkpoint_load import resolve_extensions
from cls.finetune import CONFIGS_DIR
from engine import load_config

FINETUNE = sorted(p.stem for p in CONFIGS_DIR.glob("finetune_*.py"))
POSPROBE = sorted(p.stem for p in CONFIGS_DIR.glob("posprobe_*.py"))
LINPROBE = sorted(p.stem for p in CONFIGS_DIR.glob("linprobe_*.py"))


@pytest.mark.parametrize("name", LINPROBE)
def test_linprobe_config_states_batch_and_optimizer(name):
    cfg = load_config(name, configs_dir=CONFIGS_DIR)
    assert cfg.effective_batch % cfg.batch_size == 0 and cfg.optim.type in ("lars", "sgd")


@pytest.mark.parametrize("name", POSPROBE)
def test_posprobe_config_states_batch_and_drop_ratio(name):
    cfg = load_config(name, configs_dir=CONFIGS_DIR)
    assert cfg.effective_batch % cfg.batch_size == 0 and cfg.model.drop_ratio == 0.75  # the paper's 75%


@pytest.mark.parametrize("name", FINETUNE)
def test_config_loads_and_builds(name):
    cfg = load_config(name, configs_dir=CONFIGS_DIR)
    assert cfg.effective_batch % cfg.batch_size == 0
    kwargs = resolve_extensions(dict(cfg.model), None)  # "auto" extensions: none without a checkpoint
    with torch.device("meta"):
        model = build_vit(kwargs.pop("size"), num_classes=1000, **kwargs)
    assert model.pos_embed.requires_grad and model.config["global_pool"] == "avg"


def test_paper_recipe_values():
    base = load_config("finetune_vit_base_100ep", configs_dir=CONFIGS_DIR)
    assert (base.effective_batch, base.optim.base_lr, base.optim.layer_decay, base.schedule.epochs) == (
        1024, 1e-3, 0.75, 100)
    assert (base.aug.mixup, base.aug.cutmix, base.aug.smoothing, base.aug.reprob) == (0.8, 1.0, 0.1, 0.25)
    assert (base.model.drop_path_rate, base.schedule.warmup_epochs) == (0.1, 5)
    assert (base.optim.weight_decay, tuple(base.optim.betas), base.schedule.min_lr) == (0.05, (0.9, 0.999), 1e-6)
    assert (base.aug.auto_augment, base.model.global_pool) == ("rand-m9-mstd0.5-inc1", "avg")
    large = load_config("finetune_vit_large_50ep", configs_dir=CONFIGS_DIR)
    assert (large.model.size, large.schedule.epochs, large.effective_batch) == ("large", 50, 1024)
    assert (large.optim.weight_decay, tuple(large.optim.betas), large.aug.auto_augment) == (
        0.05, (0.9, 0.999), "rand-m9-mstd0.5-inc1")
    assert large.model.global_pool == "avg"
    assert large.model.drop_path_rate == 0.2  # MAE's ViT-L value, not the paper table's 0.1 (see the config)
