"""Networks designed for time to accuracy on a CPU (issue 5's recipes), not taken from a seed.

Both follow airbench's shape: a cheap stem, then groups that each widen, downsample once and
convolve again, BatchNorm + ReLU everywhere, global pooling and one linear layer. No dropout:
with ~10-20 epochs there is no time to overfit.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1,
        groups: int = 1) -> list[nn.Module]:
    """Conv (no bias) -> BatchNorm -> ReLU; 'same' padding."""
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=(k // 2) * dilation,
                      dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def dsep(c: int, cout: int | None = None, dilation: int = 1) -> list[nn.Module]:
    """Depthwise 3x3 (optionally dilated) -> pointwise 1x1, each followed by BN + ReLU."""
    return cbr(c, c, dilation=dilation, groups=c) + cbr(c, cout or c, k=1)


class GapNet(nn.Module):
    """Feature layers, then global average pooling and one linear layer."""

    def __init__(self, features: list[nn.Module], width: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(*features)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(width, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


@register_model("fast-50k",
                provenance="cifarlab: airbench-shaped, < 50k params, for time to 80%")
class Fast50k(GapNet):
    """Under 50,000 parameters, built to reach 80% quickly.

    Stem 3x3 3->w; group 1: 3x3 w->2w at 32 px, max pool, 3x3 2w->2w; group 2: 3x3 2w->3w at
    16 px, max pool, 3x3 3w->3w; GAP, FC 3w->10. With w = 16: 49,658 parameters, RF 24.
    """

    def __init__(self, num_classes: int = 10, width: int = 16):
        w1, w2, w3 = width, 2 * width, 3 * width
        super().__init__([
            *cbr(3, w1),
            *cbr(w1, w2), nn.MaxPool2d(2), *cbr(w2, w2),
            *cbr(w2, w3), nn.MaxPool2d(2), *cbr(w3, w3),
        ], w3, num_classes)


@register_model("fast-seed001",
                provenance="cifarlab: seed 001's rules (< 200k, no max pool, RF > 44, dw-sep, "
                "dilated, GAP), fast")
class FastSeed001(GapNet):
    """Passes seed 001's rules (< 200k params, no max pool, RF > 44, a depthwise-separable and
    a dilated conv, GAP) with the compute spent where a CPU does it well: plain 3x3 convs.

    Stem 3x3 3->w (32 px); 3x3 stride 2 w->2w (16 px), 3x3 2w->2w; 3x3 stride 2 2w->4w (8 px);
    then three depthwise-separable 4w blocks at 8 px, the second dilated (d=2); GAP, FC.
    With w = 32: 185,898 parameters, RF 45.
    """

    def __init__(self, num_classes: int = 10, width: int = 32):
        w1, w2, w3 = width, 2 * width, 4 * width
        super().__init__([
            *cbr(3, w1),
            *cbr(w1, w2, stride=2), *cbr(w2, w2),
            *cbr(w2, w3, stride=2),
            *dsep(w3), *dsep(w3, dilation=2), *dsep(w3),
        ], w3, num_classes)


@register_model("fast-top",
                provenance="cifarlab: airbench94-shaped (2x2 whitening, 64/256/256), fast-top")
class FastTop(nn.Module):
    """airbench94's shape, for the unconstrained fast-top recipe (about 2M parameters).

    A frozen 2x2 whitening conv (3 -> 24: the 12 eigenvectors of the training set's 2x2-patch
    covariance scaled by 1/sqrt(eigenvalue), and their negatives; trainable bias), GELU, then
    three groups of 3x3 conv -> max pool -> BN -> GELU -> 3x3 conv -> BN -> GELU with widths
    64, 256, 256 (31 -> 15 -> 7 -> 3 px), a 3x3 max pool and a linear layer without bias whose
    output is scaled by 1/9. As in airbench: BatchNorm without a trainable scale (only its bias
    learns; momentum 0.4, eps 1e-12) and convs initialised partly as identities (dirac).
    `init_from_data` sets the whitening weights (`init_whitening`); the engine calls it before
    the first step.
    `train_whiten_bias=False` keeps the whitening bias at 0 (airbench trains it for its first
    epochs only), which spares the first conv its input gradient. `pool="avg"` average-pools
    the groups instead (then each group's first conv and its pool train as one stride-2 conv:
    `layers.fuse_conv_avgpool`, about 0.44x that conv's work); on the AMX Xeon the recipe
    trained so in 0.98x its time and 1.2 points lower on validation
    (levers-fast-top-avg-pools-amx-xeon.json): the recipe keeps max pooling.
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (64, 256, 256),
                 train_whiten_bias: bool = True, pool: str = "max"):
        super().__init__()
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be max or avg, not {pool!r}")
        pool_cls = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
        self.whiten = whitening_conv(train_whiten_bias)
        layers: list[nn.Module] = [self.whiten, nn.GELU()]
        cin = 24
        for w in widths:
            layers += airbench_group(cin, w, pool_cls, nn.GELU)
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.MaxPool2d(3), nn.Flatten(),
                                  nn.Linear(cin, num_classes, bias=False))

    def forward(self, x):
        return self.head(self.features(x)) / 9

    def init_from_data(self, images: torch.Tensor) -> None:
        init_whitening(self.whiten, images)


