"""AdPE: the bounded adversarial delta (embedding and coordinate modes), its ascent in the weights' backward pass and
schedule, its reduction to MAE+ at zero, and tiny runs whose encoders load into every downstream task."""
import json

import pytest
import torch
from mmengine.hooks import Hook

from backbone import build_vit, load_model, resample_pos_embed
from backbone.pos_embed import sincos_2d, sincos_2d_pos_embed
from benchmarks.cli import main
from cls.finetune import CONFIGS_DIR as CLS_CONFIGS_DIR
from cls.finetune import build_classifier
from det.train import CONFIGS_DIR as DET_CONFIGS_DIR
from det.train import build_detector
from engine import load_config
from pretrain.adpe import AdPE, adpe_param_groups, project_, project_after_every_step
from pretrain.mae_plus import MAEPlus
from pretrain.train import CONFIGS_DIR, build_pretrain_runner
from seg.train import CONFIGS_DIR as SEG_CONFIGS_DIR
from seg.train import build_segmentor

CPU = torch.device("cpu")


def tiny(model_class=AdPE, **kwargs):
    torch.manual_seed(0)
    return build_vit("tiny", model_class=model_class, img_size=64, depth=2, decoder_dim=32, decoder_depth=1,
                     decoder_heads=4, **kwargs)


def loss_at(model, images, seed=0):
    return model(images, torch.Generator().manual_seed(seed))["loss"]


def test_sincos_at_integer_shifts_equals_the_shifted_patch_embedding():
    table = sincos_2d_pos_embed(64, (5, 5))[0, 1:].double()
    rows, cols = torch.meshgrid(torch.arange(5), torch.arange(5), indexing="ij")
    for shift in [(1, 0), (0, -2), (2, 1), (-3, 4)]:
        shifted = sincos_2d(64, rows.flatten() + shift[0], cols.flatten() + shift[1])
        for i, (r, c) in enumerate(zip(rows.flatten().tolist(), cols.flatten().tolist(), strict=True)):
            if 0 <= r + shift[0] < 5 and 0 <= c + shift[1] < 5:
                torch.testing.assert_close(shifted[i], table[(r + shift[0]) * 5 + c + shift[1]])
    assert torch.equal(sincos_2d(64, rows, cols).float(), table.float())  # the table is the code at integer cells


def test_coordinate_mode_shifts_only_masked_tokens_and_never_the_decoder():
    model = tiny(adv_mode="coordinate", adv_eps=5.0).eval()
    with torch.no_grad():
        model.mask_token_shift.copy_(torch.tensor([1.0, -1.0]))  # one row down, one column left
    images = torch.randn(2, 3, 64, 64)
    _, masked = model.mask(2, CPU, torch.Generator().manual_seed(1))
    captured = {}
    model.blocks[0].register_forward_pre_hook(lambda module, args: captured.update(encoder=args[0]))
    model.decoder_blocks[0].register_forward_pre_hook(lambda module, args: captured.update(decoder=args[0]))
    with torch.no_grad():
        model.reconstruct(images, masked)
        patches = model.patch_embed(images).flatten(1, 2)
        decoder_tokens = model.decoder_embed(model.encode(images, masked))
    table = sincos_2d_pos_embed(192, (4, 4))[0]
    x = captured["encoder"]
    for b in range(2):
        torch.testing.assert_close(x[b, 0], model.cls_token[0, 0] + table[0])  # [CLS] keeps position 0
        for i in range(16):
            r, c = divmod(i, 4)
            if not masked[b, i]:
                torch.testing.assert_close(x[b, 1 + i], patches[b, i] + table[1 + i])
            elif r + 1 < 4 and c - 1 >= 0:  # the shifted cell lies on the grid: its embedding
                torch.testing.assert_close(x[b, 1 + i], model.mask_token[0, 0] + table[1 + (r + 1) * 4 + c - 1])
            else:
                expected = sincos_2d(192, torch.tensor([r + 1.0]), torch.tensor([c - 1.0]))[0].float()
                torch.testing.assert_close(x[b, 1 + i], model.mask_token[0, 0] + expected)
    torch.testing.assert_close(captured["decoder"] - decoder_tokens, sincos_2d_pos_embed(32, (4, 4)).expand(2, -1, -1))


