"""Fitting a read checkpoint to our ViT: pos-embed resampling, shape checks and a readable load report."""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers.pos_embed_rel import resize_rel_pos_bias_table

from .checkpoint import Checkpoint, CheckpointError, read_checkpoint, split_pretraining_keys
from .families import compact_key_list
from .families_dinov2_clip import TOWER_OPTIONS
from .pos_embed import Grid, resample_pos_embed
from .vit import FAMILY_OPTION_DEFAULTS, VIT_SIZES, VisionTransformer
from .vitdet import ViTDetViT

# Checkpoint parts a model may be built without, left unused by design (first or last key component): [CLS] (ViTDet
# backbones have none), DeiT's distillation token (our ViT never has one; the pos-embed resampling drops its slot),
# the final norm (MAE-style fine-tuning pools into fc_norm, dense-task backbones have none), the average pool's
# fc_norm (a [CLS]-pooling or dense-task model has none) and ViTDet's relative position tables (a plain ViT read out
# of a detection run has none). Any other key a model cannot take is an error.
UNUSED_PARTS = ("cls_token", "dist_token", "norm", "fc_norm", "rel_pos_h", "rel_pos_w")


@dataclass
class LoadReport:
    """What happened when a checkpoint was loaded into a model, key by key."""

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"loaded {self.source} (format {self.format})"]
        lines += [f"  note: {note}" for note in self.notes]
        for title, names, fold in (("loaded", self.loaded, True), ("missing", self.missing, False),
                                   ("unexpected", self.unexpected, False), ("dropped on request", self.dropped, True)):
            listed = compact_key_list(names) if fold else ", ".join(names)
            lines.append(f"  {title} ({len(names)}): {listed or '-'}")
        return "\n".join(lines)


def size_name(width: int) -> str | None:
    """Named ViT size of a width, if any (used for readable mismatch errors)."""
    return next((name for name, dims in VIT_SIZES.items() if dims["embed_dim"] == width), None)


def pos_embed_layout(length: int, has_cls_token: bool) -> tuple[int, Grid]:
    """(prefix slots, square grid) of a pos-embed table of `length` entries; a [CLS] slot is tried first
    when the checkpoint has a [CLS] token, two prefix slots (DeiT's distillation token) last."""
    for prefix in ((1, 0) if has_cls_token else (0, 1)) + (2,):
        side = math.isqrt(length - prefix)
        if side * side == length - prefix:
            return prefix, (side, side)
    raise CheckpointError(f"pos_embed of length {length} is not a square grid plus at most two prefix slots")


def infer_vit_config(state: dict[str, torch.Tensor], num_heads: int | None = None) -> dict[str, Any]:
    """Constructor arguments of the ViT encoder that `state` belongs to (heads from the width if not given); a state
    with ViTDet's relative-position tables describes a ViTDet ViT (see `vitdet_options`)."""
    try:
        proj = state["patch_embed.proj.weight"]
        width, in_chans, patch, _ = proj.shape
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / width
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"not a ViT encoder state dict: missing {err}") from None
    vitdet = "blocks.0.attn.rel_pos_h" in state
    table = state.get("blocks.0.attn.relative_position_bias_table")
    if num_heads is None and table is not None:
        num_heads = table.shape[1]  # one column per head
    if num_heads is None and vitdet:
        num_heads = width // state["blocks.0.attn.rel_pos_h"].shape[1]  # one column per channel of a head
    if num_heads is None:
        name = size_name(width)
        if name is None:
            raise CheckpointError(f"width {width} matches no named ViT size; give the number of heads")
        num_heads = VIT_SIZES[name]["num_heads"]
    class_token = "cls_token" in state and not vitdet
    config: dict[str, Any] = dict(
        patch_size=patch, in_chans=in_chans, embed_dim=width, depth=depth, num_heads=num_heads,
        mlp_ratio=mlp_ratio, qkv_bias="blocks.0.attn.qkv.bias" in state, class_token=class_token,
        global_pool=_global_pool(state, class_token),
        **extension_options(state), **token_options(state),
    )
    pos_grid = None
    if "pos_embed" in state:
        _, pos_grid = pos_embed_layout(state["pos_embed"].shape[1], class_token)
        config["img_size"] = [pos_grid[0] * patch, pos_grid[1] * patch]
    if vitdet:
        config.update(vitdet_options(state, patch, depth, pos_grid))
    if "head.weight" in state and state["head.weight"].ndim == 2:
        config["num_classes"] = state["head.weight"].shape[0]
    return config


