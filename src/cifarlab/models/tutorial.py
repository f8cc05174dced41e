"""Seed 003: the PyTorch-tutorial progression (Models 1-8), layer for layer as the seed lists them.

The seed trains eight "models" but only five distinct networks:

* Net1 - the classic tutorial net (Model 1). Model 2 is Net1 again, trained with flip/rotate
  augmentation; it is not a separate network.
* Net3 - Net1 with a four-layer head 400-200-100-50-10 (Model 3). Models 4 and 5 are Net3
  trained longer (Model 4) and with a learning-rate drop (Model 5); Model 6's "before" listing
  is Net3 too.
* Net6 - convs 3->32->64, head 1600-800-400-200-100-50-10, dropout 0.1 (Model 6).
* Net7 - convs 3->64->128, head 3200-1600-800-400-200-100-50-10, dropout 0.1 (Model 7).
* Net8 - convs 3->64 (pool), 64->128, 128->256 (pool), head 2304-1600-...-10, dropout 0.1
  (Model 8).

All convs are 5x5, unpadded, stride 1; every pool is MaxPool2d(2, 2), so 32 -> 28 -> 14 -> 10
-> 5 gives the 16*5*5 = 400, 64*5*5 = 1600 and 128*5*5 = 3200 flatten sizes, and Net8's
32 -> 28 -> 14 -> 10 -> 6 -> 3 gives 256*3*3 = 2304. Attribute names follow the seed (including
Net8's fc1, fc7, fc6, fc2, ... order), so its state dicts load unchanged. ReLU is an `nn.ReLU`
module instead of `F.relu` (no parameters, so the state dict is the same) so that summaries list
it; dropout positions are exactly the seed's.

Where each part comes from: the layer listings are the seed's (Model 1's is the tutorial's Net,
which the seed prints as "the default model provided by PyTorch"). The seed's write-up states no
optimizer, learning rate, momentum, batch size or loss; those of the recipes (SGD, lr 1e-3,
momentum 0.9, batch 4, cross-entropy, one transform applied to the training and the test set)
are the PyTorch CIFAR-10 tutorial's, which the seed links and starts from. The 2 epochs of
Models 1-3 are the tutorial's too; the seed confirms them under Model 4 ("training it for just
2 epochs was too less"). The seed itself gives the Model 2 transforms, "more epochs" for Model
4, Model 5's learning-rate drop and the accuracies; see each seed003-*.toml.
"""

from __future__ import annotations

from torch import nn

from .registry import register_model


@register_model("seed003-net1",
                provenance="seed 003 Net1 (PyTorch tutorial; also Model 2)")
class Net1(nn.Module):
    """Model 1 (and 2): the PyTorch CIFAR-10 tutorial net, 62,006 parameters."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


@register_model("seed003-net3",
                provenance="seed 003 Net3 (tutorial + FC 200-100-50; also Models 4, 5)")
class Net3(nn.Module):
    """Model 3 (and 4, 5): Net1 with a deeper head 400-200-100-50-10, 108,732 parameters."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 200)
        self.fc2 = nn.Linear(200, 100)
        self.fc3 = nn.Linear(100, 50)
        self.fc4 = nn.Linear(50, num_classes)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        x = self.relu(self.fc3(x))
        return self.fc4(x)


@register_model("seed003-net6",
                provenance="seed 003 Net6 (convs 32/64, FC 800-...-10, dropout 0.1)")
class Net6(nn.Module):
    """Model 6: convs 3->32->64, head 1600-800-400-200-100-50-10, dropout after fc2 and fc4."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.fc1 = nn.Linear(64 * 5 * 5, 800)
        self.fc2 = nn.Linear(800, 400)
        self.fc3 = nn.Linear(400, 200)
        self.fc4 = nn.Linear(200, 100)
        self.fc5 = nn.Linear(100, 50)
        self.fc6 = nn.Linear(50, num_classes)
        self.dropout = nn.Dropout(p=dropout)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        x = self.dropout(x)
        x = self.relu(self.fc3(x))
        x = self.relu(self.fc4(x))
        x = self.dropout(x)
        x = self.relu(self.fc5(x))
        return self.fc6(x)


@register_model("seed003-net7",
                provenance="seed 003 Net7 (convs 64/128, FC 1600-...-10, dropout 0.1)")
class Net7(nn.Module):
    """Model 7 (the seed's best, 72%): convs 3->64->128, head 3200-1600-...-10, dropout 0.1."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(64, 128, 5)
        self.fc1 = nn.Linear(128 * 5 * 5, 1600)
        self.fc2 = nn.Linear(1600, 800)
        self.fc3 = nn.Linear(800, 400)
        self.fc4 = nn.Linear(400, 200)
        self.fc5 = nn.Linear(200, 100)
        self.fc6 = nn.Linear(100, 50)
        self.fc7 = nn.Linear(50, num_classes)
        self.dropout = nn.Dropout(p=dropout)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        x = self.relu(self.fc3(x))
        x = self.dropout(x)
        x = self.relu(self.fc4(x))
        x = self.relu(self.fc5(x))
        x = self.dropout(x)
        x = self.relu(self.fc6(x))
        return self.fc7(x)


@register_model("seed003-net8",
                provenance="seed 003 Net8 (convs 64/128/256, FC 1600-...-10, dropout 0.1)")
class Net8(nn.Module):
    """Model 8: three 5x5 convs 3->64 (pool), 64->128, 128->256 (pool), head 2304-1600-...-10."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(64, 128, 5)
        self.conv3 = nn.Conv2d(128, 256, 5)
        self.fc1 = nn.Linear(256 * 3 * 3, 1600)
        self.fc7 = nn.Linear(1600, 800)
        self.fc6 = nn.Linear(800, 400)
        self.fc2 = nn.Linear(400, 200)
        self.fc3 = nn.Linear(200, 100)
        self.fc4 = nn.Linear(100, 50)
        self.fc5 = nn.Linear(50, num_classes)
        self.dropout = nn.Dropout(p=dropout)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.relu(self.conv2(x))
        x = self.pool(self.relu(self.conv3(x)))
        x = self.flatten(x)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc7(x))
        x = self.relu(self.fc6(x))
        x = self.dropout(x)
        x = self.relu(self.fc2(x))
        x = self.relu(self.fc3(x))
        x = self.dropout(x)
        x = self.relu(self.fc4(x))
        return self.fc5(x)
