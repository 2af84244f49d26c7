"""Release files of DINO, iBOT, DeiT III, BEiT, BEiT v2 and data2vec load exactly: timm's class for each family with
random weights is the reference, saved in the release's own layout (verified against the releases' code: DINO's
main_dino.py and utils.MultiCropWrapper, iBOT's main_ibot.py and analysis/combine_ckpt.py, Meta's deit models_v2.py,
unilm's beit / beit2 modeling_pretrain.py, Hugging Face's data2vec-vision conversion script)."""
import pytest
import torch

from backbone import CheckpointError, export_checkpoint, load_model, read_checkpoint
from backbone.checkpoint import FORMAT_HELP, FORMATS
from tests.backbone.release_files import (
    DEPTH,
    dino_training_checkpoint,
    reference,
    timm_to_beit_release,
    timm_to_deit3_release,
)

IMAGES = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def state_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def features(model):
    """(all tokens after the final norm, pooled pre-logits feature) of a timm model."""
    with torch.no_grad():
        tokens = model.forward_features(IMAGES)
        return tokens, model.forward_head(tokens, pre_logits=True)


def assert_exact(path, ref, fmt="auto", expect_format=None, **kwargs):
    """Our model loaded from `path` gives the reference's tokens and pooled features (fp32, 1e-5); nothing unexplained
    in the report. Returns (max abs diff, report)."""
    model, report = load_model(path, fmt=fmt, **kwargs)
    model.eval()
    if expect_format:
        assert report.format == expect_format
    assert not report.missing and not report.unexpected, str(report)
    assert sorted(report.loaded) == sorted(model.state_dict()), str(report)
    tokens, pooled = features(ref)
    with torch.no_grad():
        ours_tokens, ours_pooled = model.forward_tokens(IMAGES), model.forward_features(IMAGES)
    diff = max((ours_tokens - tokens).abs().max().item(), (ours_pooled - pooled).abs().max().item())
    assert diff <= 1e-5, diff
    return diff, report


# --- DINO and iBOT: plain ViT, teacher and student -------------------------------------------------------------------

@pytest.fixture(scope="module")
def dino_pair():
    teacher = reference("vit_base_patch16_224", num_classes=0)
    student = reference("vit_base_patch16_224", num_classes=0)
    with torch.no_grad():
        for param in student.parameters():
            param.add_(torch.randn_like(param) * 0.1)  # the student differs from the teacher everywhere
    return teacher, student


@pytest.mark.parametrize("family, loss_key", [("dino", "dino_loss"), ("ibot", "ibot_loss")])
def test_training_checkpoint_gives_teacher_by_default_and_student_on_request(tmp_path, dino_pair, family, loss_key):
    teacher, student = dino_pair
    path = tmp_path / "checkpoint.pth"
    release = dino_training_checkpoint(state_of(teacher), state_of(student), loss_key, masked_embed=family == "ibot")
    torch.save(release, path)
    diff, report = assert_exact(path, teacher, expect_format=family)
    assert any("teacher backbone" in note and f"'{family}:student'" in note for note in report.notes)
    assert any("projection head left out: head.mlp.*.weight, head.mlp.*.bias" in note for note in report.notes)
    print(f"{family} teacher: max abs diff {diff:.2e}\n{report}")
    diff, report = assert_exact(path, student, fmt=f"{family}:student", expect_format=f"{family}:student")
    if family == "ibot":
        assert any("masked_embed" in note for note in report.notes)
    print(f"{family} student: max abs diff {diff:.2e}")


def test_backbone_only_releases(tmp_path, dino_pair):
    """DINO's backbone file is a flat state dict in timm's layout (read as timm, or as dino); iBOT's is
    {'state_dict': backbone}."""
    teacher, _ = dino_pair
    torch.save(state_of(teacher), tmp_path / "dino_vitbase16_pretrain.pth")
    torch.save({"state_dict": state_of(teacher)}, tmp_path / "checkpoint_teacher.pth")
    assert_exact(tmp_path / "dino_vitbase16_pretrain.pth", teacher, expect_format="timm")
    assert_exact(tmp_path / "dino_vitbase16_pretrain.pth", teacher, fmt="dino", expect_format="dino")
    assert_exact(tmp_path / "checkpoint_teacher.pth", teacher, fmt="ibot", expect_format="ibot")
    with pytest.raises(CheckpointError, match="this file holds one backbone: read it as 'dino'"):
        read_checkpoint(tmp_path / "dino_vitbase16_pretrain.pth", fmt="dino:student")


# --- DeiT III: layer scale, no position for [CLS] ---------------------------------------------------------------------

def test_deit3_release(tmp_path):
    ref = reference("deit3_base_patch16_224")
    release = timm_to_deit3_release(state_of(ref))
    assert "blocks.0.gamma_1" in release["model"] and release["model"]["pos_embed"].shape == (1, 196, 768)
    torch.save(release, tmp_path / "deit_3_base_224_1k.pth")
    diff, report = assert_exact(tmp_path / "deit_3_base_224_1k.pth", ref, expect_format="deit3")
    assert any("zero slot for [CLS]" in note for note in report.notes)
    assert any(f"ls1.gamma / ls2.gamma in {DEPTH} blocks" in note for note in report.notes)
    print(f"deit3: max abs diff {diff:.2e}")
    model, _ = load_model(tmp_path / "deit_3_base_224_1k.pth", fmt="deit3", keep_head=True)
    with torch.no_grad():
        torch.testing.assert_close(model(IMAGES), ref(IMAGES), atol=1e-5, rtol=0)


