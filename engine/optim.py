"""An mmengine OptimWrapper without host syncs: bf16 autocast without a loss scaler, gradient clipping (by the
global norm, or per parameter as the DropPos release does) whose norm stays on the device.

mmengine's AmpOptimWrapper always runs a GradScaler (needless for bf16, and its inf check syncs the host every
step) and refuses CPUs; its clipping logs `float(norm)` every step, another sync. Here the norm is kept as a
device tensor that the logging hook averages and reads once per log interval.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from torch import nn

from .errors import UserInputError

PRECISIONS = ("fp32", "bf16")
CLIP_MODES = ("global", "per_param")


class DeviceOptimWrapper(OptimWrapper):
    """OptimWrapper with optional bf16 autocast and sync-free gradient clipping (max_norm=None: off): by the global
    norm of all gradients, or (`clip_mode="per_param"`) each parameter's gradient to its own norm max_norm."""

    def __init__(self, optimizer: torch.optim.Optimizer, precision: str = "fp32", max_norm: float | None = None,
                 accumulative_counts: int = 1, clip_mode: str = "global"):
        if precision not in PRECISIONS:
            raise UserInputError(f"precision={precision!r}; expected one of {PRECISIONS}")
        if clip_mode not in CLIP_MODES:
            raise UserInputError(f"optim.clip_mode={clip_mode!r}; expected one of {CLIP_MODES}")
        super().__init__(optimizer, accumulative_counts=accumulative_counts)
        self.accumulation = accumulative_counts
        self.precision, self.max_norm, self.clip_mode = precision, max_norm, clip_mode
        self.grad_norm_sum: torch.Tensor | None = None
        self.grad_norm_count = 0

    def initialize_count_status(self, model: nn.Module, init_counts: int, max_counts: int) -> None:
        """The Runner counts optimizer steps (engine/loops.py); the wrapper counts the batches it accumulates."""
        super().initialize_count_status(model, init_counts * self.accumulation, max_counts * self.accumulation)

    @contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        """Skip DDP's gradient all-reduce between accumulation steps (mmengine) and autocast to bf16."""
        device = next(model.parameters()).device.type
        with super().optim_context(model), torch.autocast(device, torch.bfloat16, enabled=self.precision == "bf16"):
            yield

    def step(self, **kwargs) -> None:
        """Clip, keeping the global norm before clipping for the log, then step."""
        if self.max_norm is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            norm = clip_per_parameter([p.grad for p in params], self.max_norm) if self.clip_mode == "per_param" \
                else torch.nn.utils.clip_grad_norm_(params, self.max_norm, foreach=True)
            norm = norm.detach()
            self.grad_norm_sum = norm if self.grad_norm_sum is None else self.grad_norm_sum + norm
            self.grad_norm_count += 1
        self.optimizer.step(**kwargs)

    def pop_grad_norm(self) -> torch.Tensor | None:
        """Mean gradient norm since the last call (a device tensor), or None when nothing was clipped."""
        if self.grad_norm_sum is None:
            return None
        mean = self.grad_norm_sum / self.grad_norm_count
        self.grad_norm_sum, self.grad_norm_count = None, 0
        return mean


def clip_per_parameter(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale each gradient whose norm exceeds `max_norm` by max_norm / (norm + 1e-6), as the DropPos release clips;
    returns the global norm before clipping. Foreach kernels, no host sync."""
    norms = torch._foreach_norm(grads)
    total = torch.linalg.vector_norm(torch.stack(norms))
    torch._foreach_add_(norms, 1e-6)
    scales = torch._foreach_reciprocal(norms)
    torch._foreach_mul_(scales, max_norm)
    torch._foreach_clamp_max_(scales, 1.0)
    torch._foreach_mul_(grads, scales)
    return total
