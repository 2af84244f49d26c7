"""Epoch-based runs with gradient accumulation end every epoch on an optimizer step, so an epoch checkpoint holds
no pending gradient and resuming from it gives the uninterrupted run's weights (ImageNet on 8 GPUs at 256 x 2
is 625 batches per epoch: without this, an odd one carried over)."""
import pytest
import torch

from engine import build_train_runner
from engine.model import DeviceLoggedModel
from engine.runner import TrainSpec, steps_per_epoch


class Vectors(torch.utils.data.Dataset):
    """11 fixed vectors: 5 batches of 2 per epoch (and one left by drop_last), an odd count for accumulation 2."""

    def __init__(self):
        self.inputs = torch.randn(11, 4, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        return {"inputs": self.inputs[index]}


class Regressor(DeviceLoggedModel):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)
        self.batches = 0

    def forward(self, inputs, mode="loss"):
        self.batches += 1
        return {"loss": (self.layer(inputs) - inputs.sum(1, keepdim=True)).pow(2).mean()}


def train(work_dir, resume=False, hooks=()):
    spec = TrainSpec(work_dir=str(work_dir), epochs=3, batch_size=2, effective_batch=4, warmup_epochs=1,
                     warmup_iters=None, min_lr=0.0, precision="fp32", clip_grad=None, num_workers=0, log_interval=1,
                     checkpoint_interval=1, max_keep_checkpoints=3, seed=5, resume=resume)
    model = Regressor()
    runner = build_train_runner(spec, model, Vectors(), torch.optim.AdamW(model.parameters(), lr=0.05),
                                "whole_steps_test")
    for hook in hooks:
        runner.register_hook(hook)
    runner.train()
    return runner, model


def test_epochs_end_on_an_optimizer_step_and_resume_exactly(tmp_path, stop_after):
    runner, full = train(tmp_path / "full")
    assert full.batches == 3 * 4  # 5 batches per epoch rounded down to 2 optimizer steps of 2
    assert runner.optim_wrapper.optimizer.state[full.layer.weight]["step"] == 3 * 2 == runner.iter
    with pytest.raises(InterruptedError):
        train(tmp_path / "cut", hooks=[stop_after(epoch=1)])
    _, resumed = train(tmp_path / "cut", resume=True)
    for name, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_steps_per_epoch_counts_whole_optimizer_steps():
    assert steps_per_epoch(1000, 64, 1) == 15 and steps_per_epoch(1000, 64, 4) == 3
    assert steps_per_epoch(1_281_167, 256, 8, accumulation=2) == 312  # 625 batches: the last is left out
    assert steps_per_epoch(1_281_167, 256, 1, accumulation=16) == 312  # 5004 batches: 12 left out
    with pytest.raises(ValueError, match="fewer than one optimizer step of 64 x 1"):
        steps_per_epoch(10, 64, 1)
    with pytest.raises(ValueError, match="fewer than one optimizer step of 2 x 4"):
        steps_per_epoch(7, 2, 1, accumulation=4)
