"""A tiny `droppos-bench cls finetune` run from a release file of every checkpoint family we read (issue 22): the
file is timm's class (Hugging Face's for hf-vit) at ViT-Tiny width and two blocks with random weights, written in the
release's layout (tests/backbone/release_files.py); the run trains a few steps on the synthetic scenes and must start
from the family's encoder: its saved last-block MLP weight is the file's (the student's, not the teacher's; the base
encoder's, not the momentum one's), moved by no more than a few small AdamW steps. Not here: EVA-02, refused
(test_families_hf_mim.py), and detectron2's ViTDet files, which hold no [CLS] token or final norm to classify with."""
import json

import pytest
import torch
from safetensors.torch import load_file

from backbone import export_checkpoint, load_model, read_checkpoint
from benchmarks.cli import main
from benchmarks.synthetic import synthesize
from tests.backbone.release_files import (
    cae_release,
    clip_release,
    dino_training_checkpoint,
    dinov2_release,
    droppos_release,
    mocov3_release,
    random_timm,
    randomize,
    simmim_release,
    timm_to_beit_release,
    timm_to_deit3_release,
)

DEPTH, SIZE = 2, 64
RUN = {"model.depth": DEPTH, "schedule.epochs": 1, "schedule.warmup_epochs": 0, "batch_size": 8,
       "effective_batch": 8}
CHECKED = f"blocks.{DEPTH - 1}.mlp.fc1.weight"  # the same name in timm's layout and ours
# The run's few AdamW steps at peak lr 4e-3 x 8 / 256 move it by 1.4e-4 at most (measured); a run from a fresh init,
# or from the teacher of a DINO file, ends 0.18 or more from the file's weight.
MOVED_AT_MOST = 1e-3


def tiny(name, **kwargs):
    return random_timm(name, **({"depth": DEPTH, "img_size": SIZE} | kwargs))


def release(layout, name="vit_base_patch16_224", **kwargs):
    """A writer of timm's `name` (tiny, random) in a release's `layout` (state -> what the release saves)."""
    def write(path):
        state = tiny(name, **kwargs)
        torch.save(layout(state), path)
        return state
    return write


def other(state):
    """A second encoder (teacher, student) that differs from `state` everywhere."""
    torch.manual_seed(1)
    return {k: v + 0.1 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}


def dino(family):
    """A writer of a DINO / iBOT training checkpoint (teacher and student differ); it returns the state `family`
    selects."""
    def write(path):
        loss = family.split(":")[0]
        teacher = tiny("vit_base_patch16_224")
        student = other(teacher)
        torch.save(dino_training_checkpoint(teacher, student, f"{loss}_loss", masked_embed=loss == "ibot"), path)
        return student if family.endswith(":student") else teacher
    return write


def hf_vit(path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(hidden_size=192, num_hidden_layers=DEPTH, num_attention_heads=3,
                                    intermediate_size=768, image_size=SIZE, patch_size=16)
    randomize(transformers.ViTModel(config)).save_pretrained(path)
    return {CHECKED: load_file(path / "model.safetensors")[f"encoder.layer.{DEPTH - 1}.intermediate.dense.weight"]}


def ours(path):
    torch.save(tiny("vit_base_patch16_224"), path.with_suffix(".pth"))
    model, _ = load_model(path.with_suffix(".pth"))
    export_checkpoint(model, path, "ours")
    return model.state_dict()


BEIT = "beit_base_patch16_224"
BEIT_SHARED = dict(global_pool="token", use_rel_pos_bias=False, use_shared_rel_pos_bias=True)
PRETRAINING = dict(shared_table=True, pretraining=True)
# Each family's writer: it saves the release at a path and returns the encoder state (timm's names) a run must start
# from.
WRITERS = {
    "droppos": release(droppos_release),
    "mae": release(lambda state: {"model": state}),
    "mocov3": release(mocov3_release),
    "timm": release(dict),
    "ours": ours,
    "state_dict": release(lambda state: {"state_dict": {f"module.{k}": v for k, v in state.items()}}),
    **{family: dino(family) for family in ("dino", "dino:student", "ibot", "ibot:student")},
    "deit3": release(timm_to_deit3_release, "deit3_base_patch16_224"),
    "beit": release(lambda state: {"model": timm_to_beit_release(state)}, BEIT),
    "beitv2": release(lambda state: {"model": timm_to_beit_release(state, **PRETRAINING, beitv2=True)},
                      "beitv2_base_patch16_224", **BEIT_SHARED),
    "data2vec": release(lambda state: {"module": timm_to_beit_release(state, **PRETRAINING)}, BEIT, **BEIT_SHARED),
    "dinov2": release(dinov2_release, "vit_base_patch14_reg4_dinov2", img_size=56),
    "clip": release(lambda state: clip_release(state, embed_dim=64), "vit_base_patch16_clip_quickgelu_224"),
    "openclip": release(lambda state: clip_release(state, embed_dim=64), "vit_base_patch16_clip_224"),
    "hf-vit": hf_vit,
    "simmim": release(simmim_release, BEIT, init_values=0.1, use_abs_pos_emb=False, **BEIT_SHARED),
    "cae": release(lambda state: cae_release(state, other(state)), BEIT, init_values=0.1, global_pool="token",
                   use_abs_pos_emb=True, use_rel_pos_bias=False),
}
# Read under another name by "auto" (or asked for by it): the run names the family, as a suite's `format:` does.
NAMED = {"state_dict", "dino:student", "ibot:student", "data2vec", "clip", "openclip"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    synthesize(root, num_images=24, size=96, seed=0, progress=False)
    return root


@pytest.mark.parametrize("family", list(WRITERS))
def test_a_tiny_finetune_starts_from_each_familys_release_file(data, tmp_path, family):
    path = tmp_path / ("release" if family == "hf-vit" else "release.safetensors" if family == "ours" else
                       "release.pth")
    expected = WRITERS[family](path)[CHECKED]
    values = {"data.root": data, "ckpt": path, "model.img_size": 56 if family == "dinov2" else SIZE, **RUN,
              "work_dir": tmp_path / "run"}
    if family in NAMED:
        values["ckpt_format"] = family
    assert main(["cls", "finetune", "finetune_tiny_synth", *(f"{key}={value}" for key, value in values.items())]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["last"]
    trained = read_checkpoint(tmp_path / "run").state[CHECKED]  # the run's last checkpoint
    moved = (trained - expected).abs().max().item()
    assert 0 < moved <= MOVED_AT_MOST, moved
