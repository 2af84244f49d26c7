import math

import numpy as np
import pytest
import torch
from timm.layers import resample_abs_pos_embed

from backbone.pos_embed import infer_grid, resample_pos_embed, sincos_2d_pos_embed


def test_sincos_golden_values_column_first_like_mae():
    # D=4: each axis gets [sin(p), cos(p)] with omega=1; MAE puts the column code first, then the row code.
    table = sincos_2d_pos_embed(4, (2, 3), num_prefix_tokens=1)
    assert table.shape == (1, 1 + 6, 4)
    assert torch.equal(table[0, 0], torch.zeros(4))
    row, col = 1, 2  # flattened row-major: index 1 + row * 3 + col
    expected = torch.tensor([math.sin(col), math.cos(col), math.sin(row), math.cos(row)])
    torch.testing.assert_close(table[0, 1 + row * 3 + col], expected)
    torch.testing.assert_close(table[0, 1 + 1], torch.tensor([math.sin(1), math.cos(1), 0.0, 1.0]))


def test_sincos_matches_direct_formula():
    dim, grid = 32, (5, 7)
    table = sincos_2d_pos_embed(dim, grid, num_prefix_tokens=0)[0].double()
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))
    for r in range(grid[0]):
        for c in range(grid[1]):
            code = np.concatenate([np.sin(c * omega), np.cos(c * omega), np.sin(r * omega), np.cos(r * omega)])
            np.testing.assert_allclose(table[r * grid[1] + c].numpy(), code, atol=1e-6)


def test_sincos_rejects_width_not_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_pos_embed(30, (2, 2))


def test_resample_is_identity_at_same_grid():
    pos = torch.randn(1, 1 + 196, 16)
    assert torch.equal(resample_pos_embed(pos, (14, 14)), pos)


def test_resample_keeps_cls_slot_and_shape():
    pos = torch.randn(1, 1 + 196, 16)
    out = resample_pos_embed(pos, (20, 12))
    assert out.shape == (1, 1 + 240, 16)
    assert torch.equal(out[:, 0], pos[:, 0])


def test_resample_matches_bicubic_reference_without_antialias():
    pos = torch.randn(1, 1 + 64, 8)
    ours = resample_pos_embed(pos, (4, 4))
    reference = resample_abs_pos_embed(pos, [4, 4], [8, 8], num_prefix_tokens=1, antialias=False)
    torch.testing.assert_close(ours, reference)
    grid = pos[:, 1:].reshape(1, 8, 8, 8).permute(0, 3, 1, 2)
    direct = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
    torch.testing.assert_close(ours[:, 1:], direct.permute(0, 2, 3, 1).reshape(1, 16, 8))


def test_resample_constant_field_stays_constant():
    pos = torch.cat([torch.zeros(1, 1, 4), torch.full((1, 49, 4), 0.5)], dim=1)
    torch.testing.assert_close(resample_pos_embed(pos, (11, 9))[:, 1:], torch.full((1, 99, 4), 0.5))


def test_resample_changes_prefix_count():
    pos = torch.randn(1, 1 + 16, 8)
    dropped = resample_pos_embed(pos, (4, 4), num_prefix_tokens=1, new_num_prefix_tokens=0)
    assert torch.equal(dropped, pos[:, 1:])
    added = resample_pos_embed(pos[:, 1:], (4, 4), num_prefix_tokens=0, new_num_prefix_tokens=1)
    assert torch.equal(added[:, 0], torch.zeros(1, 8)) and torch.equal(added[:, 1:], pos[:, 1:])


def test_infer_grid_refuses_non_square():
    assert infer_grid(196) == (14, 14)
    with pytest.raises(ValueError, match="square"):
        infer_grid(200)
