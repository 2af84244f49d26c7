import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backbone import build_vit
from backbone.pos_embed import sincos_2d_pos_embed
from pretrain import DropPos, position_loss, position_smoothing


def tiny_droppos(**kwargs):
    torch.manual_seed(0)
    return build_vit("tiny", model_class=DropPos, img_size=224, decoder_dim=64, decoder_heads=4, **kwargs)


def test_mask_counts_for_the_paper_default():
    model = tiny_droppos(depth=1)
    ids_visible, dropped = model.mask(8, 0.75, 0.75, torch.device("cpu"))
    assert ids_visible.shape == (8, 49) and dropped.shape == (8, 49)
    assert (dropped.sum(1) == 37).all() and ((~dropped).sum(1) == 12).all()
    assert all(len(set(row.tolist())) == 49 for row in ids_visible)
    assert len({tuple(row.tolist()) for row in ids_visible}) == 8  # per-sample, independent


def test_anchors_keep_their_sincos_embedding_dropped_get_mask_token():
    model = tiny_droppos(depth=0).eval()
    model.norm = nn.Identity()
    with torch.no_grad():
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
    generator = torch.Generator().manual_seed(3)
    ids_visible, dropped = model.mask(2, 0.75, 0.75, torch.device("cpu"), generator)
    with torch.no_grad():
        tokens = model.encode_visible(torch.zeros(2, 3, 224, 224), ids_visible, dropped)
    table = sincos_2d_pos_embed(192, (14, 14))[0]
    torch.testing.assert_close(tokens[:, 0], (model.cls_token[0, 0] + table[0]).expand(2, -1))  # [CLS]: pos 0
    for b in range(2):
        for k in range(49):
            expected = model.mask_pos_token[0, 0] if dropped[b, k] else table[1 + ids_visible[b, k]]
            torch.testing.assert_close(tokens[b, 1 + k], expected)


@pytest.mark.parametrize("mode, img_size", [("paper", 48), ("official", 56)])  # official: a 16-row table, 9 used
def test_loss_equals_direct_formula_with_attentive_weights(mode, img_size):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 9)
    targets = torch.tensor([[0, 4, 8, 2, 6], [1, 3, 5, 7, 0]])
    weights = torch.rand(2, 5) * torch.tensor([[1, 0, 1, 1, 0], [0, 1, 1, 0, 1.0]])
    smoothing = position_smoothing(mode, (3, 3), img_size, 1.0)
    out = position_loss(logits, targets, weights, smoothing)
    total, num, correct = 0.0, 0.0, 0.0
    for b in range(2):
        for k in range(5):
            probs = torch.softmax(logits[b, k], 0)
            total += -weights[b, k] * sum(smoothing[targets[b, k], j] * math.log(probs[j]) for j in range(9))
            correct += weights[b, k] * float(logits[b, k].argmax() == targets[b, k])
            num += weights[b, k]
    assert out["loss"].item() == pytest.approx(float(total / num), rel=1e-5)
    assert out["position_acc"].item() == pytest.approx(float(correct / num), rel=1e-5)


def test_attentive_weights_match_eq9():
    model = tiny_droppos(depth=1, tau=0.1).eval()
    images = torch.randn(2, 3, 224, 224)
    ids_visible, _ = model.mask(2, 0.75, 0.75, torch.device("cpu"))
    tokens = model.forward_tokens(images)
    for b in range(2):
        cos = torch.stack([F.cosine_similarity(tokens[b, 0], tokens[b, 1 + i], dim=0) for i in range(196)])
        affinity = torch.softmax(cos / 0.1, 0)[ids_visible[b]]
        torch.testing.assert_close(model.attentive_weights(images, ids_visible)[b], affinity / affinity.sum())


def test_gradients_reach_encoder_decoder_and_mask_token_not_fixed_pos_embed():
    model = tiny_droppos(depth=2)
    out = model(torch.randn(2, 3, 224, 224), position_smoothing("paper", model.grid_size, 224, 1.0))
    out["loss"].backward()
    for name in ("blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "cls_token", "mask_pos_token",
                 "decoder_blocks.0.mlp.fc1.weight", "decoder_pred.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.pos_embed.grad is None and not model.pos_embed.requires_grad


def test_tau_inf_disables_attentive_reconstruction_and_seed_fixes_masks():
    model = tiny_droppos(depth=1, tau=math.inf)
    assert model.tau is None
    images, smoothing = torch.randn(2, 3, 224, 224), position_smoothing("official", (14, 14), 224, 1.0)
    first = model(images, smoothing, torch.Generator().manual_seed(1))["loss"]
    second = model(images, smoothing, torch.Generator().manual_seed(1))["loss"]
    assert torch.equal(first, second)


def test_state_dict_uses_release_key_names():
    keys = set(tiny_droppos(depth=1).state_dict())
    assert {"cls_token", "pos_embed", "mask_pos_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight",
            "norm.weight", "decoder_embed.weight", "decoder_blocks.0.norm1.weight", "decoder_norm.weight",
            "decoder_pred.weight"} <= keys
    with pytest.raises(ValueError, match="class_token"):
        build_vit("tiny", model_class=DropPos, class_token=False, global_pool="avg")


@pytest.mark.parametrize("bad, key", [(dict(mask_ratio=1.0), "mask_ratio"), (dict(mask_ratio=-0.1), "mask_ratio"),
                                      (dict(mask_ratio=0.999), "mask_ratio"),  # 196 x 0.001 < 1 visible patch
                                      (dict(pos_mask_ratio=1.5), "pos_mask_ratio"), (dict(tau=0.0), "tau"),
                                      (dict(tau=-0.1), "tau")])
def test_ratios_that_would_train_on_nan_are_refused(bad, key):
    with pytest.raises(ValueError, match=rf"model\.{key}="):
        tiny_droppos(depth=0, **bad)
    tiny_droppos(depth=0, mask_ratio=0.0, pos_mask_ratio=1.0, tau=math.inf)  # the extremes that make sense
