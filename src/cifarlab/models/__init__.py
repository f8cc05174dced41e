"""The networks. Each module registers its classes with `@register_model` (registry.py);
importing this package imports them all, so `create_model(name)` knows every name."""

from . import allconv, blocks, dynamic, family, fast, small, tutorial  # noqa: F401  (registration)
from .registry import REGISTRY, ModelInfo, create_model, register_model

__all__ = ["REGISTRY", "ModelInfo", "create_model", "register_model"]
