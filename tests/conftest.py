"""Fixtures shared by the training tests of every task."""
import pytest
from mmengine.hooks import Hook

from benchmarks.synthetic import synthesize


class StopAfter(Hook):
    """Raises InterruptedError once epoch `epoch` or optimizer step `iteration` (1-based) is done and its
    checkpoint written (lowest priority: after the CheckpointHook), before any evaluation: a killed run."""

    priority = "LOWEST"

    def __init__(self, epoch=None, iteration=None):
        self.epoch, self.iteration = epoch, iteration

    def after_train_epoch(self, runner):
        if self.epoch is not None and runner.epoch + 1 == self.epoch:
            raise InterruptedError(f"stopped after epoch {self.epoch}")

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self.iteration is not None and runner.iter + 1 == self.iteration:
            raise InterruptedError(f"stopped after iteration {self.iteration}")


@pytest.fixture(scope="session", autouse=True)
def index_cache(tmp_path_factory):
    """Folder indices cached in a folder of the test session, not in the user's ~/.cache (subprocesses inherit it)."""
    import os

    previous = os.environ.get("DROPPOS_BENCH_CACHE")
    os.environ["DROPPOS_BENCH_CACHE"] = str(tmp_path_factory.mktemp("index_cache"))
    yield
    if previous is None:
        del os.environ["DROPPOS_BENCH_CACHE"]
    else:
        os.environ["DROPPOS_BENCH_CACHE"] = previous


@pytest.fixture
def stop_after():
    """`stop_after(epoch=2)` or `stop_after(iteration=4)`: a hook that interrupts the run there."""
    return StopAfter


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """80 synthetic scenes of 64 px in every layout (64 train and 16 val images in the ImageNet one), written once
    per test process and only read: the tiny pre-training and fine-tuning runs train on it. Tests that need other
    scenes define their own `data`."""
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, num_images=80, size=64, seed=0)
    return root
