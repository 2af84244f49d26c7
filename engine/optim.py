"""An mmengine OptimWrapper without host syncs: bf16 autocast without a loss scaler, global-norm clipping
whose norm stays on the device.

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

PRECISIONS = ("fp32", "bf16")


class DeviceOptimWrapper(OptimWrapper):
    """OptimWrapper with optional bf16 autocast and a sync-free global gradient-norm clip (max_norm=None: off)."""

    def __init__(self, optimizer: torch.optim.Optimizer, precision: str = "fp32", max_norm: float | None = None,
                 accumulative_counts: int = 1):
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}; expected one of {PRECISIONS}")
        super().__init__(optimizer, accumulative_counts=accumulative_counts)
        self.precision, self.max_norm = precision, max_norm
        self.grad_norm_sum: torch.Tensor | None = None
        self.grad_norm_count = 0

    @contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        """Skip DDP's gradient all-reduce between accumulation steps (mmengine) and autocast to bf16."""
        device = next(model.parameters()).device.type
        with super().optim_context(model), torch.autocast(device, torch.bfloat16, enabled=self.precision == "bf16"):
            yield

    def step(self, **kwargs) -> None:
        """Clip by the global norm of all gradients (one norm over every parameter, not per parameter)."""
        if self.max_norm is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, foreach=True).detach()
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
