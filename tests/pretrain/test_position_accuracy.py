import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from backbone import build_vit
from pretrain import DropPos
from pretrain.position_accuracy import (
    HEADER,
    case_seed,
    format_grid,
    position_accuracy_grid,
    position_counts,
    reconstruction_figure,
)

GAMMAS, GAMMA_POS = (0.0, 0.25, 0.5, 0.75), (0.25, 0.5, 0.75, 0.95)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def tiny_droppos():
    torch.manual_seed(0)
    return build_vit("tiny", model_class=DropPos, img_size=64, depth=1, decoder_dim=32, decoder_heads=4)


def data(sizes=(3, 2), labels=True):
    generator = torch.Generator().manual_seed(1)
    images = [torch.randn(n, 3, 64, 64, generator=generator) for n in sizes]
    return [(x, torch.zeros(len(x), dtype=torch.long)) for x in images] if labels else images


def record_masks(model):
    """Wrap model.mask so every (mask_ratio, pos_mask_ratio, ids_visible, dropped) draw is kept, in order."""
    calls, mask = [], model.mask

    def recording(batch, mask_ratio, pos_mask_ratio, device, generator=None):
        ids_visible, dropped = mask(batch, mask_ratio, pos_mask_ratio, device, generator)
        calls.append((mask_ratio, pos_mask_ratio, ids_visible, dropped))
        return ids_visible, dropped

    model.mask = recording
    return calls


def fixed_decoder(model, shift):
    """Replace decode with logits one-hot at (true index + shift) mod N: shift 0 is an oracle, 1 always wrong."""
    calls = record_masks(model)
    num = model.grid_size[0] * model.grid_size[1]
    model.decode = lambda tokens: 10.0 * F.one_hot((calls[-1][2] + shift) % num, num).float()
    return calls


def test_grid_shape_determinism_and_mode_restored():
    model, wrapped = tiny_droppos().train(), []

    def progress(batches):
        wrapped.append(len(batches))
        return batches

    grid = position_accuracy_grid(model, data(), progress=progress)
    assert grid.shape == (4, 4) and model.training and wrapped == [2]
    assert ((grid >= 0) & (grid <= 100)).all()
    assert torch.equal(grid, position_accuracy_grid(model, data()))
    calls = record_masks(model)
    for seed in (0, 0, 1):
        position_accuracy_grid(model, data(), seed=seed)
    runs = [calls[k * 32:(k + 1) * 32] for k in range(3)]  # 2 batches x 16 cases each
    same = [torch.equal(a[2], b[2]) and torch.equal(a[3], b[3]) for a, b in zip(runs[0], runs[1], strict=True)]
    other = [torch.equal(a[2], b[2]) and torch.equal(a[3], b[3]) for a, b in zip(runs[0], runs[2], strict=True)]
    assert len(calls) == 96 and all(same) and not any(other)


def test_cells_do_not_depend_on_case_order_or_selection():
    model = tiny_droppos()
    grid = position_accuracy_grid(model, data(), seed=4)
    flipped = position_accuracy_grid(model, data(), GAMMAS[::-1], GAMMA_POS[::-1], seed=4)
    assert torch.equal(flipped, grid.flip(0, 1))
    single = position_accuracy_grid(model, data(), (0.5,), (0.75,), seed=4)
    assert torch.equal(single[0, 0], grid[2, 2])


def test_matches_per_sample_reference_loop():
    model = tiny_droppos().eval()
    batches = data(sizes=(3, 2, 1), labels=False)
    grid = position_accuracy_grid(model, batches, seed=7)
    num = model.grid_size[0] * model.grid_size[1]
    for i, gamma in enumerate(GAMMAS):
        for j, gamma_pos in enumerate(GAMMA_POS):
            generator = torch.Generator().manual_seed(case_seed(7, gamma, gamma_pos))
            correct = total = 0
            for images in batches:
                ids_visible, dropped = model.mask(len(images), gamma, gamma_pos, torch.device("cpu"), generator)
                for b in range(len(images)):
                    with torch.no_grad():
                        tokens = model.encode_visible(images[b:b + 1], ids_visible[b:b + 1], dropped[b:b + 1])
                        logits = model.decode(tokens)[0]
                    for k in range(ids_visible.shape[1]):
                        if dropped[b, k]:
                            assert 0 <= ids_visible[b, k] < num
                            total += 1
                            correct += int(logits[k].argmax() == ids_visible[b, k])
            assert grid[i, j].item() == pytest.approx(100.0 * correct / total)


