"""mmengine training loops whose iteration is one optimizer step, for epoch-based and iteration-based runs.

Configs count optimizer steps: iterations, warmup, lr steps, evaluation, checkpoint and log intervals. With
gradient accumulation a step trains on `accumulation` consecutive batches, and mmengine's own loops would count
each batch as an iteration: checkpoint names (iter_N), logs, metrics.json and loss curves would then change with
the number of GPUs. Here one loop iteration takes all the batches of one step, so everything the Runner counts is
optimizer steps, on 1 GPU or 64.

The iteration-based loop also resumes exactly and at once over a StreamSampler (engine/stream.py): mmengine's
IterBasedTrainLoop resumes by loading and discarding every batch already trained on (hours at COCO scale); here
the stream simply starts at the resumed step.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from mmengine.dist import get_rank
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop
from torch.utils.data import DataLoader

from .seeding import mixed_seed, reseed_globally
from .stream import StreamSampler


class MicroBatches:
    """A data loader's batches, one item per optimizer step: an iterator over the step's `accumulation` batches.

    The batches load one at a time as the step trains, so one is in memory at once and augmentations drawn in the
    main process come in the order of a loop over the batches. The loader must yield whole steps (its sampler is
    a WholeStepsSampler or an endless StreamSampler).
    """

    def __init__(self, loader: DataLoader, accumulation: int):
        self.loader, self.accumulation = loader, accumulation
        self.dataset, self.sampler = loader.dataset, loader.sampler  # what mmengine's hooks read of a loader
        self.samples_per_step = loader.batch_size * accumulation

    def __iter__(self) -> Iterator[Iterator]:
        batches = iter(self.loader)
        for first in batches:
            yield itertools.chain([first], itertools.islice(batches, self.accumulation - 1))

    def __len__(self) -> int:
        return len(self.loader) // self.accumulation


def step_batches(runner, dataloader: DataLoader | dict, accumulation: int) -> MicroBatches:
    """A loop's data in optimizer steps; a loader config is built the way mmengine builds a loop's loader."""
    if isinstance(dataloader, dict):
        dataloader = runner.build_dataloader(dataloader, seed=runner.seed)
    return MicroBatches(dataloader, accumulation)


class OptimizerStepIterations:
    """What both loops share: an iteration runs the step's hooks once, around `train_step` on each of its batches
    (the optimizer wrapper scales, accumulates and steps on the last one), as mmengine's `run_iter` does for one.
    The hooks get no `data_batch`: the step's batches load while it trains."""

    def train_optimizer_step(self, batch_idx: int, micro_batches: Iterator) -> None:
        runner = self.runner
        runner.call_hook("before_train_iter", batch_idx=batch_idx, data_batch=None)
        trained, outputs = 0, None
        for batch in micro_batches:
            self.before_micro_batch(trained)
            outputs = runner.model.train_step(batch, optim_wrapper=runner.optim_wrapper)
            trained += 1
        if trained != self.dataloader.accumulation:
            raise RuntimeError(f"an optimizer step of {self.dataloader.accumulation} batches got {trained}: the "
                               "training loader must yield whole steps")
        runner.call_hook("after_train_iter", batch_idx=batch_idx, data_batch=None, outputs=outputs)
        self._iter += 1

    def before_micro_batch(self, index: int) -> None:
        """Called before the step's batch number `index` trains."""


class EpochStepLoop(OptimizerStepIterations, EpochBasedTrainLoop):
    """mmengine's EpochBasedTrainLoop counting optimizer steps of `accumulation` batches."""

    def __init__(self, runner, dataloader: DataLoader | dict, max_epochs: int, accumulation: int, **kwargs):
        super().__init__(runner, step_batches(runner, dataloader, accumulation), max_epochs, **kwargs)

    def run_iter(self, idx: int, data_batch: Iterator) -> None:
        self.train_optimizer_step(idx, data_batch)


class _Skipped:
    """Answers the parent loop's `next` calls to advance the data (it would load each batch) without loading."""

    def __init__(self, count: int, iterator: Iterator):
        self.count, self.iterator = count, iterator

    def __iter__(self) -> _Skipped:
        return self

    def __next__(self):
        if self.count:
            self.count -= 1
            return None
        return next(self.iterator)


class StreamIterLoop(OptimizerStepIterations, IterBasedTrainLoop):
    """mmengine's IterBasedTrainLoop counting optimizer steps of `accumulation` batches of a StreamSampler.

    Before each batch it reseeds torch, numpy and random from (seed, batches trained before it, rank), so the
    model's own sampling is a function of the position too. A resumed run starts the stream at its step: mmengine's
    `run` advances a resumed loop by calling next(self.dataloader_iterator) once per finished iteration
    (`self._iter`, which its Runner sets on resume), and `_Skipped` answers those calls without loading. That is not
    public API: tests/engine/test_stream.py pins it.
    """

    def __init__(self, runner, dataloader: DataLoader | dict, max_iters: int, accumulation: int, seed: int,
                 **kwargs):
        super().__init__(runner, step_batches(runner, dataloader, accumulation), max_iters, **kwargs)
        if not isinstance(self.dataloader.sampler, StreamSampler):
            raise TypeError(f"StreamIterLoop needs a StreamSampler, got {type(self.dataloader.sampler).__name__}")
        self.seed = seed

    def run(self) -> torch.nn.Module:
        if self._iter:
            self.dataloader.sampler.start_at(self._iter * self.dataloader.samples_per_step)
            self.dataloader_iterator = _Skipped(self._iter, iter(self.dataloader))  # endless: a StreamSampler
        return super().run()

    def run_iter(self, data_batch: Iterator) -> None:
        self.train_optimizer_step(self._iter, data_batch)

    def before_micro_batch(self, index: int) -> None:
        batches_before = self._iter * self.dataloader.accumulation + index
        reseed_globally(mixed_seed(self.seed, batches_before, get_rank()))
