"""The prepared GPU-session script runs every check end to end (at toy sizes on the CPU), so a lent GPU's few
minutes are not lost to a broken option or path."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKS = {  # check name: a line its log must hold
    "env": "torch", "pretrain": "host syncs in our MAE step", "pretrain_compiled": "ours/ref",
    "finetune": "loader alone", "det": "host syncs in the detection training step",
    "seg": "sliding-window inference", "data_rate": "pre-training / reference", "gpu_path": "metrics:",
    "frozen": "extraction / plain inference", "knn": "chunked / brute force",
}


@pytest.mark.slow
def test_gpu_session_script_runs_every_check(tmp_path):
    env = dict(os.environ, SMOKE="1", OUT=str(tmp_path), PYTHON=sys.executable, WHEELS="")  # this venv has them
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh")], env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "== 0 check(s) failed" in result.stdout
    for name, expected in CHECKS.items():
        log = (tmp_path / f"{name}.log").read_text()
        assert expected in log and f"== {name}: exit 0" in log, log[-2000:]
