import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

from backbone import VIT_SIZES, build_vit, load_pretrained
from backbone.vit import Attention, Block, VisionTransformer

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_equals_timm_vit_on_same_weights(tmp_path, pool):
    torch.manual_seed(0)
    reference = TimmViT(**SMALL, num_classes=7, global_pool=pool).eval()
    path = tmp_path / "timm.pth"
    torch.save(reference.state_dict(), path)
    ours = VisionTransformer(**SMALL, num_classes=7, global_pool=pool).eval()
    report = load_pretrained(ours, path, drop_head=False)
    assert report.format == "timm" and not report.missing and not report.unexpected
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.forward_features(x), reference.forward_head(reference.forward_features(x),
                                                                                pre_logits=True), atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", sorted(VIT_SIZES))
def test_named_sizes_have_timm_parameter_counts(size):
    with torch.device("meta"):
        ours = build_vit(size, num_classes=1000)
        reference = timm.create_model(f"vit_{size}_patch16_224", pretrained=False)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(reference)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


def test_sincos_pos_embed_is_fixed_unless_trainable():
    assert not VisionTransformer(**SMALL).pos_embed.requires_grad
    assert VisionTransformer(**SMALL, pos_embed_trainable=True).pos_embed.requires_grad


def test_window_and_rel_pos_equal_global_block_when_window_covers_grid():
    torch.manual_seed(0)
    plain = Block(32, 4).eval()
    windowed = Block(32, 4, window_size=4, rel_pos_grid=(4, 4)).eval()
    windowed.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 16, 32)
    torch.testing.assert_close(windowed(x, (4, 4)), plain(x, (4, 4)))


def test_windowed_model_equals_global_model_when_window_covers_grid():
    torch.manual_seed(0)
    base = dict(img_size=64, patch_size=16, embed_dim=32, depth=3, num_heads=4, class_token=False, global_pool="avg")
    plain = VisionTransformer(**base).eval()
    windowed = VisionTransformer(**base, window_size=4, global_blocks=[1], use_rel_pos=True).eval()
    missing = windowed.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert all("rel_pos" in k for k in missing) and missing
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(windowed.forward_feature_maps(x, [2])[0], plain.forward_feature_maps(x, [2])[0])


def test_rel_pos_attention_matches_direct_formula():
    torch.manual_seed(0)
    attn = Attention(16, 2, rel_pos_grid=(3, 4))
    torch.nn.init.normal_(attn.rel_pos_h)
    torch.nn.init.normal_(attn.rel_pos_w)
    x = torch.randn(2, 12, 16)
    q, k, v = attn.qkv(x).reshape(2, 12, 3, 2, 8).permute(2, 0, 3, 1, 4)
    logits = (q * 8**-0.5) @ k.transpose(-2, -1)
    rows, cols = torch.arange(12) // 4, torch.arange(12) % 4
    for i in range(12):
        for j in range(12):
            # ViTDet: table row (q_pos - k_pos + size - 1), dotted with the unscaled query
            rh = attn.rel_pos_h[rows[i] - rows[j] + 2]
            rw = attn.rel_pos_w[cols[i] - cols[j] + 3]
            logits[:, :, i, j] += q[:, :, i] @ rh + q[:, :, i] @ rw
    expected = (logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 12, 16)
    torch.testing.assert_close(attn(x, (3, 4)), attn.proj(expected), atol=1e-5, rtol=1e-5)


def test_feature_maps_shapes_and_values():
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL).eval()
    x = torch.randn(2, 3, 32, 48)  # non-square input: pos embed resampled on the fly
    maps = model.forward_feature_maps(x, [0, -1])
    assert [m.shape for m in maps] == [(2, 64, 4, 6)] * 2
    tokens, grid = model.embed(x)
    for block in model.blocks:
        tokens = block(tokens, grid)
    torch.testing.assert_close(maps[1], tokens[:, 1:].transpose(1, 2).reshape(2, 64, 4, 6))
    with pytest.raises(IndexError, match="out of range"):
        model.forward_feature_maps(x, [2])


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL, drop_path_rate=0.0)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    reference = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for ref, p in zip(reference, [p for p in model.parameters() if p.grad is not None], strict=True):
        torch.testing.assert_close(p.grad, ref)


def test_drop_path_is_active_in_training_only():
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL, drop_path_rate=0.5)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(window_size=2), "class_token=False"),
        (dict(class_token=False), "global_pool='token'"),
        (dict(global_pool="max"), "global_pool"),
        (dict(pos_embed="learned"), "pos_embed"),
        (dict(img_size=30), "multiples of patch_size"),
        (dict(class_token=False, global_pool="avg", window_size=2, global_blocks=[5]), "out of range"),
    ],
)
def test_invalid_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        VisionTransformer(**{**SMALL, **options})


def test_unknown_size_is_named():
    with pytest.raises(ValueError, match="huge"):
        build_vit("huge")


def test_window_partition_round_trip_with_padding():
    from timm.models.vision_transformer_sam import window_partition, window_unpartition
    x = torch.randn(2, 5, 7, 3)  # a 5 x 7 grid in windows of 4: padded to 8 x 8, 4 windows per image
    windows, padded = window_partition(x, 4)
    assert windows.shape == (2 * 4, 4, 4, 3) and tuple(padded) == (8, 8)
    torch.testing.assert_close(windows[1, :, :3], x[0, :4, 4:7])  # image 0, top-right window, before its padding
    assert torch.all(windows[1, :, 3] == 0) and torch.all(windows[3, 1:] == 0)  # padding is zeros
    torch.testing.assert_close(window_unpartition(windows, 4, (5, 7), padded), x)
