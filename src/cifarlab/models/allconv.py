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

    The whole net runs at 32x32; each block ends in a dilated 3x3 conv where the seed would
    downsample. Widths are ours (about 141k parameters, under the seed's 200k); the RF (stride 1
    everywhere, so each 3x3 conv adds 2*dilation) is:

    C1: 3x3 3->16 (RF 3), 3x3 16->32 (5), 3x3 d=2 32->32 (9).
    C2: 3x3 32->32 (11), depthwise 3x3 32 + pointwise 1x1 32->48 (13), 3x3 d=4 48->48 (21).
    C3: 1x1 48->32 (21), 3x3 32->48 (23), 3x3 d=8 48->48 (39).
    C4: 1x1 48->32 (39), 3x3 32->64 (41), 3x3 d=8 64->64 (57).
    O: GAP, FC 64->10. Final RF 57 > 44. Dropout (default 0.1) after every BN-ReLU.
    Every dilated conv sees a dense window at least as wide as its dilation, so no gridding.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.1):
        super().__init__()
        p = dropout
        self.features = nn.Sequential(
            # C1
            *cbr(3, 16, dropout=p),
            *cbr(16, 32, dropout=p),
            *cbr(32, 32, dilation=2, dropout=p),
            # C2
            *cbr(32, 32, dropout=p),
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False),  # depthwise
            *cbr(32, 48, k=1, dropout=p),  # pointwise
            *cbr(48, 48, dilation=4, dropout=p),
            # C3
            *cbr(48, 32, k=1, dropout=p),
            *cbr(32, 48, dropout=p),
            *cbr(48, 48, dilation=8, dropout=p),
            # C4
            *cbr(48, 32, k=1, dropout=p),
            *cbr(32, 64, dropout=p),
            *cbr(64, 64, dilation=8, dropout=p),
        )
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(self.gap(self.features(x)).flatten(1))
