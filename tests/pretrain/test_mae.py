import pytest
import torch

from backbone import build_vit
from backbone.masking import patchify, random_split, unpatchify
from pretrain.mae import MAE, reconstruction_loss


def tiny_mae(**kwargs):
    torch.manual_seed(0)
    return build_vit("tiny", model_class=MAE, img_size=64, depth=1, decoder_dim=32, decoder_depth=1,
                     decoder_heads=4, **kwargs)


def test_patchify_matches_mae_layout_and_round_trips():
    images = torch.randn(2, 3, 32, 48)
    patches = patchify(images, 16)
    assert patches.shape == (2, 6, 16 * 16 * 3)
    # MAE: reshape to (n, c, h, p, w, q), einsum 'nchpwq->nhwpqc'
    reference = torch.einsum("nchpwq->nhwpqc", images.reshape(2, 3, 2, 16, 3, 16)).reshape(2, 6, 768)
    assert torch.equal(patches, reference)
    assert torch.equal(unpatchify(patches, 16, (2, 3)), images)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_equals_direct_formula_on_masked_patches(norm_pix):
    torch.manual_seed(0)
    images, pred = torch.randn(2, 3, 32, 32), torch.randn(2, 4, 768)
    ids_visible = torch.tensor([[0], [3]])
    total, count = 0.0, 0
    for b in range(2):
        for i in range(4):
            if i == ids_visible[b, 0]:
                continue
            row, col = divmod(i, 2)
            target = images[b, :, row * 16:(row + 1) * 16, col * 16:(col + 1) * 16].permute(1, 2, 0).flatten()
            if norm_pix:
                target = (target - target.mean()) / (target.var() + 1e-6) ** 0.5
            total += ((pred[b, i] - target) ** 2).mean()
            count += 1
    loss = reconstruction_loss(pred, images, ids_visible, 16, norm_pix)
    assert loss.item() == pytest.approx(float(total / count), rel=1e-5)


def test_decoder_places_visible_tokens_and_mask_tokens():
    model = tiny_mae(mask_ratio=0.75).eval()
    images = torch.randn(2, 3, 64, 64)
    ids_visible, _ = random_split(2, 16, 4, torch.device("cpu"), torch.Generator().manual_seed(0))
    captured = {}
    model.decoder_blocks[0].register_forward_pre_hook(lambda module, args: captured.update(x=args[0]))
    with torch.no_grad():
        tokens = model.encode_visible(images, ids_visible)
        pred = model.decode(tokens, ids_visible)
    assert pred.shape == (2, 16, 768)
    embedded, x, pos = model.decoder_embed(tokens), captured["x"], model.decoder_pos_embed[0]
    for b in range(2):
        torch.testing.assert_close(x[b, 0], embedded[b, 0] + pos[0])
        for i in range(16):
            hits = (ids_visible[b] == i).nonzero()
            expected = embedded[b, 1 + hits[0, 0]] if len(hits) else model.mask_token[0, 0]
            torch.testing.assert_close(x[b, 1 + i], expected + pos[1 + i])


def test_gradients_and_release_key_names():
    model = tiny_mae()
    model(torch.randn(2, 3, 64, 64))["loss"].backward()
    for name in ("blocks.0.attn.qkv.weight", "mask_token", "decoder_blocks.0.mlp.fc1.weight", "decoder_pred.bias"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    assert model.pos_embed.grad is None and model.decoder_pos_embed.grad is None
    assert {"mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_norm.weight"} <= set(model.state_dict())
