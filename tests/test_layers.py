import copy

import pytest
import torch
from torch import nn

from cifarlab.layers import (
    FastDropout,
    Fp32DepthwiseConv2d,
    PooledConv2d,
    for_cpu_training,
    fuse_conv_avgpool,
    keep_mask,
    random_int16,
    use_fast_dropout,
    use_fp32_depthwise,
)
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


@pytest.mark.parametrize("p", [1 / 65536, 0.1, 0.3, 0.5, 0.7, 0.95])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_keep_mask_is_the_16_bit_comparison(p, dtype):
    """The bit trick keeps exactly the 16-bit draws r >= thr, as 1.0 and 0.0 of `dtype`."""
    n = 100_003  # not a multiple of four draws
    torch.manual_seed(3)
    m = keep_mask(n, p, dtype, torch.device("cpu"))
    torch.manual_seed(3)
    want = random_int16(n, torch.device("cpu")) >= -32768 + round(p * 65536)
    assert m.dtype == dtype and m.shape == (n,)
    assert torch.equal(m, want.to(dtype))


def test_random_int16_uniform_and_seeded_by_torch():
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    a = random_int16(400_001, cpu)
    assert a.dtype == torch.int16 and a.shape == (400_001,)
    assert torch.equal(torch.manual_seed(0) and random_int16(400_001, cpu), a)
    assert not torch.equal(random_int16(400_001, cpu), a)  # the next call draws anew
    counts = torch.bincount((a.int() + 32768) >> 12, minlength=16).float()  # 16 bins
    assert (counts / counts.mean() - 1).abs().max() < 0.03
    for bit in range(16):  # every bit of the 16 is a fair coin
        assert abs(((a.int() >> bit) & 1).float().mean().item() - 0.5) < 0.005


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


def test_masks_follow_memory_order_whatever_the_layout_and_are_seeded():
    """The mask is drawn in memory order, so with one seed an NCHW tensor, the same values in
    channels_last, and their NHWC permutation drop the same memory positions; the values kept
    are the input's own, at the right logical places."""
    x = torch.arange(1.0, 2 * 3 * 4 * 5 + 1).view(2, 3, 4, 5)  # distinct, nonzero values
    cl = x.contiguous(memory_format=torch.channels_last)
    nhwc = x.permute(0, 2, 3, 1).contiguous()  # channels_last's memory as a plain tensor
    assert not x.is_contiguous(memory_format=torch.channels_last) and cl.stride() != x.stride()

    def drop(t, seed=7):
        torch.manual_seed(seed)
        return FastDropout(0.5).train()(t)

    a, b, c = drop(x), drop(cl), drop(nhwc)
    assert b.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(b, c.permute(0, 3, 1, 2))  # channels_last == its NHWC twin, permuted
    # the same positions in memory are dropped in either layout
    mem_a = (a != 0).reshape(-1)
    mem_b = (b != 0).permute(0, 2, 3, 1).reshape(-1)
    assert torch.equal(mem_a, mem_b)
    assert 0 < int(mem_a.sum()) < x.numel()
    for out in (a, b):  # survivors keep their own value, scaled by 1 / (1 - p)
        kept = out != 0
        assert torch.equal(out[kept], x[kept] * 2)
    assert torch.equal(drop(x), a)  # seeded: the same seed, the same mask
    assert not torch.equal(drop(x, seed=8), a)