@pytest.mark.parametrize("mode", ["embedding", "coordinate"])
def test_zero_delta_is_mae_plus_exactly(mode):
    """Coordinate mode at delta = 0 is MAE+ with the same mask token; embedding mode at delta = 0 is MAE+ whose mask
    token is zero (in embedding mode delta is the mask token)."""
    adpe = tiny(adv_mode=mode)
    with torch.no_grad():
        adpe.delta.zero_()
    mae_plus = tiny(MAEPlus)
    result = mae_plus.load_state_dict(adpe.state_dict(), strict=False)
    assert not result.missing_keys and result.unexpected_keys == (["mask_token_shift"] if mode == "coordinate" else [])
    images = torch.randn(2, 2, 3, 64, 64)
    assert torch.equal(loss_at(adpe, images), loss_at(mae_plus, images))
    with torch.no_grad():  # not a constant: the encoder's first LayerNorm removes a constant added to every channel
        adpe.delta.copy_(torch.linspace(-0.3, 0.3, adpe.delta.numel()).view_as(adpe.delta))
    assert not torch.equal(loss_at(adpe, images), loss_at(mae_plus, images))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_projection_keeps_delta_inside_the_bound(norm):
    torch.manual_seed(0)
    measure = {"l2": torch.linalg.vector_norm, "linf": lambda t: t.abs().max()}[norm]
    for scale in (0.01, 1.0, 100.0):
        delta = torch.randn(192) * scale
        before = delta.clone()
        project_(delta, norm, 0.5)
        assert measure(delta) <= 0.5 * (1 + 1e-6)
        if measure(before) <= 0.5:
            assert torch.equal(delta, before)  # inside: untouched
        elif norm == "l2":
            torch.testing.assert_close(delta / delta.norm(), before / before.norm())  # direction kept
        else:
            assert torch.equal(delta, before.clamp(-0.5, 0.5))
    zero = torch.zeros(2)
    assert torch.equal(project_(zero, norm, 0.5), torch.zeros(2))  # no 0 / 0
    model = tiny(adv_mode="embedding", adv_norm=norm, adv_eps=0.01)  # the random init is projected too
    assert measure(model.delta.detach()) <= 0.01 * (1 + 1e-6)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("mode, adv_lr", [("embedding", 0.02), ("coordinate", 0.1)])
def test_ascent_step_increases_the_loss_for_fixed_weights(mode, adv_lr, fused):
    model = tiny(adv_mode=mode, adv_eps=10.0)
    images = torch.randn(4, 2, 3, 64, 64)
    weights = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("mask_token")}
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def step(maximize):
        model.load_state_dict(start)
        groups = adpe_param_groups(model, weight_decay=0.05, adv_lr=adv_lr)
        groups[-1]["maximize"] = maximize
        optimizer = torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.95), fused=fused)  # weights fixed: lr 0
        loss = loss_at(model, images)
        loss.backward()
        optimizer.step()
        return loss.item(), loss_at(model, images).item()

    before, after = step(maximize=True)
    assert after > before, f"ascent lowered the loss: {before:.6f} -> {after:.6f}"
    for key, value in model.state_dict().items():
        if key in weights:
            assert torch.equal(value, weights[key]), key
    assert not torch.equal(model.delta.detach(), start["mask_token" if mode == "embedding" else "mask_token_shift"])
    assert step(maximize=False)[1] < before  # the same step without `maximize` descends: the test sees direction


def test_ascent_group_and_projection_hook():
    model = tiny(adv_mode="coordinate", adv_norm="linf", adv_eps=0.05)
    groups = adpe_param_groups(model, weight_decay=0.05, adv_lr=1.0)
    assert groups[-1]["params"] == [model.mask_token_shift]
    assert not any(p is model.mask_token_shift for g in groups[:-1] for p in g["params"])  # not also descended
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    assert (groups[-1]["weight_decay"], groups[-1]["maximize"]) == (0.0, True)
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    project_after_every_step(optimizer, model)
    loss_at(model, torch.randn(2, 3, 64, 64)).backward()
    optimizer.step()  # an lr-1 Adam step moves each entry by about 1, far past the box
    assert model.mask_token_shift.abs().max().item() == pytest.approx(0.05)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="adv_mode='coord'"):
        tiny(adv_mode="coord")
    with pytest.raises(ValueError, match="adv_norm='l1'"):
        tiny(adv_norm="l1")
    with pytest.raises(ValueError, match="pos_embed_trainable=False"):
        tiny(adv_mode="coordinate", pos_embed_trainable=True)


def overrides(data, work_dir, **extra):
    return {"data.root": str(data), "work_dir": str(work_dir), "schedule.epochs": 3, "log_interval": 1,
            "batch_size": 16, "effective_batch": 32, **extra}


def scalars(work_dir):
    return [json.loads(line) for log in sorted(work_dir.glob("*/vis_data/scalars.json"))
            for line in log.read_text().splitlines()]


class RecordLr(Hook):
    def __init__(self):
        self.lrs = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.lrs.append([group["lr"] for group in runner.optim_wrapper.optimizer.param_groups])


