import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from det.paste import paste_masks


@pytest.mark.parametrize("per_box", [True, False])
def test_full_masks_paste_to_the_pixels_whose_centres_lie_in_the_box(per_box):
    boxes = torch.tensor([[3.2, 5.7, 20.4, 11.1], [0.0, 0.0, 40.0, 30.0], [30.6, 2.2, 35.9, 29.3]])
    pasted = paste_masks(torch.ones(3, 28, 28), boxes, 30, 40, per_box=per_box)
    ys, xs = torch.meshgrid(torch.arange(30) + 0.5, torch.arange(40) + 0.5, indexing="ij")
    for box, mask in zip(boxes, pasted, strict=True):
        inside = (xs >= box[0]) & (xs <= box[2]) & (ys >= box[1]) & (ys <= box[3])
        assert torch.equal(mask, inside)


def test_left_half_of_the_mask_lands_on_the_left_half_of_the_box():
    mask = torch.zeros(1, 28, 28)
    mask[:, :, :14] = 1
    pasted = paste_masks(mask, torch.tensor([[10.0, 10.0, 50.0, 30.0]]), 40, 64)[0]
    columns = pasted.any(dim=0).nonzero().flatten()
    assert (columns.min().item(), columns.max().item()) == (10, 29)
    assert pasted[:, 30:].sum() == 0 and pasted[9].sum() == 0 and pasted[30].sum() == 0


def _bilinear_with_zero_padding(mask: torch.Tensor, u: float, v: float) -> float:
    """Mask value at continuous cell coordinates (u, v) (cell centres at integers), zero outside."""
    u0, v0 = int(torch.floor(torch.tensor(u))), int(torch.floor(torch.tensor(v)))
    total = 0.0
    for du in (0, 1):
        for dv in (0, 1):
            col, row = u0 + du, v0 + dv
            weight = (1 - abs(u - col)) * (1 - abs(v - row))
            if 0 <= row < mask.shape[0] and 0 <= col < mask.shape[1]:
                total += weight * mask[row, col].item()
    return total


def test_every_pixel_equals_a_direct_bilinear_formula():
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(2, 7, 7, generator=generator)
    boxes = torch.tensor([[2.3, 1.6, 15.2, 9.9], [0.4, 3.3, 6.1, 13.7]])
    pasted = paste_masks(masks, boxes, 16, 18)
    for mask, box, result in zip(masks, boxes.tolist(), pasted, strict=True):
        x0, y0, x1, y1 = box
        for y in range(16):
            for x in range(18):
                u = (x + 0.5 - x0) / (x1 - x0) * 7 - 0.5
                v = (y + 0.5 - y0) / (y1 - y0) * 7 - 0.5
                assert result[y, x].item() == (_bilinear_with_zero_padding(mask, u, v) >= 0.5), (x, y)


def test_agrees_with_torchvision_paste_on_blobs_and_chunks_change_nothing(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    count, height, width = 40, 90, 120
    corners = torch.rand(count, 2, generator=generator) * torch.tensor([60.0, 40.0])
    sizes = 20 + torch.rand(count, 2, generator=generator) * 30
    boxes = torch.cat([corners, corners + sizes], dim=1)
    grid = torch.linspace(-1, 1, 28)
    radius = 0.4 + 0.5 * torch.rand(count, 1, 1, generator=generator)
    masks = torch.sigmoid((radius - (grid[None, :, None] ** 2 + grid[None, None, :] ** 2).sqrt()) * 10)
    ours = paste_masks(masks, boxes, height, width)
    theirs = paste_masks_in_image(masks[:, None], boxes, (height, width))[:, 0] >= 0.5
    intersection = (ours & theirs).flatten(1).sum(1).float()
    union = (ours | theirs).flatten(1).sum(1).float()
    assert (intersection / union).min() > 0.85, intersection / union
    assert torch.equal(paste_masks(masks, boxes, height, width, per_box=False), ours)  # the GPU path
    monkeypatch.setattr("det.paste.CHUNK_PIXELS", height * width * 3)  # 3 masks per call
    assert torch.equal(paste_masks(masks, boxes, height, width, per_box=False), ours)


@pytest.mark.parametrize("per_box", [True, False])
def test_no_masks_and_degenerate_boxes(per_box):
    assert paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), 10, 12, per_box=per_box).shape == (0, 10, 12)
    flat = paste_masks(torch.ones(1, 28, 28), torch.tensor([[5.0, 5.0, 5.0, 9.0]]), 10, 12, per_box=per_box)
    assert flat.sum() == 0
    outside = paste_masks(torch.ones(1, 28, 28), torch.tensor([[-9.0, 20.0, -2.0, 30.0]]), 10, 12, per_box=per_box)
    assert outside.sum() == 0
