"""Seed 004: five "Nth_Block"s that mix three conv branches with input-dependent weights.

Each block computes a = ReLU(Linear(GAP(x))) with three entries a1..a3 and three parallel
3x3 Conv+ReLU branches, and outputs a1*conv1(x) + a2*conv2(x) + a3*conv3(x). BatchNorm and a
2x2 max pool follow every block (32 -> 16 -> 8 -> 4 -> 2 -> 1). The classifier is GAP, flatten,
FC -> ReLU -> dropout -> FC, as the seed describes.

The seed gives no widths; ours: block channels 32, 64, 128, 256, 512, classifier hidden 256,
dropout 0.3 (4,843,074 parameters). Receptive field: each block adds 2*jump (3x3 convs; the
GAP weighting does not widen the conv window) and each pool 1*jump, so 3, 4 | 8, 10 | 18, 22 |
38, 46 | 78, 94.
"""

from __future__ import annotations

from torch import nn

from .registry import register_model


class NthBlock(nn.Module):
    """out = a1*relu(conv1(x)) + a2*relu(conv2(x)) + a3*relu(conv3(x)), a = relu(fc(gap(x)))."""

    def __init__(self, cin: int, cout: int, branches: int = 3):
        super().__init__()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, branches)
        self.act = nn.ReLU()
        self.convs = nn.ModuleList(nn.Conv2d(cin, cout, 3, padding=1) for _ in range(branches))
        self.relus = nn.ModuleList(nn.ReLU() for _ in range(branches))

    def forward(self, x):
        a = self.act(self.fc(self.gap(x).flatten(1)))  # (N, branches)
        out = 0
        for i, (conv, relu) in enumerate(zip(self.convs, self.relus, strict=True)):
            out = out + a[:, i].view(-1, 1, 1, 1) * relu(conv(x))
        return out


@register_model("seed004",
                provenance="seed 004 five dynamic 3-branch blocks, BN + max pool, MLP")
class Seed004Net(nn.Module):
    """Backbone of five NthBlocks (each + BatchNorm + 2x2 max pool), GAP + two-FC classifier."""

    CHANNELS = (32, 64, 128, 256, 512)

    def __init__(self, num_classes: int = 10, dropout: float = 0.3, hidden: int = 256):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for cout in self.CHANNELS:
            layers += [NthBlock(cin, cout), nn.BatchNorm2d(cout), nn.MaxPool2d(2)]
            cin = cout
        self.backbone = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.backbone(x))
