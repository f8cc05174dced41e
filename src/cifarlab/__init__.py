"""cifarlab: design, train and compare CIFAR-10 CNNs fast on the machine you have."""

__version__ = "0.1.0"

from .api import evaluate, load_data, predict, train  # noqa: E402

__all__ = ["train", "evaluate", "predict", "load_data", "__version__"]
