"""Seed 001: the all-convolutional C1C2C3C4O network (no MaxPool, GAP head)."""

from __future__ import annotations

from torch import nn


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, padding: int | None = None,
        dilation: int = 1, dropout: float = 0.1) -> list[nn.Module]:
    """Conv (no bias) -> BatchNorm -> ReLU -> Dropout, the seed's repeating unit."""
    if padding is None:
        padding = (k // 2) * dilation if k > 1 else 0
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
    ]


class Seed001Net(nn.Module):
    """Seed 001's final network, exactly as its summary table (92,394 parameters, RF 61).

    B1: 3x3 3->32, 3x3 stride 2 32->64 (32->16 px), 1x1 64->16.
    B2: 3x3 16->32, depthwise 3x3 stride 2 (16->8 px) + pointwise 32->16.
    B3: 3x3 16->32, 3x3 32->64, 1x1 64->16.
    B4: 3x3 16->32, 3x3 32->64, dilated (d=2, p=1) 3x3 64->32 (8->6 px).
    O: GAP, FC 32->10. Dropout 0.1 after every BN-ReLU (the seed's rate).
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.1):
        super().__init__()
        p = dropout
        self.features = nn.Sequential(
            *cbr(3, 32, dropout=p),
            *cbr(32, 64, stride=2, dropout=p),
            *cbr(64, 16, k=1, dropout=p),
            *cbr(16, 32, dropout=p),
            nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32, bias=False),  # depthwise
            *cbr(32, 16, k=1, dropout=p),  # pointwise
            *cbr(16, 32, dropout=p),
            *cbr(32, 64, dropout=p),
            *cbr(64, 16, k=1, dropout=p),
            *cbr(16, 32, dropout=p),
            *cbr(32, 64, dropout=p),
            *cbr(64, 32, padding=1, dilation=2, dropout=p),  # dilated, 8x8 -> 6x6
        )
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.gap(self.features(x)).flatten(1))


class Seed001DilatedNet(nn.Module):
    """Seed 001's bonus variant: no strided conv and no pooling before GAP; dilation grows the RF.

    Seed 001's own layers and widths, with every strided conv replaced by unpadded ("valid")
    dilated convs: a 3x3 kernel with dilation d and no padding spans 2d+1 pixels, so it shrinks
    the map by 2d while adding 2d to the RF. The maps are therefore the seed's
    (32 -> 16 -> 8 -> 6 px) and so is the cost (about 11M MACs), where a net kept at 32x32
    throughout would cost 10x more on a CPU. Stride is 1 everywhere, so each 3x3 conv with
    dilation d adds 2d to the RF:

    B1: 3x3 3->32 (RF 3), depthwise 3x3 d=2 valid (32->28 px, RF 7), 3x3 d=6 valid 32->64
        (28->16 px, RF 19), 1x1 64->16.
    B2: 3x3 16->32 (21), depthwise 3x3 d=4 valid (16->8 px, 29) + pointwise 32->16.
    B3: 3x3 d=2 16->32 (33), 3x3 d=2 32->64 (37), 1x1 64->16.
    B4: 3x3 d=2 16->32 (41), 3x3 d=2 32->64 (45), 3x3 d=2 pad 1 64->32 (8->6 px, 49).
    O: GAP, FC 32->10. Final RF 49 > 44; 92,682 parameters (seed 001's + 288).
    No gridding: every dilated conv's gaps are narrower than the dense window below it (the
    depthwise d=2 conv exists for that: a d=8 conv straight after the RF-3 stem, as a first
    version had, sees 3-pixel patches 8 pixels apart and trained 8 points behind seed 001).
    Dropout (default 0.1) after every BN-ReLU.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.1):
        super().__init__()
        p = dropout
        self.features = nn.Sequential(
            *cbr(3, 32, dropout=p),
            nn.Conv2d(32, 32, 3, padding=0, dilation=2, groups=32, bias=False),  # 32 -> 28 px
            *cbr(32, 64, padding=0, dilation=6, dropout=p),  # 28 -> 16 px
            *cbr(64, 16, k=1, dropout=p),
            *cbr(16, 32, dropout=p),
            nn.Conv2d(32, 32, 3, padding=0, dilation=4, groups=32, bias=False),  # 16 -> 8 px
            *cbr(32, 16, k=1, dropout=p),  # pointwise
            *cbr(16, 32, dilation=2, dropout=p),
            *cbr(32, 64, dilation=2, dropout=p),
            *cbr(64, 16, k=1, dropout=p),
            *cbr(16, 32, dilation=2, dropout=p),
            *cbr(32, 64, dilation=2, dropout=p),
            *cbr(64, 32, padding=1, dilation=2, dropout=p),  # 8 -> 6 px
        )
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.gap(self.features(x)).flatten(1))
