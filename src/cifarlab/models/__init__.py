"""Model registry: every network is made by name through `create_model` (the timm way)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import CifarlabError
from .allconv import Seed001DilatedNet, Seed001Net
from .blocks import Seed002Net
from .dynamic import Seed004Net
from .fast import Fast50k, FastSeed001, FastTop
from .small import SmallM1, SmallM2, SmallM3
from .tutorial import Net1, Net3, Net6, Net7, Net8


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    provenance: str


REGISTRY: dict[str, ModelInfo] = {}


def register(name: str, builder: Callable[..., nn.Module], provenance: str) -> None:
    REGISTRY[name] = ModelInfo(name, builder, provenance)


def create_model(name: str, **kwargs) -> nn.Module:
    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise CifarlabError(f"unknown model '{name}' (known: {known})")
    builder = REGISTRY[name].builder
    params = inspect.signature(builder).parameters
    for key in kwargs:
        if key not in params:
            raise CifarlabError(f"model '{name}' has no argument '{key}' (model_args.{key})")
    return builder(**kwargs)


register("seed001", Seed001Net, "seed 001 final network (C1C2C3C4O, 92,394 params, RF 61)")
register("seed001-dilated", Seed001DilatedNet,
         "seed 001 bonus: seed 001 evaluated densely (strides -> dilations 2, 4), RF 53")
register("seed000-m1", SmallM1, "seed 000 Model 1 (2 convs, max pool, <50k params)")
register("seed000-m2", SmallM2, "seed 000 Model 2 (3 convs, avg+max pool, log_softmax/NLL)")
register("seed000-m3", SmallM3, "seed 000 Model 3 (4 convs, avg+max pool, <50k params)")
register("seed002", Seed002Net, "seed 002 six Conv-BN-ReLU blocks to 512, GAP, FC 128")
register("seed003-net1", Net1, "seed 003 Net1 (PyTorch tutorial; also Model 2)")
register("seed003-net3", Net3, "seed 003 Net3 (tutorial + FC 200-100-50; also Models 4, 5)")
register("seed003-net6", Net6, "seed 003 Net6 (convs 32/64, FC 800-...-10, dropout 0.1)")
register("seed003-net7", Net7, "seed 003 Net7 (convs 64/128, FC 1600-...-10, dropout 0.1)")
register("seed003-net8", Net8, "seed 003 Net8 (convs 64/128/256, FC 1600-...-10, dropout 0.1)")
register("seed004", Seed004Net, "seed 004 five dynamic 3-branch blocks, BN + max pool, MLP")
register("fast-50k", Fast50k, "cifarlab: airbench-shaped, < 50k params, for time to 80%")
register("fast-seed001", FastSeed001,
         "cifarlab: seed 001's rules (< 200k, no max pool, RF > 44, dw-sep, dilated, GAP), fast")
register("fast-top", FastTop, "cifarlab: airbench94-shaped (2x2 whitening, 64/256/256), fast-top")
