"""Hugging Face ViT / ViTMAE model files, SimMIM and CAE releases load exactly; EVA-02 is refused, named.

References: `transformers` itself (random weights, save_pretrained), and timm's Beit class with random weights saved in
SimMIM's and CAE's release layouts (as read from microsoft/SimMIM models/simmim.py + vision_transformer.py and
main_simmim.py's save_checkpoint, lxtGH/CAE models/modeling_cae.py + modeling_cae_helper.py); EVA-02's keys as timm's
eva.py checkpoint_filter_fn reads them."""
import json
import re

import pytest
import timm
import torch
from safetensors.torch import load_file

from backbone import CheckpointError, load_model, read_checkpoint
from backbone.checkpoint import FORMAT_HELP, FORMATS
from backbone.families import detect_family
from engine.errors import MissingInputError
from tests.backbone.release_files import cae_release, randomize, simmim_release

transformers = pytest.importorskip("transformers")  # the test extra

DEPTH = 2
IMAGES = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
SMALL = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
HF_SIZE = dict(hidden_size=64, num_hidden_layers=DEPTH, num_attention_heads=4, intermediate_size=128, image_size=32,
               patch_size=8)


def check_report(model, report):
    assert not report.missing and not report.unexpected, str(report)
    assert sorted(report.loaded) == sorted(model.state_dict()), str(report)


# --- Hugging Face transformers: ViT, ViTForImageClassification, ViTMAE ------------------------------------------------

def hf_features(model, images, **kwargs):
    with torch.no_grad():
        return model(pixel_values=images, **kwargs).last_hidden_state


def load_and_compare(path, expected, images, **kwargs):
    model, report = load_model(path, **kwargs)
    model.eval()
    check_report(model, report)
    with torch.no_grad():
        ours = model.forward_tokens(images)
    diff = (ours - expected).abs().max().item()
    assert diff <= 1e-5, diff
    return model, report, diff


def test_hf_vit_folder_and_weights_file(tmp_path):
    hf = randomize(transformers.ViTModel(transformers.ViTConfig(**HF_SIZE)))
    hf.save_pretrained(tmp_path / "vit")
    assert (tmp_path / "vit" / "config.json").is_file()
    assert "encoder.layer.0.attention.attention.query.weight" in load_file(tmp_path / "vit" / "model.safetensors")
    expected = hf_features(hf, SMALL)  # last_hidden_state: after the final layernorm
    for path in (tmp_path / "vit", tmp_path / "vit" / "model.safetensors"):
        model, report, diff = load_and_compare(path, expected, SMALL)
        assert report.format == "hf-vit" and model.config["norm_eps"] == 1e-12 and model.config["num_heads"] == 4
        notes = "\n".join(report.notes)
        assert f"attn.qkv from split query / key / value projections in {DEPTH} blocks" in notes
        assert "pooler (dense + tanh on [CLS]) left out: pooler.dense.bias, pooler.dense.weight" in notes
        assert "ViTModel config: 4 heads, LayerNorm eps 1e-12" in notes
        print(f"hf ViTModel ({path.name}): max abs diff {diff:.2e}\n{report}")


def test_hf_vit_pytorch_bin_and_classifier_head(tmp_path):
    hf = randomize(transformers.ViTForImageClassification(transformers.ViTConfig(**HF_SIZE, num_labels=5)))
    hf.save_pretrained(tmp_path / "cls")
    state = load_file(tmp_path / "cls" / "model.safetensors")
    assert all(k.startswith(("vit.", "classifier.")) for k in state)
    (tmp_path / "cls" / "model.safetensors").unlink()
    torch.save(state, tmp_path / "cls" / "pytorch_model.bin")  # the pre-safetensors save_pretrained file
    expected = hf_features(hf.vit, SMALL)
    _, report, diff = load_and_compare(tmp_path / "cls", expected, SMALL)
    assert report.source.endswith("pytorch_model.bin")
    model, _ = load_model(tmp_path / "cls", keep_head=True)
    with torch.no_grad():
        logits = hf(pixel_values=SMALL).logits
        torch.testing.assert_close(model.eval()(SMALL), logits, atol=1e-5, rtol=0)
    print(f"hf ViTForImageClassification (.bin): max abs diff {diff:.2e}")


