"""Release layouts of other ViT pre-training families (DINO, iBOT, DeiT III, BEiT, BEiT v2, data2vec) in our layout.

Each family's release file is unwrapped (teacher or student, `backbone.` prefixes, pre-training heads), its keys are
renamed into our ViT's (timm's) layout and every change that is not a plain rename is recorded as a note for the load
report. Every conversion is exact for features: BEiT's missing key bias becomes zeros, a shared relative position
table is copied into every block, a family without an absolute position table gets one of zeros. A key of no known
layout is refused with the closest family named, never dropped.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch

from engine.errors import UserInputError

FAMILY_HELP = {
    "dino": "DINO release: backbone-only state dict (also reads as timm), or the training checkpoint {'teacher': "
            "{'backbone.*', 'head.*'}, 'student': {'module.backbone.*', ...}, ...}: the teacher's backbone",
    "dino:student": "DINO training checkpoint: the student's backbone",
    "ibot": "iBOT release: {'state_dict': backbone}, or the training checkpoint {'teacher', 'student', ...} (as DINO):"
            " the teacher's backbone",
    "ibot:student": "iBOT training checkpoint: the student's backbone (its masked_embed left out)",
    "deit3": "DeiT III release: {'model': state dict}, layer scale gamma_1 / gamma_2, no pos embed for [CLS]",
    "beit": "BEiT release: {'model': state dict}, q / v biases, relative position tables per block or shared, layer "
            "scale gamma_1 / gamma_2, no absolute pos embed; pre-training heads (lm_head, mask_token) left out",
    "beitv2": "BEiT v2 release: as beit; its cls_pt_layers pre-training head left out",
    "data2vec": "data2vec vision release: as beit",
}
FAMILY_FORMATS = tuple(FAMILY_HELP)
FAMILY_NAMES = {"dino": "DINO", "ibot": "iBOT", "deit3": "DeiT III", "beit": "BEiT", "beitv2": "BEiT v2",
                "data2vec": "data2vec"}
BEIT_FAMILY = ("beit", "beitv2", "data2vec")
# Pre-training-only parts of each release (first key component), left out.
PRETRAINING_PARTS = {
    "beit": ("mask_token", "lm_head", "cls_pt_layers", "cls_pt_norm", "cls_pt_lm_head"),
    "ibot": ("masked_embed",),
    "dino": ("masked_embed",),  # an iBOT file read as DINO
}
# Every key of our encoder layout; anything else in a family's converted state is a layout we do not know.
OUR_LAYOUT = re.compile(
    r"(cls_token|pos_embed|patch_embed\.proj\.(weight|bias)|(norm|fc_norm|head)\.(weight|bias)"
    r"|blocks\.\d+\.((norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)"
    r"|attn\.relative_position_bias_table|ls[12]\.gamma))")
BLOCK_KEYS = ("norm1.weight", "attn.qkv.weight", "attn.proj.weight", "norm2.weight", "mlp.fc1.weight",
              "mlp.fc2.weight")
SHARED_TABLE = "rel_pos_bias.relative_position_bias_table"

State = dict[str, torch.Tensor]


class FamilyError(UserInputError):
    """A file does not have the layout of the family it was read as; the message names the family and the keys."""


def compact_key_list(names: Iterable[str]) -> str:
    """Keys with block numbers folded: 'blocks.*.attn.qkv.weight x12' instead of twelve lines."""
    counts = Counter(re.sub(r"\.\d+\.", ".*.", name) for name in names)
    return ", ".join(f"{key} x{n}" if n > 1 else key for key, n in counts.items())


def _base(fmt: str) -> str:
    return fmt.split(":")[0]


def _is_state(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _release_state(obj: dict) -> dict | None:
    """The state dict a BEiT / DeiT release file holds: under 'model' or 'module', or the file itself."""
    for wrapper in ("model", "module"):
        if isinstance(obj.get(wrapper), dict):
            return obj[wrapper]
    return obj if _is_state(obj) else None


def detect_family(obj: dict) -> str | None:
    """The family a loaded checkpoint's layout names, or None for the formats of checkpoint.py (a DINO backbone-only
    file is timm's layout and reads as timm)."""
    zoo = detect_zoo_family(obj)
    if zoo is not None:
        return zoo
    if isinstance(obj.get("teacher"), dict) and isinstance(obj.get("student"), dict):
        return "ibot" if "ibot_loss" in obj else "dino"
    wrapped = obj.get("state_dict")
    if isinstance(wrapped, dict) and "masked_embed" in wrapped:
        return "ibot"
    state = _release_state(obj)
    if state is None:
        return None
    if SHARED_TABLE in state or any(str(k).endswith("attn.q_bias") for k in state):
        return "beitv2" if any(str(k).startswith("cls_pt_layers.") for k in state) else "beit"
    if any(str(k).endswith(".gamma_1") for k in state):
        return "deit3"
    return None


