"""BEiT's relative position bias table and layer scale (mmseg's MAE backbone options) in our ViT."""
import pytest
import torch
from timm.models.beit import Beit

from backbone import infer_vit_config, load_pretrained, param_groups_layer_decay
from backbone.vit import VisionTransformer

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)


def beit_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm Beit keys to ours: q/v biases into one qkv bias (BEiT has no key bias), gamma_i -> lsi.gamma."""
    ours = {}
    for key, value in state.items():
        if key.endswith("q_bias"):
            v_bias = state[key.replace("q_bias", "v_bias")]
            ours[key.replace("q_bias", "qkv.bias")] = torch.cat([value, torch.zeros_like(value), v_bias])
        elif key.endswith(("gamma_1", "gamma_2")):
            ours[key.replace("gamma_", "ls").replace("ls1", "ls1.gamma").replace("ls2", "ls2.gamma")] = value
        elif not key.endswith(("v_bias", "relative_position_index")):
            ours[key] = value
    return ours


def test_equals_timm_beit_with_rel_pos_table_and_layer_scale():
    torch.manual_seed(0)
    reference = Beit(**SMALL, num_classes=0, global_pool="token", use_rel_pos_bias=True, init_values=0.5).eval()
    with torch.no_grad():  # random tables, gammas and biases, so every entry of the lookup matters
        for name, param in reference.named_parameters():
            if name.endswith(("relative_position_bias_table", "gamma_1", "gamma_2", "q_bias", "v_bias")):
                param.normal_()
    ours = VisionTransformer(**SMALL, rel_pos_bias=True, layer_scale_init=1.0, pos_embed_trainable=True).eval()
    result = ours.load_state_dict(beit_to_ours(reference.state_dict()), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours.forward_tokens(x), reference.forward_features(x), atol=1e-5, rtol=0)


def test_fresh_table_and_unit_layer_scale_leave_a_plain_vit_unchanged(tmp_path):
    torch.manual_seed(0)
    plain = VisionTransformer(**SMALL).eval()
    path = tmp_path / "plain.pth"
    torch.save(plain.state_dict(), path)
    extended = VisionTransformer(**SMALL, rel_pos_bias=True, layer_scale_init=1.0).eval()
    report = load_pretrained(extended, path, allowed_missing=("relative_position_bias_table", "gamma"))
    assert sorted({k.split(".", 2)[-1] for k in report.missing}) == [
        "attn.relative_position_bias_table", "ls1.gamma", "ls2.gamma"]
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(extended.forward_tokens(x), plain.forward_tokens(x))


def test_table_is_resized_to_the_model_grid_and_detected_in_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = VisionTransformer(**SMALL, rel_pos_bias=True, layer_scale_init=0.1)
    with torch.no_grad():
        source.blocks[0].attn.relative_position_bias_table.normal_()
    path = tmp_path / "beit_like.pth"
    torch.save(source.state_dict(), path)
    config = infer_vit_config(torch.load(path, weights_only=True))
    assert config["rel_pos_bias"] and config["layer_scale_init"]
    target = VisionTransformer(**{**SMALL, "img_size": 64}, rel_pos_bias=True, layer_scale_init=1.0)
    report = load_pretrained(target, path, allowed_missing=())
    assert not report.missing and any("offsets" in note for note in report.notes)
    table = target.blocks[0].attn.relative_position_bias_table
    assert table.shape == (15 * 15 + 3, 4)
    # the three [CLS] entries are carried over unchanged; the 7x7 offsets are interpolated onto 15x15
    torch.testing.assert_close(table[-3:], source.blocks[0].attn.relative_position_bias_table[-3:])
    centre = source.blocks[0].attn.relative_position_bias_table[:49].view(7, 7, 4)[3, 3]
    torch.testing.assert_close(table[:225].view(15, 15, 4)[7, 7], centre, atol=1e-4, rtol=0)


def test_table_needs_the_grid_it_was_built_for():
    model = VisionTransformer(**SMALL, rel_pos_bias=True)
    with pytest.raises(ValueError, match="4x4 grid, got 8x8"):
        model.forward_tokens(torch.randn(1, 3, 64, 64))


def test_table_works_under_bf16_autocast():
    model = VisionTransformer(**SMALL, rel_pos_bias=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.forward_tokens(x)
    torch.testing.assert_close(out.float(), model.forward_tokens(x), atol=0.1, rtol=0.05)


def test_table_and_layer_scale_get_no_weight_decay():
    model = VisionTransformer(**SMALL, rel_pos_bias=True, layer_scale_init=1.0)
    groups = param_groups_layer_decay(model, lr=1.0, weight_decay=0.05, layer_decay=0.5, num_layers=2)
    decayed = {name for g in groups if g["weight_decay"] for name in g["param_names"]}
    assert decayed and not any(k.endswith(("relative_position_bias_table", "gamma")) for k in decayed)


def test_table_excludes_vitdet_options():
    with pytest.raises(ValueError, match="exclude each other"):
        VisionTransformer(**SMALL, class_token=False, global_pool="avg", rel_pos_bias=True, use_rel_pos=True)
