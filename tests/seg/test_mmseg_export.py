"""Our ViT exported in the mmseg layout gives mmseg's own MAE backbone exactly our feature maps."""
import torch

from backbone import VisionTransformer, export_checkpoint
from seg.model import build_mmseg_model

SMALL = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=4, global_pool="")


def mmseg_mae(**options):
    model = build_mmseg_model(dict(type="MAE", img_size=(64, 64), patch_size=16, embed_dims=64, num_layers=2,
                                   num_heads=4, mlp_ratio=4, out_indices=[0, 1], norm_cfg=dict(type="LN", eps=1e-6),
                                   **options))
    model.eval()  # mmseg's train() returns None, so no chaining
    return model


def test_relative_position_tables_and_layer_scales_carry_over(tmp_path):
    torch.manual_seed(0)
    ours = VisionTransformer(**SMALL, rel_pos_bias=True, layer_scale_init=0.5).eval()
    with torch.no_grad():
        for name, param in ours.named_parameters():
            if name.endswith(("relative_position_bias_table", "gamma")):
                param.normal_()
    reference = mmseg_mae(init_values=1.0)
    result = reference.load_state_dict(torch.load(export_checkpoint(ours, tmp_path / "m.pth", "mmseg"),
                                                  weights_only=True), strict=False)
    assert not result.unexpected_keys
    assert all(k.endswith("relative_position_index") for k in result.missing_keys)  # rebuilt, not learned
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for got, expected in zip(reference(x), ours.forward_feature_maps(x, [0, 1]), strict=True):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_a_plain_encoder_loads_with_only_the_new_tables_and_scales_missing(tmp_path):
    ours = VisionTransformer(**SMALL).eval()
    reference = mmseg_mae(init_values=1.0)
    result = reference.load_state_dict(torch.load(export_checkpoint(ours, tmp_path / "m.pth", "mmseg"),
                                                  weights_only=True), strict=False)
    assert not result.unexpected_keys
    assert {k.split(".", 2)[-1] for k in result.missing_keys} == {
        "attn.relative_position_bias_table", "attn.relative_position_index", "gamma_1", "gamma_2"}
    with torch.no_grad():  # MAE zero-initialises the tables; with unit layer scales the function is ours
        for name, param in reference.named_parameters():
            if "relative_position_bias_table" in name:
                param.zero_()
            elif "gamma" in name:
                param.fill_(1.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for got, expected in zip(reference(x), ours.forward_feature_maps(x, [0, 1]), strict=True):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
