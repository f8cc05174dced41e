"""Seed 002: six Cifar_Blocks (three Conv-BN-ReLU each, optional max pool), GAP, MLP head.

The seed fixes the block structure, the 3 input and 512 final channels, GAP, FC 512->128, ReLU,
dropout and FC 128->10; the rest is ours:

* channels 16, 32, 64, 128, 256, 512 (doubling, "increasing numbers of output channels");
* 2x2 max pool after blocks 2, 3, 4 and 5 (32x32 maps in blocks 1-2, then 16, 8, 4, 2), which
  keeps the per-block compute roughly equal;
* dropout 0.2 in the head; convs have no bias (BatchNorm follows).

The seed's final "softmax activation" is left to the loss: the model returns logits.
7,934,682 parameters.

The blocks are sequential, not concatenated. The seed's text says both: one sentence has "Each
Cifar_Block's output is concatenated and processed through a linear layer", while its
description of the network has "six sequential Cifar_Block modules ... where the output of one
block is given as input to another block", then global average pooling "over the output of the
previous Cifar_Block" (the last, 512 channels) and a linear layer with 128 outputs. We follow
the second, detailed description: it names every layer and its sizes, which the concatenation
sentence does not (concatenating the six blocks' pooled outputs would put 1,008 features, not
the last block's 512, in front of the 128-unit layer).
"""

from __future__ import annotations

from torch import nn

from .registry import register_model


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


@register_model("seed002",
                provenance="seed 002 six Conv-BN-ReLU blocks to 512, GAP, FC 128")
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
