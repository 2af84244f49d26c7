"""Every supported checkpoint format round-trips into our ViT; every bad input gets a clear error."""
import fractions
import os
import pickle
import re

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer as TimmViT

from backbone import CheckpointError, build_vit, export_checkpoint, load_model, load_pretrained, read_checkpoint
from backbone.checkpoint_export import to_detectron2_vitdet, to_mmseg_mae
from backbone.vit import VisionTransformer
from tests.backbone.release_files import droppos_decoder, droppos_release, mocov3_release

TINY = dict(depth=2, img_size=224, patch_size=16)  # ViT-Tiny width, 2 blocks: real 224/16 key shapes


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    model = build_vit("tiny", **TINY, pos_embed_trainable=True).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # nothing left at its init value
    return model


def encoder_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def write_droppos(model, path):
    """The authors' release layout: DDP state dict under 'state_dict', arch name string under 'model'."""
    state = encoder_state(model)
    assert state["pos_embed"].shape == (1, 197, 192)
    torch.save(droppos_release(state), path)


def write_mae(model, path):
    torch.save({"model": encoder_state(model)}, path)


def write_timm(model, path):
    torch.save(encoder_state(model), path)


def write_timm_safetensors(model, path):
    save_file(encoder_state(model), str(path))


def write_mocov3(model, path):
    torch.save(mocov3_release(encoder_state(model)), path)


def write_ours(model, path):
    export_checkpoint(model, path, "ours", meta={"source": "test"})


WRITERS = {
    "droppos": (write_droppos, "ckpt.pth"), "mae": (write_mae, "mae.pth"), "timm": (write_timm, "timm.pth"),
    "timm-safetensors": (write_timm_safetensors, "timm.safetensors"), "mocov3": (write_mocov3, "moco.pth.tar"),
    "ours": (write_ours, "ours.safetensors"),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_round_trip_every_format(tmp_path, encoder, name):
    writer, filename = WRITERS[name]
    path = tmp_path / filename
    writer(encoder, path)
    model, report = load_model(path)
    assert report.format == name.split("-")[0]
    assert not report.missing and not report.unexpected, str(report)
    for key, value in encoder.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(model.eval().forward_features(x), encoder.forward_features(x))


def test_droppos_file_reports_dropped_decoder_and_can_keep_it(tmp_path, encoder):
    path = tmp_path / "droppos.pth"
    write_droppos(encoder, path)
    _, report = load_model(path)
    assert set(report.dropped) == set(droppos_decoder())
    assert "decoder_pred.weight" in str(report) and "blocks.*.attn.qkv.weight x2" in str(report)
    ckpt = read_checkpoint(path)
    assert ckpt.format == "droppos" and "mask_pos_token" in ckpt.state
    assert not any(k.startswith("module.") for k in ckpt.state)


def test_mocov3_keeps_only_base_encoder_and_drops_projector(tmp_path, encoder):
    path = tmp_path / "moco.pth.tar"
    write_mocov3(encoder, path)
    ckpt = read_checkpoint(path)
    assert not any(k.startswith(("momentum_encoder", "predictor")) for k in ckpt.state)
    model, report = load_model(path)
    assert report.dropped == ["head.0.weight"]
    assert torch.equal(model.blocks[0].attn.qkv.weight, encoder.blocks[0].attn.qkv.weight)


def test_pos_embed_resampled_to_target_grid(tmp_path, encoder):
    path = tmp_path / "mae.pth"
    write_mae(encoder, path)
    model, report = load_model(path, img_size=320)
    assert model.pos_embed.shape == (1, 1 + 400, 192)
    assert torch.equal(model.pos_embed[:, 0], encoder.pos_embed[:, 0])
    assert any("14x14" in note and "20x20" in note for note in report.notes)
    vitdet_like = build_vit("tiny", depth=2, img_size=256, class_token=False, global_pool="avg", window_size=4,
                            use_rel_pos=True)
    report = load_pretrained(vitdet_like, path)
    assert vitdet_like.pos_embed.shape == (1, 256, 192)
    assert report.unexpected == ["cls_token", "norm.weight", "norm.bias"]
    assert sorted(report.missing) == ["blocks.0.attn.rel_pos_h", "blocks.0.attn.rel_pos_w", "blocks.1.attn.rel_pos_h",
                                      "blocks.1.attn.rel_pos_w", "fc_norm.bias", "fc_norm.weight"]


def test_allowed_missing_policy(tmp_path, encoder):
    path = tmp_path / "mae.pth"
    write_mae(encoder, path)
    classifier = build_vit("tiny", **TINY, num_classes=10, global_pool="avg")
    report = load_pretrained(classifier, path, allowed_missing=("head", "fc_norm"))
    assert sorted(report.missing) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    state = encoder_state(encoder)
    del state["blocks.1.mlp.fc1.weight"]
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.fc1\.weight"):
        load_pretrained(classifier, path, allowed_missing=("head", "fc_norm"))


def test_keys_the_model_cannot_take_are_an_error_naming_them(tmp_path):
    """A deeper checkpoint must not load truncated into a shallower model, and the model stays untouched."""
    torch.manual_seed(0)
    path = tmp_path / "six_blocks.pth"
    write_mae(build_vit("tiny", **{**TINY, "depth": 6}), path)
    model = build_vit("tiny", **{**TINY, "depth": 4})
    before = encoder_state(model)
    with pytest.raises(CheckpointError, match=r"six_blocks\.pth: checkpoint keys the model has no place for \(24\): "
                                              r"blocks\.4\.norm1\.weight, .*, \.\.\. \(a deeper"):
        load_pretrained(model, path)
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in before.items())
    state = torch.load(path, weights_only=True)["model"]
    torch.save({"model": {**state, "blocks.3.attn.extra": torch.ones(2)}}, path)
    with pytest.raises(CheckpointError, match=r"no place for \(1\): blocks\.3\.attn\.extra \("):
        load_pretrained(build_vit("tiny", **{**TINY, "depth": 6}), path)


