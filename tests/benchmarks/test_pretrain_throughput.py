"""The throughput benchmark's reference step computes the same loss as our DropPos step, so its ratio is honest."""
import math

import pytest
import torch

from backbone import build_vit
from benchmarks.pretrain_throughput import reference_loss, reference_step
from pretrain import DropPos, position_smoothing


def tiny_model(tau: float) -> DropPos:
    torch.manual_seed(0)
    return build_vit("tiny", model_class=DropPos, img_size=64, depth=1, decoder_dim=64, decoder_heads=4, tau=tau)


@pytest.mark.parametrize("tau", [0.1, math.inf])
def test_reference_loss_equals_ours_on_identical_masks(tau):
    model = tiny_model(tau)
    smoothing = position_smoothing("paper", model.grid_size, 64, 1.0)
    images = torch.randn(3, 3, 64, 64)
    ours = model(images, smoothing, torch.Generator().manual_seed(1))
    ref = reference_loss(model, images, smoothing, torch.Generator().manual_seed(1))
    torch.testing.assert_close(ref["loss"], ours["loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ref["position_acc"], ours["position_acc"])
    ours["loss"].backward()
    token_grad = model.mask_pos_token.grad.clone()
    model.zero_grad()
    ref["loss"].backward()
    torch.testing.assert_close(model.mask_pos_token.grad, token_grad, rtol=1e-4, atol=1e-7)


def test_reference_step_updates_the_shared_weights():
    model = tiny_model(0.1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = model.mask_pos_token.detach().clone()
    loss, acc = reference_step(model, optimizer, torch.randn(3, 3, 64, 64),
                               position_smoothing("paper", model.grid_size, 64, 1.0))
    assert math.isfinite(loss) and 0.0 <= acc <= 1.0
    assert not torch.equal(model.mask_pos_token, before)