def vitdet_options(state: dict[str, torch.Tensor], patch: int, depth: int, pos_grid: Grid | None) -> dict[str, Any]:
    """ViTDet's window size, global blocks and input size, read from its relative-position tables: a window
    block's tables have 2 x window - 1 rows, a global block's 2 x grid - 1, the most (windows are smaller than the
    grid, as in every ViTDet). A pos embed on another grid than the input's is ViTDet's table on the pre-training
    grid (`pretrain_img_size`, resized every forward)."""
    try:
        rows = [(state[f"blocks.{i}.attn.rel_pos_h"].shape[0], state[f"blocks.{i}.attn.rel_pos_w"].shape[0])
                for i in range(depth)]
    except KeyError as err:
        raise CheckpointError(f"ViTDet relative position tables in some blocks but not all: missing {err}") from None
    global_rows = max(rows)
    windows = {r for r in rows if r != global_rows}
    if len(windows) > 1 or any(h != w for h, w in windows):
        raise CheckpointError(f"ViTDet relative position tables of rows {sorted(set(rows))}: expected square windows "
                              "of one size and the global grid")
    window = (next(iter(windows))[0] + 1) // 2 if windows else 0  # no window tables: every block is global
    config: dict[str, Any] = dict(
        class_token=False, global_pool="", use_rel_pos=True, img_size=[(n + 1) // 2 * patch for n in global_rows],
        window_size=window, global_blocks=[i for i, r in enumerate(rows) if r == global_rows] if window else [])
    if pos_grid is not None and [side * patch for side in pos_grid] != config["img_size"]:
        config["pretrain_img_size"] = pos_grid[0] * patch
    return config


def vit_from_config(config: dict[str, Any]) -> VisionTransformer:
    """The ViT a stored config describes, of its own family: ViTDet's (pos embed on the pre-training grid) when
    the config names a `pretrain_img_size`, our plain ViT otherwise."""
    model_class = ViTDetViT if "pretrain_img_size" in config else VisionTransformer
    return model_class(**config)


def extension_options(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The ViT options for BEiT's relative position tables and layer scales that an encoder state dict has:
    on (layer scale 1.0, which the loaded values replace) where it has them, off where it has none."""
    return dict(rel_pos_bias="blocks.0.attn.relative_position_bias_table" in state,
                layer_scale_init=1.0 if "blocks.0.ls1.gamma" in state else None)


def resolve_extensions(options: dict[str, Any], state: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """`options` with rel_pos_bias / layer_scale_init "auto" decided by an encoder state dict: on (layer scale 1.0,
    which the loaded values replace) when it has them, off when it has none or there is no checkpoint."""
    found = extension_options(state or {})
    return {key: found[key] if key in found and value == "auto" else value for key, value in options.items()}


# What a checkpoint's architecture has beyond a recipe's model config: read from the weights (patch size, register
# tokens, pre-norm, patch bias) or fixed by its format (activation, norm epsilon). Runs record them in their meta.
CHECKPOINT_ARCH_KEYS = ("patch_size", "reg_tokens", "pre_norm", "patch_bias", "act_layer", "norm_eps")


def checkpoint_architecture(options: dict[str, Any], ckpt: Checkpoint | None) -> dict[str, Any]:
    """A recipe's model `options` completed by what `ckpt`'s encoder needs: "auto" extensions decided (see
    `resolve_extensions`), then patch size, register tokens, pre-norm and patch bias from its weights and the
    activation / norm epsilon its format fixes (or a run of ours recorded), where the recipe does not set them. A
    recipe's patch size other than the checkpoint's is refused in one line naming the override."""
    options = resolve_extensions(options, ckpt.state if ckpt else None)
    if ckpt is None:
        return options
    found = dict(token_options(ckpt.state), **_fixed_options(ckpt))
    proj = ckpt.state.get("patch_embed.proj.weight")
    if proj is not None:
        found["patch_size"] = proj.shape[-1]
        if options.get("patch_size", found["patch_size"]) != found["patch_size"]:
            raise CheckpointError(f"{ckpt.path}: patch size {found['patch_size']}, the model's "
                                  f"{options['patch_size']}: set model.patch_size={found['patch_size']} (and an "
                                  "input size that is a multiple of it)")
    return {**found, **options}


def _fixed_options(ckpt: Checkpoint) -> dict[str, Any]:
    """The activation and norm epsilon `ckpt` was trained with, where it says: its format's (CLIP's QuickGELU), or
    the model config our exports and runs record."""
    if ckpt.format in TOWER_OPTIONS:
        return dict(TOWER_OPTIONS[ckpt.format])
    recorded = ckpt.meta.get("vit_config") or ckpt.meta.get("model") or {}
    return {key: recorded[key] for key in ("act_layer", "norm_eps") if key in recorded}


def token_options(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The ViT options of other families' embeddings that an encoder state dict shows, only where they differ from
    the default: DINOv2's register tokens (`reg_token`, 1 x count x width), CLIP's norm before the blocks
    (`norm_pre`) and its patch embedding without a bias. The activation and norm epsilon leave no trace in the
    weights: the format names them (see `families_dinov2_clip.TOWER_OPTIONS`)."""
    options: dict[str, Any] = {}
    if "reg_token" in state:
        options["reg_tokens"] = state["reg_token"].shape[1]
    if "norm_pre.weight" in state:
        options["pre_norm"] = True
    if "patch_embed.proj.weight" in state and "patch_embed.proj.bias" not in state:
        options["patch_bias"] = False
    return options


def _global_pool(state: dict[str, torch.Tensor], class_token: bool) -> str:
    """'avg' with MAE's fc_norm or without [CLS]; 'token' with [CLS] and a final norm; '' (feature maps only) for
    dense-task backbones, which keep [CLS] but have no final norm."""
    if "fc_norm.weight" in state or not class_token:
        return "avg"
    return "token" if "norm.weight" in state else ""


def _resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linear interpolation of a relative-position table to `length` rows (as ViTDet does on the fly)."""
    resized = F.interpolate(table.t().unsqueeze(0).float(), size=length, mode="linear")
    return resized.squeeze(0).t().to(table.dtype)


def adapt_state_dict(
    state: dict[str, torch.Tensor], model: VisionTransformer, src_grid: Grid | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Resample pos embed and relative-position tables to `model`; refuse any other shape mismatch."""
    target = model.state_dict()
    adapted, notes, mismatches = dict(state), [], []
    for key, value in state.items():
        if key not in target or value.shape == target[key].shape:
            continue
        want = target[key].shape
        if key == "pos_embed" and value.shape[-1] == want[-1]:
            if src_grid:  # recorded in our metadata; the only way to know a non-square grid
                grid, prefix = src_grid, value.shape[1] - src_grid[0] * src_grid[1]
            else:
                prefix, grid = pos_embed_layout(value.shape[1], "cls_token" in state)
            slots = model.num_pos_prefix_tokens
            adapted[key] = resample_pos_embed(value, model.grid_size, prefix, slots, grid)
            notes.append(f"pos_embed resampled from {grid[0]}x{grid[1]} (+{prefix} prefix) to "
                         f"{model.grid_size[0]}x{model.grid_size[1]} (+{slots} prefix)")
        elif key.endswith(("rel_pos_h", "rel_pos_w")) and value.shape[1] == want[1]:
            adapted[key] = _resize_rel_pos(value, want[0])
            notes.append(f"{key} interpolated from {value.shape[0]} to {want[0]} rows")
        elif key.endswith("relative_position_bias_table") and value.shape[1] == want[1]:
            adapted[key] = resize_rel_pos_bias_table(value, model.grid_size, tuple(want))
            notes.append(f"{key} resized from {value.shape[0]} to {want[0]} offsets")
        else:
            mismatches.append((key, tuple(value.shape), tuple(want)))
    if mismatches:
        raise CheckpointError(_mismatch_message(mismatches, state, model))
    return adapted, notes


def _mismatch_message(mismatches: list[tuple[str, tuple, tuple]], state: dict, model: VisionTransformer) -> str:
    lines = [f"  {key}: checkpoint {src} vs model {dst}" for key, src, dst in mismatches[:10]]
    if len(mismatches) > 10:
        lines.append(f"  ... and {len(mismatches) - 10} more")
    message = "checkpoint does not match the model architecture:\n" + "\n".join(lines)
    proj = state.get("patch_embed.proj.weight")
    if proj is not None and proj.shape[0] != model.embed_dim:
        src, dst = proj.shape[0], model.embed_dim
        message += (f"\n  width {src} ({size_name(src) or 'custom'}) vs model width {dst} "
                    f"({size_name(dst) or 'custom'}): build the model with the checkpoint's size")
    return message


def unusable_keys(state: dict[str, torch.Tensor], model: VisionTransformer) -> list[str]:
    """Keys of `state` that `model` has no place for, beyond the UNUSED_PARTS it may be built without: loading
    would silently drop them (e.g. the last blocks of a deeper checkpoint)."""
    target = model.state_dict()
    return [k for k in state if k not in target and k.split(".")[0] not in UNUSED_PARTS
            and k.split(".")[-1] not in UNUSED_PARTS]


def _unusable_message(keys: list[str]) -> str:
    """Why the model cannot take `keys`: DeiT's distillation head alone (the encoder fits), or another architecture."""
    listed = f"{', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
    if all(key.startswith("head_dist.") for key in keys):
        return (f"DeiT's distillation token and head ({listed}): this ViT has no place for them, it classifies from "
                "[CLS] alone; load the checkpoint without its head (drop_head=True, or convert without --keep-head)")
    return (f"checkpoint keys the model has no place for ({len(keys)}): {listed} (a deeper or otherwise different "
            "architecture: build the model the checkpoint describes)")


def check_format_options(model: VisionTransformer, ckpt: Checkpoint) -> None:
    """Refuse a model whose activation or norm epsilon differs from what the checkpoint's format fixes (CLIP's
    QuickGELU): the weights would load and silently compute other features."""
    config = {**FAMILY_OPTION_DEFAULTS, **model.config}
    wrong = {k: v for k, v in TOWER_OPTIONS.get(ckpt.format, {}).items() if config[k] != v}
    if wrong:
        listed = ", ".join(f"{k}={v!r} (model: {config[k]!r})" for k, v in wrong.items())
        raise CheckpointError(f"{ckpt.path}: format {ckpt.format!r} needs {listed}: build the model with them")


def load_pretrained(
    model: VisionTransformer,
    source: str | os.PathLike | Checkpoint,
    fmt: str = "auto",
    prefix: str | None = None,
    drop_decoder: bool = True,
    drop_head: bool = True,
    allow_pickle: bool = False,
    allowed_missing: Iterable[str] | None = None,
) -> LoadReport:
    """Load a checkpoint of any supported format into `model` and report every key.

    Decoder / mask-token keys (`drop_decoder`) and head keys (`drop_head`) are dropped first; any other key the
    model has no place for is an error (a deeper checkpoint must not load truncated), except UNUSED_PARTS.
    `allowed_missing` (first key components by prefix, or last components exactly) turns missing keys outside it
    into an error, e.g. ('head', 'fc_norm') when fine-tuning a pre-trained encoder, or ('rel_pos_h', 'rel_pos_w')
    for ViTDet's relative position tables, which pre-training does not have.
    """
    ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(source, fmt, prefix, allow_pickle)
    state, dropped = split_pretraining_keys(ckpt.state, drop_decoder, drop_head)
    src_grid = None
    if ckpt.format == "ours" and "img_size" in ckpt.meta.get("vit_config", {}):
        config = ckpt.meta["vit_config"]
        size = config.get("pretrain_img_size") or config["img_size"]  # ViTDet's table is on the pre-training grid
        src_grid = tuple(s // config["patch_size"] for s in ((size, size) if isinstance(size, int) else size))
    try:
        state, notes = adapt_state_dict(state, model, src_grid)
    except CheckpointError as err:
        raise CheckpointError(f"{ckpt.path}: {err}") from None
    check_format_options(model, ckpt)
    unused = unusable_keys(state, model)
    if unused:
        raise CheckpointError(f"{ckpt.path}: {_unusable_message(unused)}")
    result = load_state(model, state, ckpt.path)
    report = LoadReport(
        ckpt.path, ckpt.format, loaded=[k for k in state if k not in result.unexpected_keys],
        missing=list(result.missing_keys), unexpected=list(result.unexpected_keys), dropped=dropped,
        notes=ckpt.notes + notes,
    )
    if allowed_missing is not None:
        allowed = tuple(allowed_missing)
        bad = [k for k in report.missing if not (k.split(".")[0].startswith(allowed) or k.split(".")[-1] in allowed)]
        if bad:
            raise CheckpointError(f"{ckpt.path}: keys missing from the checkpoint: {', '.join(bad)} "
                                  f"(only {', '.join(allowed_missing)} may be missing)")
    return report


def load_state(model: VisionTransformer, state: dict[str, torch.Tensor], source: str) -> Any:
    """`model.load_state_dict(state, strict=False)`; a model built on the meta device (no weights yet) takes the
    checkpoint's tensors as its own, in its dtypes, and every one of its weights must come from `state`."""
    target = model.state_dict()
    if not any(tensor.is_meta for tensor in target.values()):
        return model.load_state_dict(state, strict=False)
    state = {k: v.to(target[k].dtype) if k in target else v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False, assign=True)
    empty = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if empty:
        raise CheckpointError(f"{source}: keys missing from the checkpoint: {compact_key_list(empty)}")
    return result


def load_model(
    source: str | os.PathLike,
    fmt: str = "auto",
    prefix: str | None = None,
    allow_pickle: bool = False,
    keep_head: bool = False,
    **overrides: Any,
) -> tuple[VisionTransformer, LoadReport]:
    """Build the ViT encoder a checkpoint describes (our metadata, or inferred from shapes) and load it.

    Decoder and mask-token keys are dropped (read them with `read_checkpoint`); `overrides` change the
    architecture, e.g. img_size=384 resamples the pos embed on load.
    """
    ckpt = read_checkpoint(source, fmt, prefix, allow_pickle)
    state, _ = split_pretraining_keys(ckpt.state, drop_head=not keep_head)
    config = dict(ckpt.meta.get("vit_config") or infer_vit_config(state, overrides.get("num_heads")))
    config.update(TOWER_OPTIONS.get(ckpt.format, {}))
    if not keep_head:
        config["num_classes"] = 0
    config.update(overrides)
    with torch.device("meta"):  # no random initialisation, most of the time of a load, where the checkpoint has it all
        model = vit_from_config(config)
    if set(model.state_dict()) - set(state):  # e.g. detectron2's encoder has no final norm: initialise as usual
        model = vit_from_config(config)
    return model, load_pretrained(model, ckpt, drop_head=not keep_head)

