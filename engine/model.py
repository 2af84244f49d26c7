"""The base of every task's Runner model: losses and metrics kept on the device between log steps."""
from __future__ import annotations

import torch
from mmengine.model import BaseModel, is_model_wrapper


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The task's model inside the Runner's DDP wrapper (or the model itself in one process)."""
    return model.module if is_model_wrapper(model) else model


class RunningMeans:
    """Sums of per-batch device tensors; read (one host sync) and reset once per log interval."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.count += 1

    def pop(self) -> dict[str, torch.Tensor]:
        means = {key: total / self.count for key, total in self.sums.items()}
        self.sums, self.count = {}, 0
        return means


class DeviceLoggedModel(BaseModel):
    """A Runner model whose losses and metrics stay on the device: summed in `running_means` every batch and
    read by DeviceLogHook once per log interval, so a training step never waits for the host."""

    def __init__(self):
        super().__init__(data_preprocessor=dict(type="BaseDataPreprocessor", non_blocking=True))
        self.running_means = RunningMeans()

    def parse_losses(self, losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """`losses['loss']` is optimised; every entry is logged (sums on the device, nothing returned now)."""
        self.running_means.add(losses)
        return losses["loss"], {}