def test_parts_a_model_is_built_without_may_be_left_unused(tmp_path, encoder):
    """Pre-training decoder and mask token, head, fc_norm, [CLS], DeiT's distillation token, the final norm and
    ViTDet's relative position tables."""
    state = encoder_state(encoder)
    pos = state["pos_embed"]
    extras = {**state, **droppos_decoder(), "dist_token": torch.randn(1, 1, 192), "head.weight": torch.randn(5, 192),
              "head_dist.weight": torch.randn(5, 192), "fc_norm.weight": torch.ones(192),
              "pos_embed": torch.cat([pos[:, :1], torch.randn(1, 1, 192), pos[:, 1:]], dim=1),
              "blocks.1.attn.rel_pos_h": torch.randn(27, 12), "blocks.1.attn.rel_pos_w": torch.randn(27, 12)}
    path = tmp_path / "extras.pth"
    torch.save({"model": extras}, path)
    classifier = build_vit("tiny", **TINY, num_classes=10, global_pool="avg")  # no final norm: fc_norm instead
    report = load_pretrained(classifier, path, allowed_missing=("head", "fc_norm"))
    assert sorted(report.unexpected) == ["blocks.1.attn.rel_pos_h", "blocks.1.attn.rel_pos_w", "dist_token",
                                         "norm.bias", "norm.weight"]
    assert torch.equal(classifier.pos_embed, pos) and torch.equal(classifier.cls_token, encoder.cls_token)
    dense = build_vit("tiny", **TINY, class_token=False, global_pool="", num_classes=0)  # UperNet style, no [CLS]
    report = load_pretrained(dense, path)
    assert {"cls_token", "dist_token", "norm.weight"} <= set(report.unexpected)
    torch.testing.assert_close(dense.pos_embed, pos[:, 1:])


