"""The model registry: each network registers itself where it is defined (timm's way).

    @register_model("fast-50k", provenance="cifarlab: ...")
    class Fast50k(nn.Module): ...

A network that changes gets a new name; `create_model(name, **model_args)` builds one by name
and checks its arguments against the builder's signature.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import CifarlabError


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    provenance: str


REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, provenance: str):
    """Class (or function) decorator: make `name` buildable by `create_model`."""

    def add(builder):
        if name in REGISTRY and REGISTRY[name].builder is not builder:
            raise ValueError(f"model name '{name}' is registered twice")
        REGISTRY[name] = ModelInfo(name, builder, provenance)
        return builder

    return add


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