def test_swap_in_model():
    m = use_fast_dropout(create_model("seed001"))
    assert not any(type(mod) is nn.Dropout for mod in m.modules())
    ps = {mod.p for mod in m.modules() if isinstance(mod, FastDropout)}
    assert ps == {0.1}
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_fp32_depthwise_swap_keeps_weights_and_computes_in_fp32():
    torch.manual_seed(0)
    m = create_model("seed001", dropout=0.0).to(memory_format=torch.channels_last)
    keys = {k: v.clone() for k, v in m.state_dict().items()}
    use_fp32_depthwise(m)
    dw = [mod for mod in m.modules() if isinstance(mod, Fp32DepthwiseConv2d)]
    assert len(dw) == 1 and dw[0].groups == dw[0].in_channels == 32  # seed 001's depthwise
    assert sum(type(mod) is nn.Conv2d for mod in m.modules()) == 11  # the others stay as they are
    assert m.state_dict().keys() == keys.keys()
    assert all(torch.equal(m.state_dict()[k], v) for k, v in keys.items())

    conv = dw[0]
    x = torch.randn(4, 32, 16, 16).contiguous(memory_format=torch.channels_last)
    xb = x.bfloat16()
    plain = nn.functional.conv2d
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(xb)
    assert y.dtype == torch.bfloat16  # the layers after it see the autocast dtype
    exact = plain(xb.float(), conv.weight, None, conv.stride, conv.padding, conv.dilation,
                  conv.groups)
    assert torch.equal(y, exact.bfloat16())  # computed in fp32 with the fp32 weights
    assert torch.equal(conv(x), plain(x, conv.weight, None, conv.stride, conv.padding,
                                      conv.dilation, conv.groups))  # no autocast: plain conv
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(xb.requires_grad_()).float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and xb.grad.dtype == torch.bfloat16


def _pooled_pairs_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.AvgPool2d(2), nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 1, bias=True), nn.AvgPool2d(2),  # 1x1 with a bias
        nn.Conv2d(8, 8, 5, padding=2), nn.AvgPool2d(2),
        # left alone: a pool that is not 2x2, max pool, pool not after a conv, strided conv,
        # ceil-mode pool
        nn.Conv2d(8, 8, 3, padding=1), nn.AvgPool2d(3, stride=1, padding=1),
        nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2),
        nn.ReLU(), nn.AvgPool2d(2),
        nn.ReLU(), nn.AvgPool2d(2, ceil_mode=True),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.AvgPool2d(2, ceil_mode=True))


@pytest.mark.parametrize("size", [64, 63, 48, 47])
def test_conv_then_avgpool_fused_into_one_strided_conv(size):
    torch.manual_seed(0)
    net = _pooled_pairs_net().double()
    net[2].eval()
    fused = copy.deepcopy(net)
    assert fuse_conv_avgpool(fused) == ["0", "3", "5"]
    assert [type(m).__name__ for m in fused][:7] == [
        "PooledConv2d", "Identity", "BatchNorm2d", "PooledConv2d", "Identity", "PooledConv2d",
        "Identity"]
    assert [type(m) for m in fused][7:] == [type(m) for m in net][7:]
    assert list(fused.state_dict()) == list(net.state_dict())  # checkpoints load either way
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    y, yf = net(x), fused(x)
    assert y.shape == yf.shape and torch.allclose(y, yf, atol=1e-10)
    y.square().sum().backward()
    yf.square().sum().backward()
    for (name, p), pf in zip(net.named_parameters(), fused.parameters(), strict=True):
        assert torch.allclose(p.grad, pf.grad, atol=1e-8), name


def test_air_seed001_trains_with_fused_pools_and_the_same_function(monkeypatch):
    torch.manual_seed(0)
    model = create_model("air-seed001").eval()
    fused = for_cpu_training(copy.deepcopy(model), bf16_sizes=(32, 24))
    assert sum(isinstance(m, PooledConv2d) for m in fused.modules()) == 3
    assert not any(isinstance(m, nn.AvgPool2d) for m in fused.modules())
    for size in (32, 24):
        x = torch.randn(2, 3, size, size)
        assert torch.allclose(model(x), fused(x), atol=1e-5)
    monkeypatch.setenv("CIFARLAB_FUSE_POOLS", "0")  # the opt-out (the unfused-pools lever)
    kept = for_cpu_training(copy.deepcopy(model))
    assert sum(isinstance(m, nn.AvgPool2d) for m in kept.modules()) == 3
    assert not any(isinstance(m, PooledConv2d) for m in kept.modules())
