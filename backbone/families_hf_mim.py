"""Hugging Face `transformers` ViT / ViTMAE model files, and the SimMIM, CAE and EVA-02 releases, in our layout.

A `save_pretrained` folder (config.json beside model.safetensors or pytorch_model.bin) has split q / k / v projections,
merged here into one qkv; its config names what the weights cannot show (heads, LayerNorm eps 1e-12). SimMIM's and
CAE's encoders are BEiT's layout under 'encoder.' and go through families.py's BEiT steps. EVA-02 (rotary positions,
SwiGLU MLPs) has no exact counterpart in our ViT and is refused, named. Registered into families.py's tables.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from engine.errors import MissingInputError

from .families import BEIT_FAMILY, FAMILY_STEPS, FamilyError, State, check_layout, compact_key_list

HF_CONFIG, HF_WEIGHTS = "config.json", ("model.safetensors", "pytorch_model.bin")
HF_FORMATS = ("hf-vit",)
ZOO_HELP = {
    "hf-vit": "Hugging Face transformers ViTModel / ViTForImageClassification / ViTMAEModel / ViTMAEForPreTraining "
              "(save_pretrained folder, or its model.safetensors / pytorch_model.bin): split q / k / v merged into "
              "qkv, heads and LayerNorm eps from config.json; pooler, MAE decoder left out, classifier kept as head",
    "simmim": "SimMIM ViT release: {'model': {'encoder.*' (BEiT layout: q / v biases, shared relative position "
              "table, layer scale), 'decoder.0.*'}, 'config' (a yacs CfgNode: --allow-pickle, yacs installed), ...}: "
              "the encoder; decoder and mask_token left out",
    "cae": "CAE release: {'model': {'encoder.*' (BEiT layout with a sin-cos pos embed), 'teacher.*', "
           "'pretext_neck.*', 'mask_token', ...}}: the encoder; teacher, regressor / decoder left out",
    "eva02": "EVA-02 release: refused (rotary position embeddings and SwiGLU MLPs: our ViT has neither)",
}
ZOO_NAMES = {"hf-vit": "Hugging Face ViT", "simmim": "SimMIM", "cae": "CAE", "eva02": "EVA-02"}
# HF key (after 'vit.') -> ours, first match wins; both save_pretrained's names and transformers 5's module names.
HF_RENAMES = tuple((re.compile(pattern), repl) for pattern, repl in (
    (r"embeddings\.cls_token$", "cls_token"),
    (r"embeddings\.position_embeddings$", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.", r"blocks.\1.attn.\2."),
    (r"layers\.(\d+)\.attention\.(q|k|v)_proj\.", r"blocks.\1.attn.\2."),
    (r"(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:output\.dense|o_proj)\.", r"blocks.\1.attn.proj."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"layers\.(\d+)\.mlp\.(fc[12])\.", r"blocks.\1.mlp.\2."),
    (r"(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"layernorm\.", "norm."),
    (r"classifier\.", "head."),
))
QKV_NAMES = (("query", "key", "value"), ("q", "k", "v"))
HF_LEFT_OUT = {"decoder.": "ViTMAE decoder", "pooler.": "pooler (dense + tanh on [CLS])",
               "embeddings.mask_token": "mask token (masked image modeling)"}
# Keys outside 'encoder.' in each release: what they are, for the note.
ENCODER_SIBLINGS = {"simmim": "decoder (1x1 conv + pixel shuffle)",
                    "cae": "teacher (momentum copy of the encoder), regressor / decoder and mask token"}
# EVA-02 only (DINOv2-g has SwiGLU too, but as w12 / w3 without rope or sub-LN norms).
EVA_KEYS = re.compile(r"(^|\.)(rope\.|mlp\.(w1|w2|ffn_ln)\.|attn\.inner_attn_ln\.)")


def hf_model_file(folder: str | Path) -> Path | None:
    """The weights file of a `save_pretrained` folder (None when `folder` holds no config.json: not one)."""
    folder = Path(folder)
    if not (folder / HF_CONFIG).is_file():
        return None
    for name in HF_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    sharded = sorted(p.name for p in folder.glob("*.index.json"))
    raise MissingInputError(f"{folder}: a Hugging Face model folder without {' or '.join(HF_WEIGHTS)}"
                      + (f" (sharded weights {sharded} are not read: save with a larger max_shard_size)"
                         if sharded else ""))


def hf_meta(path: str | Path, state: State) -> tuple[dict[str, Any], list[str]]:
    """Our model config for an HF file: shapes from `state`, heads and LayerNorm eps from the config.json beside it
    (the weights show neither), and notes on what was assumed without one."""
    from .checkpoint_load import infer_vit_config  # it imports checkpoint.py, which imports this module

    config_path = Path(path).parent / HF_CONFIG
    if not config_path.is_file():
        return {}, [f"no {HF_CONFIG} beside the weights: heads from the width, LayerNorm eps ours (1e-6; "
                    "transformers' default is 1e-12)"]
    try:
        hf = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise FamilyError(f"{HF_CONFIG} beside it is not readable JSON ({err})") from None
    if hf.get("hidden_act", "gelu") != "gelu":
        raise FamilyError(f"{HF_CONFIG} beside it names hidden_act {hf['hidden_act']!r}: our ViT's MLP has the "
                          "exact GELU only")
    config = infer_vit_config(state, hf.get("num_attention_heads"))
    config["norm_eps"] = float(hf.get("layer_norm_eps", 1e-12))
    name = "/".join(hf.get("architectures") or [hf.get("model_type", "?")])
    return {"vit_config": config}, [f"{name} config: {config['num_heads']} heads, LayerNorm eps {config['norm_eps']:g}"]


def detect_zoo_family(obj: dict) -> str | None:
    """The family of a loaded file by the keys only these layouts have, or None."""
    state = next((obj[k] for k in ("model_ema", "model", "module") if isinstance(obj.get(k), dict)), obj)
    keys = [str(k) for k in state]
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in keys) and any(
            "layernorm_before" in k for k in keys):
        return "hf-vit"
    if "encoder.mask_token" in state and "decoder.0.weight" in state:
        return "simmim"
    if any(k.startswith("encoder.blocks.") for k in keys) and any(k.startswith(("teacher.", "pretext_neck."))
                                                                    for k in keys):
        return "cae"
    if any(EVA_KEYS.search(k) for k in keys):
        return "eva02"
    return None


def _hf_rename(state: State, family: str) -> tuple[State, list[str]]:
    """HF names as ours, split q / k / v merged into qkv; the pooler, MAE's decoder and mask token left out."""
    if any(k.startswith("vit.") for k in state):
        state = {k[len("vit."):] if k.startswith("vit.") else k: v for k, v in state.items()}
    left_out = {k for k in state if k.startswith(tuple(HF_LEFT_OUT))}
    renamed = {}
    for key, value in state.items():
        if key in left_out:
            continue
        new = next((pattern.sub(repl, key, count=1) for pattern, repl in HF_RENAMES if pattern.match(key)), key)
        renamed[new] = value
    merged, blocks = _merge_qkv(renamed)
    notes = [f"attn.qkv from split query / key / value projections in {blocks} blocks"] if blocks else []
    for prefix, what in HF_LEFT_OUT.items():
        keys = [k for k in left_out if k.startswith(prefix)]
        if keys:
            notes.append(f"{what} left out: {compact_key_list(sorted(keys))}")
    return merged, notes


