"""Pre-training under torchrun with two CPU processes (gloo): the DDP path, rank-0 outputs, accumulation."""
import os
import subprocess
import sys

import torch

from backbone import load_model
from benchmarks.synthetic import synthesize


def test_torchrun_two_processes(tmp_path):
    synthesize(tmp_path / "data", num_images=80, size=64, seed=0)  # 64 train images, 32 per process
    work_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "benchmarks.cli", "pretrain", "droppos_tiny_synth", f"data.root={tmp_path / 'data'}",
               f"work_dir={work_dir}", "model.img_size=64", "schedule.epochs=2", "batch_size=8",
               "effective_batch=32", "log_interval=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Distributed training: True" in result.stdout + result.stderr
    state = torch.load(work_dir / "epoch_2.pth", weights_only=True)
    steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {4} and state["meta"]["iter"] == 4, "2 epochs of 2 steps of 2 batches of 8 images x 2 processes"
    encoder, report = load_model(work_dir / "encoder.safetensors")
    assert not report.missing and encoder.config["img_size"] == [64, 64]
    assert not list(work_dir.glob(".*.tmp")), "temporary checkpoint files left behind"
