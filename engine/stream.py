"""The sample stream of iteration-based runs, indexed by position, so that they resume exactly and at once.

mmengine's IterBasedTrainLoop resumes by loading and discarding every batch already trained on, and its
data-loader workers live for the whole run, so augmentations after a resume would differ from the uninterrupted
run. Here the sampler yields `(index, sample_seed)` for global stream positions: pass p over the data is a
permutation drawn from (seed, p), and each position has its own augmentation seed, so the stream from any step on
is a pure function of the run seed and the step, and resuming just starts it there (engine/loops.py).
"""
from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from mmengine.dist import get_dist_info
from torch.utils.data import Sampler

from .seeding import mixed_seed


class StreamSampler(Sampler):
    """Endless `(dataset index, sample seed)` pairs of this process's share of the global sample stream.

    Global position q holds sample `perm_p[q % n]` of pass p = q // n, where perm_p is a permutation drawn from
    (seed, p); process r of w takes positions r, r + w, r + 2w, ... Every process sees whole passes in the same
    order whatever the world size, and a sample's augmentation seed depends only on (seed, q).
    """

    def __init__(self, dataset: Sized, seed: int = 0, shuffle: bool = True):
        self.size, self.seed, self.shuffle = len(dataset), seed, shuffle
        self.rank, self.world_size = get_dist_info()
        self.start = 0  # local position (samples already taken by this process) to start from

    def start_at(self, local_position: int) -> None:
        """Begin the next iteration over the sampler at this many samples into this process's stream."""
        self.start = local_position

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(mixed_seed(self.seed, epoch)))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        local, epoch, order = self.start, -1, None
        while True:
            position = local * self.world_size + self.rank
            if position // self.size != epoch:
                epoch = position // self.size
                order = self.order(epoch).tolist()
            yield order[position % self.size], mixed_seed(self.seed, position)
            local += 1

    def __len__(self) -> int:
        """Samples of one pass per process (what loggers take for an 'epoch')."""
        return -(-self.size // self.world_size)
