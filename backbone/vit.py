"""The one Vision Transformer shared by pre-training, classification, detection and segmentation.

Built from timm layers with timm/MAE parameter names, so MAE, DropPos, MoCo v3 and timm weights load by
key. ViTDet's window attention and decomposed relative position bias, and BEiT's relative position bias table
and layer scale (as mmseg's MAE backbone uses them), are options of the same blocks; DINOv2's register tokens and
CLIP's norm before the blocks, QuickGELU and bias-free patch embedding are options of the same ViT (all off by
default, which leaves the model unchanged).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import (
    DropPath,
    LayerScale,
    Mlp,
    PatchEmbed,
    QuickGELU,
    gen_relative_position_index,
    trunc_normal_,
)
from torch import nn
from torch.utils.checkpoint import checkpoint

from engine.errors import UserInputError

from .pos_embed import Grid, resample_pos_embed, sincos_2d_pos_embed
from .windows import decomposed_rel_pos_bias, window_merge, window_partition

VIT_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}
POS_EMBED_INITS = ("sincos", "random")
GLOBAL_POOLS = ("token", "avg", "")  # "": no pooling and no final norm (dense tasks read feature maps)
ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}  # QuickGELU: OpenAI's CLIP
# Options added for other pre-training families, with the defaults that leave the model (and its config) as before.
FAMILY_OPTION_DEFAULTS: dict[str, Any] = dict(reg_tokens=0, pre_norm=False, act_layer="gelu", patch_bias=True)


def init_mae_style(module: nn.Module) -> None:
    """MAE's initialisation of every linear (xavier uniform, zero bias) and LayerNorm (1, 0) in `module`."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Attention(nn.Module):
    """Multi-head self-attention through SDPA, with one of two relative position biases as an option.

    `rel_pos_grid`: ViTDet's decomposed bias (per-axis tables, patch tokens only). `table_grid`: BEiT's table of
    one learned bias per head and 2-D offset, plus three entries for [CLS] to patch, patch to [CLS] and [CLS]
    to itself when `prefix_tokens` is 1; zero-initialised, so a fresh table leaves attention unchanged.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, rel_pos_grid: Grid | None = None,
                 table_grid: Grid | None = None, prefix_tokens: int = 0):
        super().__init__()
        if dim % num_heads:
            raise UserInputError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = self.rel_pos_w = None
        if rel_pos_grid is not None:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_grid[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_grid[1] - 1, head_dim))
        self.table_grid, self.table_tokens = table_grid, 0
        self.relative_position_bias_table = None
        if table_grid is not None:
            offsets = (2 * table_grid[0] - 1) * (2 * table_grid[1] - 1)
            self.relative_position_bias_table = nn.Parameter(torch.zeros(offsets + 3 * prefix_tokens, num_heads))
            with torch.device("cpu"):  # also when built on the meta device (load_model): no checkpoint holds it
                index = gen_relative_position_index(table_grid, class_token=prefix_tokens > 0)
            self.table_tokens = prefix_tokens + table_grid[0] * table_grid[1]
            self.register_buffer("relative_position_index", index.flatten(), persistent=False)

    def table_bias(self, grid: Grid) -> torch.Tensor:
        """(1, heads, L, L) bias looked up from the table; only defined for the grid the table was built for."""
        if tuple(grid) != self.table_grid:
            raise ValueError(f"the relative position bias table is built for a {self.table_grid[0]}x"
                             f"{self.table_grid[1]} grid, got {grid[0]}x{grid[1]} tokens: build the model with "
                             "this input size")
        bias = self.relative_position_bias_table[self.relative_position_index]
        bias = bias.view(self.table_tokens, self.table_tokens, -1)
        return bias.permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """x: (B, L, C); `grid` is the (H, W) layout of the patch tokens, used only by the relative biases."""
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = None
        if self.rel_pos_h is not None:
            flat_q = q.reshape(batch * self.num_heads, length, -1)
            bias = decomposed_rel_pos_bias(flat_q, self.rel_pos_h, self.rel_pos_w, grid)
            bias = bias.reshape(batch, self.num_heads, length, length)
        elif self.relative_position_bias_table is not None:
            bias = self.table_bias(grid).to(q.dtype)  # SDPA wants the mask in the query's (autocast) dtype
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(x.transpose(1, 2).reshape(batch, length, dim))


class Block(nn.Module):
    """Pre-norm transformer block; with `window_size` > 0 it attends within non-overlapping windows, with
    `layer_scale_init` each residual branch is scaled by a learned per-channel factor (CaiT / BEiT)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        window_size: int = 0,
        rel_pos_grid: Grid | None = None,
        table_grid: Grid | None = None,
        prefix_tokens: int = 0,
        layer_scale_init: float | None = None,
        act_layer: str = "gelu",
    ):
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, rel_pos_grid, table_grid, prefix_tokens)
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=ACTIVATIONS[act_layer])
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        y = self.norm1(x)
        if self.window_size:
            batch, length, dim = y.shape
            size = self.window_size
            windows, padded = window_partition(y.view(batch, grid[0], grid[1], dim), size)
            windows = self.attn(windows.view(-1, size * size, dim), (size, size))
            y = window_merge(windows.view(-1, size, size, dim), size, grid, padded).view(batch, length, dim)
        else:
            y = self.attn(y, grid)
        x = x + self.drop_path1(self.ls1(y))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def transformer_blocks(config: dict[str, Any], grid: Grid, prefix_tokens: int) -> nn.ModuleList:
    """The blocks of a VisionTransformer `config` on a `grid` of patches: attention within windows except in the
    global blocks, relative positions sized to the window or the grid, stochastic depth rising linearly."""
    drop_rates = torch.linspace(0, config["drop_path_rate"], config["depth"], device="cpu").tolist()
    blocks = nn.ModuleList()
    for i, drop_rate in enumerate(drop_rates):
        window = config["window_size"] if i not in config["global_blocks"] else 0
        rel_pos_grid = ((window, window) if window else grid) if config["use_rel_pos"] else None
        blocks.append(Block(config["embed_dim"], config["num_heads"], config["mlp_ratio"], config["qkv_bias"],
                            drop_rate, config["norm_eps"], window, rel_pos_grid,
                            grid if config["rel_pos_bias"] else None, prefix_tokens, config["layer_scale_init"],
                            config.get("act_layer", "gelu")))
    return blocks


