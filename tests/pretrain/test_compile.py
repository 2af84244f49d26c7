"""`compile=True` works for every pre-training model: the compiled forward and backward equal eager on the same
masks. The aot_eager backend traces the same graph as inductor without compiling kernels, so this runs on a CPU."""
import math

import pytest
import torch

from pretrain import position_smoothing
from pretrain.build import build_pretrain_model

ARCHS = {
    "droppos attentive": dict(arch="droppos", tau=0.1),
    "droppos plain": dict(arch="droppos", tau=math.inf),
    "mae": dict(arch="mae"),
    "mae_plus": dict(arch="mae_plus"),
    "adpe": dict(arch="adpe"),
}


def loss_and_grads(net, images, extra):
    net.zero_grad()
    out = net(images, *extra, torch.Generator().manual_seed(1))
    out["loss"].backward()
    return out["loss"].detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ARCHS)
def test_compiled_step_equals_eager(name):
    torch.manual_seed(0)
    cfg = dict(ARCHS[name], size="tiny", img_size=32, patch_size=8, depth=1, decoder_dim=32, decoder_heads=2)
    if cfg["arch"] != "droppos":
        cfg["decoder_depth"] = 1
    net = build_pretrain_model(cfg)
    extra = (position_smoothing("paper", net.grid_size, 32, 1.0),) if cfg["arch"] == "droppos" else ()
    images = torch.randn(2, 3, 32, 32)
    eager_loss, eager_grads = loss_and_grads(net, images, extra)
    net.compile(backend="aot_eager")
    loss, grads = loss_and_grads(net, images, extra)
    torch.testing.assert_close(loss, eager_loss)
    assert grads.keys() == eager_grads.keys()
    for key in grads:
        torch.testing.assert_close(grads[key], eager_grads[key], msg=key)
