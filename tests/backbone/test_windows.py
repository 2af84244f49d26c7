"""Our window partition and decomposed relative position bias against timm's SAM helpers (the reference they
replace), bit for bit, and against the definition written out."""
import pytest
import torch
from timm.models import vision_transformer_sam as sam

from backbone.windows import decomposed_rel_pos_bias, relative_table, window_merge, window_partition


@pytest.mark.parametrize("grid", [(8, 8), (7, 10), (13, 5)])
def test_partition_and_merge_equal_timms_and_round_trip(grid):
    x = torch.randn(2, *grid, 6)
    windows, padded = window_partition(x, 4)
    reference, reference_padded = sam.window_partition(x, 4)
    assert padded == reference_padded
    assert torch.equal(windows, reference)
    assert torch.equal(window_merge(windows, 4, grid, padded), x)
    assert torch.equal(window_merge(windows, 4, grid, padded), sam.window_unpartition(windows, 4, grid, padded))


def test_windows_are_row_major_blocks_padded_with_zeros():
    x = torch.arange(5 * 6, dtype=torch.float32).view(1, 5, 6, 1)
    windows, padded = window_partition(x, 4)
    assert padded == (8, 8)
    assert torch.equal(windows[1, :, :2, 0], x[0, :4, 4:, 0])  # second window: rows 0-3, columns 4-7
    assert windows[2, 1:, :, 0].abs().sum() == 0  # third window: row 4 real, rows 5-7 padding


@pytest.mark.parametrize("table_length", [2 * 6 - 1, 2 * 14 - 1])  # the grid's own table, and one resized
def test_decomposed_bias_equals_timms(table_length):
    grid = (6, 6)
    q = torch.randn(3, grid[0] * grid[1], 8)
    table_h, table_w = torch.randn(table_length, 8), torch.randn(table_length, 8)
    assert torch.equal(decomposed_rel_pos_bias(q, table_h, table_w, grid),
                       sam.get_decomposed_rel_pos_bias(q, table_h, table_w, grid, grid))


def test_the_bias_is_the_query_dot_the_row_and_column_offset_embeddings():
    height, width = 3, 4
    q = torch.randn(1, height * width, 5, dtype=torch.float64)
    table_h, table_w = torch.randn(2 * height - 1, 5, dtype=torch.float64), torch.randn(2 * width - 1, 5,
                                                                                          dtype=torch.float64)
    bias = decomposed_rel_pos_bias(q, table_h, table_w, (height, width))[0]
    for i in range(height * width):
        for j in range(height * width):
            (qy, qx), (ky, kx) = divmod(i, width), divmod(j, width)
            expected = q[0, i] @ table_h[qy - ky + height - 1] + q[0, i] @ table_w[qx - kx + width - 1]
            assert torch.isclose(bias[i, j], expected)
    assert relative_table(table_h, height).shape == (height, height, 5)