class VisionTransformer(nn.Module):
    """ViT with [CLS] / average pooling, intermediate (B, C, H, W) feature maps and ViTDet options.

    Constructor arguments are recorded in `self.config` so a checkpoint can rebuild the same model (the options of
    FAMILY_OPTION_DEFAULTS only where they differ from the default). `reg_tokens`: DINOv2's register tokens, after
    [CLS], without a position embedding, dropped from patch features like [CLS]; `pre_norm`: a LayerNorm on the
    tokens before the blocks (CLIP's ln_pre); `act_layer`: the MLP's activation; `patch_bias`: a bias in the patch
    embedding (CLIP has none).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        pos_embed: str = "sincos",
        pos_embed_trainable: bool = False,
        class_token: bool = True,
        global_pool: str = "token",
        num_classes: int = 0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        window_size: int = 0,
        global_blocks: Sequence[int] = (),
        use_rel_pos: bool = False,
        rel_pos_bias: bool = False,
        layer_scale_init: float | None = None,
        grad_checkpointing: bool = False,
        reg_tokens: int = 0,
        pre_norm: bool = False,
        act_layer: str = "gelu",
        patch_bias: bool = True,
    ):
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        _check_options(img_size, patch_size, depth, pos_embed, class_token, global_pool, window_size,
                       global_blocks, use_rel_pos, rel_pos_bias)
        _check_family_options(reg_tokens, act_layer, window_size, use_rel_pos, rel_pos_bias)
        self.config: dict[str, Any] = dict(
            img_size=list(img_size), patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, pos_embed=pos_embed,
            pos_embed_trainable=pos_embed_trainable, class_token=class_token, global_pool=global_pool,
            num_classes=num_classes, drop_path_rate=drop_path_rate, norm_eps=norm_eps, window_size=window_size,
            global_blocks=sorted(global_blocks), use_rel_pos=use_rel_pos, rel_pos_bias=rel_pos_bias,
            layer_scale_init=layer_scale_init, grad_checkpointing=grad_checkpointing,
        )
        family_options = dict(reg_tokens=reg_tokens, pre_norm=pre_norm, act_layer=act_layer, patch_bias=patch_bias)
        self.config.update({k: v for k, v in family_options.items() if v != FAMILY_OPTION_DEFAULTS[k]})
        self.embed_dim = embed_dim
        self.num_layers = depth
        self.grad_checkpointing = grad_checkpointing
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, output_fmt="NHWC",
                                      strict_img_size=False, bias=patch_bias)
        self.grid_size: Grid = tuple(self.patch_embed.grid_size)
        # Tokens before the patches ([CLS], registers) and the pos-embed slots before the grid's ([CLS] only).
        self.num_prefix_tokens = int(class_token) + reg_tokens
        self.num_pos_prefix_tokens = int(class_token)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.num_pos_prefix_tokens + self.grid_size[0] * self.grid_size[1], embed_dim),
            requires_grad=pos_embed_trainable,
        )
        self.norm_pre = nn.LayerNorm(embed_dim, eps=norm_eps) if pre_norm else nn.Identity()
        self.blocks = transformer_blocks(self.config, self.grid_size, self.num_pos_prefix_tokens)
        self.global_pool = global_pool
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if global_pool == "token" else nn.Identity()
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if global_pool == "avg" else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()
        if not self.patch_embed.proj.weight.is_meta:  # built on the meta device to take a checkpoint's tensors
            self._init_weights(pos_embed)

    def _init_weights(self, pos_embed: str) -> None:
        """MAE's initialisation: xavier linears, fixed sin-cos table, head trunc-normal with std 2e-5."""
        init_mae_style(self)
        proj = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)  # DINOv2's initialisation
        self.init_pos_embed(pos_embed)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=2e-5)

    def init_pos_embed(self, pos_embed: str) -> None:
        """The table on `grid_size`: fixed sin-cos, or trunc-normal (std 0.02) for a learned one."""
        with torch.no_grad():
            if pos_embed == "sincos":
                self.pos_embed.copy_(sincos_2d_pos_embed(self.embed_dim, self.grid_size, self.num_pos_prefix_tokens))
            else:
                trunc_normal_(self.pos_embed, std=0.02)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward to trade compute for memory (timm's API name)."""
        self.grad_checkpointing = enable

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        """Patch tokens plus position embeddings, [CLS] first; the table is resampled for other input sizes."""
        x = self.patch_embed(images)
        batch, height, width, dim = x.shape
        pos = self.pos_embed
        if (height, width) != self.grid_size:
            pos = resample_pos_embed(pos, (height, width), self.num_pos_prefix_tokens, old_grid=self.grid_size)
        x = x.reshape(batch, height * width, dim) + pos[:, self.num_pos_prefix_tokens:]
        return self.prepend_cls_token(x), (height, width)

    def prepend_cls_token(self, x: torch.Tensor) -> torch.Tensor:
        """[CLS] with position 0, then the register tokens (no position, as DINOv2 places them), in front of patch
        tokens (B, K, D); unchanged without either."""
        prefix = [] if self.cls_token is None else [self.cls_token + self.pos_embed[:, :1]]
        prefix += [] if self.reg_token is None else [self.reg_token]
        if not prefix:
            return x
        return torch.cat([p.expand(x.shape[0], -1, -1) for p in prefix] + [x], dim=1)

    def encode_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, prefix + K, D) for patch tokens that already carry their positions: all of
        them or a masked subset (pre-training), which is why no grid-dependent option may be on."""
        x, _ = self.run_blocks(self.prepend_cls_token(x), self.grid_size)
        return self.norm(x)

    def run_blocks(
        self, x: torch.Tensor, grid: Grid, keep: Sequence[int] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Apply the pre-norm (if any) and every block; also return the outputs of the blocks listed in `keep`, in
        that order."""
        x = self.norm_pre(x)
        kept: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, grid, use_reentrant=False)
            else:
                x = block(x, grid)
            if i in keep:
                kept[i] = x
        return x, [kept[i] for i in keep]

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """All output tokens (B, prefix + H*W, D) after the final norm."""
        x, grid = self.embed(images)
        return self.norm(self.run_blocks(x, grid)[0])

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """[CLS] token, or fc_norm of the mean patch token (MAE fine-tuning's global pool); all tokens for ""."""
        if self.global_pool == "avg":
            return self.fc_norm(tokens[:, self.num_prefix_tokens:].mean(dim=1))
        return tokens[:, 0] if self.global_pool == "token" else tokens

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled image feature (B, D)."""
        return self.pool(self.forward_tokens(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits, or the pooled feature when the model has no head."""
        return self.head(self.forward_features(images))

    def forward_feature_maps(self, images: torch.Tensor, indices: Sequence[int],
                             normed: bool = False) -> list[torch.Tensor]:
        """Outputs of blocks `indices` (negative counts from the end) as (B, D, H, W) maps, before the final norm, or
        after it with `normed` (DINOv2's get_intermediate_layers(norm=True); an identity where the ViT has none)."""
        blocks = [self._block_index(i) for i in indices]
        x, grid = self.embed(images)
        _, kept = self.run_blocks(x, grid, blocks)
        batch = images.shape[0]
        return [
            (self.norm(t) if normed else t)[:, self.num_prefix_tokens:].transpose(1, 2).reshape(
                batch, self.embed_dim, *grid) for t in kept
        ]

    def _block_index(self, index: int) -> int:
        if not -self.num_layers <= index < self.num_layers:
            raise IndexError(f"block index {index} out of range for a {self.num_layers}-block ViT")
        return index % self.num_layers


