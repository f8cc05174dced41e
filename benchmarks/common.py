"""Shared bits of the benchmarks: provenance of every recorded number, the one results writer,
the one timed training call, command-line pieces and child processes."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cifarlab.provenance import commit, machine, provenance  # noqa: F401  (re-exported)
from cifarlab.recipe import SETTINGS
from cifarlab.rundir import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def boot_id() -> str | None:
    """This boot of this machine (Linux): two sessions on the same CPU model differ in it."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


# ------------------------------------------------------------------------------ results

def write_json(path: Path, obj, indent: int = 2) -> Path:
    """Write a results file atomically (cifarlab.rundir's writer: a reader never sees half of
    one, and a kill leaves the previous file)."""
    atomic_write_text(Path(path), json.dumps(obj, indent=indent, default=str) + "\n")
    return path


def write_result(name: str, obj) -> Path:
    return write_json(RESULTS / name, obj)


def cpu_of(record: dict) -> str:
    """The CPU model a record was measured on (older records: from the machine string)."""
    return (record.get("cpu") or {}).get("model") or record["machine"].split(",")[0]


def merge_speed(throughput: dict) -> Path:
    """Put a new side-by-side throughput measurement (benchmarks.throughput) into speed.json,
    keeping everything else there (runs, anchor, summary: benchmarks.speed's)."""
    path = RESULTS / "speed.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    return write_result("speed.json", {**old, "throughput": throughput})


# ------------------------------------------------------------------------------ training

def timed_train(recipe, data, runs_dir, name: str | None, overrides: dict | None = None,
                **options) -> tuple[dict, float]:
    """One quiet training run (no progress bar, plots or log lines) on data already in memory:
    (its metrics, wall seconds of the whole `cifarlab.train` call: model build, every epoch,
    evaluation and checkpoint writes). `options` are train's keywords (seed, device,
    max_seconds, ...), `overrides` recipe keys (`train.epochs`, ...)."""
    import cifarlab

    t0 = time.perf_counter()
    m = cifarlab.train(recipe, data=data, runs_dir=runs_dir, name=name, progress=False,
                       plots=False, log=lambda s: None, **options, **(overrides or {}))
    return m, time.perf_counter() - t0


# ------------------------------------------------------------------------------ command line

DATA_DIR_HELP = ("folder holding cifar-10-batches-py (or that folder itself); default: "
                 "$CIFAR10_DATA, then ./data")


def arg_parser(name: str, doc: str | None, **kw) -> argparse.ArgumentParser:
    """The parser of `python -m benchmarks.NAME`, described by the first line of its docstring."""
    return argparse.ArgumentParser(prog=f"python -m benchmarks.{name}",
                                   description=(doc or "").split("\n")[0], **kw)


def add_data_dir(ap: argparse.ArgumentParser, note: str = "") -> None:
    """--data-dir, as every benchmark and `cifarlab train` take it (default None: cifarlab
    looks in $CIFAR10_DATA, then ./data)."""
    ap.add_argument("--data-dir", default=None, help=DATA_DIR_HELP + note)


def add_recipe_flags(ap: argparse.ArgumentParser, keys: tuple[str, ...]) -> None:
    """The `cifarlab train` flags of these recipe keys, as recipe.SETTINGS declares them
    (stored under the key: `vars(args)["train.target"]`)."""
    settings = {s.key: s for s in SETTINGS}
    for key in keys:
        s = settings[key]
        if s.const is not None:
            ap.add_argument(s.flag, action="store_const", const=s.const, dest=key, help=s.help)
            continue
        kind = type(s.default)
        ap.add_argument(s.flag, dest=key, type=kind if kind in (int, float) else str,
                        metavar=s.flag.lstrip("-").upper().replace("-", "_"),
                        help=s.help + (f" ({' | '.join(s.choices)})" if s.choices else ""))


def parse_sets(items: list[str], what: str = "") -> dict:
    """KEY=VALUE recipe overrides (`--set`), or exit with the one-line reason (after `what`)."""
    from cifarlab.errors import CifarlabError
    from cifarlab.recipe import parse_override

    try:
        return dict(parse_override(item) for item in items)
    except CifarlabError as e:
        raise SystemExit(f"{what}: {e}" if what else str(e)) from None


NOT_TRAINING = ("description",)  # resolved recipe keys that do not change how it trains


def recipe_sha(recipe: str, overrides: dict) -> str:
    """A fingerprint of the recipe as it resolves now (with the invocation's overrides),
    its wording (NOT_TRAINING) left out: a recorded measurement whose fingerprint differs
    measured another recipe."""
    from cifarlab.recipe import resolve

    cfg = {k: v for k, v in resolve(recipe, overrides).items() if k not in NOT_TRAINING}
    text = json.dumps(cfg, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ child processes

def module_command(module: str, *args: str) -> list[str]:
    """`python -m MODULE ARGS`: a module of this package run in a fresh process."""
    return [sys.executable, "-m", module, *args]


def module_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with the repository root first on PYTHONPATH, so that
    a child started with `python -m benchmarks.NAME` finds the package from any folder."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def child_result(out: subprocess.CompletedProcess, what: str) -> dict:
    """The JSON object a child measurement printed last, or exit with its last error line."""
    if out.returncode:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"{what}: the measuring process failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ machine roof

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
