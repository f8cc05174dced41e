"""Seed 000: three small CNNs under 50,000 parameters (the seed's Model 1, 2 and 3).

The seed gives the depth, the pooling and the loss of each model but no widths; these are
ours, chosen to use most of the 50k budget. Every conv is 3x3, padding 1, no bias, followed by
BatchNorm and ReLU (BatchNorm is not in the seed's text: it is our addition, and no run
without it was recorded). Dropout (default 0.1, ours) sits before the classifier.

* M1 (45,578 params): conv 3->32, max pool, conv 32->48, max pool (8x8), flatten 3072 -> FC 10.
  Two convs see only a 10 px window, so a flatten head (not GAP) keeps the spatial layout.
* M2 (43,138 params): conv 3->24, conv 24->48, avg pool, conv 48->72, avg pool, max pool (4x4),
  GAP, FC 72->10, then log_softmax: the seed trains it with NLL loss, so the recipe must use
  loss "nll" (cross entropy on log-probabilities gives the same value, as log_softmax is
  idempotent).
* M3 (47,482 params): conv 3->16, conv 16->32, avg pool, conv 32->48, avg pool, conv 48->64,
  max pool (4x4), GAP, FC 64->10 - the seed's best (80.096%, trained with gradient clipping).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .registry import register_model


def _cbr(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


@register_model("seed000-m1",
                provenance="seed 000 Model 1 (2 convs, max pool, <50k params)")
class SmallM1(nn.Module):
    """Seed 000 Model 1: two convs, each followed by 2x2 max pooling; flatten + FC head."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.1, width: int = 32):
        super().__init__()
        w2 = width * 3 // 2
        self.features = nn.Sequential(
            *_cbr(3, width), nn.MaxPool2d(2),
            *_cbr(width, w2), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(w2 * 8 * 8, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("seed000-m2",
                provenance="seed 000 Model 2 (3 convs, avg+max pool, log_softmax/NLL)")
class SmallM2(nn.Module):
    """Seed 000 Model 2: three convs, avg pool after conv 2 and 3, max pool after conv 3.

    Returns log-probabilities (log_softmax): train it with NLL loss as the seed does.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.1, width: int = 24):
        super().__init__()
        w1, w2, w3 = width, width * 2, width * 3
        self.features = nn.Sequential(
            *_cbr(3, w1),
            *_cbr(w1, w2), nn.AvgPool2d(2),
            *_cbr(w2, w3), nn.AvgPool2d(2), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                        nn.Dropout(dropout), nn.Linear(w3, num_classes))

    def forward(self, x):
        return F.log_softmax(self.classifier(self.features(x)), dim=1)


@register_model("seed000-m3",
                provenance="seed 000 Model 3 (4 convs, avg+max pool, <50k params)")
class SmallM3(nn.Module):
    """Seed 000 Model 3: four convs, avg pool after conv 2 and 3, max pool after conv 4."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.1, width: int = 16):
        super().__init__()
        w1, w2, w3, w4 = width, width * 2, width * 3, width * 4
        self.features = nn.Sequential(
            *_cbr(3, w1),
            *_cbr(w1, w2), nn.AvgPool2d(2),
            *_cbr(w2, w3), nn.AvgPool2d(2),
            *_cbr(w3, w4), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                        nn.Dropout(dropout), nn.Linear(w4, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))
