import pytest
import torch
from torch import nn

from engine import DeviceOptimWrapper


def linear_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def test_accumulation_equals_one_step_on_the_whole_batch():
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    whole, micro = linear_model(), linear_model()
    opt_whole = DeviceOptimWrapper(torch.optim.SGD(whole.parameters(), lr=0.1))
    opt_micro = DeviceOptimWrapper(torch.optim.SGD(micro.parameters(), lr=0.1), accumulative_counts=2)
    opt_micro.initialize_count_status(micro, 0, 2)
    opt_whole.update_params(((whole(x) - y) ** 2).mean())
    for part in (slice(0, 4), slice(4, 8)):
        with opt_micro.optim_context(micro):
            loss = ((micro(x[part]) - y[part]) ** 2).mean()
        opt_micro.update_params(loss)
    for a, b in zip(whole.parameters(), micro.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.equal(next(whole.parameters()), next(linear_model().parameters()))  # it did step


def test_clipping_uses_the_global_norm_and_keeps_it_on_the_device():
    model = linear_model()
    wrapper = DeviceOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0), max_norm=0.5)
    (model(torch.randn(16, 4)) * 100).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert norm > 0.5
    wrapper.step()
    for before, param in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(param.grad, before * 0.5 / (norm + 1e-6))  # one factor for all parameters
    logged = wrapper.pop_grad_norm()
    assert isinstance(logged, torch.Tensor)
    torch.testing.assert_close(logged, norm)
    assert wrapper.pop_grad_norm() is None  # reset after reading


def test_per_parameter_clipping_follows_the_droppos_release():
    model = linear_model()
    model(torch.randn(16, 4)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    norms = sorted(float(torch.linalg.vector_norm(g)) for g in grads)
    max_norm = (norms[1] + norms[2]) / 2  # two gradients are clipped, two are not
    wrapper = DeviceOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0), max_norm=max_norm, clip_mode="per_param")
    wrapper.step()
    for before, param in zip(grads, model.parameters(), strict=True):
        coef = max_norm / (float(torch.linalg.vector_norm(before)) + 1e-6)  # the release scales when this is < 1
        torch.testing.assert_close(param.grad, before * coef if coef < 1 else before)
    torch.testing.assert_close(wrapper.pop_grad_norm(), torch.linalg.vector_norm(torch.tensor(norms)))
    with pytest.raises(ValueError, match="optim.clip_mode='layer'"):
        DeviceOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0), clip_mode="layer")


def test_bf16_context_autocasts_and_fp32_does_not():
    model = nn.Linear(4, 4)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        wrapper = DeviceOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1), precision=precision)
        with wrapper.optim_context(model):
            assert model(torch.randn(2, 4)).dtype == dtype


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision='fp16'"):
        DeviceOptimWrapper(torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1), precision="fp16")