def test_delta_follows_the_weights_schedule_from_its_own_peak_and_stays_bounded(data, tmp_path):
    extra = {"model.adv_mode": "coordinate", "model.adv_eps": 0.01, "optim.adv_base_lr": 0.1}
    runner = build_pretrain_runner(load_config("adpe_tiny_synth", overrides(data, tmp_path, **extra),
                                               configs_dir=CONFIGS_DIR))
    record = RecordLr()
    runner.register_hook(record)
    runner.train()
    assert runner.optim_wrapper.optimizer.param_groups[-1]["maximize"]
    for lrs in record.lrs:  # 6 steps of warmup + cosine, one factor for every group
        assert lrs[-1] == pytest.approx(lrs[0] * 0.1 / 4e-3, rel=1e-6)
    assert max(lrs[-1] for lrs in record.lrs) == pytest.approx(0.1 * 32 / 256)
    rows = scalars(tmp_path)
    assert all(row["delta_norm"] <= 0.01 * (1 + 1e-5) for row in rows)
    assert torch.linalg.vector_norm(runner.model.net.delta.detach()).item() == pytest.approx(0.01, rel=1e-5)


@pytest.mark.parametrize("config, logged", [("mae_plus_tiny_synth", set()),
                                            ("adpe_tiny_synth", {"delta_norm", "delta_max"})])
def test_tiny_run_lowers_the_loss_and_its_encoder_loads_into_every_downstream_task(config, logged, data, tmp_path):
    args = [f"{k}={v}" for k, v in overrides(data, tmp_path / "run").items()]
    assert main(["pretrain", config, *args]) == 0
    rows = scalars(tmp_path / "run")
    assert [row["step"] for row in rows] == list(range(1, 7))  # 3 epochs of 2 steps of 2 batches
    assert all({"loss", *logged} <= set(row) for row in rows)
    assert sum(r["loss"] for r in rows[-2:]) < sum(r["loss"] for r in rows[:2])
    assert all(row.get("delta_norm", 0.0) <= 1.0 + 1e-6 for row in rows)
    encoder, report = load_model(tmp_path / "run" / "encoder.safetensors")
    assert not report.missing and not report.unexpected and encoder.config["img_size"] == [48, 48]
    assert not any(k.startswith(("mask_token", "decoder")) for k in encoder.state_dict())
    cfg = load_config("finetune_tiny_synth", {"ckpt": str(tmp_path / "run" / "encoder.safetensors"),
                                              "data.root": str(data)}, configs_dir=CLS_CONFIGS_DIR)
    net = build_classifier(cfg, num_classes=8)  # 96 px: the 3x3 position grid is resampled to 6x6
    torch.testing.assert_close(net.blocks[3].attn.qkv.weight, encoder.blocks[3].attn.qkv.weight)
    torch.testing.assert_close(net.pos_embed, resample_pos_embed(encoder.pos_embed, (6, 6)))
    assert torch.isfinite(net(torch.randn(2, 3, 96, 96))).all()
    encoder_file = {"ckpt": str(tmp_path / "run" / "encoder.safetensors"), "model.patch_size": 16}
    detector = build_detector(load_config("mask_rcnn_tiny_synth", encoder_file, configs_dir=DET_CONFIGS_DIR), 3)
    segmentor = build_segmentor(load_config("upernet_tiny_synth", encoder_file, configs_dir=SEG_CONFIGS_DIR), 4)
    for backbone in (detector.backbone.net, segmentor.backbone.net):  # at 128 and 64 px: grids of 8x8 and 4x4
        torch.testing.assert_close(backbone.blocks[3].attn.qkv.weight, encoder.blocks[3].attn.qkv.weight)


def test_an_interrupted_adpe_run_resumes_exactly(data, tmp_path, stop_after):
    """delta, its ascent group's Adam state and the projection hook all come back: the resumed run ends with the
    uninterrupted run's weights and delta, bit for bit."""
    extra = {"model.adv_mode": "coordinate", "model.adv_eps": 0.01, "optim.adv_base_lr": 0.1}  # delta on its bound

    def runner(work_dir, **more):
        return build_pretrain_runner(load_config("adpe_tiny_synth", overrides(data, work_dir, **extra, **more),
                                                 configs_dir=CONFIGS_DIR))

    runner(tmp_path / "full").train()
    interrupted = runner(tmp_path / "resumed")
    interrupted.register_hook(stop_after(epoch=2))
    with pytest.raises(InterruptedError):
        interrupted.train()
    runner(tmp_path / "resumed", resume=True).train()
    full, resumed = (torch.load(tmp_path / run / "epoch_3.pth", weights_only=True) for run in ("full", "resumed"))
    assert full["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in full["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    delta = full["state_dict"]["net.mask_token_shift"]
    assert torch.linalg.vector_norm(delta).item() == pytest.approx(0.01, rel=1e-5)
    assert resumed["optimizer"]["param_groups"][-1]["maximize"]
