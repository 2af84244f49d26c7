"""DINOv2 (with and without registers) and CLIP image towers (OpenAI, OpenCLIP) load exactly: timm's classes with
random weights are the reference, saved in the release's layout (verified against facebookresearch/dinov2
models/vision_transformer.py and openai/CLIP clip/model.py); timm's own checkpoint_filter_fn converting our release
files back proves the files have the layout timm reads as those releases."""
import pytest
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

from backbone import CheckpointError, export_checkpoint, load_model, load_pretrained, read_checkpoint
from backbone.checkpoint import FORMAT_HELP, FORMATS
from backbone.vit import VisionTransformer
from tests.backbone import release_files
from tests.backbone.release_files import clip_release, dinov2_release


def reference(name, **kwargs):
    """release_files.reference without a classifier: the releases' image towers have none."""
    return release_files.reference(name, num_classes=0, **kwargs)


def images(size):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def max_diff(model, ref, size):
    """Largest difference of all tokens after the final norm and of the pooled feature, ours vs the reference."""
    x = images(size)
    with torch.no_grad():
        tokens = ref.forward_features(x)
        pooled = ref.forward_head(tokens, pre_logits=True)
        ours_tokens, ours_pooled = model.forward_tokens(x), model.forward_features(x)
    return max((ours_tokens - tokens).abs().max().item(), (ours_pooled - pooled).abs().max().item())


def assert_clean(model, report):
    assert not report.missing and not report.unexpected, str(report)
    assert sorted(report.loaded) == sorted(model.state_dict()), str(report)


# --- DINOv2 ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vit_base_patch14_dinov2", "vit_base_patch14_reg4_dinov2"])
def test_dinov2_release_at_518_and_resampled_to_224(tmp_path, name):
    ref = reference(name, img_size=518)
    release = dinov2_release(ref.state_dict())
    torch.save(release, tmp_path / "dinov2.pth")
    model, report = load_model(tmp_path / "dinov2.pth")
    assert report.format == "dinov2" and model.config["patch_size"] == 14 and model.config["img_size"] == [518, 518]
    assert model.config.get("reg_tokens", 0) == (4 if "reg4" in name else 0)
    assert_clean(model, report)
    assert any("mask_token" in note for note in report.notes)
    ref.load_state_dict(checkpoint_filter_fn(dict(release), ref))  # timm's reading of the same release file
    assert max_diff(model.eval(), ref, 518) <= 1e-5
    # 224 px: our resampling (bicubic, no antialiasing) vs timm's own conversion of the release file and its own
    # resampling with the same settings, loaded into timm's model built for 224
    small = reference(name, img_size=224)
    small.load_state_dict(checkpoint_filter_fn(dict(release), small, antialias=False))
    model, report = load_model(tmp_path / "dinov2.pth", img_size=224)
    assert_clean(model, report)
    assert any("37x37" in note and "16x16" in note for note in report.notes), str(report)
    assert max_diff(model.eval(), small.eval(), 224) <= 1e-5
    export_checkpoint(model, tmp_path / "converted.safetensors")  # droppos-bench convert: registers kept
    assert max_diff(load_model(tmp_path / "converted.safetensors")[0].eval(), small.eval(), 224) <= 1e-5


def test_register_tokens_are_dropped_from_patch_features():
    model = VisionTransformer(img_size=56, patch_size=14, embed_dim=64, depth=1, num_heads=2, reg_tokens=4).eval()
    maps = model.forward_feature_maps(images(56), [0])
    assert model.num_prefix_tokens == 5 and model.pos_embed.shape[1] == 1 + 16
    assert maps[0].shape == (2, 64, 4, 4)


# --- CLIP ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,name", [("clip", "vit_base_patch16_clip_quickgelu_224"),
                                      ("openclip", "vit_base_patch16_clip_224")])
