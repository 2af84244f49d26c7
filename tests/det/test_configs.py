"""The shipped COCO recipes: the paper's 1x (issue 5) and ViTDet's 100-epoch schedule (detectron2's
mask_rcnn_vitdet_{b,l}_100ep.py), pinned value by value, and the detectors they build."""
import pytest
import torch

from det.train import CONFIGS_DIR, build_detector
from engine import load_config

ONE_X = dict(iterations=88_750, steps=(78_889, 85_463), lr=3e-4, effective_batch=16)
HUNDRED_EPOCHS = dict(iterations=184_375, steps=(163_889, 177_546), lr=1e-4, effective_batch=64)
VIT_B = dict(size="base", layer_decay=0.7, drop_path_rate=0.1, global_blocks=[2, 5, 8, 11])
VIT_L = dict(size="large", layer_decay=0.8, drop_path_rate=0.4, global_blocks=[5, 11, 17, 23])
RECIPES = {
    "mask_rcnn_vit_base_1x": {**ONE_X, **VIT_B},
    "mask_rcnn_vit_large_1x": {**ONE_X, **VIT_L},
    "mask_rcnn_vit_base_100ep": {**HUNDRED_EPOCHS, **VIT_B},
    "mask_rcnn_vit_large_100ep": {**HUNDRED_EPOCHS, **VIT_L},
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_values(name):
    expected, cfg = RECIPES[name], load_config(name, configs_dir=CONFIGS_DIR)
    schedule, optim, model = cfg.schedule, cfg.optim, cfg.model
    assert (schedule.iterations, tuple(schedule.steps), schedule.gamma) == (
        expected["iterations"], expected["steps"], 0.1)
    assert (schedule.warmup_iters, schedule.warmup_factor) == (250, 0.001)
    assert (optim.lr, optim.weight_decay, tuple(optim.betas)) == (expected["lr"], 0.1, (0.9, 0.999))
    assert optim.layer_decay == expected["layer_decay"] and model.drop_path_rate == expected["drop_path_rate"]
    assert cfg.effective_batch == expected["effective_batch"] and cfg.effective_batch % cfg.batch_size == 0
    assert (model.size, model.img_size, model.pretrain_img_size, model.window_size) == (
        expected["size"], 1024, 224, 14)
    assert cfg.precision == "bf16" and tuple(cfg.data.scale_range) == (0.1, 2.0)


def test_the_100_epoch_schedule_is_100_coco_epochs():
    cfg = load_config("mask_rcnn_vit_base_100ep", configs_dir=CONFIGS_DIR)
    assert round(cfg.schedule.iterations * cfg.effective_batch / 118_000) == 100  # COCO train2017: ~118k images


@pytest.mark.parametrize("name", ["mask_rcnn_vit_base_1x", "mask_rcnn_vit_large_100ep"])
def test_recipe_builds_its_backbone(name):
    expected, cfg = RECIPES[name], load_config(name, configs_dir=CONFIGS_DIR)
    with torch.device("meta"):
        net = build_detector(cfg, 80, pretrained=False).backbone.net
    assert net.config["global_blocks"] == expected["global_blocks"]
    assert net.blocks[-1].drop_path1.drop_prob == pytest.approx(expected["drop_path_rate"])
    assert tuple(net.pos_embed.shape[1:]) == (14 * 14, net.embed_dim)
