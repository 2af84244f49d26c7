import pytest
import torch
from torch import nn

from backbone import VisionTransformer, layer_id, param_groups_layer_decay

DECAY = 0.5


def four_block_model(**kwargs):
    return VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=4, num_heads=2, num_classes=3,
                             pos_embed_trainable=True, **kwargs)


def lr_scale_by_name(groups):
    return {name: g["lr_scale"] for g in groups for name in g["param_names"]}


def test_exact_lr_scale_per_parameter_for_four_blocks():
    groups = param_groups_layer_decay(four_block_model(), lr=1.0, weight_decay=0.05, layer_decay=DECAY, num_layers=4)
    scales = lr_scale_by_name(groups)
    # scale = decay ** (num_layers + 1 - layer_id): embeddings 0.5**5, block i 0.5**(4 - i), rest 1
    for name in ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"):
        assert scales[name] == DECAY**5
    for i in range(4):
        for leaf in ("norm1.weight", "attn.qkv.weight", "attn.proj.bias", "mlp.fc2.weight"):
            assert scales[f"blocks.{i}.{leaf}"] == DECAY ** (4 - i)
    for name in ("norm.weight", "norm.bias", "head.weight", "head.bias"):
        assert scales[name] == 1.0
    assert all(g["lr"] == g["lr_scale"] for g in groups)


def test_no_weight_decay_set():
    groups = param_groups_layer_decay(four_block_model(), lr=1.0, weight_decay=0.05, layer_decay=DECAY, num_layers=4)
    no_decay = {name for g in groups if g["weight_decay"] == 0.0 for name in g["param_names"]}
    decay = {name for g in groups if g["weight_decay"] == 0.05 for name in g["param_names"]}
    assert {"cls_token", "pos_embed", "patch_embed.proj.bias", "norm.weight", "head.bias",
            "blocks.0.norm1.weight", "blocks.3.attn.qkv.bias", "blocks.2.mlp.fc1.bias"} <= no_decay
    assert decay == {"patch_embed.proj.weight", "head.weight"} | {
        f"blocks.{i}.{leaf}" for i in range(4)
        for leaf in ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")}



def test_decay_bias_decays_biases_and_vectors_except_the_named_ones():
    """detectron2's rule (ViTDet): only the named norms, pos embed and tokens are spared."""
    norms = [f"blocks.{i}.{n}.{leaf}" for i in range(4) for n in ("norm1", "norm2") for leaf in ("weight", "bias")]
    groups = param_groups_layer_decay(four_block_model(), lr=1.0, weight_decay=0.05, layer_decay=DECAY, num_layers=4,
                                      no_weight_decay=norms, decay_bias=True)
    no_decay = {name for g in groups if g["weight_decay"] == 0.0 for name in g["param_names"]}
    assert no_decay == {"cls_token", "pos_embed", *norms}
    assert sum(len(g["param_names"]) for g in groups) == len(list(four_block_model().parameters()))

def test_frozen_params_are_left_out_and_fixed_sincos_is_frozen():
    model = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2)
    names = {n for g in param_groups_layer_decay(model, 1.0, 0.05, 0.75, 2) for n in g["param_names"]}
    assert "pos_embed" not in names and "cls_token" in names


class Wrapped(nn.Module):
    """A det/seg-like model: backbone under a prefix, plus a neck and a decoder token."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.net = four_block_model()
        self.neck = nn.Linear(4, 4)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 4))


def test_prefix_puts_neck_and_heads_in_top_layer():
    groups = param_groups_layer_decay(Wrapped(), lr=2.0, weight_decay=0.1, layer_decay=0.7, num_layers=4,
                                      backbone_prefix="backbone.net.", no_weight_decay=("rel_pos_h",))
    scales = lr_scale_by_name(groups)
    assert scales["neck.weight"] == 1.0 and scales["mask_token"] == 1.0
    assert scales["backbone.net.blocks.1.attn.qkv.weight"] == pytest.approx(0.7**3)
    assert scales["backbone.net.pos_embed"] == pytest.approx(0.7**5)
    lrs = {name: g["lr"] for g in groups for name in g["param_names"]}
    assert lrs["backbone.net.blocks.3.mlp.fc1.weight"] == pytest.approx(2.0 * 0.7)


@pytest.mark.parametrize(
    "name, expected",
    [("cls_token", 0), ("mask_pos_token", 0), ("patch_embed.proj.weight", 0), ("blocks.0.norm1.weight", 1),
     ("blocks.11.mlp.fc2.bias", 12), ("norm.weight", 13), ("fc_norm.bias", 13), ("head.weight", 13)],
)
def test_layer_ids(name, expected):
    assert layer_id(name, 12) == expected
