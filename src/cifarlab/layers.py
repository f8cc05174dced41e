"""Faster drop-in layers for CPU training."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

_INT16_MIN, _INT16_SPAN = -32768, 65536
_ONE_BITS = {dt: int(torch.tensor(1.0, dtype=dt).view(torch.int16)) for dt in
             (torch.bfloat16, torch.float16)}  # 1.0 of each 16-bit float, as an int16


def random_int16(n: int, device: torch.device) -> torch.Tensor:
    """n uniform 16-bit integers, four from each 64-bit draw. On the CPU the draws come from
    numpy's PCG64, about twice as fast as torch's Mersenne Twister, seeded by one draw from
    torch's global generator: `torch.manual_seed` and a restored RNG state reproduce them."""
    words = (n + 3) // 4
    if device.type == "cpu":
        seed = int(torch.randint(0, 2**63 - 1, (1,)))
        return torch.from_numpy(np.random.PCG64(seed).random_raw(words).view(np.int16))[:n]
    bits = torch.empty(words, dtype=torch.int64, device=device)
    return bits.random_(-(2**63), 2**63 - 1).view(torch.int16)[:n]


def keep_mask(n: int, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """n values of `dtype` in memory order: 1 with probability 1 - p, else 0 (p to 1/65536).

    Uniform 16-bit numbers r (`random_int16`) are kept where r >= thr. The test runs on the
    bits, not through a bool tensor (whose conversion to bf16 cost more than the draw): the
    sign bit of r & (r - thr) (thr < 0) or r | (r - thr) (thr >= 0) is set exactly where
    r < thr (r - thr may wrap around only where the other operand decides the sign), and
    for a 16-bit float the kept positions get the bit pattern of 1.0.
    """
    r = random_int16(n, device)
    thr = _INT16_MIN + round(p * _INT16_SPAN)
    d = r - thr
    dropped = ((r & d) if thr < 0 else (r | d)).bitwise_right_shift_(15)  # -1 or 0
    if dtype in _ONE_BITS:
        return dropped.bitwise_not_().bitwise_and_(_ONE_BITS[dtype]).view(dtype)
    return dropped.add_(1).to(dtype)


class _Masked(torch.autograd.Function):
    """x * mask * scale with one rounding, its gradient likewise (mask holds 0 and 1)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return torch.addcmul(x.new_zeros(()), x, mask, value=scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return torch.addcmul(grad.new_zeros(()), grad, mask, value=ctx.scale), None, None


class FastDropout(nn.Module):
    """Element-wise dropout like `nn.Dropout`, with a cheaper random mask on CPU.

    `nn.Dropout` draws one float per element (bernoulli), which on a 2-core CPU cost more
    than the convolutions of seed 001's network. Here each 64-bit draw yields four 16-bit
    numbers compared against p·65536, so p is exact to 1/65536, and the mask is laid out in
    the input's memory format (channels_last stays channels_last). It uses torch's global
    generator, so `torch.manual_seed` and checkpointed RNG state reproduce it. In eval mode,
    or with p = 0, it is the identity, as `nn.Dropout` is.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = keep_mask(x.numel(), self.p, x.dtype, x.device)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            b, c, h, w = x.shape
            keep = keep.view(b, h, w, c).permute(0, 3, 1, 2)
        else:
            keep = keep.view(x.shape)
        return _Masked.apply(x, keep, 1 / (1 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model: nn.Module) -> nn.Module:
    """Replace every element-wise `nn.Dropout` in `model` with `FastDropout` (same p)."""
    for name, child in model.named_children():
        if type(child) is nn.Dropout:
            setattr(model, name, FastDropout(child.p))
        else:
            use_fast_dropout(child)
    return model


class Fp32Conv2d(nn.Conv2d):
    """A convolution that runs in fp32 inside a CPU bf16 autocast region.

    Same weights and state_dict as the `nn.Conv2d` it replaces; the output is cast back to
    the autocast dtype, so the layers after it see what they saw before. Anywhere else (no
    autocast, GPU) it is a plain `nn.Conv2d`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            y = super().forward(x.float())
        return y.to(torch.get_autocast_dtype("cpu"))


class Fp32DepthwiseConv2d(Fp32Conv2d):
    """A depthwise convolution in fp32 under CPU bf16 autocast: oneDNN's bf16 depthwise
    backward is much slower than its fp32 one on CPU (profiled on seed 001's 3x3 stride-2
    depthwise layer, where it took more than a sixth of the whole training step), while the
    forward costs about the same either way."""


def use_fp32_depthwise(model: nn.Module) -> nn.Module:
    """Make every depthwise `nn.Conv2d` of `model` an `Fp32DepthwiseConv2d` (in place)."""
    for m in model.modules():
        if type(m) is nn.Conv2d and m.groups > 1 and m.groups == m.in_channels:
            m.__class__ = Fp32DepthwiseConv2d
    return model


# ---------------------------------------------------------------------------------------------
# Convolutions whose bf16 weight gradient is wrong on this CPU
#
# oneDNN (torch 2.13, AMD EPYC with avx512_bf16) computes a garbage bf16 weight gradient for
# some channels_last convolutions: e.g. 3x3 dilation-2 convs on 32x32 maps whose channel
# counts are not multiples of 16 (24 -> 24, 40 -> 24: relative error ~1, sometimes 1e7),
# while 16 or 32 channels, or the same conv on 16x16 maps, are right. Such a network trains
# to NaN or to nothing. Which shapes are hit depends on the CPU and the library, so each
# distinct convolution of a network is probed once: its bf16 weight gradient against fp32 on
# random data; one that disagrees runs in fp32.

_BF16_OK: dict[tuple, bool] = {}
PROBE_BATCHES = (8, 32)
PROBE_TOLERANCE = 0.1  # max |bf16 - fp32| / max |fp32| of the weight gradient (right: ~0.005)


def _bf16_weight_grad_ok(conv: nn.Conv2d, hw: tuple[int, int]) -> bool:
    key = (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
           conv.dilation, conv.groups, conv.padding_mode, hw)
    if key not in _BF16_OK:
        gen = torch.Generator().manual_seed(0)  # never moves the training run's stream
        probe = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, conv.dilation, conv.groups, bias=False,
                          padding_mode=conv.padding_mode)
        with torch.no_grad():
            probe.weight.copy_(torch.randn(probe.weight.shape, generator=gen) * 0.1)
        probe = probe.to(memory_format=torch.channels_last)
        ok = True
        for n in PROBE_BATCHES:
            x = torch.randn((n, conv.in_channels, *hw), generator=gen)
            x = x.contiguous(memory_format=torch.channels_last)
            grads = []
            for bf16 in (True, False):
                probe.weight.grad = None
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    y = probe(x)
                y.float().square().mean().backward()
                grads.append(probe.weight.grad.float())
            scale = grads[1].abs().max().clamp(min=1e-12)
            err = float((grads[0] - grads[1]).abs().max() / scale)
            ok = ok and err <= PROBE_TOLERANCE  # NaN fails too
        _BF16_OK[key] = ok
    return _BF16_OK[key]


def _input_sizes(model: nn.Module, convs: list[nn.Module],
                 sizes: tuple[int, ...]) -> dict[nn.Module, set]:
    """The feature-map sizes (h, w) each of `convs` sees for `sizes`-pixel images."""
    seen: dict[nn.Module, set] = {m: set() for m in convs}
    hooks = [m.register_forward_pre_hook(
        lambda m, args: seen[m].add(tuple(args[0].shape[-2:]))) for m in convs]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for size in sizes:
                try:
                    model(torch.zeros(1, 3, size, size))
                except Exception:  # a size this network does not take: checked elsewhere
                    continue
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return seen


def use_fp32_where_bf16_fails(model: nn.Module, sizes: tuple[int, ...] = (32,)) -> list[str]:
    """Make each plain `nn.Conv2d` whose bf16 weight gradient is wrong on this CPU, at the
    feature-map sizes it sees for `sizes`-pixel images, an `Fp32Conv2d` (in place); the names
    of those convs."""
    convs = {m: n for n, m in model.named_modules() if type(m) is nn.Conv2d}
    seen = _input_sizes(model, list(convs), sizes)
    fixed = []
    for m, name in convs.items():
        if any(not _bf16_weight_grad_ok(m, hw) for hw in sorted(seen[m])):
            m.__class__ = Fp32Conv2d
            fixed.append(name)
    return fixed


# ---------------------------------------------------------------------------------------------
# A convolution followed by a 2x2 average pool, as one stride-2 convolution
#
# Averaging 2x2 blocks of a stride-1 k x k conv's output is a stride-2 (k+1) x (k+1) conv whose
# kernel is the k x k one box-filtered: the same output, with 16/36 of a 3x3 conv's
# multiply-adds and without the full-size map, its pooling and their backward passes
# (airbench-shaped networks pool right after a conv: fast-seed001's air-seed001 trains 1.14x as
# long unfused, benchmarks/results/levers-fast-seed001-fused-pools-amx-xeon.json).


class PooledConv2d(nn.Conv2d):
    """A stride-1, odd-kernel, 'same'-padded `nn.Conv2d` and the `nn.AvgPool2d(2)` after it,
    computed as one stride-2 conv. Same weights and state_dict as the conv; its pool becomes
    an `nn.Identity`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        k = 0.25 * (F.pad(w, (0, 1, 0, 1)) + F.pad(w, (1, 0, 0, 1))
                    + F.pad(w, (0, 1, 1, 0)) + F.pad(w, (1, 0, 1, 0)))
        return F.conv2d(x, k, self.bias, 2, self.padding, 1, self.groups)


def _poolable(conv: nn.Module, pool: nn.Module) -> bool:
    if type(conv) is not nn.Conv2d or type(pool) is not nn.AvgPool2d:
        return False
    k, p = conv.kernel_size, conv.padding
    return (conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
            and k[0] == k[1] and k[0] % 2 == 1 and p == (k[0] // 2, k[0] // 2)
            and pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2))
            and pool.padding in (0, (0, 0)) and not pool.ceil_mode
            and pool.divisor_override is None)


def fuse_conv_avgpool(model: nn.Module, bf16_sizes: tuple[int, ...] = ()) -> list[str]:
    """Make each plain `nn.Conv2d` directly followed by a 2x2 `nn.AvgPool2d` in an
    `nn.Sequential` a `PooledConv2d` and the pool an `nn.Identity` (in place); the names of
    those convs. With `bf16_sizes`, a pair whose fused conv has a wrong bf16 weight gradient
    on this CPU (see above) is left as it is."""
    pairs = []
    for parent_name, parent in model.named_modules():
        if isinstance(parent, nn.Sequential):
            kids = list(parent.named_children())
            for (cn, c), (pn, p) in zip(kids, kids[1:], strict=False):
                if _poolable(c, p):
                    pairs.append((f"{parent_name}.{cn}".lstrip("."), parent, c, pn))
    seen = _input_sizes(model, [c for _, _, c, _ in pairs], bf16_sizes) if bf16_sizes else {}
    fused = []
    for name, parent, conv, pool_name in pairs:
        if seen.get(conv):  # the fused geometry probed at the sizes this conv sees
            k = conv.kernel_size[0]
            probe = nn.Conv2d(conv.in_channels, conv.out_channels, k + 1, 2, k // 2,
                              groups=conv.groups, bias=False)
            if any(not _bf16_weight_grad_ok(probe, hw) for hw in sorted(seen[conv])):
                continue
        conv.__class__ = PooledConv2d
        setattr(parent, pool_name, nn.Identity())
        fused.append(name)
    return fused


def for_cpu_training(model: nn.Module, fast_dropout: bool = True, *,
                     bf16_sizes: tuple[int, ...] = ()) -> nn.Module:
    """The layer swaps `fit` trains with (in place): FastDropout unless told not to, fp32
    depthwise convolutions, (`bf16_sizes`: the image sizes a bf16 run trains at) fp32 for any
    convolution whose bf16 weight gradient is wrong on this CPU, and a conv + 2x2 average
    pool as one stride-2 conv (`CIFARLAB_FUSE_POOLS=0` opts out: the `unfused-pools` lever of
    benchmarks.levers). The search's step timer uses the same, so it times what trains."""
    if fast_dropout:
        use_fast_dropout(model)
    use_fp32_depthwise(model)
    if bf16_sizes:
        use_fp32_where_bf16_fails(model, bf16_sizes)
    if os.environ.get("CIFARLAB_FUSE_POOLS") != "0":
        fuse_conv_avgpool(model, bf16_sizes)
    return model
