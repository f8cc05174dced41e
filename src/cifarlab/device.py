"""The device a run trains on, its precision, and what is recorded about the environment."""

from __future__ import annotations

import platform
import sys
from contextlib import nullcontext

import torch

from .errors import CifarlabError
from .version import __version__


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' (a CUDA GPU when torch sees one, else the CPU), 'cpu', 'cuda' or 'cuda:N'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise CifarlabError(f"device '{name}': expected auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CifarlabError(f"device '{name}': no CUDA GPU is available to this torch "
                                f"({torch.__version__})")
        if (dev.index or 0) >= torch.cuda.device_count():
            raise CifarlabError(f"device '{name}': this machine has "
                                f"{torch.cuda.device_count()} CUDA GPU(s)")
    return dev


def device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def environment(dev: torch.device) -> dict:
    return {
        "cifarlab": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": torch.get_num_threads(),
        "device": device_name(dev),
    }


def autocast(precision: str, device_type: str = "cpu"):
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return nullcontext()
