import math

import pytest
import torch

from pretrain.smoothing import official_smoothing, paper_smoothing, position_smoothing, sigma_at


def authors_formula(num_patches: int, sigma: float) -> torch.Tensor:
    """The release's table, element by element as the notes describe it (float32 storage)."""
    if sigma == 0:
        return torch.eye(num_patches)
    side = int(math.sqrt(num_patches))
    weight = torch.zeros(num_patches, num_patches)
    for i in range(num_patches):
        for j in range(num_patches):
            squared = (i // side - j // side) ** 2 + (i % side - j % side) ** 2
            weight[i, j] = math.exp(-squared / sigma**2)
    return weight / weight.sum(-1)  # broadcasts over columns: column normalisation


@pytest.mark.parametrize("sigma", [0, 0.5, 1, 2])
def test_official_equals_release_bit_for_bit(sigma):
    reference = authors_formula((224 // 14) ** 2, sigma)[:, :196]
    ours = official_smoothing(224, sigma, 196)
    assert ours.shape == (256, 196) and ours.dtype == torch.float32
    assert torch.equal(ours, reference)


def test_official_quirks_are_kept():
    official, paper = official_smoothing(224, 1.0, 196), paper_smoothing((14, 14), 1.0)
    # position 14 is row 1, column 0 of the 14x14 grid, right below position 0; the release reads it on a
    # 16-wide grid as row 0, column 14, far from position 0
    assert paper[14, 0] > 0.05 and official[14, 0] < 1e-30
    full = official_smoothing(224, 1.0, 256)  # column-normalised: columns sum to 1, rows do not
    torch.testing.assert_close(full.sum(0), torch.ones(256))
    assert (full.sum(1) - 1).abs().max() > 0.01


@pytest.mark.parametrize("sigma", [0.5, 1, 2])
def test_paper_rows_sum_to_one_and_peak_at_true_position(sigma):
    table = paper_smoothing((14, 14), sigma)
    assert table.shape == (196, 196)
    torch.testing.assert_close(table.sum(1), torch.ones(196))
    assert torch.equal(table.argmax(1), torch.arange(196))
    # Euclidean (not squared) distance: the diagonal neighbour at sqrt(2)
    row = paper_smoothing((14, 14), sigma)[15]
    assert row[0] / row[15] == pytest.approx(math.exp(-math.sqrt(2) / sigma**2), rel=1e-5)


def test_sigma_zero_is_one_hot():
    assert torch.equal(paper_smoothing((14, 14), 0), torch.eye(196))
    assert torch.equal(position_smoothing("official", (14, 14), 224, 0), torch.eye(256)[:, :196])
    with pytest.raises(ValueError, match="smoothing"):
        position_smoothing("neither", (14, 14), 224, 1.0)
    with pytest.raises(ValueError, match="official.*16 positions, fewer than the model's 64"):
        position_smoothing("official", (8, 8), 64, 1.0)  # patch 8: the release's table has too few rows


def test_sigma_schedules():
    # paper: per iteration, sigma0 -> sigmaT linearly
    assert sigma_at("paper", 1.0, 0.0, 0, 10, 100) == 1.0
    assert sigma_at("paper", 1.0, 0.0, 25, 10, 100) == pytest.approx(0.75)
    assert sigma_at("paper", 2.0, 0.0, 100, 10, 100) == 0.0
    # official: once per epoch, (1 - epoch / epochs) * sigma0
    assert sigma_at("official", 1.0, 0.0, 19, 10, 100) == pytest.approx(0.9)
    assert sigma_at("official", 1.0, 0.0, 20, 10, 100) == pytest.approx(0.8)
    assert sigma_at("official", 1.0, 1.0, 55, 10, 100) == 1.0  # no decay