def _check_options(
    img_size: tuple[int, ...], patch_size: int, depth: int, pos_embed: str, class_token: bool, global_pool: str,
    window_size: int, global_blocks: Sequence[int], use_rel_pos: bool, rel_pos_bias: bool,
) -> None:
    if len(img_size) != 2 or any(s % patch_size for s in img_size):
        raise UserInputError(f"img_size {img_size} must be two multiples of patch_size {patch_size}")
    if pos_embed not in POS_EMBED_INITS:
        raise UserInputError(f"pos_embed={pos_embed!r}; expected one of {POS_EMBED_INITS}")
    if global_pool not in GLOBAL_POOLS:
        raise UserInputError(f"global_pool={global_pool!r}; expected one of {GLOBAL_POOLS}")
    if global_pool == "token" and not class_token:
        raise UserInputError("global_pool='token' needs class_token=True; use global_pool='avg'")
    if (window_size or use_rel_pos) and class_token:
        raise UserInputError("window attention and relative position bias work on the patch grid only: "
                             "set class_token=False (as ViTDet does)")
    if rel_pos_bias and (window_size or use_rel_pos):
        raise UserInputError("rel_pos_bias (BEiT's table) and ViTDet's window attention / use_rel_pos exclude "
                             "each other")
    bad = [b for b in global_blocks if not 0 <= b < depth]
    if bad:
        raise UserInputError(f"global_blocks {bad} out of range for depth {depth}")


def _check_family_options(reg_tokens: int, act_layer: str, window_size: int, use_rel_pos: bool,
                          rel_pos_bias: bool) -> None:
    if act_layer not in ACTIVATIONS:
        raise UserInputError(f"act_layer={act_layer!r}; expected one of {tuple(ACTIVATIONS)}")
    if reg_tokens < 0:
        raise UserInputError(f"reg_tokens={reg_tokens}; expected 0 or more")
    if reg_tokens and (window_size or use_rel_pos or rel_pos_bias):
        raise UserInputError("register tokens with window attention or relative position biases are not supported: "
                             "those work on [CLS] and the patch grid only")


def build_vit(size: str = "base", model_class: type[VisionTransformer] = VisionTransformer,
              **kwargs: Any) -> VisionTransformer:
    """ViT (or a subclass, e.g. DropPos) of a named size ('tiny', 'small', 'base', 'large'); keyword
    arguments override the size's defaults."""
    if size not in VIT_SIZES:
        raise UserInputError(f"unknown ViT size {size!r}; expected one of {sorted(VIT_SIZES)}")
    return model_class(**{**VIT_SIZES[size], **kwargs})
