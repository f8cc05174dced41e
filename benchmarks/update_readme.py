"""Rewrite the README's results section from benchmarks/results/*.json (never by hand).

    .venv/bin/python benchmarks/update_readme.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"

# What each seed write-up claims (test accuracy, fraction); None where it gives no number.
SEED_CLAIMS = {
    "seed000-m1": None, "seed000-m2": 0.74, "seed000-m3": 0.80096, "seed001": 0.8513,
    "seed001-dilated": 0.85, "seed002": 0.92, "seed003-net1": 0.53, "seed003-net2": 0.47,
    "seed003-net3": 0.46, "seed003-net4": 0.58, "seed003-net5": 0.61, "seed003-net6": 0.69,
    "seed003-net7": 0.72, "seed003-net8": 0.71, "seed004": 0.835,
}


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def default_section() -> list[str]:
    p = RESULTS / "default.json"
    if not p.exists():
        return ["No default benchmark recorded yet (`make bench`)."]
    r = json.loads(p.read_text())
    return [
        "| recipe | test accuracy | best | epochs | train time | images/s | machine | commit |",
        "|---|---|---|---|---|---|---|---|",
        f"| `{r['recipe']}` | **{pct(r['test_acc'])}** | {pct(r['best_test_acc'])} | "
        f"{r['epochs']} | {r['train_seconds'] / 60:.1f} min | {r['images_per_second']:.0f} | "
        f"{r['machine']} | `{r['commit'][:12]}` |",
        "",
        f"Command: `{r['command']}` on {r['date']} (from `benchmarks/results/default.json`).",
    ]


def where(machine: str) -> str:
    """'NVIDIA H200' for a GPU run, else 'CPU, 2 cores' (from provenance's machine string)."""
    gpu = re.search(r"NVIDIA [^,]+", machine)
    cores = re.search(r"(\d+) cores", machine)
    return gpu.group(0) if gpu else f"CPU, {cores.group(1) if cores else '?'} cores"


def seeds_section() -> list[str]:
    p = RESULTS / "seeds.json"
    if not p.exists():
        return ["No seed recipe runs recorded yet (`benchmarks/bench_seeds.py`)."]
    runs = json.loads(p.read_text())
    out = ["| recipe | seed's claim | ours (final) | best | epochs | params | RF | time | "
           "machine | commit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if r.get("target_epoch"):
            partial = " (target reached)"
        elif r.get("epochs", 0) < r.get("epochs_planned", 0):
            partial = " (partial)"
        else:
            partial = ""
        out.append(
            f"| `{r['recipe']}` | {pct(SEED_CLAIMS.get(r['recipe']))} | {pct(r['test_acc'])}"
            f"{partial} | {pct(r['best_test_acc'])} | {r['epochs']} | {r['params']:,} | "
            f"{r['receptive_field']} | {r['train_seconds'] / 60:.1f} min | "
            f"{where(r['machine'])} | `{r['commit'][:8]}` |")
    out.append("")
    out.append("From `benchmarks/results/seeds.json` (one row per run; a recipe run again with "
               "other choices has a row per setup, told apart by commit); each row also records "
               "its command, date and machine.")
    return out


def speed_section() -> list[str]:
    out = []
    p = RESULTS / "throughput.json"
    if p.exists():
        r = json.loads(p.read_text())
        out += [
            "| seed 001 network, batch " + str(r["batch_size"]) + " | images/s |",
            "|---|---|",
            f"| conventional: per-image Dataset + DataLoader(num_workers=2), fp32, NCHW | "
            f"{r['baseline_img_s']:.0f} |",
            f"| cifarlab engine, same network (dropout 0.1) | {r['engine_img_s']:.0f} "
            f"(**{r['ratio']:.2f}×**) |",
            f"| cifarlab engine, default recipe as shipped (dropout 0) | "
            f"{r['engine_default_recipe_img_s']:.0f} |",
            "",
            f"Machine roof: {r['roof_gflops']:.0f} GFLOP/s bf16 matmul "
            f"({r['roof_gflops_fp32']:.0f} fp32); the engine reaches {r['engine_gflops']:.0f} "
            f"GFLOP/s of model compute ({100 * r['engine_roof_fraction']:.0f}% of the bf16 roof). "
            "From `benchmarks/results/throughput.json`.",
            "",
        ]
    p = RESULTS / "precision.json"
    if p.exists():
        r = json.loads(p.read_text())
        out += ["| dropout | precision | memory format | images/s |", "|---|---|---|---|"]
        for row in r["results"]:
            fmt = "channels_last" if row["channels_last"] else "NCHW"
            out.append(f"| {row['dropout']} | {row['precision']} | {fmt} | "
                       f"{row['images_per_second']:.0f} |")
        out += ["", "Training step of the seed 001 network, batch 256, from "
                "`benchmarks/results/precision.json`."]
    return out or ["No speed benchmark recorded yet."]


def time_to_accuracy_section() -> list[str]:
    p = RESULTS / "speed.json"
    runs = json.loads(p.read_text()).get("summary", {}) if p.exists() else {}
    if not runs:
        return ["No time-to-accuracy runs recorded yet (`benchmarks/bench_speed.py`)."]
    out = ["| target | recipe | params | median time | mean acc | worst acc | runs | "
           "required / goal |", "|---|---|---|---|---|---|---|---|"]
    for name, s in runs.items():
        goal = "–"
        if "required_met" in s:
            goal_acc = s.get("goal_acc", s["target_acc"])
            goal_what = (f"≥ {pct(goal_acc)}" if goal_acc != s["target_acc"]
                         else f"≤ {s['goal_seconds']} s")
            goal = (f"{'met' if s['required_met'] else '**not met**'} (≤ "
                    f"{s['required_seconds']} s) / {'met' if s['goal_met'] else 'not met'} "
                    f"({goal_what})")
        out.append(f"| ≥ {pct(s.get('target_acc'))} | `{name}` | {s['params']:,} | "
                   f"{s['median_seconds']:.0f} s | {pct(s['mean_acc'])} | {pct(s['worst_acc'])}"
                   f" | {s['n_runs']} | {goal} |")
    out += ["", "Wall time of the whole `train` call, data in memory, final evaluation with "
            "test-time flip included; each run's seed, commit, command and machine are in "
            "`benchmarks/results/speed.json`."]
    return out


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    body = ["### Default recipe", "", *default_section(), "", "### Time to accuracy", "",
            *time_to_accuracy_section(), "", "### Throughput", "", *speed_section(), "",
            "### Seed recipes", "", *seeds_section()]
    new = f"{START}\n" + "\n".join(body) + f"\n{END}"
    text, n = re.subn(re.escape(START) + ".*?" + re.escape(END), lambda m: new, text,
                      flags=re.S)
    if n != 1:
        raise SystemExit(f"README.md: expected one {START} ... {END} section")
    readme.write_text(text)
    print("README.md results section updated")


if __name__ == "__main__":
    main()
