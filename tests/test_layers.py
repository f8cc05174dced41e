import pytest
import torch
from torch import nn

from cifarlab.layers import FastDropout, use_fast_dropout
from cifarlab.models import create_model


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drop_rate_and_scale(p):
    torch.manual_seed(0)
    x = torch.ones(64, 16, 32, 32)
    y = FastDropout(p).train()(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 0.01
    assert torch.allclose(y[y != 0], torch.tensor(1 / (1 - p)))
    assert abs(y.mean().item() - 1) < 0.02  # unbiased like nn.Dropout


def test_eval_and_p0_are_identity():
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(FastDropout(0.3).eval()(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)
    with pytest.raises(ValueError):
        FastDropout(1.0)


def test_channels_last_kept_and_gradient_masked():
    torch.manual_seed(1)
    x = torch.randn(8, 6, 5, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = FastDropout(0.5).train()(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.sum().backward()
    assert torch.equal(x.grad != 0, y != 0)


def test_masks_are_independent_of_layout_and_seeded():
    x = torch.ones(2, 3, 4, 5)
    torch.manual_seed(7)
    a = FastDropout(0.5).train()(x)
    torch.manual_seed(7)
    b = FastDropout(0.5).train()(x)
    assert torch.equal(a, b)


def test_swap_in_model():
    m = use_fast_dropout(create_model("seed001"))
    assert not any(type(mod) is nn.Dropout for mod in m.modules())
    ps = {mod.p for mod in m.modules() if isinstance(mod, FastDropout)}
    assert ps == {0.1}
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