def test_hf_vitmae_pretraining_drops_the_decoder(tmp_path):
    config = transformers.ViTMAEConfig(**HF_SIZE, mask_ratio=0.0, decoder_hidden_size=32, decoder_num_hidden_layers=1,
                                       decoder_num_attention_heads=2, decoder_intermediate_size=64)
    hf = randomize(transformers.ViTMAEForPreTraining(config))
    hf.save_pretrained(tmp_path / "mae")
    tokens = (32 // 8) ** 2
    noise = torch.arange(tokens, dtype=torch.float32).expand(SMALL.shape[0], tokens)  # keeps the patch order
    expected = hf_features(hf.vit, SMALL, noise=noise)
    model, report, diff = load_and_compare(tmp_path / "mae", expected, SMALL)
    assert report.format == "hf-vit"
    assert any(note.startswith("ViTMAE decoder left out: decoder.") for note in report.notes)
    assert "ViTMAEForPreTraining config" in "\n".join(report.notes)
    print(f"hf ViTMAEForPreTraining: max abs diff {diff:.2e}\n{report}")


def test_hf_weights_without_config_and_refusals(tmp_path):
    hf = randomize(transformers.ViTModel(transformers.ViTConfig(**HF_SIZE)))
    hf.save_pretrained(tmp_path / "vit")
    alone = tmp_path / "vit.safetensors"
    alone.write_bytes((tmp_path / "vit" / "model.safetensors").read_bytes())
    model, report = load_model(alone, num_heads=4)  # no config.json: heads given, eps ours
    check_report(model, report)
    assert any("no config.json beside the weights" in note for note in report.notes)
    with pytest.raises(CheckpointError, match="look like 'hf-vit'"):
        read_checkpoint(tmp_path / "vit", fmt="beit")
    config = json.loads((tmp_path / "vit" / "config.json").read_text())
    (tmp_path / "vit" / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu_new"}))
    with pytest.raises(CheckpointError, match="hidden_act 'gelu_new'"):
        load_model(tmp_path / "vit")
    (tmp_path / "vit" / "model.safetensors").unlink()
    with pytest.raises(MissingInputError, match="without model.safetensors or pytorch_model.bin"):
        read_checkpoint(tmp_path / "vit")


# --- SimMIM and CAE: BEiT's layout under 'encoder.' ------------------------------------------------------------------

def beit_reference(**kwargs):
    model = timm.create_model("beit_base_patch16_224", pretrained=False, depth=DEPTH, num_classes=0,
                              global_pool="token", init_values=0.1, **kwargs)
    return randomize(model)


def reference_features(ref):
    with torch.no_grad():
        tokens = ref.forward_features(IMAGES)
        return tokens, ref.forward_head(tokens, pre_logits=True)


def assert_same_features(path, ref, **kwargs):
    model, report = load_model(path, **kwargs)
    model.eval()
    check_report(model, report)
    tokens, pooled = reference_features(ref)
    with torch.no_grad():
        diff = max((model.forward_tokens(IMAGES) - tokens).abs().max().item(),
                   (model.forward_features(IMAGES) - pooled).abs().max().item())
    assert diff <= 1e-5, diff
    with torch.no_grad():  # in fp64 the conversion is exact: what fp32 leaves is rounding (tokens reach ~5)
        exact = (model.double().forward_tokens(IMAGES.double()) - ref.double().forward_features(IMAGES.double()))
    assert exact.abs().max().item() <= 1e-10
    return report, diff


def test_simmim_release(tmp_path):
    ref = beit_reference(use_abs_pos_emb=False, use_rel_pos_bias=False, use_shared_rel_pos_bias=True)
    torch.save(simmim_release(ref.state_dict()), tmp_path / "simmim_pretrain__vit_base__img224__800ep.pth")
    report, diff = assert_same_features(tmp_path / "simmim_pretrain__vit_base__img224__800ep.pth", ref)
    notes = "\n".join(report.notes)
    assert report.format == "simmim"
    assert "SimMIM encoder; decoder (1x1 conv + pixel shuffle) left out: decoder.*.weight, decoder.*.bias" in notes
    assert "encoder.mask_token left out" in notes and "k bias zero (SimMIM has none)" in notes
    assert f"shared relative position table copied to {DEPTH} blocks" in notes and "pos_embed of zeros" in notes
    print(f"simmim: max abs diff {diff:.2e}\n{report}")


def test_cae_release(tmp_path):
    ref = beit_reference(use_abs_pos_emb=True, use_rel_pos_bias=False)
    teacher = {k: v + 1.0 for k, v in ref.state_dict().items()}  # the teacher must not be read
    torch.save(cae_release(ref.state_dict(), teacher), tmp_path / "cae_base_1600ep.pth")
    report, diff = assert_same_features(tmp_path / "cae_base_1600ep.pth", ref)
    notes = "\n".join(report.notes)
    assert report.format == "cae" and "k bias zero (CAE has none)" in notes
    assert "CAE encoder; teacher (momentum copy of the encoder), regressor / decoder and mask token left out" in notes
    assert "teacher.blocks.*.attn.qkv.weight x2" in notes and "pretext_neck.head.weight" in notes
    print(f"cae: max abs diff {diff:.2e}\n{report}")
    with pytest.raises(CheckpointError, match="look like 'cae'"):
        read_checkpoint(tmp_path / "cae_base_1600ep.pth", fmt="beit")


# --- EVA-02: refused, named ------------------------------------------------------------------------------------------

def eva02_release():
    """timm's eva02 state in the EVA-02 release's names (timm's checkpoint_filter_fn read backwards): SwiGLU as
    mlp.w1 / w2 / w3 with its sub-LN mlp.ffn_ln, q_bias / v_bias, and the rotary tables' buffers."""
    model = timm.create_model("eva02_base_patch14_224", pretrained=False, depth=DEPTH)  # EVA-02 B, MIM pre-trained
    renames = (("mlp.fc1_g", "mlp.w1"), ("mlp.fc1_x", "mlp.w2"), ("mlp.fc2", "mlp.w3"), ("mlp.norm", "mlp.ffn_ln"),
               ("attn.q_proj.bias", "attn.q_bias"), ("attn.v_proj.bias", "attn.v_bias"))
    state = {}
    for key, value in model.state_dict().items():
        for old, new in renames:
            key = key.replace(old, new)
        state[key] = value
    assert any(".mlp.w1." in k for k in state) and any(".mlp.ffn_ln." in k for k in state)
    return {"module": state | {"rope.freqs_cos": torch.randn(256, 64), "rope.freqs_sin": torch.randn(256, 64)}}


def test_eva02_is_refused_in_one_line_naming_the_family(tmp_path):
    torch.save(eva02_release(), tmp_path / "eva02_B_pt_in21k_p14.pt")
    for fmt in ("auto", "eva02"):
        with pytest.raises(CheckpointError) as err:
            load_model(tmp_path / "eva02_B_pt_in21k_p14.pt", fmt=fmt)
        message = str(err.value)
        assert "\n" not in message and "eva02_B_pt_in21k_p14.pt" in message
        assert "an EVA-02 checkpoint: rotary position embeddings (rope.*) and SwiGLU MLPs" in message
        assert "not supported by our ViT" in message and "blocks.*.mlp.w1.weight x2" in message
    with pytest.raises(CheckpointError, match="look like 'eva02'"):
        read_checkpoint(tmp_path / "eva02_B_pt_in21k_p14.pt", fmt="beit")


def test_dinov2_giant_swiglu_is_not_taken_for_eva02():
    """DINOv2-g's SwiGLU (mlp.w12 / w3, no rope, no sub-LN) belongs to the DINOv2 reader."""
    state = {"cls_token": torch.zeros(1, 1, 8), "blocks.0.mlp.w12.weight": torch.zeros(16, 8),
             "blocks.0.mlp.w3.weight": torch.zeros(8, 8), "blocks.0.ls1.gamma": torch.zeros(8)}
    assert detect_family(state) != "eva02"


def test_every_format_has_help():
    for name in ("hf-vit", "simmim", "cae", "eva02"):
        assert name in FORMATS and FORMAT_HELP[name]
        assert re.search(r"\w", FORMAT_HELP[name])
