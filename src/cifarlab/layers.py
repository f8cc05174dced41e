"""Faster drop-in layers for CPU training."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

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


class Fp32DepthwiseConv2d(nn.Conv2d):
    """A depthwise convolution that runs in fp32 inside a CPU bf16 autocast region.

    oneDNN's bf16 depthwise backward is about 20x slower than its fp32 one on CPU (profiled
    on seed 001's 3x3 stride-2 depthwise layer, where it took more than a sixth of the whole
    training step), while the forward costs about the same either way.
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


def use_fp32_depthwise(model: nn.Module) -> nn.Module:
    """Make every depthwise `nn.Conv2d` of `model` an `Fp32DepthwiseConv2d` (in place)."""
    for m in model.modules():
        if type(m) is nn.Conv2d and m.groups > 1 and m.groups == m.in_channels:
            m.__class__ = Fp32DepthwiseConv2d
    return model


def for_cpu_training(model: nn.Module, fast_dropout: bool = True) -> nn.Module:
    """The layer swaps `fit` trains with (in place): FastDropout unless told not to, fp32
    depthwise convolutions. The search's step timer uses the same, so it times what trains."""
    if fast_dropout:
        use_fast_dropout(model)
    return use_fp32_depthwise(model)
