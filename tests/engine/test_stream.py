"""The position-indexed sample stream of iteration-based runs: partition over processes, passes, exact resume."""
import itertools

import pytest
import torch

from engine import build_train_runner
from engine.images import SharedCounter
from engine.model import DeviceLoggedModel
from engine.runner import TrainSpec
from engine.stream import StreamSampler


def take(sampler, count):
    return list(itertools.islice(iter(sampler), count))


def test_processes_share_one_stream_of_whole_passes():
    data = range(10)
    single = take(StreamSampler(data, seed=3), 30)
    ranks = []
    for rank in range(3):
        sampler = StreamSampler(data, seed=3)
        sampler.rank, sampler.world_size = rank, 3
        ranks.append(take(sampler, 10))
    assert [ranks[q % 3][q // 3] for q in range(30)] == single  # position q belongs to process q % 3
    for start in range(0, 30, 10):
        assert sorted(index for index, _ in single[start:start + 10]) == list(range(10))
    assert single[:10] != single[10:20]  # a new order every pass
    assert len({seed for _, seed in single}) == 30


def test_starting_later_continues_the_same_stream():
    sampler = StreamSampler(range(7), seed=0)
    full = take(sampler, 25)
    sampler.start_at(9)
    assert take(sampler, 16) == full[9:]
    assert take(StreamSampler(range(7), seed=1), 7) != full[:7]


class NoisyVectors(torch.utils.data.Dataset):
    """Fixed vectors plus noise drawn from the sample seed; counts the samples it has produced."""

    def __init__(self):
        self.inputs = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
        self.loads = SharedCounter()  # mmengine deep-copies the dataset; the counter stays shared

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, item):
        index, seed = item
        self.loads.add(1)
        noise = torch.randn(4, generator=torch.Generator().manual_seed(seed))
        return {"inputs": self.inputs[index] + 0.1 * noise}


class Regressor(DeviceLoggedModel):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)

    def forward(self, inputs, mode="loss"):
        dropped = torch.nn.functional.dropout(inputs, 0.5)  # model randomness must repeat on resume too
        return {"loss": (self.layer(dropped) - inputs.sum(1, keepdim=True)).pow(2).mean()}


def spec(work_dir, resume=False):
    return TrainSpec(work_dir=str(work_dir), epochs=None, batch_size=2, effective_batch=4, warmup_epochs=0,
                     warmup_iters=2, min_lr=0.0, precision="fp32", clip_grad=None, num_workers=0, log_interval=1,
                     checkpoint_interval=3, max_keep_checkpoints=3, seed=5, resume=resume, iterations=8,
                     lr_steps=(5,), warmup_factor=0.001)


def train(work_dir, resume=False, hooks=()):
    model, data = Regressor(), NoisyVectors()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    runner = build_train_runner(spec(work_dir, resume), model, data, optimizer, "stream_test")
    for hook in hooks:
        runner.register_hook(hook)
    runner.train()
    return runner, model, data


def test_resumed_run_equals_the_uninterrupted_one_without_reloading_data(tmp_path, stop_after):
    _, full, full_data = train(tmp_path / "full")
    assert full_data.loads.value == 8 * 4  # 8 optimizer steps of 2 accumulated batches of 2
    with pytest.raises(InterruptedError):
        train(tmp_path / "cut", hooks=[stop_after(iteration=3)])
    runner, resumed, resumed_data = train(tmp_path / "cut", resume=True)
    assert runner.iter == 8
    assert resumed_data.loads.value == (8 - 3) * 4  # the first 3 steps' samples were not loaded again
    for name, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    lrs = [group["lr"] for group in runner.optim_wrapper.param_groups]
    assert lrs == pytest.approx([0.05 * 0.1])  # the step at optimizer step 5 happened


def test_mmengines_loop_still_advances_a_resumed_run_through_its_dataloader_iterator():
    """StreamIterLoop relies on how mmengine's IterBasedTrainLoop.run skips ahead (not public API); this says what
    broke if an upgrade changes it (the resume test above would only show other weights or reloaded batches)."""
    import inspect

    from mmengine.runner import IterBasedTrainLoop

    source = inspect.getsource(IterBasedTrainLoop.run)
    assert "range(self._iter)" in source and "next(self.dataloader_iterator)" in source, (
        "mmengine's IterBasedTrainLoop.run no longer advances a resumed loop by calling next(self.dataloader_iterator) "
        "self._iter times: engine/loops.py's StreamIterLoop hands it a _Skipped iterator for that and needs a new "
        "way to start the stream at the resumed iteration")
