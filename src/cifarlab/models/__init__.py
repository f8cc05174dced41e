"""Model registry: every network is made by name through `create_model` (the timm way)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import CifarlabError
from .allconv import Seed001Net


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
