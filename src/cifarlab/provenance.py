"""Where a number came from: commit, machine, date and command (run legs, benchmarks)."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent


def commit() -> str:
    """The checkout's HEAD (+ "-dirty" if src/ has changes). CIFARLAB_COMMIT names it where
    the checkout is a copy whose .git is not the one the code came from (a lent GPU machine);
    "unknown" for an installed copy without git."""
    if os.environ.get("CIFARLAB_COMMIT"):
        return os.environ["CIFARLAB_COMMIT"]
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=True, cwd=SOURCE).stdout.strip()
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, cwd=top).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, cwd=top).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpuinfo(field: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu() -> dict:
    """The CPU model and the flags that decide which bf16 kernels oneDNN runs: AMX tiles
    (Intel Sapphire Rapids and later) and AVX-512 bf16."""
    flags = set((_cpuinfo("flags") or "").split())
    return {"model": _cpuinfo("model name") or platform.processor() or platform.machine(),
            "amx_bf16": "amx_bf16" in flags, "amx_tile": "amx_tile" in flags,
            "avx512_bf16": "avx512_bf16" in flags}


def machine() -> str:
    """CPU model, cores, GPU if any, torch version and threads."""
    import torch

    cpu = _cpuinfo("model name") or platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def mask_secrets(text: str) -> str:
    """`text` with the password of every URL in it (scheme://user:PASSWORD@host) shown as
    ***: what cifarlab writes or prints never holds a credential."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def command() -> str:
    """This process's command line: `cifarlab train ...`, `python script.py ...` or
    `python -m package.module ...`, with any password in a URL masked (`mask_secrets`)."""
    argv = sys.argv or [""]
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name and argv[0].endswith(".py"):  # python -m NAME
        module = spec.name.removesuffix(".__main__")
        return mask_secrets(" ".join([Path(sys.executable).name, "-m", module] + argv[1:]))
    if argv[0].endswith(".py"):
        return mask_secrets(" ".join([Path(sys.executable).name] + argv))
    return mask_secrets(" ".join([Path(argv[0]).name or "python"] + argv[1:]))


def provenance() -> dict:
    return {"commit": commit(), "date": now(), "machine": machine(), "command": command()}
