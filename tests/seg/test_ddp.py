"""seg train under torchrun with two CPU processes (gloo): DDP with BatchNorm in place of SyncBN, and the
distributed sliding-window evaluation, whose pixel counts must add up to the single-process evaluation's."""
import json
import os
import subprocess
import sys

from benchmarks.cli import main
from benchmarks.synthetic import synthesize


def test_torchrun_two_processes_train_and_evaluate_the_whole_val_split(tmp_path):
    synthesize(tmp_path / "data", num_images=20, size=64, seed=0)  # 16 train, 4 val images
    data = tmp_path / "data" / "ade" / "ADEChallengeData2016"
    work_dir = tmp_path / "run"
    options = [f"data.root={data}", "data.scale=(256,64)", f"work_dir={work_dir}", "schedule.iterations=2",
               "schedule.warmup_iters=1", "batch_size=4", "effective_batch=8", "log_interval=1"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "benchmarks.cli", "seg", "train", "upernet_tiny_synth", *options]
    result = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Distributed training: True" in result.stdout + result.stderr
    distributed = json.loads((work_dir / "metrics.json").read_text())["last"]
    assert distributed["iteration"] == 2

    eval_options = [o for o in options if not o.startswith("work_dir")]
    assert main(["seg", "eval", "upernet_tiny_synth", *eval_options, f"work_dir={tmp_path / 'eval'}",
                 f"ckpt={work_dir / 'iter_2.pth'}"]) == 0
    single = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert single["images"] == 4
    for name in ("mIoU", "mAcc", "aAcc"):
        assert single[name] == distributed[name], name