def _merge_qkv(state: State) -> tuple[State, int]:
    """blocks.N.attn.{query,key,value} (or q / k / v) weights and biases as one blocks.N.attn.qkv, in that order."""
    merged, blocks = dict(state), set()
    for names in QKV_NAMES:
        for key in [k for k in state if re.fullmatch(rf"blocks\.\d+\.attn\.{names[0]}\.(weight|bias)", k)]:
            parts = [key.replace(f".{names[0]}.", f".{name}.") for name in names]
            if not all(part in state for part in parts):
                continue  # left as is: check_layout names it
            merged[key.replace(f".{names[0]}.", ".qkv.")] = torch.cat([merged.pop(part) for part in parts])
            blocks.add(key.split(".")[1])
    return merged, len(blocks)


def _encoder_of_release(state: State, family: str) -> tuple[State, list[str]]:
    """The keys under 'encoder.' without it (SimMIM, CAE); the rest of the release and the encoder's mask token (a
    pre-training input) left out."""
    if not any(k.startswith("encoder.") for k in state):
        raise FamilyError(f"format {family!r} expects the release's 'encoder.' keys; keys {sorted(state)[:5]}")
    rest = [k for k in state if not k.startswith("encoder.")]
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    notes = [f"{ZOO_NAMES[family]} encoder; {ENCODER_SIBLINGS[family]} left out: {compact_key_list(rest) or '-'}"]
    if "mask_token" in encoder:
        del encoder["mask_token"]
        notes.append("encoder.mask_token left out (a pre-training input)")
    return encoder, notes


def _refuse_eva02(state: State, family: str) -> tuple[State, list[str]]:
    """EVA-02 cannot load exactly: rotary positions and SwiGLU change every block's computation, not only its keys."""
    try:
        check_layout(state, "beit")
    except FamilyError as err:
        detail = str(err)
    else:
        detail = "its keys fit BEiT's layout, but a rotary position table is not applied by our ViT"
    raise FamilyError(f"an EVA-02 checkpoint: rotary position embeddings (rope.*) and SwiGLU MLPs (mlp.w1 / w2 / w3 / "
                      f"w12, ffn_ln) are not supported by our ViT, so it cannot load exactly; {detail}")


ZOO_STEPS = {
    "hf-vit": (_hf_rename,),
    **{family: (_encoder_of_release, *FAMILY_STEPS[BEIT_FAMILY[0]]) for family in ("simmim", "cae")},
    "eva02": (*FAMILY_STEPS[BEIT_FAMILY[0]], _refuse_eva02),
}
