"""Seed 002: six Cifar_Blocks (three Conv-BN-ReLU each, optional max pool), GAP, MLP head.

The seed fixes the block structure, the 3 input and 512 final channels, GAP, FC 512->128, ReLU,
dropout and FC 128->10; the rest is ours:

* channels 16, 32, 64, 128, 256, 512 (doubling, "increasing numbers of output channels");
* 2x2 max pool after blocks 2, 3, 4 and 5 (32x32 maps in blocks 1-2, then 16, 8, 4, 2), which
  keeps the per-block compute roughly equal;
* dropout 0.2 in the head; convs have no bias (BatchNorm follows).

The seed's final "softmax activation" is left to the loss: the model returns logits.
About 7.9M parameters.
"""

from __future__ import annotations

from torch import nn


class CifarBlock(nn.Module):
    """Three 3x3 Conv-BN-ReLU layers, then an optional 2x2 max pool."""

    def __init__(self, cin: int, cout: int, pool: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class Seed002Net(nn.Module):
    """Six Cifar_Blocks 3->16->32->64->128->256->512, GAP, FC 512->128, ReLU, dropout, FC."""

    CHANNELS = (16, 32, 64, 128, 256, 512)
    POOLS = (False, True, True, True, True, False)

    def __init__(self, num_classes: int = 10, dropout: float = 0.2):
        super().__init__()
        blocks, cin = [], 3
        for cout, pool in zip(self.CHANNELS, self.POOLS, strict=True):
            blocks.append(CifarBlock(cin, cout, pool))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(cin, 128), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.head(self.blocks(x))
