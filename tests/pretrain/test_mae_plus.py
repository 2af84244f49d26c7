"""MAE+: several crops per image, every patch in the encoder (masked ones as the mask token), loss on masked ones."""
import numpy as np
import pytest
import torch
from PIL import Image

from backbone import build_vit, export_checkpoint, load_model
from backbone.masking import patchify, unpatchify
from engine.images import pretrain_transform
from pretrain.data import MultiCrop
from pretrain.mae import reconstruction_loss
from pretrain.mae_plus import MAEPlus


def tiny_mae_plus(**kwargs):
    torch.manual_seed(0)
    return build_vit("tiny", model_class=MAEPlus, img_size=64, depth=2, decoder_dim=32, decoder_depth=1,
                     decoder_heads=4, **kwargs)


def test_multi_crop_transform_stacks_independent_crops():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 96, 3), np.uint8))
    crops = MultiCrop(pretrain_transform(32, (0.08, 1.0)), 4)(image)
    assert crops.shape == (4, 3, 32, 32)
    assert len({crop.sum().item() for crop in crops}) == 4, "the crops are not independent draws"


def test_crops_become_the_batch_and_each_crop_is_masked_independently(monkeypatch):
    model = tiny_mae_plus().eval()
    images = torch.randn(2, 3, 3, 64, 64)  # 2 images x 3 crops
    seen = {}
    reconstruct = model.reconstruct

    def spy(crops, masked):
        seen.update(crops=crops, masked=masked)
        return reconstruct(crops, masked)

    monkeypatch.setattr(model, "reconstruct", spy)
    with torch.no_grad():
        model(images, torch.Generator().manual_seed(0))
    crops, masked = seen["crops"], seen["masked"]
    assert torch.equal(crops, images.flatten(0, 1))  # image-major: crops of one image are neighbours
    assert masked.shape == (6, 16) and (masked.sum(1) == 12).all()  # 75% of a 4x4 grid per crop
    for per_image in masked.view(2, 3, 16):
        assert not (per_image == per_image[0]).all(), "the crops of an image share one mask"


def test_encoder_sees_every_patch_masked_ones_as_mask_token_plus_position():
    model = tiny_mae_plus().eval()
    images = torch.randn(2, 3, 64, 64)
    _, masked = model.mask(2, torch.device("cpu"), torch.Generator().manual_seed(1))
    captured = {}
    model.blocks[0].register_forward_pre_hook(lambda module, args: captured.update(x=args[0]))
    with torch.no_grad():
        model.encode(images, masked)
        patches = model.patch_embed(images).flatten(1, 2)
    x, pos = captured["x"], model.pos_embed[0]
    assert x.shape == (2, 17, 192)
    for b in range(2):
        torch.testing.assert_close(x[b, 0], model.cls_token[0, 0] + pos[0])
        for i in range(16):
            content = model.mask_token[0, 0] if masked[b, i] else patches[b, i]
            torch.testing.assert_close(x[b, 1 + i], content + pos[1 + i])


def test_loss_counts_masked_patches_only():
    model = tiny_mae_plus()
    images = torch.randn(2, 3, 64, 64)
    loss = model(images, torch.Generator().manual_seed(2))["loss"].item()
    ids_visible, masked = model.mask(2, torch.device("cpu"), torch.Generator().manual_seed(2))  # the same masks
    with torch.no_grad():
        pred = model.reconstruct(images, masked)
    patches = patchify(images, 16)
    target = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert ((pred - target) ** 2).mean(-1)[masked].mean().item() == pytest.approx(loss, rel=1e-6)
    visible = ~masked.unsqueeze(-1)
    noisy_pred = torch.where(visible, torch.randn_like(pred), pred)
    assert reconstruction_loss(noisy_pred, images, ids_visible, 16, True).item() == pytest.approx(loss, rel=1e-6)
    new_visible = unpatchify(torch.where(visible, torch.randn_like(patches), patches), 16, (4, 4))
    assert reconstruction_loss(pred, new_visible, ids_visible, 16, True).item() == pytest.approx(loss, rel=1e-6)
    unnormalised = reconstruction_loss(pred, images, ids_visible, 16, False)
    new_masked = unpatchify(torch.where(visible, patches, 3 * patches), 16, (4, 4))
    assert reconstruction_loss(pred, new_masked, ids_visible, 16, False) > unnormalised


def test_gradients_reach_encoder_mask_token_and_decoder_and_export_drops_them(tmp_path):
    model = tiny_mae_plus()
    model(torch.randn(2, 2, 3, 64, 64))["loss"].backward()
    for name in ("blocks.0.attn.qkv.weight", "mask_token", "decoder_blocks.0.mlp.fc1.weight", "decoder_pred.bias"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    assert model.mask_token.shape == (1, 1, 192)  # the encoder's width: it enters the encoder, not the decoder
    assert model.pos_embed.grad is None and model.decoder_pos_embed.grad is None
    encoder, report = load_model(export_checkpoint(model, tmp_path / "encoder.safetensors"))
    assert not report.missing and not report.unexpected
    assert not any(key.startswith(("mask_token", "decoder")) for key in encoder.state_dict())