def test_counts_only_the_dropped_positions():
    model = tiny_droppos()
    correct, counted = position_counts(model, data(sizes=(3, 2)))
    per_sample = torch.tensor([[4, 8, 12, 16], [3, 6, 9, 12], [2, 4, 6, 8], [1, 2, 3, 4]])  # N = 16 patches
    assert torch.equal(counted, 5 * per_sample)
    assert correct.dtype == torch.long and (correct <= counted).all()
    assert position_accuracy_grid(model, data(), (0.5,), (0.0,)).isnan().all()  # nothing dropped: undefined


@pytest.mark.parametrize(("shift", "expected"), [(0, 100.0), (1, 0.0)])
def test_oracle_scores_100_and_always_wrong_scores_0(shift, expected):
    model = tiny_droppos()
    fixed_decoder(model, shift)
    assert torch.equal(position_accuracy_grid(model, data()), torch.full((4, 4), expected, dtype=torch.float64))


def test_format_grid_is_a_table_with_the_average():
    grid = torch.tensor([[97.19, 98.69, 98.20, 92.30], [96.78, 98.26, 97.66, 91.05],
                         [97.26, 96.82, 95.66, 89.12], [79.94, 78.10, 68.73, 40.24]])
    text = format_grid(grid, GAMMAS, GAMMA_POS)
    lines = text.splitlines()
    assert lines[0] == "| gamma \\ gamma_pos | 0.25 | 0.50 | 0.75 | 0.95 |"
    assert lines[3] == "| 0.25 | 96.78 | 98.26 | 97.66 | 91.05 |"
    assert lines[-1] == "average: 88.50"  # mean of the 16 printed cells (the paper prints avg 87.83)


def test_figure_paints_masked_black_and_misplaced_white(tmp_path):
    model = tiny_droppos()
    calls = fixed_decoder(model, shift=1)  # every dropped patch is misplaced
    generator = torch.Generator().manual_seed(2)
    display = torch.rand(2, 3, 64, 64, generator=generator) * 0.6 + 0.2  # never pure black or white
    images = (display - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    path = reconstruction_figure(model, images, tmp_path / "fig" / "fig3.png", MEAN, STD, GAMMAS, 0.95)
    assert path.exists() and not list(path.parent.glob(".*.tmp"))
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape == (HEADER + 2 * 64, 5 * 64, 3)
    first = picture[HEADER:HEADER + 64, :64].astype(int)
    assert np.abs(first - (display[0].permute(1, 2, 0).numpy() * 255).round()).max() <= 1
    expected = (display * 255).round().permute(0, 2, 3, 1).reshape(2, 4, 16, 4, 16, 3)
    expected = expected.permute(0, 1, 3, 2, 4, 5).reshape(2, 16, -1).numpy()
    for column, (gamma, _, ids_visible, dropped) in enumerate(calls, start=1):
        for b in range(2):
            cells = picture[HEADER + b * 64:HEADER + (b + 1) * 64, column * 64:(column + 1) * 64]
            cells = cells.reshape(4, 16, 4, 16, 3).transpose(0, 2, 1, 3, 4).reshape(16, -1)
            black, white = (cells == 0).all(1), (cells == 255).all(1)
            shown = {int(p) for p in ids_visible[b]}
            misplaced = {int(p) for p, d in zip(ids_visible[b], dropped[b], strict=True) if d}
            assert {p for p in range(16) if black[p]} == set(range(16)) - shown
            assert {p for p in range(16) if white[p]} == misplaced
            assert len(shown) == int(16 * (1 - gamma))
            for p in shown - misplaced:  # anchors show their own pixels at their own place
                assert np.abs(cells[p].astype(int) - expected[b, p]).max() <= 1
