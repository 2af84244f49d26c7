"""`key=value` overrides of the wrong kind or range stop before anything starts, in one line with exit 2."""
import math

import pytest

from benchmarks.cli import build_parser, main
from engine import load_config
from pretrain.train import CONFIGS_DIR


def run(capsys, tmp_path, *args):
    """`droppos-bench pretrain droppos_tiny_synth ARGS` on a data root that is not there: its exit code and stderr
    (a run that got past the overrides would stop on the missing data, naming it)."""
    code = main(["pretrain", "droppos_tiny_synth", f"data.root={tmp_path / 'no_data'}", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args, named", [
    (["schedule.epochs=abc"], "schedule.epochs='abc': expected an integer (the config has 20)"),
    (["schedule.epochs=2.5"], "schedule.epochs=2.5: expected an integer"),
    (["schedule.epochs=true"], "schedule.epochs=True: expected an integer"),
    (["optim.base_lr=fast"], "optim.base_lr='fast': expected a number (the config has 0.004)"),
    (["optim.base_lr=0"], "optim.base_lr=0: expected a number > 0"),
    (["batch_size=0"], "batch_size=0: expected a number > 0 (the config has 64)"),
    (["batch_size=-4", "effective_batch=16"], "batch_size=-4: expected a number > 0"),
    (["data.num_workers=-1"], "data.num_workers=-1: expected a number >= 0"),
    (["compile=yes"], "compile='yes': expected true or false"),
    (["precision=16"], "precision=16: expected a string"),
    (["optim.betas=0.9"], "optim.betas=0.9: expected 2 values: a number, a number"),
    (["optim.betas=(0.9,fast)"], "optim.betas=(0.9, 'fast'): expected 2 values"),
    (["resume=1"], "resume=1: expected true or false or a string"),
])
def test_a_wrong_value_is_one_line_naming_key_and_value(capsys, tmp_path, args, named):
    code, err = run(capsys, tmp_path, *args)
    assert code == 2
    assert err.startswith(f"droppos-bench: error: override {named}") and err.count("\n") == 1
    assert "Traceback" not in err


def test_an_argument_without_equals_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        run(capsys, tmp_path, "schedule.epochs", "5")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith("droppos-bench pretrain: error: argument key=value: 'schedule.epochs' is not key=value "
                          "(e.g. schedule.epochs=100) (see droppos-bench pretrain --help)")


def test_good_overrides_pass_the_check_and_reach_the_data(capsys, tmp_path):
    code, err = run(capsys, tmp_path, "optim.base_lr=1", "compile=True", "optim.betas=(0.9,0.99)", "model.tau=inf",
                    "schedule.warmup_epochs=0.5", f"resume={tmp_path / 'epoch_1.pth'}")
    assert code == 2 and "error: override" not in err and str(tmp_path / "no_data") in err


def parsed(*args):
    """The overrides as the CLI parses them."""
    return build_parser().parse_args(["pretrain", "droppos_tiny_synth", *args]).overrides


def test_good_overrides_keep_their_values():
    cfg = load_config("droppos_tiny_synth", parsed("optim.base_lr=1", "compile=True", "require_gpu=FALSE",
                                                   "optim.betas=(0.9,0.99)", "data.crop_scale=0.3,1.0",
                                                   "model.tau=inf", "optim.clip_grad=3", "work_dir=runs/a",
                                                   "schedule.warmup_epochs=0.5", "resume=True"),
                      configs_dir=CONFIGS_DIR)
    assert cfg.optim.base_lr == 1 and cfg.compile is True and cfg.require_gpu is False
    assert tuple(cfg.optim.betas) == (0.9, 0.99) and list(cfg.data.crop_scale) == [0.3, 1.0]
    assert math.isinf(cfg.model.tau) and cfg.optim.clip_grad == 3 and cfg.work_dir == "runs/a"
    assert cfg.schedule.warmup_epochs == 0.5 and cfg.resume is True
    switched_off = load_config("droppos_tiny_synth", parsed("model.tau=None", "schedule.warmup_iters=100"),
                               configs_dir=CONFIGS_DIR)
    assert switched_off.model.tau is None and switched_off.schedule.warmup_iters == 100


def test_a_default_of_none_takes_any_value(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("extra = None\nsteps = (10, 20)\n")
    assert load_config(path, {"extra": "abc"}).extra == "abc"
    with pytest.raises(ValueError, match=r"steps=\(10, 20, 30\): expected 2 values: an integer, an integer"):
        load_config(path, {"steps": (10, 20, 30)})


def test_a_path_from_python_is_a_string(tmp_path):
    assert load_config("droppos_tiny_synth", {"data.root": tmp_path}, configs_dir=CONFIGS_DIR).data.root == tmp_path


@pytest.mark.parametrize("command, named", [
    (["cls", "finetune", "finetune_tiny_synth", "schedule.epochs=2.5"], "schedule.epochs=2.5: expected an integer"),
    (["det", "train", "mask_rcnn_tiny_synth", "schedule.iterations=abc"], "schedule.iterations='abc': expected an"),
    (["seg", "eval", "upernet_tiny_synth", "data.num_workers=-2"], "data.num_workers=-2: expected a number >= 0"),
])
def test_every_config_command_checks_its_overrides(capsys, command, named):
    assert main(command) == 2
    assert capsys.readouterr().err.startswith(f"droppos-bench: error: override {named}")
