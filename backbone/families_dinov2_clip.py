"""Release layouts of DINOv2 (with and without registers) and of CLIP image towers (OpenAI, OpenCLIP) in our layout.

DINOv2's hub files (`dinov2_vitb14_pretrain.pth`, `dinov2_vitb14_reg4_pretrain.pth`) are flat state dicts in timm's
key names but for `register_tokens` and the iBOT `mask_token`; CLIP's (`clip.load(..., jit=False)` state dicts,
OpenCLIP's `open_clip_pytorch_model.bin` and its training checkpoints) hold the image tower under `visual.` in
OpenAI's names beside the text tower. What the weights cannot show (CLIP's activation and LayerNorm epsilon) the
format names: `clip` is QuickGELU (OpenAI, OpenCLIP's `-quickgelu` models), `openclip` GELU.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from .families import OUR_LAYOUT, FamilyError, check_layout, compact_key_list, detect_family

TOWER_HELP = {
    "dinov2": "DINOv2 hub release (dinov2_vit*14[_reg4]_pretrain.pth): flat state dict, layer scale ls1 / ls2, "
              "register_tokens (reg4 models) kept as register tokens; mask_token left out",
    "clip": "OpenAI CLIP (and OpenCLIP *-quickgelu) state dict: image tower under 'visual.' (conv1, class_embedding, "
            "ln_pre, transformer.resblocks, ln_post), QuickGELU; text tower and visual.proj left out",
    "openclip": "OpenCLIP release (open_clip_pytorch_model.bin) or training checkpoint {'state_dict': ...}: as clip, "
                "with GELU (LAION / DataComp models)",
}
TOWER_FORMATS = tuple(TOWER_HELP)
TOWER_NAMES = {"dinov2": "DINOv2", "clip": "CLIP (OpenAI)", "openclip": "OpenCLIP"}
# Architecture options a format fixes that the weights do not show (torch's LayerNorm default eps in CLIP).
TOWER_OPTIONS: dict[str, dict[str, Any]] = {
    "dinov2": {},
    "clip": dict(act_layer="quick_gelu", norm_eps=1e-5),
    "openclip": dict(act_layer="gelu", norm_eps=1e-5),
}
# Our layout plus the embeddings these families add (register tokens, CLIP's norm before the blocks).
TOWER_LAYOUT = re.compile(rf"{OUR_LAYOUT.pattern}|reg_token|norm_pre\.(weight|bias)")
# OpenAI's names of the image tower's parts -> ours (timm's), applied in order to the key after 'visual.'.
CLIP_RENAMES = (
    (r"^conv1\.", "patch_embed.proj."), (r"^ln_pre\.", "norm_pre."), (r"^ln_post\.", "norm."),
    (r"^transformer\.resblocks\.", "blocks."), (r"\.ln_1\.", ".norm1."), (r"\.ln_2\.", ".norm2."),
    (r"\.attn\.in_proj_(weight|bias)$", r".attn.qkv.\1"), (r"\.attn\.out_proj\.", ".attn.proj."),
    (r"\.mlp\.c_fc\.", ".mlp.fc1."), (r"\.mlp\.c_proj\.", ".mlp.fc2."), (r"\.ls_([12])\.gamma$", r".ls\1.gamma"),
)
CLIP_AMBIGUOUS = ("a CLIP image tower (visual.* keys); its activation is not in the file: read it with format 'clip' "
                  "(OpenAI's release, OpenCLIP's *-quickgelu models: QuickGELU) or 'openclip' (OpenCLIP's LAION / "
                  "DataComp models: GELU)")

State = dict[str, torch.Tensor]


def is_torchscript_archive(path: Path) -> bool:
    """Whether `path` is a TorchScript archive (torch.jit.save: a zip with compiled code and constants.pkl), as
    OpenAI's CLIP downloads (ViT-B-16.pt) are, rather than a torch.save file."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def torchscript_refusal(path: Path) -> str:
    """Why a TorchScript archive is not read without --allow-pickle, and the two ways to read it."""
    return (f"{path}: a TorchScript archive (OpenAI's CLIP downloads are): loading it runs the code it holds. If you "
            "trust its source, pass --allow-pickle (Python: allow_pickle=True), or save its state dict once with "
            "torch.save(clip.load(name, jit=False)[0].state_dict(), file) and read that with format 'clip'")


def torchscript_state(path: Path) -> State:
    """The state dict of a TorchScript archive (runs its compiled code: only with the user's --allow-pickle)."""
    return dict(torch.jit.load(str(path), map_location="cpu").state_dict())


