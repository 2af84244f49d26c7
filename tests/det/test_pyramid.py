"""ViTDet backbone: pyramid strides and channels, the pos embed resized on every forward, and the ViT-B / ViT-L
build at 1024 px (on the meta device)."""
import pytest
import torch
import torch.nn.functional as F

from det.pyramid import build_vitdet_backbone, global_blocks


def test_pyramid_levels_have_strides_4_to_64_and_the_asked_channels():
    torch.manual_seed(0)
    backbone = build_vitdet_backbone("tiny", img_size=64, window_size=2, depth=3, global_blocks=(1,), out_channels=32)
    levels = backbone(torch.randn(2, 3, 64, 128))  # another size than built for: the pos embed is resampled
    assert list(levels) == ["p2", "p3", "p4", "p5", "p6"]
    assert [tuple(v.shape) for v in levels.values()] == [(2, 32, 64 // s, 128 // s) for s in (4, 8, 16, 32, 64)]
    torch.testing.assert_close(levels["p6"], levels["p5"][:, :, ::2, ::2])  # p6: p5 subsampled
    assert backbone.out_channels == 32


@pytest.mark.parametrize(("size", "dim", "depth", "blocks"), [("base", 768, 12, (2, 5, 8, 11)),
                                                               ("large", 1024, 24, (5, 11, 17, 23))])
def test_builds_vitdet_shapes_without_running(size, dim, depth, blocks):
    with torch.device("meta"):
        backbone = build_vitdet_backbone(size)
        levels = backbone(torch.empty(1, 3, 1024, 1024))
    net = backbone.net
    assert net.cls_token is None and tuple(net.pos_embed.shape) == (1, 14 * 14, dim)  # the pre-training grid
    windows = [block.window_size for block in net.blocks]
    assert [i for i, w in enumerate(windows) if w == 0] == list(blocks) and set(windows) == {0, 14}
    head_dim = dim // net.blocks[0].attn.num_heads
    assert tuple(net.blocks[0].attn.rel_pos_h.shape) == (2 * 14 - 1, head_dim)
    assert tuple(net.blocks[blocks[0]].attn.rel_pos_h.shape) == (2 * 64 - 1, head_dim)
    first = backbone.pyramid.resamplers[0]
    assert tuple(first[0].weight.shape) == (dim, dim // 2, 2, 2) and tuple(first[3].weight.shape) == (
        dim // 2, dim // 4, 2, 2)
    assert [tuple(v.shape) for v in levels.values()] == [(1, 256, 1024 // s, 1024 // s) for s in (4, 8, 16, 32, 64)]
    assert len(net.blocks) == depth


def test_the_pos_embed_stays_on_the_pretraining_grid_and_is_resized_on_every_forward():
    """ViTDet's get_abs_pos: the (trained) 14 x 14 table resized bicubically to the patch grid of each input."""
    torch.manual_seed(0)
    net = build_vitdet_backbone("tiny", img_size=64, patch_size=8, window_size=4, depth=1, global_blocks=(0,),
                                pretrain_img_size=48).net
    assert tuple(net.pos_embed.shape) == (1, 36, 192) and net.config["pretrain_img_size"] == 48
    torch.nn.init.normal_(net.pos_embed)
    images = torch.randn(1, 3, 64, 80)
    tokens, grid = net.embed(images)
    table = net.pos_embed.reshape(1, 6, 6, 192).permute(0, 3, 1, 2)
    resized = F.interpolate(table, size=(8, 10), mode="bicubic", align_corners=False)
    expected = net.patch_embed(images).reshape(1, 80, 192) + resized.flatten(2).transpose(1, 2)
    assert grid == (8, 10)
    torch.testing.assert_close(tokens, expected)
    tokens.sum().backward()
    assert net.pos_embed.grad.abs().sum() > 0  # the small table is what trains
    with pytest.raises(ValueError, match="pretrain_img_size 50 is not a multiple of patch_size 8"):
        build_vitdet_backbone("tiny", img_size=64, patch_size=8, depth=1, global_blocks=(0,), pretrain_img_size=50)


def test_patch_8_backbones_keep_strides_4_to_64():
    torch.manual_seed(0)
    backbone = build_vitdet_backbone("tiny", img_size=64, patch_size=8, window_size=4, depth=2, global_blocks=(1,),
                                     out_channels=16)
    levels = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(v.shape[-2:]) for v in levels.values()] == [(64 // s, 64 // s) for s in (4, 8, 16, 32, 64)]
    assert [type(m).__name__ for m in backbone.pyramid.resamplers] == [
        "ConvTranspose2d", "Identity", "MaxPool2d", "MaxPool2d"]
    with pytest.raises(ValueError, match="resampling by 8"):
        build_vitdet_backbone("tiny", img_size=64, patch_size=32, depth=1, global_blocks=(0,))


def test_global_blocks_end_each_quarter_for_any_depth():
    assert global_blocks(12) == (2, 5, 8, 11) and global_blocks(24) == (5, 11, 17, 23)
    assert global_blocks(4) == (0, 1, 2, 3) and global_blocks(2) == (0, 1) and global_blocks(6) == (0, 2, 3, 5)
