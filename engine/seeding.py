"""Seeds derived from the run seed and a position (epoch, step, sample, rank): what makes runs resume exactly."""
from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def mixed_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed for a tuple of integers, e.g. (run seed, epoch, rank)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def reseed_globally(seed: int) -> None:
    """Seed the global RNGs of torch (every device), numpy and random with `seed`."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def torch_seeds_workers(worker_id: int) -> None:
    """Keep PyTorch's own per-worker seeds (drawn from the main RNG that ReseedHook reseeds each epoch);
    mmengine's default worker_init_fn would give the workers the same random stream in every epoch."""


@contextmanager
def seeded_randomness(seed: int | None) -> Iterator[None]:
    """The global CPU RNGs of torch, numpy and random seeded with a sample's `seed` inside and restored after, so
    augmentations drawn from any of them follow the sample stream; no seed: the global RNGs as they are."""
    if seed is None:
        yield
        return
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)