def test_clip_release(tmp_path, fmt, name):
    ref = reference(name)
    release = clip_release(ref.state_dict())
    converted = checkpoint_filter_fn(dict(release), ref)  # timm reads our file as the same image tower
    assert all(torch.equal(converted[k], v) for k, v in ref.state_dict().items())
    torch.save(release, tmp_path / "clip.pt")
    model, report = load_model(tmp_path / "clip.pt", fmt=fmt)
    assert report.format == fmt and model.config.get("act_layer", "gelu") == ("quick_gelu" if fmt == "clip" else "gelu")
    assert model.config["pre_norm"] and not model.config["patch_bias"] and model.config["norm_eps"] == 1e-5
    assert_clean(model, report)
    assert any("visual.proj" in note for note in report.notes) and any("text tower" in note for note in report.notes)
    assert max_diff(model.eval(), ref, 224) <= 1e-5
    export_checkpoint(model, tmp_path / "converted.safetensors")  # the activation and eps travel in our metadata
    assert max_diff(load_model(tmp_path / "converted.safetensors")[0].eval(), ref, 224) <= 1e-5
    # OpenCLIP's training checkpoint: {'state_dict': DDP state dict, 'epoch', ...}
    torch.save({"epoch": 32, "name": "run", "state_dict": {f"module.{k}": v for k, v in release.items()}},
               tmp_path / "epoch_32.pt")
    assert max_diff(load_model(tmp_path / "epoch_32.pt", fmt=fmt)[0].eval(), ref, 224) <= 1e-5


def test_clip_auto_detection_asks_for_the_activation_and_a_wrong_model_is_refused(tmp_path):
    torch.save(clip_release(reference("vit_base_patch16_clip_224").state_dict()), tmp_path / "clip.pt")
    with pytest.raises(CheckpointError, match="'clip'.*QuickGELU.*'openclip'.*GELU"):
        read_checkpoint(tmp_path / "clip.pt")
    gelu, _ = load_model(tmp_path / "clip.pt", fmt="openclip")
    with pytest.raises(CheckpointError, match="act_layer='quick_gelu'"):
        load_pretrained(VisionTransformer(**gelu.config), tmp_path / "clip.pt", fmt="clip")


def test_families_are_formats_and_wrong_family_reads_get_a_hint(tmp_path):
    assert {"dinov2", "clip", "openclip"} <= set(FORMATS) and {"dinov2", "clip", "openclip"} <= set(FORMAT_HELP)
    dinov2 = reference("vit_base_patch14_reg4_dinov2", img_size=56)
    torch.save(dinov2_release(dinov2.state_dict()), tmp_path / "dinov2.pth")
    with pytest.raises(CheckpointError, match="register_tokens.*look like 'dinov2'"):
        read_checkpoint(tmp_path / "dinov2.pth", fmt="dino")
    with pytest.raises(CheckpointError, match="not a CLIP.*look like 'dinov2'"):
        read_checkpoint(tmp_path / "dinov2.pth", fmt="clip")
    torch.save(clip_release(reference("vit_base_patch16_clip_224").state_dict()), tmp_path / "clip.pt")
    with pytest.raises(CheckpointError, match="look like CLIP: read it as 'clip' or 'openclip'"):
        read_checkpoint(tmp_path / "clip.pt", fmt="dinov2")


def module_tree(state):
    """An nn.Module whose state dict is `state` (nested by the dots of its keys)."""
    root = torch.nn.Module()
    for key, value in state.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        node.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))
    return root


def test_openai_torchscript_download_is_refused_without_allow_pickle_and_read_with_it(tmp_path):
    ref = reference("vit_base_patch16_clip_quickgelu_224")
    torch.jit.save(torch.jit.script(module_tree(clip_release(ref.state_dict()))), tmp_path / "ViT-B-16.pt")
    with pytest.raises(CheckpointError, match="TorchScript archive.*--allow-pickle"):
        read_checkpoint(tmp_path / "ViT-B-16.pt", fmt="clip")
    model, report = load_model(tmp_path / "ViT-B-16.pt", fmt="clip", allow_pickle=True)
    assert_clean(model, report)
    assert max_diff(model.eval(), ref, 224) <= 1e-5


def test_dinov2_fsdp_block_chunks_unfold_to_the_same_model(tmp_path):
    """Training-time DINOv2 (block_chunks > 0) names block i of chunk c blocks.c.i (indices stay global)."""
    ref = reference("vit_base_patch14_dinov2", img_size=56)
    release = dinov2_release(ref.state_dict())
    torch.save(release, tmp_path / "flat.pth")
    torch.save({k.replace(f"blocks.{k.split('.')[1]}.", f"blocks.{int(k.split('.')[1]) // 2}.{k.split('.')[1]}.")
                if k.startswith("blocks.") else k: v for k, v in release.items()}, tmp_path / "chunked.pth")
    flat, _ = load_model(tmp_path / "flat.pth")
    chunked, report = load_model(tmp_path / "chunked.pth")
    assert report.format == "dinov2" and any("chunks" in note for note in report.notes)
    assert_clean(chunked, report)
    assert all(torch.equal(v, chunked.state_dict()[k]) for k, v in flat.state_dict().items())
