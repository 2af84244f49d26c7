"""ViTDet's ViT as a family of its own: recognised from its shapes in every layout, rebuilt from a stored config, and
its pos embed (on the pre-training grid, with detectron2's unused [CLS] slot or without) resampled correctly."""
import pytest
import torch

from backbone import (
    CheckpointError,
    VisionTransformer,
    ViTDetViT,
    build_vit,
    export_checkpoint,
    infer_vit_config,
    load_model,
    load_pretrained,
    resample_pos_embed,
    vit_from_config,
)
from backbone.checkpoint_export import to_detectron2_vitdet

# windows of 4 on a 16 x 16 grid, global blocks 1 and 3, pos embed on the 12 x 12 pre-training grid
VITDET = dict(img_size=128, patch_size=8, depth=4, window_size=4, global_blocks=(1, 3), pretrain_img_size=96,
              class_token=False, global_pool="", use_rel_pos=True)


@pytest.fixture(scope="module")
def vitdet():
    torch.manual_seed(0)
    model = build_vit("tiny", ViTDetViT, **VITDET).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # trained-looking: the zero rel-pos tables included
    return model


def feature_map(model, size=(128, 128)):
    torch.manual_seed(1)
    return model.forward_feature_maps(torch.randn(1, 3, *size), [-1])[0]


def write_timm(model, path):
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, path)


def write_detectron2(model, path):
    torch.save(to_detectron2_vitdet(model.state_dict()), path)


def write_ours(model, path):
    export_checkpoint(model, path)


@pytest.mark.parametrize(("writer", "filename", "fmt"), [(write_timm, "vit.pth", "timm"),
                                                         (write_detectron2, "d2.pth", "detectron2"),
                                                         (write_ours, "vit.safetensors", "ours")])
def test_a_vitdet_encoder_rebuilds_as_vitdet_from_any_layout_with_the_same_features(tmp_path, vitdet, writer,
                                                                                     filename, fmt):
    writer(vitdet, tmp_path / filename)
    model, report = load_model(tmp_path / filename)
    assert report.format == fmt and not report.missing and not report.unexpected, str(report)
    assert type(model) is ViTDetViT and model.config == vitdet.config
    assert all(torch.equal(model.state_dict()[k], v) for k, v in vitdet.state_dict().items())
    for size in ((128, 128), (96, 160)):  # the 12 x 12 table resized to each input's grid, every forward
        torch.testing.assert_close(feature_map(model.eval(), size), feature_map(vitdet, size), rtol=0, atol=0)


def test_window_size_global_blocks_and_grids_follow_from_the_tables():
    state = build_vit("tiny", ViTDetViT, **VITDET).state_dict()
    config = infer_vit_config(state)
    assert {k: config[k] for k in ("img_size", "window_size", "global_blocks", "pretrain_img_size", "num_heads",
                                   "class_token", "global_pool", "use_rel_pos")} == dict(
        img_size=[128, 128], window_size=4, global_blocks=[1, 3], pretrain_img_size=96, num_heads=3,
        class_token=False, global_pool="", use_rel_pos=True)
    same_grid = build_vit("tiny", ViTDetViT, **{**VITDET, "pretrain_img_size": 128}).state_dict()
    assert "pretrain_img_size" not in infer_vit_config(same_grid)  # a plain ViT with rel pos computes the same
    global_only = build_vit("small", ViTDetViT, **{**VITDET, "window_size": 0, "global_blocks": ()}).state_dict()
    config = infer_vit_config(global_only)
    assert (config["window_size"], config["global_blocks"], config["num_heads"]) == (0, [], 6)
    del state["blocks.2.attn.rel_pos_w"]
    with pytest.raises(CheckpointError, match="blocks.2.attn.rel_pos_w"):
        infer_vit_config(state)


def test_stored_configs_build_their_own_family(vitdet):
    assert type(vit_from_config(vitdet.config)) is ViTDetViT
    assert type(vit_from_config(build_vit("tiny", depth=1).config)) is VisionTransformer


@pytest.mark.parametrize(("writer", "filename"), [(write_detectron2, "d2.pth"), (write_ours, "vit.safetensors")])
def test_the_pos_embed_is_resampled_from_its_own_grid_with_or_without_a_cls_slot(tmp_path, vitdet, writer, filename):
    writer(vitdet, tmp_path / filename)
    target = build_vit("tiny", ViTDetViT, **{**VITDET, "pretrain_img_size": 64})  # 8 x 8 table
    report = load_pretrained(target, tmp_path / filename)
    expected = resample_pos_embed(vitdet.pos_embed.detach(), (8, 8), 0, old_grid=(12, 12))
    assert torch.equal(target.pos_embed.detach(), expected) and "from 12x12" in report.notes[0]
