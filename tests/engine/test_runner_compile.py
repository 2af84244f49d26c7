"""`compile=True` compiles each task's network once, never mmengine's whole train_step (whose optimizer-wrapper
counters change every step and made dynamo recompile it on each step on a GPU)."""
import torch
from mmengine.config import Config

from engine import build_train_runner
from engine.model import DeviceLoggedModel
from engine.runner import TrainSpec


class Vectors(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return {"inputs": torch.full((4,), float(index))}


class Regressor(DeviceLoggedModel):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def forward(self, inputs, mode="loss"):
        return {"loss": self.layer(inputs).pow(2).mean()}


def test_the_runner_leaves_train_step_uncompiled_with_compile_true(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda function, **options: compiled.append(function) or function)
    spec = TrainSpec(work_dir=str(tmp_path), batch_size=2, effective_batch=2, warmup_epochs=0, min_lr=0.0,
                     precision="fp32", clip_grad=None, num_workers=0, log_interval=1, max_keep_checkpoints=1,
                     seed=0, resume=False, epochs=1, warmup_iters=None, checkpoint_interval=1)
    model = Regressor()
    runner = build_train_runner(spec, model, Vectors(), torch.optim.SGD(model.parameters(), lr=0.1),
                                "compile_test", cfg=Config(dict(compile=True)))
    runner.train()
    assert runner.iter == 2
    assert compiled == []
