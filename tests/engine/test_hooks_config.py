import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

from engine import batch_plan, load_config
from engine.hooks import PlainCheckpointHook
from engine.model import RunningMeans
from engine.seeding import mixed_seed


def test_plain_checkpoint_round_trip_loads_with_weights_only(tmp_path):
    buffer = HistoryBuffer([1.5, 2.5], [1, 2])
    checkpoint = {
        "meta": {"epoch": 1, "eta": np.float64(3.0)},
        "message_hub": {"log_scalars": {"train/loss": buffer}, "runtime_info": {"eta": np.float64(2.0)},
                        "resumed_keys": {"train/loss": True}},
        "state_dict": {"w": torch.ones(2)},
    }
    hook = PlainCheckpointHook()
    hook.before_save_checkpoint(None, checkpoint)
    torch.save(checkpoint, tmp_path / "c.pth")
    loaded = torch.load(tmp_path / "c.pth", weights_only=True)  # no allow-list needed
    hook.after_load_checkpoint(None, loaded)
    restored = loaded["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(restored, HistoryBuffer)
    np.testing.assert_array_equal(restored.data[0], buffer.data[0])
    np.testing.assert_array_equal(restored.data[1], buffer.data[1])
    assert loaded["meta"]["eta"] == 3.0 and loaded["message_hub"]["runtime_info"]["eta"] == 2.0


def test_mmengines_own_message_hub_round_trips_through_a_plain_checkpoint(tmp_path):
    """PlainCheckpointHook rewrites mmengine's message-hub state (its `log_scalars` of HistoryBuffers and its
    `runtime_info`), a layout that is not public API: here mmengine's own MessageHub writes and reads it back."""
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance("plain_checkpoint_pin")
    hub.update_scalar("train/loss", 1.5)
    hub.update_scalar("train/loss", 2.5, count=2)
    hub.update_info("eta", np.float64(2.0))
    checkpoint = {"meta": {}, "message_hub": hub.state_dict()}
    hook = PlainCheckpointHook()
    try:
        hook.before_save_checkpoint(None, checkpoint)
        torch.save(checkpoint, tmp_path / "c.pth")
        loaded = torch.load(tmp_path / "c.pth", weights_only=True)
        hook.after_load_checkpoint(None, loaded)
        restored = MessageHub.get_instance("plain_checkpoint_pin_restored")
        restored.load_state_dict(loaded["message_hub"])
    except (KeyError, AttributeError, TypeError) as error:
        raise AssertionError("mmengine changed its message hub's checkpoint layout or HistoryBuffer: "
                             f"engine/hooks.py PlainCheckpointHook needs updating ({error!r})") from error
    assert restored.get_scalar("train/loss").mean() == hub.get_scalar("train/loss").mean()
    assert restored.get_info("eta") == 2.0


def test_running_means_average_and_reset():
    means = RunningMeans()
    means.add({"loss": torch.tensor(1.0), "acc": torch.tensor(0.5)})
    means.add({"loss": torch.tensor(3.0), "acc": torch.tensor(0.0)})
    assert {k: v.item() for k, v in means.pop().items()} == {"loss": 2.0, "acc": 0.25}
    assert means.pop() == {}


def test_mixed_seeds_differ_by_epoch_and_rank_and_repeat():
    seeds = {mixed_seed(0, e, r) for e in range(4) for r in range(4)}
    assert len(seeds) == 16 and mixed_seed(0, 3, 1) == mixed_seed(0, 3, 1)


def test_batch_plan_and_its_error():
    assert batch_plan(4096, 256, 8) == 2 and batch_plan(64, 64, 1) == 1
    with pytest.raises(ValueError, match=r"effective_batch=4096 is not a multiple of batch_size=96 x 8"):
        batch_plan(4096, 96, 8)


def test_override_of_an_unknown_key_names_it_and_suggests(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("optim = dict(base_lr=1.0, weight_decay=0.05)\nseed = 0\n")
    assert load_config(path, {"optim.base_lr": 2.0}).optim.base_lr == 2.0
    with pytest.raises(ValueError, match=r"'optim.baselr': no key 'baselr' at optim .*did you mean 'base_lr'"):
        load_config(path, {"optim.baselr": 2.0})


def test_missing_config_lists_shipped_ones(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    with pytest.raises(FileNotFoundError, match="shipped configs .*: a"):
        load_config("nope", configs_dir=tmp_path)
    assert load_config("a", configs_dir=tmp_path).x == 1


def _lrs_of(schedule: list[dict], peak: float, iterations: int) -> list[float]:
    from mmengine.registry import PARAM_SCHEDULERS

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    schedulers = [PARAM_SCHEDULERS.build(dict(step, optimizer=optimizer)) for step in schedule]
    lrs = []
    for _ in range(iterations):  # the Runner steps every scheduler after each loop iteration
        lrs.append(optimizer.param_groups[0]["lr"])
        for scheduler in schedulers:
            scheduler.step()
    return lrs


def test_warmup_then_poly_schedule_in_optimizer_steps():
    from engine.runner import TrainSpec, lr_schedule

    spec = TrainSpec(work_dir="", epochs=None, batch_size=1, effective_batch=1, warmup_epochs=0, warmup_iters=2,
                     min_lr=0.0, precision="fp32", clip_grad=None, num_workers=0, log_interval=1,
                     checkpoint_interval=1, max_keep_checkpoints=1, seed=0, resume=False, iterations=6,
                     warmup_factor=0.1, poly_power=1.0)
    peak, warmup, total = 0.5, 3, 8
    spec = TrainSpec(**{**spec.__dict__, "warmup_iters": warmup, "iterations": total})
    lrs = _lrs_of(lr_schedule(spec, None, peak), peak, total)
    # mmengine's convention (and so mmseg's recipes): the peak at the last warmup step, 0 at the last one
    expected = [peak * (0.1 + 0.9 * t / (warmup - 1)) for t in range(warmup)]
    expected += [peak * (1 - (t - warmup) / (total - warmup - 1)) for t in range(warmup, total)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="not both"):
        lr_schedule(TrainSpec(**{**spec.__dict__, "lr_steps": (3,)}), None, peak)


def test_a_one_iteration_warmup_starts_the_cosine_at_the_peak():
    """One step per epoch and warmup_epochs=1 (tiny data sets): mmengine's LinearLR cannot ramp over a single
    iteration and would leave the whole run at start_factor x peak."""
    from engine.runner import TrainSpec, lr_schedule

    spec = TrainSpec(work_dir="", epochs=5, batch_size=1, effective_batch=1, warmup_epochs=1, warmup_iters=None,
                     min_lr=0.0, precision="fp32", clip_grad=None, num_workers=0, log_interval=1,
                     checkpoint_interval=1, max_keep_checkpoints=1, seed=0, resume=False, warmup_factor=1e-6)
    peak = 1e-3
    lrs = _lrs_of(lr_schedule(spec, 1, peak), peak, spec.epochs)
    expected = [peak] + [peak * (1 + np.cos(np.pi * t / 4)) / 2 for t in range(4)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