def _flat_state(obj: dict) -> dict:
    """The state dict of a release or OpenCLIP training checkpoint ({'state_dict': ...}), DDP's 'module.' stripped."""
    state = obj["state_dict"] if isinstance(obj.get("state_dict"), dict) else obj
    while state and all(str(k).startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def detect_tower(obj: dict) -> str | None:
    """'dinov2' or 'clip' when a loaded file has their layout, else None; a CLIP file's activation is not known
    ('clip' stands for both CLIP formats)."""
    state = _flat_state(obj)
    if "visual.class_embedding" in state and "visual.conv1.weight" in state:
        return "clip"
    mask = state.get("mask_token")
    if "register_tokens" in state or (isinstance(mask, torch.Tensor) and mask.ndim == 2 and "cls_token" in state
                                      and any(str(k).endswith(".ls1.gamma") for k in state)):
        return "dinov2"
    return None


def detect_tower_format(obj: dict) -> str | None:
    """The format of a file auto-detected as one of these families; a CLIP file is refused (activation unknown)."""
    family = detect_tower(obj)
    if family == "clip":
        raise FamilyError(CLIP_AMBIGUOUS)
    return family


def read_tower(obj: Any, fmt: str) -> tuple[State, list[str]]:
    """Encoder state dict in our layout from a loaded DINOv2 / CLIP release file, with notes on what changed."""
    if not isinstance(obj, dict):
        raise FamilyError(f"format {fmt!r} expects a dict, the file holds a {type(obj).__name__}")
    try:
        state, notes = _dinov2(_flat_state(obj)) if fmt == "dinov2" else _clip(_flat_state(obj), fmt)
        check_layout(state, fmt, TOWER_LAYOUT, TOWER_NAMES[fmt])
    except FamilyError as err:
        guess = detect_family(obj) or detect_tower(obj)
        other = guess is not None and guess != fmt and {guess, fmt} != {"clip", "openclip"}
        raise FamilyError(f"{err}{wrong_family_hint(guess) if other else ''}") from None
    return state, notes


def wrong_family_hint(guess: str | None) -> str:
    """What to read a file as whose keys look like family `guess` (nothing when None)."""
    if guess is None:
        return ""
    return "; its keys look like CLIP: read it as 'clip' or 'openclip'" if guess == "clip" else (
        f"; its keys look like {guess!r}: read it with that format")


def _dinov2(state: dict) -> tuple[State, list[str]]:
    """DINOv2: register_tokens as our reg_token, the iBOT mask token left out, FSDP's block chunks unfolded."""
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    notes = []
    if "mask_token" in state:
        state.pop("mask_token")
        notes.append("pre-training parts left out: mask_token (iBOT's masked-patch embedding)")
    chunked = [k for k in state if re.match(r"blocks\.\d+\.\d+\.", k)]
    if chunked:  # BlockChunk keeps each block's global index as the second number
        state = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}
        notes.append("blocks.<chunk>.<i>.* (FSDP block chunks) as blocks.<i>.*")
    if "register_tokens" in state:
        state["reg_token"] = state.pop("register_tokens")
        notes.append(f"register_tokens as {state['reg_token'].shape[1]} register tokens after [CLS] (no position "
                     "embedding, dropped from patch features like [CLS])")
    return state, notes


def _clip(state: dict, fmt: str) -> tuple[State, list[str]]:
    """CLIP: the image tower renamed, its class embedding and position table reshaped; the text tower and the
    image projection left out (named in the notes)."""
    if "visual.class_embedding" not in state:
        raise FamilyError(f"not a {TOWER_NAMES[fmt]} checkpoint: no visual.class_embedding (keys "
                          f"{sorted(map(str, state))[:5]})")
    visual = {k[len("visual."):]: v for k, v in state.items()
              if k.startswith("visual.") and isinstance(v, torch.Tensor)}
    text = [k for k in state if not k.startswith("visual.")]
    converted: State = {}
    for key, value in visual.items():
        if key == "proj":
            continue
        for pattern, replacement in CLIP_RENAMES:
            key = re.sub(pattern, replacement, key)
        converted[key] = value
    converted["cls_token"] = converted.pop("class_embedding").reshape(1, 1, -1)
    if "positional_embedding" in converted:
        converted["pos_embed"] = converted.pop("positional_embedding").unsqueeze(0)
    act = TOWER_OPTIONS[fmt]["act_layer"]
    notes = [f"{TOWER_NAMES[fmt]} image tower: {act}, LayerNorm eps 1e-5, ln_pre as norm_pre, ln_post as norm, "
             "class_embedding as cls_token"]
    if "proj" in visual:
        notes.append(f"image projection visual.proj {tuple(visual['proj'].shape)} left out (features are the "
                     "tokens after ln_post)")
    if text:
        notes.append(f"text tower and CLIP's other parts left out: {compact_key_list(text)}")
    return converted, notes
