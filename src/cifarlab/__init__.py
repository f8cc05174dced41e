"""cifarlab: design, train and compare CIFAR-10 CNNs fast on the machine you have.

`import cifarlab` is light: the API functions (and torch) load on first use."""

from .version import __version__

__all__ = ["train", "evaluate", "predict", "load_data", "robustness", "__version__"]


def __getattr__(name: str):
    if name in ("train", "evaluate", "predict", "load_data", "robustness"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'cifarlab' has no attribute {name!r}")
