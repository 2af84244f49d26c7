"""The droppos-bench command: convert end to end, clear errors with exit code 2, demo on tiny data."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from backbone import build_vit, read_checkpoint
from benchmarks.cli import main


@pytest.fixture()
def mae_file(tmp_path):
    torch.manual_seed(0)
    model = build_vit("tiny", depth=2)
    path = tmp_path / "mae.pth"
    torch.save({"model": model.state_dict()}, path)
    return model, path


def test_convert_to_ours_resamples_and_records_source(tmp_path, mae_file, capsys):
    model, src = mae_file
    out = tmp_path / "out" / "vit.safetensors"
    assert main(["convert", str(src), str(out), "--img-size", "256"]) == 0
    printed = capsys.readouterr().out
    assert "format mae" in printed and "14x14" in printed and "16x16" in printed and "missing (0)" in printed
    ckpt = read_checkpoint(out)
    assert ckpt.meta["source_format"] == "mae" and ckpt.meta["vit_config"]["img_size"] == [256, 256]
    assert ckpt.state["pos_embed"].shape == (1, 257, 192)
    assert torch.equal(ckpt.state["blocks.1.attn.qkv.weight"], model.blocks[1].attn.qkv.weight)
    with safe_open(str(out), "pt") as handle:
        assert handle.metadata()["format"] == "droppos-bench"


@pytest.mark.parametrize("layout, key", [("detectron2", "model"), ("mmseg", "layers.0.ln1.weight"),
                                         ("timm", "blocks.0.norm1.weight")])
def test_convert_to_interop_layouts(tmp_path, mae_file, layout, key):
    _, src = mae_file
    out = tmp_path / f"{layout}.pth"
    assert main(["convert", str(src), str(out), "--to", layout]) == 0
    assert key in torch.load(out, weights_only=True)


def test_convert_errors_exit_2_with_message(tmp_path, mae_file, capsys):
    _, src = mae_file
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "o.safetensors")]) == 2
    assert "missing.pth" in capsys.readouterr().err
    broken = tmp_path / "broken.pth"
    broken.write_bytes(src.read_bytes()[:1000])
    assert main(["convert", str(broken), str(tmp_path / "o.safetensors")]) == 2
    assert "truncated" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "o.pth"), "--to", "ours"]) == 2
    assert "safetensors" in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists() and not (tmp_path / "o.safetensors").exists()


def test_a_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    suite = tmp_path / "missing.yaml"
    assert main(["bench", "status", str(suite)]) == 2
    assert capsys.readouterr().err == f"droppos-bench: error: suite file not found: {suite}\n"


def test_a_bug_is_not_swallowed(tmp_path, mae_file, monkeypatch):
    """A ValueError from a bug (not a UserInputError) leaves main, so Python prints its traceback."""
    def buggy_load_model(*args, **kwargs):
        raise ValueError("a bug, not the user's input")

    monkeypatch.setattr("benchmarks.cli.load_model", buggy_load_model)
    with pytest.raises(ValueError, match="a bug"):
        main(["convert", str(mae_file[1]), str(tmp_path / "o.safetensors")])


def test_a_bug_shows_its_traceback_and_python_exit_code(tmp_path, mae_file):
    script = ("import sys, benchmarks.cli as cli\n"
              "def bug(*args, **kwargs): raise ValueError('a bug')\n"
              "cli.load_model = bug\n"
              "sys.exit(cli.main(sys.argv[1:]))\n")
    result = subprocess.run([sys.executable, "-c", script, "convert", str(mae_file[1]), str(tmp_path / "o.pth")],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr
    assert "ValueError: a bug" in result.stderr and "droppos-bench: error" not in result.stderr


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "benchmarks.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "convert" in result.stdout and "demo" in result.stdout


def test_the_quick_demo_runs_every_stage_and_writes_the_report(tmp_path, capsys):
    """The demo in its reduced form (an epoch of each training on a few ramps): the pipeline, not the effect, which
    tests/pretrain/test_anchors.py and tests/cls/test_pretraining_helps.py check with the same configs."""
    assert main(["demo", "--out", str(tmp_path), "--quick"]) == 0
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert set(summary["jobs"].values()) == {"done"} and len(summary["jobs"]) == 6  # fine-tune, k-NN, linear x 2
    assert set(summary["results"]) == {"DropPos (tiny)", "random init"}
    for metrics in summary["results"].values():
        assert all(0 <= metrics[key] <= 100 for key in ("ft_top1", "knn_top1", "linear_top1")), metrics
    assert len(list((tmp_path / "bench" / "features").iterdir())) == 4  # k-NN extracts, linear reuses
    assert 0 <= summary["anchors"]["many"] <= 100 and len(summary["anchors"]["grid"]) == 4
    assert summary["report"] == str(tmp_path / "report" / "report.html")
    assert (tmp_path / "report" / "report.md").is_file()
    out = capsys.readouterr().out
    assert len(out.splitlines()) < 40, out
    assert "chance" in out and "Table 6" not in out
