"""Shared bits for benchmark scripts: provenance of every recorded number."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cifarlab.provenance import commit, machine, provenance  # noqa: F401  (re-exported)

RESULTS = Path(__file__).resolve().parent / "results"


def boot_id() -> str | None:
    """This boot of this machine (Linux): two sessions on the same CPU model differ in it."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def write_json(path: Path, obj, indent: int = 2) -> Path:
    """Write a results file atomically (a reader never sees half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent, default=str) + "\n")
    tmp.replace(path)
    return path


def write_result(name: str, obj) -> Path:
    return write_json(RESULTS / name, obj)


def parse_sets(items: list[str], what: str = "") -> dict:
    """KEY=VALUE recipe overrides (`--set`), or exit with the one-line reason (after `what`)."""
    from cifarlab.errors import CifarlabError
    from cifarlab.recipe import parse_override

    try:
        return dict(parse_override(item) for item in items)
    except CifarlabError as e:
        raise SystemExit(f"{what}: {e}" if what else str(e)) from None


def merge_speed(throughput: dict) -> Path:
    """Put a new side-by-side throughput measurement (bench_throughput.py) into speed.json,
    keeping everything else there (runs, anchor, summary: bench_speed.py's)."""
    path = RESULTS / "speed.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    return write_result("speed.json", {**old, "throughput": throughput})


def matmul_gflops(dtype, n: int = 2048, reps: int = 5, warmup: int = 2) -> float:
    """The machine's roof: best-of-`reps` GFLOP/s of an n x n matmul in `dtype`."""
    import torch

    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    best = float("inf")
    for i in range(warmup + reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        t = time.perf_counter() - t0
        if i >= warmup:
            best = min(best, t)
    return 2 * n ** 3 / best / 1e9


def model_gflops(macs: float, images_per_second: float) -> float:
    """Model compute of training in GFLOP/s: MACs per image x 2 FLOPs per MAC x 3 (forward and
    backward ~ 3x forward) x images per second."""
    return macs * 2 * 3 * images_per_second / 1e9