# --- BEiT, BEiT v2, data2vec: q / v biases, relative position tables, layer scale -------------------------------------

BEIT_CASES = {
    # fine-tuned BEiT: per-block tables, mean pooling into fc_norm, a head
    "beit": (dict(name="beit_base_patch16_224"), dict(), "model", "beit"),
    # BEiT v2 pre-training: shared table, final norm, [CLS] features, lm_head and cls_pt_layers
    "beitv2": (dict(name="beitv2_base_patch16_224", num_classes=0, global_pool="token", use_rel_pos_bias=False,
                    use_shared_rel_pos_bias=True), dict(shared_table=True, pretraining=True, beitv2=True),
               "model", "beitv2"),
    # data2vec vision pre-training (Hugging Face's conversion script reads 'model' or 'module'): shared table
    "data2vec": (dict(name="beit_base_patch16_224", num_classes=0, global_pool="token", use_rel_pos_bias=False,
                      use_shared_rel_pos_bias=True), dict(shared_table=True, pretraining=True), "module", "beit"),
}


@pytest.mark.parametrize("case", list(BEIT_CASES))
def test_beit_family_release(tmp_path, case):
    timm_args, layout, wrapper, detected = BEIT_CASES[case]
    ref = reference(timm_args.pop("name"), **timm_args)
    state = state_of(ref)
    assert "blocks.0.attn.q_bias" in state and "blocks.0.gamma_1" in state and "pos_embed" not in state
    torch.save({wrapper: timm_to_beit_release(state, **layout), "epoch": 799}, tmp_path / "release.pth")
    diff, report = assert_exact(tmp_path / "release.pth", ref, expect_format=detected)
    notes = "\n".join(report.notes)
    assert f"k bias zero ({'BEiT v2' if case == 'beitv2' else 'BEiT'} has none)" in notes
    assert "pos_embed of zeros for [CLS] + 14x14" in notes and "relative_position_index left out" in notes
    if layout.get("shared_table"):
        assert f"shared relative position table copied to {DEPTH} blocks" in notes
    if layout.get("pretraining"):
        assert "pre-training parts left out: mask_token, lm_head.weight, lm_head.bias" in notes
    print(f"{case}: max abs diff {diff:.2e}\n{report}")
    named, _ = load_model(tmp_path / "release.pth", fmt=case)  # also selectable by name
    assert named.config == load_model(tmp_path / "release.pth")[0].config


def test_beit_features_pool_into_fc_norm_where_the_release_has_it_and_survive_conversion(tmp_path):
    """As `droppos-bench convert` does it: load the release, write our format, read that back: same features."""
    ref = reference("beit_base_patch16_224", num_classes=0)
    torch.save({"model": timm_to_beit_release(state_of(ref))}, tmp_path / "beit.pth")
    model, _ = load_model(tmp_path / "beit.pth")
    assert model.global_pool == "avg" and "fc_norm.weight" in model.state_dict()
    export_checkpoint(model, tmp_path / "beit.safetensors", "ours")
    assert_exact(tmp_path / "beit.safetensors", ref, expect_format="ours")


# --- detection, names and refusals ------------------------------------------------------------------------------------

def test_every_family_is_a_format_with_help():
    for name in ("dino", "dino:student", "ibot", "ibot:student", "deit3", "beit", "beitv2", "data2vec"):
        assert name in FORMATS and FORMAT_HELP[name]


def test_an_unknown_beit_like_file_names_the_closest_family_and_what_differs(tmp_path):
    """An EVA-style file (q / v biases, but rotary tables and a SwiGLU MLP) is refused, not loaded in part."""
    state = timm_to_beit_release(state_of(reference("beit_base_patch16_224", num_classes=0)))
    for i in range(DEPTH):
        state[f"blocks.{i}.mlp.w12.weight"] = state.pop(f"blocks.{i}.mlp.fc1.weight")
    state["rope.freqs_cos"] = torch.randn(196, 64)
    torch.save({"model": state}, tmp_path / "eva.pth")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "eva.pth")
    message = str(err.value)
    assert "eva.pth" in message and "closest supported family: 'beit', BEiT" in message
    assert f"blocks.*.mlp.w12.weight x{DEPTH}" in message and "rope.freqs_cos" in message
    assert f"missing (blocks.*.mlp.fc1.weight x{DEPTH})" in message


def test_a_family_read_under_the_wrong_name_is_refused(tmp_path):
    ref = reference("beit_base_patch16_224", num_classes=0)
    torch.save({"model": timm_to_beit_release(state_of(ref))}, tmp_path / "beit.pth")
    with pytest.raises(CheckpointError, match="teacher"):
        read_checkpoint(tmp_path / "beit.pth", fmt="dino:student")
    with pytest.raises(CheckpointError, match="closest supported family: 'deit3'.*look like 'beit'"):
        read_checkpoint(tmp_path / "beit.pth", fmt="deit3")  # q_bias / v_bias are no DeiT III keys
    torch.save({"teacher": {}, "student": {}}, tmp_path / "dino.pth")
    with pytest.raises(CheckpointError, match="expects {'model': state dict}.*look like 'dino'"):
        read_checkpoint(tmp_path / "dino.pth", fmt="beit")
