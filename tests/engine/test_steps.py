"""With gradient accumulation everything a user sees counts optimizer steps, as the configs do: checkpoint names,
metrics.json, the logs, the lr schedule and the harness's loss curves. Runs of 4 accumulated batches per step."""
import json

import pytest
import torch
from mmengine.evaluator import BaseMetric

from benchmarks.harness.run import loss_curve
from benchmarks.harness.suite import CheckpointEntry, Job
from engine import build_train_runner
from engine.model import DeviceLoggedModel
from engine.runner import TrainSpec, Validation

ACCUMULATION = 4


class Vectors(torch.utils.data.Dataset):
    """10 fixed vectors; items are indices (epoch-based runs) or (index, sample seed) pairs (iteration-based)."""

    def __init__(self):
        self.inputs = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, item):
        index = item[0] if isinstance(item, tuple) else item
        return {"inputs": self.inputs[index]}


class Regressor(DeviceLoggedModel):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)
        self.batches = 0

    def forward(self, inputs, mode="loss"):
        error = (self.layer(inputs) - inputs.sum(1, keepdim=True)).pow(2).mean()
        if mode == "predict":
            return [error]
        self.batches += 1
        return {"loss": error}


class NegativeError(BaseMetric):
    def process(self, data_batch, data_samples):
        self.results.extend(float(error) for error in data_samples)

    def compute_metrics(self, results):
        return {"score": -sum(results) / len(results)}


def train(work_dir, **schedule):
    spec = TrainSpec(work_dir=str(work_dir), batch_size=1, effective_batch=ACCUMULATION, warmup_epochs=0,
                     min_lr=0.0, precision="fp32", clip_grad=None, num_workers=0, log_interval=1,
                     max_keep_checkpoints=10, seed=0, resume=False, **schedule)
    model = Regressor()
    runner = build_train_runner(spec, model, Vectors(), torch.optim.AdamW(model.parameters(), lr=0.01), "steps_test",
                                validation=Validation(Vectors(), NegativeError(), "score"))
    runner.train()
    return runner, model


def logged(work_dir):
    """The training rows of scalars.json and the text log of the (one) run in work_dir."""
    rows = [json.loads(line) for line in next(work_dir.glob("*/vis_data/scalars.json")).read_text().splitlines()]
    return [row for row in rows if "loss" in row], next(work_dir.glob("*/*.log")).read_text()


def test_iteration_based_run_counts_optimizer_steps_everywhere(tmp_path):
    runner, model = train(tmp_path, epochs=None, iterations=6, warmup_iters=0, val_interval=3, lr_steps=(3,),
                          checkpoint_interval=2)
    assert model.batches == 6 * ACCUMULATION
    assert runner.iter == 6 == runner.optim_wrapper.optimizer.state[model.layer.weight]["step"]
    # every 2 steps, and at step 3, where mmengine saves again when an evaluation finds a new best
    assert sorted(path.name for path in tmp_path.glob("*.pth")) == [
        "best_score_iter_6.pth", "iter_2.pth", "iter_3.pth", "iter_4.pth", "iter_6.pth"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["iteration"] for row in metrics["history"]] == [3, 6]
    rows, log = logged(tmp_path)
    assert [row["step"] for row in rows] == list(range(1, 7))
    assert [row["lr"] for row in rows] == pytest.approx([0.01] * 3 + [0.001] * 3)  # the lr step after step 3
    assert "Iter(train) [6/6]" in log and "[24/24]" not in log and "Saving checkpoint at 6 iterations" in log
    job = Job(job_id="job", checkpoint=CheckpointEntry(label="tiny", path=None), benchmark="regress", args=(),
              work_dir=tmp_path)
    assert [step for step, _ in loss_curve(job)] == list(range(1, 7))


def test_epoch_based_run_counts_optimizer_steps_everywhere(tmp_path):
    runner, model = train(tmp_path, epochs=2, warmup_iters=None, checkpoint_interval=1)
    assert model.batches == 2 * 2 * ACCUMULATION  # 10 batches per epoch: 2 whole steps of 4
    assert runner.iter == 4 == runner.optim_wrapper.optimizer.state[model.layer.weight]["step"]
    assert sorted(path.name for path in tmp_path.glob("epoch_*.pth")) == ["epoch_1.pth", "epoch_2.pth"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    rows, log = logged(tmp_path)
    assert [row["step"] for row in rows] == list(range(1, 5))
    assert "Epoch(train) [2][2/2]" in log and "[8/8]" not in log


def test_mmengines_run_iter_still_does_only_what_the_step_loops_repeat():
    """engine/loops.py's OptimizerStepIterations repeats mmengine's `run_iter` (hooks around one `train_step`, then
    `self._iter += 1`) for a step of several batches; this says what broke if an upgrade makes run_iter do more."""
    import ast
    import inspect
    import textwrap

    from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

    for loop in (EpochBasedTrainLoop, IterBasedTrainLoop):
        function = ast.parse(textwrap.dedent(inspect.getsource(loop.run_iter))).body[0]
        statements = [ast.unparse(node) for node in function.body if not isinstance(node, ast.Expr)
                      or not isinstance(node.value, ast.Constant)]  # the docstring left out
        calls = [statement.split("(")[0].split(" = ")[-1] for statement in statements]
        assert calls == ["self.runner.call_hook", "self.runner.model.train_step", "self.runner.call_hook",
                         "self._iter += 1"], (
            f"mmengine's {loop.__name__}.run_iter changed ({statements}): engine/loops.py's "
            "OptimizerStepIterations.train_optimizer_step must do what it now does, for each step of batches")


def test_resume_without_a_checkpoint_says_the_run_starts_from_the_beginning(tmp_path):
    """mmengine itself only logs 'Auto resumed from the latest checkpoint None.' and trains from scratch."""
    spec = TrainSpec(work_dir=str(tmp_path), epochs=1, batch_size=1, effective_batch=1, warmup_epochs=0,
                     warmup_iters=None, min_lr=0.0, precision="fp32", clip_grad=None, num_workers=0, log_interval=1,
                     checkpoint_interval=1, max_keep_checkpoints=1, seed=0, resume=True)
    for _ in range(2):  # the second run finds the first one's checkpoint and resumes
        model = Regressor()
        build_train_runner(spec, model, Vectors(), torch.optim.AdamW(model.parameters()), "resume_test").train()
    logs = "".join(path.read_text() for path in tmp_path.glob("*/*.log"))
    notice = f"resume=True, but {tmp_path} holds no checkpoint to resume (no last_checkpoint file): the run starts"
    assert logs.count(notice) == 1 and logs.count("Auto resumed from the latest checkpoint") == 2
