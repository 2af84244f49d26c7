"""Position-reconstruction accuracy of a DropPos model (paper Tab. S3 grid) and its Fig. 3 picture.

Every (gamma, gamma_pos) case draws its masks from its own generator, seeded from (seed, gamma, gamma_pos):
the same data and seed give every checkpoint the same masks, and a cell does not depend on which other
cases are evaluated or in what order. Accuracy is unweighted top-1 over the dropped positions only.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from engine.safe_io import atomic_path

from .droppos import DropPos

MASK_RATIOS = (0.0, 0.25, 0.5, 0.75)
POS_MASK_RATIOS = (0.25, 0.5, 0.75, 0.95)
HEADER = 16  # pixels of column titles above the figure


def case_seed(seed: int, mask_ratio: float, pos_mask_ratio: float) -> int:
    """Stable 63-bit seed of one evaluation case, so masks depend on (seed, case) and not on case order."""
    key = f"{seed}:{float(mask_ratio)!r}:{float(pos_mask_ratio)!r}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def _generator(seed: int, mask_ratio: float, pos_mask_ratio: float, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(case_seed(seed, mask_ratio, pos_mask_ratio))


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _predict(model: DropPos, images: torch.Tensor, mask_ratio: float, pos_mask_ratio: float,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids_visible, dropped, predicted position) of one batch under one case."""
    ids_visible, dropped = model.mask(images.shape[0], mask_ratio, pos_mask_ratio, images.device, generator)
    logits = model.decode(model.encode_visible(images, ids_visible, dropped))
    return ids_visible, dropped, logits.argmax(dim=-1)


def position_counts(
    model: DropPos,
    batches: Iterable[torch.Tensor | Sequence[torch.Tensor]],
    mask_ratios: Sequence[float] = MASK_RATIOS,
    pos_mask_ratios: Sequence[float] = POS_MASK_RATIOS,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, counted) int64 grids of dropped positions over one pass of the data; counts, not ratios,
    so that data shards or ranks can be summed before dividing. `progress` wraps the batches (e.g. tqdm)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    cases = [(i, j, gamma, gamma_pos) for i, gamma in enumerate(mask_ratios)
             for j, gamma_pos in enumerate(pos_mask_ratios)]
    generators = {(i, j): _generator(seed, gamma, gamma_pos, device) for i, j, gamma, gamma_pos in cases}
    correct = torch.zeros(len(mask_ratios), len(pos_mask_ratios), dtype=torch.long, device=device)
    counted = torch.zeros_like(correct)
    with _eval_mode(model), torch.inference_mode(), _autocast(device):
        for batch in progress(batches) if progress is not None else batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            images = images.to(device, non_blocking=True)
            for i, j, gamma, gamma_pos in cases:
                ids_visible, dropped, predicted = _predict(model, images, gamma, gamma_pos, generators[i, j])
                correct[i, j] += ((predicted == ids_visible) & dropped).sum()
                counted[i, j] += dropped.sum()
    return correct.cpu(), counted.cpu()


def position_accuracy_grid(model: DropPos, batches: Iterable[torch.Tensor | Sequence[torch.Tensor]],
                           *args: Any, **kwargs: Any) -> torch.Tensor:
    """Top-1 accuracy (%) of the dropped positions, rows gamma x columns gamma_pos: paper Tab. S3 (NaN
    where a case drops no position, e.g. gamma_pos=0, or there is no data). Further arguments as for position_counts."""
    correct, counted = position_counts(model, batches, *args, **kwargs)
    return 100.0 * correct.double() / counted.double()


def format_grid(grid: torch.Tensor, mask_ratios: Sequence[float] = MASK_RATIOS,
                pos_mask_ratios: Sequence[float] = POS_MASK_RATIOS) -> str:
    """Markdown table laid out like the paper's Tab. S3, then the average of all cells, for reports."""
    lines = ["| gamma \\ gamma_pos | " + " | ".join(f"{r:.2f}" for r in pos_mask_ratios) + " |",
             "|---" * (len(pos_mask_ratios) + 1) + "|"]
    for gamma, row in zip(mask_ratios, grid.tolist(), strict=True):
        lines.append(f"| {gamma:.2f} | " + " | ".join(f"{value:.2f}" for value in row) + " |")
    return "\n".join(lines) + f"\n\naverage: {grid.double().mean().item():.2f}\n"


def _to_uint8(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised (B, 3, H, W) -> displayable uint8 (B, H, W, 3)."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = (images.detach().float().cpu() * std_t + mean_t).clamp(0, 1)
    return (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def reconstruction_figure(
    model: DropPos,
    images: torch.Tensor,
    path: str | Path,
    mean: Sequence[float],
    std: Sequence[float],
    mask_ratios: Sequence[float] = MASK_RATIOS,
    pos_mask_ratio: float = 0.95,
    seed: int = 0,
) -> Path:
    """PNG of paper Fig. 3: per image the input, then per gamma masked patches black, dropped patches placed
    wrongly white, the rest as pixels; shows where position prediction fails as masking grows."""
    device = next(model.parameters()).device
    batch, _, height, width = images.shape
    rows, cols = model.grid_size
    ph, pw = height // rows, width // cols
    display = _to_uint8(images, mean, std)
    panels = [display]
    with _eval_mode(model), torch.inference_mode(), _autocast(device):
        for gamma in mask_ratios:
            generator = _generator(seed, gamma, pos_mask_ratio, device)
            ids_visible, dropped, predicted = _predict(model, images.to(device), gamma, pos_mask_ratio, generator)
            # per patch: 0 masked (black), 1 shown, 2 dropped and placed wrongly (white)
            state = torch.zeros(batch, rows * cols, dtype=torch.long)
            wrong = (dropped & (predicted != ids_visible)).long().cpu()
            state.scatter_(1, ids_visible.cpu(), 1 + wrong)
            state = state.view(batch, rows, cols).repeat_interleave(ph, 1).repeat_interleave(pw, 2).unsqueeze(-1)
            panel = torch.where(state == 1, display, torch.zeros_like(display))
            panels.append(torch.where(state == 2, torch.full_like(display, 255), panel))
    grid = torch.cat(panels, dim=2).reshape(batch * height, len(panels) * width, 3)
    canvas = Image.new("RGB", (len(panels) * width, HEADER + batch * height), "white")
    canvas.paste(Image.fromarray(grid.numpy()), (0, HEADER))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for k, title in enumerate(["input"] + [f"gamma={gamma:g}" for gamma in mask_ratios]):
        draw.text((k * width + 2, 2), title, fill="black", font=font)
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path
