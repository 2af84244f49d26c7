"""The same recipe at any scale: two processes (gloo, torchrun on localhost) sharing an effective batch train
exactly like one process holding all of it, only rank 0 writes checkpoints and results, and the one-process
evaluation commands refuse torchrun.

The recipes are made deterministic (full-image crops, no flip, no RandAugment / erasing / drop path, DropPos
with every visible patch's position dropped and nothing masked), so the two runs see the same images in
every optimizer step: the interleaved split of the sampler hands rank r the images r, r + 2, ... of the one
process's batch. What remains is the order of floating-point sums.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from benchmarks.cli import main
from benchmarks.harness.store import ResultsStore

PRETRAIN = ["pretrain", "droppos_tiny_synth", "model.img_size=64", "model.mask_ratio=0.0",
            "model.pos_mask_ratio=1.0", "data.crop_scale=(1.0,1.0)", "data.hflip=0.0", "schedule.epochs=2",
            "schedule.warmup_epochs=1"]
FINETUNE = ["cls", "finetune", "finetune_tiny_synth", "model.img_size=64", "aug.crop_scale=(1.0,1.0)",
            "aug.hflip=0.0", "aug.auto_augment=None", "aug.reprob=0.0", "model.drop_path_rate=0.0",
            "schedule.epochs=2", "schedule.warmup_epochs=1"]


def train(args, work_dir, processes):
    """Run the CLI in `processes` processes with 16 images per optimizer step; the logged rows, oldest first."""
    launch = [sys.executable, "-m", "benchmarks.cli"]
    if processes > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                  "-m", "benchmarks.cli"]
    command = [*launch, *args, f"work_dir={work_dir}", f"batch_size={16 // processes}", "effective_batch=16",
               "log_interval=1"]
    result = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (log,) = work_dir.glob("*/vis_data/scalars.json")
    return [json.loads(line) for line in log.read_text().splitlines()]


def losses(rows):
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def weights(path):
    state = torch.load(path, weights_only=True)["state_dict"]
    return torch.cat([value.flatten().float() for key, value in sorted(state.items())])


@pytest.mark.parametrize("args", [PRETRAIN, FINETUNE], ids=["pretrain", "finetune"])
def test_two_processes_train_like_one_with_the_same_effective_batch(args, data, tmp_path):
    args = [*args, f"data.root={data}", "checkpoint.max_keep=2"]
    one = losses(train(args, tmp_path / "one", processes=1))
    two = losses(train(args, tmp_path / "two", processes=2))
    assert sorted(one) == sorted(two) == list(range(1, 9)), "2 epochs of 4 optimizer steps in both runs"
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-5), (step, one, two)
    moved = (weights(tmp_path / "one" / "epoch_2.pth") - weights(tmp_path / "one" / "epoch_1.pth")).norm()
    apart = (weights(tmp_path / "two" / "epoch_2.pth") - weights(tmp_path / "one" / "epoch_2.pth")).norm()
    assert moved > 0 and apart < 1e-3 * moved, f"epoch 2 moved the weights {moved:.3g}; the runs differ by {apart:.3g}"


def test_only_rank_zero_writes_one_checkpoint_per_epoch_and_one_results_row(data, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent(f"""
        name: two-processes
        work_dir: {tmp_path / "bench"}
        synthetic: true
        backend: {{type: torchrun, gpus: 2}}
        data: {{imagenet: {data / "imagenet"}}}
        checkpoints: [{{label: random init, random_init: true}}]
        benchmarks:
          - name: cls.finetune
            config: finetune_tiny_synth
            overrides: {{model.img_size: 64, schedule.epochs: 2, batch_size: 8, effective_batch: 16,
                         checkpoint.max_keep: 5}}
        """))
    assert main(["bench", "run", str(suite)]) == 0
    (job,) = ResultsStore(tmp_path / "bench" / "results.sqlite").jobs()
    assert job.state == "done" and job.attempts == 1 and list(job.metrics) == ["ft_top1"]
    work_dir = Path(job.work_dir)
    log = (work_dir / "job.log").read_text()
    assert "Distributed training: True" in log
    assert {path.name for path in work_dir.glob("epoch_*.pth")} == {"epoch_1.pth", "epoch_2.pth"}
    assert len(list(work_dir.glob("best_top1_epoch_*.pth"))) == 1
    assert (work_dir / "last_checkpoint").read_text().strip().endswith("epoch_2.pth")
    assert [row["epoch"] for row in json.loads((work_dir / "metrics.json").read_text())["history"]] == [1, 2]
    assert not list(work_dir.rglob("*.tmp")), "temporary files left behind"
    (run_dir,) = [path for path in work_dir.iterdir() if path.is_dir()]
    ranks = sorted(path.stem.rsplit("_", 1)[-1] for path in run_dir.glob("*.log"))
    assert ranks == ["rank0", "rank1"], "one log file per process"
    assert len(list(run_dir.glob("vis_data/scalars.json"))) == 1


EVALUATIONS = [("cls eval", ["finetune_tiny_synth", "ckpt=x.pth"]),
               ("det eval", ["mask_rcnn_tiny_synth", "ckpt=x.pth"]),
               ("seg eval", ["upernet_tiny_synth", "ckpt=x.pth"]),
               ("posacc", ["x.pth", "--data", "data"])]


@pytest.mark.parametrize(("command", "args"), EVALUATIONS, ids=[command for command, _ in EVALUATIONS])
def test_an_evaluation_under_torchrun_stops_before_any_work(command, args, monkeypatch, capsys):
    """Every copy would evaluate the whole split on one GPU and write the same files: one clear line instead."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([*command.split(), *args]) == 2
    assert f"`droppos-bench {command}` evaluates in one process, not under torchrun" in capsys.readouterr().err
