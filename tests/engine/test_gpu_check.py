"""A recipe sized for GPUs stops at start, with what to check, when torch sees no GPU; CPU configs run anyway."""
from pathlib import Path

import pytest
import torch

from benchmarks.cli import main
from engine import NoGPUError, check_gpu, load_config

TASK_CONFIGS = [Path(task) / "configs" for task in ("pretrain", "cls", "det", "seg")]
SHIPPED = sorted(path for folder in TASK_CONFIGS for path in folder.rglob("*.py") if "_base_" not in path.parts)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("DROPPOS_IN_CONTAINER", raising=False)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.stem)
def test_every_recipe_asks_for_a_gpu_and_only_the_tiny_configs_do_not(path):
    assert load_config(path).require_gpu is ("tiny" not in path.stem)


def test_a_gpu_recipe_without_a_gpu_names_the_config_and_the_way_out(no_gpu):
    cfg = load_config(Path("cls/configs/finetune_vit_base_100ep.py"))
    with pytest.raises(NoGPUError, match=r"finetune_vit_base_100ep: the config asks for a GPU") as error:
        check_gpu(cfg)
    assert "nvidia-smi" in str(error.value) and "require_gpu=False" in str(error.value)
    check_gpu(load_config(Path("cls/configs/finetune_vit_base_100ep.py"), {"require_gpu": False}))
    check_gpu(load_config(Path("cls/configs/finetune_tiny_synth.py")))


def test_inside_the_container_it_points_at_the_docker_gpu_flags(no_gpu, monkeypatch):
    monkeypatch.setenv("DROPPOS_IN_CONTAINER", "1")
    with pytest.raises(NoGPUError, match=r"--gpus all.*NVIDIA Container Toolkit"):
        check_gpu(load_config(Path("seg/configs/upernet_vit_base_80k.py")))


GPU_COMMANDS = [["pretrain", "droppos_vit_base_200ep"], ["cls", "finetune", "finetune_vit_base_100ep"],
                ["cls", "eval", "finetune_vit_base_100ep", "ckpt=x.pth"], ["det", "train", "mask_rcnn_vit_base_1x"],
                ["det", "eval", "mask_rcnn_vit_base_1x"], ["seg", "train", "upernet_vit_base_80k"],
                ["seg", "eval", "upernet_vit_base_80k"]]


@pytest.mark.parametrize("command", GPU_COMMANDS, ids=" ".join)
def test_every_command_checks_before_touching_data(command, no_gpu, capsys, tmp_path):
    """data.root points nowhere: the GPU check must come first, and the CLI turns it into one line, exit 2."""
    assert main([*command, f"data.root={tmp_path / 'missing'}", f"work_dir={tmp_path / 'run'}"]) == 2
    assert "the config asks for a GPU (require_gpu=True) but torch sees none" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