def test_a_deit_distilled_checkpoint_with_its_head_names_the_distillation_head(tmp_path, encoder):
    """Not 'a deeper or otherwise different architecture': the encoder fits, only the distillation head does not."""
    state = encoder_state(encoder)
    pos = state["pos_embed"]
    path = tmp_path / "deit_distilled.pth"
    torch.save({"model": {**state, "dist_token": torch.randn(1, 1, 192),
                          "pos_embed": torch.cat([pos[:, :1], torch.randn(1, 1, 192), pos[:, 1:]], dim=1),
                          "head.weight": torch.randn(5, 192), "head.bias": torch.randn(5),
                          "head_dist.weight": torch.randn(5, 192), "head_dist.bias": torch.randn(5)}}, path)
    expected = f"{path}: DeiT's distillation token and head (head_dist.weight, head_dist.bias)"
    with pytest.raises(CheckpointError, match=re.escape(expected)) as err:
        load_model(path, keep_head=True)
    assert "deeper" not in str(err.value) and "without its head" in str(err.value)
    model, report = load_model(path)
    assert "head_dist.weight" in report.dropped and torch.equal(model.pos_embed, pos)


def test_wrong_width_names_key_and_sizes(tmp_path, encoder):
    path = tmp_path / "tiny.pth"
    write_timm(encoder, path)
    small = build_vit("small", **TINY)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(small, path)
    message = str(err.value)
    assert str(path) in message and "patch_embed.proj.weight" in message
    assert "width 192 (tiny) vs model width 384 (small)" in message


def test_truncated_files_are_refused(tmp_path, encoder):
    for writer, filename in (WRITERS["mae"], WRITERS["ours"]):
        path = tmp_path / filename
        writer(encoder, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match="truncated") as err:
            read_checkpoint(path)
        assert str(path) in str(err.value)


def test_unknown_format_lists_supported_forms(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"weights": {"nested": 1}, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="unknown checkpoint format") as err:
        read_checkpoint(path)
    assert "'weights': dict" in str(err.value) and "mocov3" in str(err.value)
    with pytest.raises(CheckpointError, match="'model'"):
        read_checkpoint(path, fmt="mae")
    with pytest.raises(CheckpointError, match="unknown format"):
        read_checkpoint(path, fmt="caffe")


@pytest.mark.parametrize("filename", ["noise.pth", "noise.pkl"])
@pytest.mark.parametrize("allow_pickle", [False, True])
def test_random_bytes_are_not_a_checkpoint(tmp_path, filename, allow_pickle):
    """Not a pickle needing --allow-pickle, nor a truncated one: the file is named and the expected formats listed."""
    path = tmp_path / filename
    for seed in range(20):  # noise that reaches different depths of an unpickler
        path.write_bytes(torch.randint(0, 256, (512,), generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.uint8).numpy().tobytes())
        with pytest.raises(CheckpointError, match=re.escape(f"{path}: not a checkpoint")) as err:
            read_checkpoint(path, allow_pickle=allow_pickle)
        assert ".safetensors" in str(err.value) and not {"allow-pickle", "truncated"} & set(str(err.value).split())


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_with_code_is_refused_with_flag_name(tmp_path, encoder):
    path = tmp_path / "evil.pth"
    torch.save({"model": encoder_state(encoder), "extra": RunsCode()}, path)
    with pytest.raises(CheckpointError, match="--allow-pickle") as err:
        read_checkpoint(path)
    assert "system" in str(err.value)


def test_allow_pickle_loads_trusted_objects(tmp_path, encoder):
    path = tmp_path / "trusted.pth"
    torch.save({"model": encoder_state(encoder), "extra": {1, 2}, "meta": Marker()}, path)
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        read_checkpoint(path)
    assert read_checkpoint(path, allow_pickle=True).format == "mae"


class Marker:
    pass


def write_detectron2_pkl(state, path, protocol=4):
    """detectron2's model-zoo layout: a plain pickle of {'model': {name: numpy array}, '__author__': ...}."""
    model = {k: v.numpy() for k, v in to_detectron2_vitdet(state)["model"].items()}
    path.write_bytes(pickle.dumps({"model": model, "__author__": "FAIR", "matching_heuristics": True}, protocol))