@register_model("air-seed001",
                provenance="cifarlab: airbench94-shaped under seed 001's rules (< 200k, no max "
                "pool, RF > 44, dw-sep, dilated, GAP)")
class AirSeed001(nn.Module):
    """fast-top's shape scaled under seed 001's rules, for the AMX CPU (issue 32).

    The frozen 2x2 whitening conv (3 -> 24), then two groups of 3x3 conv -> 2x2 average pool ->
    BN -> act -> 3x3 conv -> BN -> act (widths w1, w2: 31 -> 15 -> 7 px), then a dilated
    (d=2) depthwise-separable conv w2 -> w3, average pool, BN, act (3 px) and a plain
    depthwise-separable w3 -> w3 with BN, act; GAP and a linear layer without bias, output / 9.
    Pooling before the BatchNorm leaves a quarter of the normalisation and activation work,
    which dominates a small network's step on a CPU whose convolutions are fast (AMX).
    BatchNorm trains only its bias, convs start as identities (`bias_only_bn`, `dirac_conv`).
    With (48, 96, 128): 188,888 parameters, RF 59 (also a `family` design: family.py).
    `train_whiten_bias=False` keeps the whitening bias at 0, which spares the first conv its
    input gradient.
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (48, 96, 128),
                 act: str = "relu", train_whiten_bias: bool = True):
        super().__init__()
        if act not in ("relu", "gelu"):
            raise ValueError(f"act must be relu or gelu, not {act!r}")
        w1, w2, w3 = widths

        def a() -> nn.Module:
            return nn.ReLU(inplace=True) if act == "relu" else nn.GELU()

        self.whiten = whitening_conv(train_whiten_bias)
        layers: list[nn.Module] = [self.whiten, a()]
        cin = 24
        for w in (w1, w2):
            layers += airbench_group(cin, w, nn.AvgPool2d, a)
            cin = w
        layers += [nn.Conv2d(w2, w2, 3, padding=2, dilation=2, groups=w2, bias=False),
                   nn.Conv2d(w2, w3, 1, bias=False), nn.AvgPool2d(2), bias_only_bn(w3), a(),
                   nn.Conv2d(w3, w3, 3, padding=1, groups=w3, bias=False),
                   nn.Conv2d(w3, w3, 1, bias=False), bias_only_bn(w3), a()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(w3, num_classes, bias=False))

    def forward(self, x):
        return self.head(self.features(x)) / 9

    init_from_data = FastTop.init_from_data


@torch.no_grad()
def init_whitening(conv: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Set a `whitening_conv`'s filters from normalised training images (N×3×32×32 float)."""
    patches = images.unfold(2, 2, 1).unfold(3, 2, 1)  # N×3×31×31×2×2
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()
    cov = patches.T @ patches / len(patches)
    eigval, eigvec = torch.linalg.eigh(cov)
    filters = (eigvec.T / (eigval + eps).sqrt()[:, None]).reshape(12, 3, 2, 2)
    conv.weight.copy_(torch.cat([filters, -filters]).float())


def whitening_conv(train_bias: bool) -> nn.Conv2d:
    """airbench's 2x2 whitening conv 3 -> 24 (`init_from_data` sets its frozen weights); its
    bias trains unless `train_bias` is False (then the conv after it needs no input gradient)."""
    conv = nn.Conv2d(3, 24, 2, padding=0, bias=True)
    conv.weight.requires_grad_(False)
    conv.bias.requires_grad_(train_bias)
    return conv


def airbench_group(cin: int, w: int, pool: type[nn.Module], act) -> list[nn.Module]:
    """3x3 conv -> 2x2 pool -> BN -> act -> 3x3 conv -> BN -> act (airbench's group)."""
    return [dirac_conv(cin, w), pool(2), bias_only_bn(w), act(),
            dirac_conv(w, w), bias_only_bn(w), act()]


def dirac_conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 conv without bias ('same' padding) whose first min(cin, cout) filters start as
    identities."""
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation,
                     bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:cin])
    return conv


def bias_only_bn(c: int) -> nn.BatchNorm2d:
    """BatchNorm whose scale stays 1 (only the bias trains)."""
    bn = nn.BatchNorm2d(c, momentum=0.4, eps=1e-12)
    bn.weight.requires_grad_(False)
    return bn