def read_family(obj: Any, fmt: str) -> tuple[State, list[str]]:
    """Encoder state dict in our layout from a loaded release file of family `fmt`, with notes on what changed."""
    if not isinstance(obj, dict):
        raise FamilyError(f"format {fmt!r} expects a dict, the file holds a {type(obj).__name__}")
    try:
        return _convert(obj, fmt)
    except FamilyError as err:
        guess = detect_family(obj)
        other = guess is not None and _base(guess) != _base(fmt)
        hint = f"; its keys look like {guess!r}: read it with that format" if other else ""
        raise FamilyError(f"{err}{hint}") from None


def _convert(obj: dict, fmt: str) -> tuple[State, list[str]]:
    family = _base(fmt)
    state, notes = _select_weights(obj, fmt)
    while state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for step in FAMILY_STEPS[family]:
        state, note = step(state, family)
        notes += note
    check_layout(state, family)
    return state, notes


def _select_weights(obj: dict, fmt: str) -> tuple[State, list[str]]:
    """DINO / iBOT: the teacher's (or the student's) backbone; other families: the release's state dict."""
    family, student = _base(fmt), fmt.endswith(":student")
    if family not in ("dino", "ibot"):
        state = _release_state(obj)
        if state is None:
            raise FamilyError(f"format {fmt!r} expects {{'model': state dict}} or a flat state dict; top-level keys "
                              f"{sorted(map(str, obj))[:8]}")
        return state, []
    if not (isinstance(obj.get("teacher"), dict) and isinstance(obj.get("student"), dict)):
        if student:
            raise FamilyError(f"format {fmt!r} selects the student of a training checkpoint ({{'teacher', 'student', "
                              f"...}}); this file holds one backbone: read it as {family!r}")
        state = obj["state_dict"] if isinstance(obj.get("state_dict"), dict) else obj
        return _strip_backbone(state), []
    branch, other = ("student", "teacher") if student else ("teacher", "student")
    state = obj[branch]
    while state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if not any(k.startswith("backbone.") for k in state):
        raise FamilyError(f"format {fmt!r}: the {branch} holds no 'backbone.' keys (keys {sorted(state)[:5]}); not a "
                          f"{FAMILY_NAMES[family]} training checkpoint")
    rest = [k for k in state if not k.startswith("backbone.")]
    notes = [f"{FAMILY_NAMES[family]} {branch} backbone; the {other}'s weights left out"
             + ("" if student else f" (format '{family}:student' selects them)")]
    if rest:
        notes.append(f"{branch} projection head left out: {compact_key_list(rest)}")
    return _strip_backbone(state), notes


def _strip_backbone(state: dict) -> dict:
    """Keys under 'backbone.' (DINO's multi-crop wrapper) without it; the state unchanged when it has none."""
    if any(k.startswith("backbone.") for k in state):
        return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def _drop_pretraining_parts(state: State, family: str) -> tuple[State, list[str]]:
    """Leave out the pre-training heads and mask tokens of a release, and BEiT's derived index buffers."""
    parts = PRETRAINING_PARTS.get("beit" if family in BEIT_FAMILY else family, ())
    dropped = [k for k in state if k.split(".")[0] in parts]
    index = [k for k in state if k.endswith("relative_position_index")]
    kept = {k: v for k, v in state.items() if k not in dropped and k not in index}
    notes = [f"pre-training parts left out: {compact_key_list(dropped)}"] if dropped else []
    if index:
        notes.append(f"relative_position_index left out ({len(index)}, rebuilt from the grid)")
    return kept, notes


def _merge_qv_bias(state: State, family: str) -> tuple[State, list[str]]:
    """BEiT's q and v biases as one qkv bias with a zero k bias: BEiT has none, so features are unchanged."""
    q_keys = [k for k in state if k.endswith("attn.q_bias")]
    if not q_keys:
        return state, []
    merged = dict(state)
    for key in q_keys:
        v_key = key.replace("q_bias", "v_bias")
        if v_key not in state:
            raise FamilyError(f"{FAMILY_NAMES[family]} checkpoint with {key} but no {v_key}")
        q_bias = merged.pop(key)
        merged[key.replace("q_bias", "qkv.bias")] = torch.cat([q_bias, torch.zeros_like(q_bias), merged.pop(v_key)])
    return merged, [f"attn.qkv.bias from q_bias and v_bias in {len(q_keys)} blocks, k bias zero "
                    f"({FAMILY_NAMES[family]} has none)"]


def _rename_layer_scale(state: State, family: str) -> tuple[State, list[str]]:
    """Layer scale gamma_1 / gamma_2 (Meta's and Microsoft's releases) as ls1.gamma / ls2.gamma (timm's names)."""
    renamed = {re.sub(r"\.gamma_([12])$", r".ls\1.gamma", k): v for k, v in state.items()}
    count = sum(k.endswith(".gamma_1") for k in state)
    return renamed, [f"layer scale gamma_1 / gamma_2 as ls1.gamma / ls2.gamma in {count} blocks"] if count else []