@pytest.mark.parametrize("numpy_names", ["numpy._core", "numpy.core"])
def test_detectron2_pkl_of_numpy_arrays_loads_as_tensors(tmp_path, encoder, numpy_names):
    path = tmp_path / "model_final_123abc.pkl"
    write_detectron2_pkl(encoder_state(encoder), path, protocol=2)
    if numpy_names == "numpy.core":  # numpy 1 wrote its arrays under these names (protocol 2: plain-text globals)
        path.write_bytes(path.read_bytes().replace(b"numpy._core.", b"numpy.core."))
        assert b"numpy._core" not in path.read_bytes()
    model, report = load_model(path)
    assert report.format == "detectron2" and not report.unexpected, str(report)
    assert not {k for k in report.missing if not k.startswith("fc_norm")}  # no [CLS]: average pooling, a fresh norm
    assert torch.equal(model.pos_embed, encoder.pos_embed[:, 1:])  # ViTDet's [CLS] slot dropped: no [CLS] token
    for key, value in model.state_dict().items():
        assert key.startswith(("pos_embed", "fc_norm")) or torch.equal(value, encoder.state_dict()[key]), key


def test_a_pkl_naming_any_other_global_is_refused_without_running_it(tmp_path, encoder):
    marker = tmp_path / "pwned"

    class Touches:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "model_final_evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"backbone.net.pos_embed": encoder.pos_embed.detach().numpy()},
                                   "extra": Touches()}))
    with pytest.raises(CheckpointError, match=r"model_final_evil\.pkl: refusing to load: it names the Python global "
                                              r"(posix|os|nt)\.system, .*--allow-pickle") as err:
        read_checkpoint(path)
    assert "\n" not in str(err.value) and not marker.exists()
    trusted = tmp_path / "trusted.pkl"
    trusted.write_bytes(pickle.dumps({"model": {"pos_embed": encoder.pos_embed.detach().numpy()},
                                      "ratio": fractions.Fraction(1, 3)}))
    with pytest.raises(CheckpointError, match=r"global fractions\.Fraction"):
        read_checkpoint(trusted)
    assert read_checkpoint(trusted, allow_pickle=True).format == "mae"
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(trusted.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(truncated)


def test_mae_training_args_namespace_is_accepted(tmp_path, encoder):
    import argparse

    path = tmp_path / "mae_with_args.pth"
    args = argparse.Namespace(lr=1e-3, model="vit_base")
    torch.save({"model": encoder_state(encoder), "args": args, "epoch": 1}, path)
    assert read_checkpoint(path).format == "mae"


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_checkpoint(tmp_path / "nope.pth")


def test_our_format_records_architecture(tmp_path):
    model = build_vit("tiny", depth=1, img_size=(64, 96), patch_size=16, pos_embed="random", pos_embed_trainable=True)
    path = export_checkpoint(model, tmp_path / "m.safetensors", meta={"epochs": 3})
    ckpt = read_checkpoint(path)
    assert ckpt.meta["vit_config"]["img_size"] == [64, 96] and ckpt.meta["epochs"] == 3
    rebuilt, report = load_model(path)
    assert rebuilt.grid_size == (4, 6) and not report.missing
    square, report = load_model(path, img_size=96)  # non-square 4x6 (+[CLS]) table resampled to 6x6
    assert square.pos_embed.shape == (1, 37, 192) and "4x6 (+1 prefix) to 6x6" in report.notes[0]
    assert torch.equal(square.pos_embed[:, 0], model.pos_embed[:, 0])
    with pytest.raises(ValueError, match="safetensors"):
        export_checkpoint(model, tmp_path / "m.pth", "ours")


def test_export_is_atomic_on_failure(tmp_path, encoder, monkeypatch):
    path = tmp_path / "keep.safetensors"
    export_checkpoint(encoder, path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("backbone.checkpoint_export.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        export_checkpoint(encoder, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.safetensors"]


def test_detectron2_layout(tmp_path, encoder):
    path = export_checkpoint(encoder, tmp_path / "vitdet.pth", "detectron2")
    model = torch.load(path, weights_only=True)["model"]
    assert all(k.startswith("backbone.net.") for k in model)
    assert "backbone.net.cls_token" not in model and "backbone.net.norm.weight" not in model
    assert model["backbone.net.pos_embed"].shape == (1, 197, 192)
    assert torch.equal(model["backbone.net.blocks.1.attn.qkv.weight"], encoder.blocks[1].attn.qkv.weight)
    no_cls = to_detectron2_vitdet({"pos_embed": torch.ones(1, 196, 8)})["model"]["backbone.net.pos_embed"]
    assert no_cls.shape == (1, 197, 8) and torch.equal(no_cls[0, 0], torch.zeros(8))


def test_mmseg_layout(tmp_path, encoder):
    path = export_checkpoint(encoder, tmp_path / "mmseg.pth", "mmseg")
    state = torch.load(path, weights_only=True)
    expected_block = {"ln1.weight", "ln1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                      "attn.proj.bias", "ln2.weight", "ln2.bias", "ffn.layers.0.0.weight", "ffn.layers.0.0.bias",
                      "ffn.layers.1.weight", "ffn.layers.1.bias"}
    assert {k[len("layers.0."):] for k in state if k.startswith("layers.0.")} == expected_block
    assert {k for k in state if not k.startswith("layers.")} == {
        "cls_token", "pos_embed", "patch_embed.projection.weight", "patch_embed.projection.bias"}
    assert torch.equal(state["layers.1.ffn.layers.1.weight"], encoder.blocks[1].mlp.fc2.weight)
    assert to_mmseg_mae({"norm.weight": torch.ones(2)}) == {}


def test_exported_files_get_umask_permissions(tmp_path, encoder):
    umask = os.umask(0o022)
    try:
        path = export_checkpoint(encoder, tmp_path / "shared.safetensors")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by the group, as on a shared cluster


def test_a_training_runs_work_dir_stands_for_its_last_checkpoint(tmp_path):
    model = build_vit("tiny", depth=1)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"state_dict": model.state_dict(), "meta": {}}, run / "epoch_3.pth")
    (run / "last_checkpoint").write_text("/somewhere/else/run/epoch_3.pth")  # mmengine writes the path it saved to
    assert read_checkpoint(run).path == str(run / "epoch_3.pth")
    assert torch.equal(read_checkpoint(run).state["blocks.0.mlp.fc1.weight"], model.blocks[0].mlp.fc1.weight)
    with pytest.raises(CheckpointError, match="without a last_checkpoint file"):
        read_checkpoint(tmp_path)


def test_timm_avg_pool_checkpoint_without_head_keeps_fc_norm(tmp_path):
    """fc_norm belongs to the feature path of an average-pooling ViT: without the head, pooled features still equal
    timm's pre-logits (MAE pre-trained checkpoints simply have no fc_norm, see test_allowed_missing_policy)."""
    torch.manual_seed(0)
    small = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
    reference = TimmViT(**small, num_classes=7, global_pool="avg", fc_norm=True).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # fc_norm off its identity init
    path = tmp_path / "timm_avg.pth"
    torch.save(reference.state_dict(), path)
    x = torch.randn(2, 3, 32, 32)
    expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
    model, report = load_model(path, num_heads=4)
    assert report.dropped == ["head.weight", "head.bias"] and not report.missing
    torch.testing.assert_close(model.eval().forward_features(x), expected, atol=1e-5, rtol=0)
    encoder = VisionTransformer(**small, global_pool="avg")
    load_pretrained(encoder, path, allowed_missing=("head", "fc_norm"))
    torch.testing.assert_close(encoder.eval().forward_features(x), expected, atol=1e-5, rtol=0)
