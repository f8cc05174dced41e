"""The model registry: each network registers itself where it is defined (timm's way).

    @register_model("fast-50k", provenance="cifarlab: ...")
    class Fast50k(nn.Module): ...

A network that changes gets a new name; `create_model(name, **model_args)` builds one by name
and checks its arguments against the builder's signature. Three kinds of name:

- a built-in network (`cifarlab models` lists them);
- `FILE.py:NAME`: a class or a function returning an `nn.Module`, defined in the user's own
  file (imported as `python FILE.py` would import it: running the file's code);
- a name another package registers through the `cifarlab.models` entry-point group
  (`[project.entry-points."cifarlab.models"] mynet = "mypkg.nets:MyNet"`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from torch import nn

from ..errors import CifarlabError
from ..recipe import split_model_file

ENTRY_POINT_GROUP = "cifarlab.models"


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


# ---------------------------------------------------------------------------------------------
# Networks from other packages (entry points) and from the user's own files


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _load_entry_point(name: str, ep=None) -> bool:
    """Register the entry point `name` (`ep`, else looked up), if a package declares one;
    False if none does."""
    ep = ep or _entry_points().get(name)
    if ep is None:
        return False
    try:
        builder = ep.load()
    except Exception as e:
        raise CifarlabError(f"model '{name}' (entry point {ep.value}): loading it failed: "
                            f"{type(e).__name__}: {e}") from None
    dist = getattr(ep, "dist", None)
    register_model(name, provenance=f"entry point {ep.value}"
                   + (f" (package {dist.name})" if dist is not None else ""))(builder)
    return True


def load_entry_points() -> list[str]:
    """Register every entry-point network; one line per one that fails to load."""
    problems = []
    for name, ep in _entry_points().items():
        if name not in REGISTRY:
            try:
                _load_entry_point(name, ep)
            except CifarlabError as e:
                problems.append(str(e))
    return problems


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_USER_MODULES: dict[tuple[str, str], object] = {}  # (file, sha256) -> module


def _import_file(path: Path, name: str):
    """The user's file as a module (once per content); its folder is importable meanwhile,
    so it may import its neighbours."""
    if not path.is_file():
        raise CifarlabError(f"model '{name}': no such file {path}")
    key = (str(path), file_sha256(path))
    if key not in _USER_MODULES:
        mod_name = f"cifarlab_user_{path.stem}_{key[1][:12]}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise CifarlabError(f"model '{name}': {path} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module  # dataclasses, pickling and forked workers find it
        sys.path.insert(0, str(path.parent))
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(mod_name, None)
            where = f" (line {e.lineno})" if isinstance(e, SyntaxError) else ""
            raise CifarlabError(f"model '{name}': importing {path} failed{where}: "
                                f"{type(e).__name__}: {e}") from None
        finally:
            sys.path.remove(str(path.parent))
        _USER_MODULES[key] = module
    return _USER_MODULES[key]


def _networks_in(module) -> list[str]:
    """Names of the nn.Module classes and the functions a module defines itself."""
    return sorted(n for n, obj in vars(module).items()
                  if getattr(obj, "__module__", None) == module.__name__
                  and (inspect.isfunction(obj)
                       or (inspect.isclass(obj) and issubclass(obj, nn.Module))))


def file_builder(name: str, ref: tuple[str, str]) -> Callable[..., nn.Module]:
    """The class or function NAME of `FILE.py:NAME` (`ref`: its (file, name))."""
    path, attr = ref
    module = _import_file(Path(path).resolve(), name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            found = ", ".join(_networks_in(module)) or "none"
            raise CifarlabError(f"model '{name}': {path} defines no '{attr}' (networks and "
                                f"functions there: {found})")
    if not callable(obj):
        raise CifarlabError(f"model '{name}': '{attr}' is not a class or function")
    return obj


def model_source(name: str) -> dict | None:
    """For `FILE.py:NAME`: the file (absolute) and its sha256, recorded with every run;
    None for a built-in or entry-point network."""
    spec = split_model_file(name)
    if spec is None:
        return None
    path = Path(spec[0]).resolve()
    if not path.is_file():
        raise CifarlabError(f"model '{name}': no such file {path}")
    return {"file": str(path), "sha256": file_sha256(path)}


def builder_of(name: str, ref: tuple[str, str] | None) -> Callable[..., nn.Module]:
    """The builder of a network; `ref`: split_model_file(name) (None: not a user file)."""
    if ref is not None:
        return file_builder(name, ref)
    if name not in REGISTRY and not _load_entry_point(name):
        known = ", ".join(sorted(REGISTRY))
        raise CifarlabError(f"unknown model '{name}' (known: {known}; or FILE.py:NAME for "
                            "a network in your own file)")
    return REGISTRY[name].builder


def create_model(name: str, **kwargs) -> nn.Module:
    ref = split_model_file(name)
    builder = builder_of(name, ref)
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # a builtin or C callable: let the call check
        params = None
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        for key in kwargs:
            if key not in params:
                raise CifarlabError(f"model '{name}' has no argument '{key}' "
                                    f"(model_args.{key})")
    if ref is None:
        model = builder(**kwargs)
    else:  # the user's code: any error it raises is one line, not a traceback
        try:
            model = builder(**kwargs)
        except Exception as e:
            raise CifarlabError(f"model '{name}': building it failed: "
                                f"{type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise CifarlabError(f"model '{name}': returned {type(model).__name__}, not an "
                            "nn.Module")
    return model
