"""Shared bits for benchmark scripts: provenance of every recorded number."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def commit() -> str:
    """HEAD (+ "-dirty" if src/ has changes); CIFARLAB_COMMIT names it where the checkout is a
    copy whose .git is not the one the code came from (a lent GPU machine)."""
    if os.environ.get("CIFARLAB_COMMIT"):
        return os.environ["CIFARLAB_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, cwd=RESULTS.parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, cwd=RESULTS.parent).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, {threads} threads"


def provenance() -> dict:
    return {
        "commit": commit(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
    }


def write_result(name: str, obj) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)
    return path


# Issue 5's time-to-accuracy goals: accuracy to reach, required and goal seconds (wall time
# from the first training step to the final test accuracy, evaluation and TTA included), and
# a goal accuracy where the recipe's aim is accuracy within a fixed time.
SPEED_GOALS = {
    "fast-50k": {"acc": 0.80, "required_s": 360, "goal_s": 120},
    "fast-seed001": {"acc": 0.85, "required_s": 480, "goal_s": 180},
    "best-seed001": {"acc": 0.87, "goal_acc": 0.89, "required_s": 1800, "goal_s": 1800},
    "fast-top": {"acc": 0.9069, "required_s": 1026, "goal_s": 615},
}


def merge_speed(runs: list[dict] | None = None, throughput: dict | None = None) -> Path:
    """Fold new runs (replacing any with the same recipe and seed) and/or a new throughput
    measurement into speed.json, and recompute its per-recipe summary."""
    import statistics

    path = RESULTS / "speed.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    new_keys = {(r["recipe"], r["seed"]) for r in runs or []}
    all_runs = [r for r in old.get("runs", []) if (r["recipe"], r["seed"]) not in new_keys]
    all_runs = sorted(all_runs + list(runs or []), key=lambda r: (r["recipe"], r["seed"]))
    summary = {}
    for name in sorted({r["recipe"] for r in all_runs}):
        rs = [r for r in all_runs if r["recipe"] == name]
        accs, secs = [r["test_acc"] for r in rs], [r["seconds"] for r in rs]
        s = {"mean_acc": statistics.fmean(accs), "worst_acc": min(accs),
             "median_seconds": statistics.median(secs), "n_runs": len(rs),
             "params": rs[-1]["params"]}
        goal = SPEED_GOALS.get(name)
        if goal:
            s["target_acc"] = goal["acc"]
            s["required_seconds"] = goal["required_s"]
            s["goal_seconds"] = goal["goal_s"]
            s["goal_acc"] = goal.get("goal_acc", goal["acc"])
            s["required_met"] = all(r["test_acc"] >= goal["acc"]
                                    and r["seconds"] <= goal["required_s"] for r in rs)
            s["goal_met"] = all(r["test_acc"] >= goal.get("goal_acc", goal["acc"])
                                and r["seconds"] <= goal["goal_s"] for r in rs)
        summary[name] = s
    if throughput is None:  # keep the last side-by-side measurement (bench_throughput.py)
        throughput = old.get("throughput")
        if throughput is None and (RESULTS / "throughput.json").exists():
            throughput = json.loads((RESULTS / "throughput.json").read_text())
    out = {"runs": all_runs, "summary": summary, "throughput": throughput}
    return write_result("speed.json", out)