def _share_rel_pos_table(state: State, family: str) -> tuple[State, list[str]]:
    """A relative position table shared by all blocks (BEiT pre-training) copied into every block: each block then
    adds the same bias, as the shared one did."""
    if SHARED_TABLE not in state:
        return state, []
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("blocks.")})
    per_block = [k for k in state if k.endswith("attn.relative_position_bias_table")]
    if per_block:
        raise FamilyError(f"{FAMILY_NAMES[family]} checkpoint with a shared relative position table and per-block "
                          f"ones ({compact_key_list(per_block)}): which one the blocks use is ambiguous")
    copied = {k: v for k, v in state.items() if k != SHARED_TABLE}
    for i in blocks:
        copied[f"blocks.{i}.attn.relative_position_bias_table"] = state[SHARED_TABLE].clone()
    return copied, [f"shared relative position table copied to {len(blocks)} blocks"]


def _zero_pos_embed(state: State, family: str) -> tuple[State, list[str]]:
    """A pos embed of zeros for a family that has relative positions only (BEiT): adding it changes nothing."""
    table = state.get("blocks.0.attn.relative_position_bias_table")
    if "pos_embed" in state or table is None or "patch_embed.proj.weight" not in state:
        return state, []
    side = (math.isqrt(table.shape[0] - 3) + 1) // 2  # (2 side - 1)^2 offsets, 3 entries for [CLS]
    if (2 * side - 1) ** 2 + 3 != table.shape[0]:
        raise FamilyError(f"{FAMILY_NAMES[family]} relative position table of {table.shape[0]} rows: not a square "
                          "grid with [CLS] entries")
    width = state["patch_embed.proj.weight"].shape[0]
    prefix = int("cls_token" in state)
    state = {**state, "pos_embed": torch.zeros(1, prefix + side * side, width)}
    return state, [f"pos_embed of zeros for [CLS] + {side}x{side} ({FAMILY_NAMES[family]} has relative positions "
                   "only)"]


def _cls_pos_slot(state: State, family: str) -> tuple[State, list[str]]:
    """A zero pos-embed slot for [CLS] where the release adds no position to it (DeiT III): a square table."""
    pos = state.get("pos_embed")
    if pos is None or "cls_token" not in state or math.isqrt(pos.shape[1]) ** 2 != pos.shape[1]:
        return state, []
    state = {**state, "pos_embed": torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)}
    return state, [f"pos_embed: a zero slot for [CLS] added ({FAMILY_NAMES[family]} adds no position to [CLS])"]


# What each family's release differs in from our layout, in the order it is converted (iBOT's ViT may have layer scale).
FAMILY_STEPS = {
    "dino": (_drop_pretraining_parts, _rename_layer_scale),
    "ibot": (_drop_pretraining_parts, _rename_layer_scale),
    "deit3": (_rename_layer_scale, _cls_pos_slot),
    **dict.fromkeys(BEIT_FAMILY, (_drop_pretraining_parts, _merge_qv_bias, _rename_layer_scale, _share_rel_pos_table,
                                  _zero_pos_embed)),
}


def check_layout(state: State, family: str, layout: re.Pattern = OUR_LAYOUT, name: str | None = None) -> None:
    """Refuse a converted state with keys outside `layout` (our encoder's; a family with more parts passes its own)
    or blocks without their weights, naming the family it was read as (the closest supported one when detected;
    `name` where FAMILY_NAMES does not hold it) and what differs."""
    unknown = [k for k in state if not layout.fullmatch(k)]
    blocks = sorted({k.split(".")[1] for k in state if k.startswith("blocks.")})
    missing = [f"blocks.{i}.{name}" for i in blocks for name in BLOCK_KEYS if f"blocks.{i}.{name}" not in state]
    if "patch_embed.proj.weight" not in state:
        missing.insert(0, "patch_embed.proj.weight")
    if unknown or missing:
        name = name or FAMILY_NAMES[family]
        raise FamilyError(
            f"not a {name} checkpoint of a supported layout (closest supported family: {family!r}, {name}): "
            f"{len(unknown)} keys of no known layout ({compact_key_list(unknown) or '-'}), "
            f"{len(missing)} missing ({compact_key_list(missing) or '-'}); a variant or another family this loader "
            "does not read")


# Families converted in a module of their own (reusing the steps above) join the tables here.
from .families_hf_mim import ZOO_HELP, ZOO_NAMES, ZOO_STEPS, detect_zoo_family  # noqa: E402

FAMILY_HELP.update(ZOO_HELP)
FAMILY_NAMES.update(ZOO_NAMES)
FAMILY_STEPS.update(ZOO_STEPS)
FAMILY_FORMATS = tuple(FAMILY_HELP)
