"""cifarlab: design, train and compare CIFAR-10 CNNs fast on the machine you have.

`import cifarlab` is light: the API functions (and torch) load on first use."""

from .version import __version__

_API = ("train", "evaluate", "predict", "load_data", "load_model", "check", "summary",
        "robustness")
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'cifarlab' has no attribute {name!r}")
