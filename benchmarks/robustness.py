"""Robustness of the shipped recipes under CIFAR-10-C-style corruptions (issue 31).

    .venv/bin/python -m benchmarks.robustness --data-dir ../shared/data \\
        --runs-dir /tmp/robruns --images 2000

One invocation trains each recipe once (seed 0, its own schedule, the full training set) and
scores the run with `cifarlab.robustness` (clean accuracy, mean corruption accuracy over the
15 corruptions x 5 severities, by severity, worst corruption). Each fast recipe is trained
twice, without and with the robustness option (`augmix`: `augment.augmix = 3`, AugMix with the
paper's settings, nothing tuned), in the same invocation. The full corrupted set's generation
time is measured once. Rows go to benchmarks/results/robustness.json, written after each row;
`--resume` keeps the finished rows (the same `--images` and seed) and does the rest. A row is
kept only while its recipe resolves as it did (`recipe_sha`, as benchmarks.speed checks it);
one whose recipe has changed since or is gone, or one of a recipe named with `--retrain` (rows
recorded before the fingerprint cannot show it), moves to `superseded_rows`, counted nowhere,
and is measured again when the invocation names its recipe. Nothing is chosen here: every
figure is a measurement of a recipe as shipped.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import cifarlab
from cifarlab.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from cifarlab.data import load_data
from cifarlab.errors import CifarlabError

from .common import (
    RESULTS,
    add_data_dir,
    arg_parser,
    provenance,
    recipe_sha,
    timed_train,
    write_json,
)

RECIPES = ["fast-50k", "fast-seed001", "default", "seed000-m1", "seed000-m3", "fast-top"]
WITH_OPTION = ["fast-50k", "fast-seed001", "fast-top"]  # also trained with the option
OPTIONS = {"none": {}, "augmix": {"augment.augmix": 3}}


def generation_seconds(images, seed: int = 0) -> dict:
    """Time to generate every corruption x severity of these images (nothing kept)."""
    t0 = time.perf_counter()
    for name in CORRUPTIONS:
        for s in SEVERITIES:
            for i in range(0, len(images), 1000):
                corrupt(images[i:i + 1000], name, s, seed=seed)
    seconds = time.perf_counter() - t0
    n = len(images) * len(CORRUPTIONS) * len(SEVERITIES)
    return {"images": n, "seconds": seconds, "images_per_second": n / seconds}


def row_for(recipe: str, option: str, data, runs_dir: str, images: int | None) -> dict:
    """Train the recipe (with the option) and measure it."""
    m, seconds = timed_train(recipe, data, runs_dir, f"{recipe}-{option}", OPTIONS[option])
    r = cifarlab.robustness(m["run_dir"], data=data, images=images, progress=False,
                            log=lambda s: None)
    sev = r["by_severity"]
    return {"recipe": recipe, "option": option, "clean_acc": r["clean_acc"], "mca": r["mca"],
            "relative": r["relative"], "by_severity": sev,
            "by_corruption": r["by_corruption"], "worst_corruption": r["worst_corruption"],
            "mca_falls_with_severity": all(a > b for a, b in zip(sev, sev[1:], strict=False)),
            "test_acc": m["test_acc"], "train_seconds": seconds, "epochs": m["epochs"],
            "params": m["params"], "images": r["images"], "subset": r["subset"],
            "scored_as": r["scored_as"], "run_dir": m["run_dir"],
            "recipe_sha": recipe_sha(recipe, OPTIONS[option]),
            "load_average": os.getloadavg(), **provenance()}


def drop_superseded(state: dict, retrain: list[str]) -> bool:
    """Rows of a recipe that resolves differently now, or no longer exists, (or is named in
    `retrain`) move to `superseded_rows`: they measured another recipe; this invocation
    measures them again if it names the recipe. Returns whether any row moved."""
    def now(r: dict) -> str | None:
        try:
            return recipe_sha(r["recipe"], OPTIONS[r["option"]])
        except CifarlabError:  # the recipe is gone
            return None

    keep = []
    for r in state["rows"]:
        recorded = r.get("recipe_sha")  # None: recorded before the fingerprint
        sha = now(r) if recorded else None
        changed = bool(recorded) and recorded != sha
        if changed or r["recipe"] in retrain:
            why = ("--retrain" if not changed else "the recipe is gone" if sha is None
                   else "the recipe has changed since")
            print(f"{r['recipe']} ({r['option']}): {why}; moved to superseded_rows", flush=True)
            state.setdefault("superseded_rows", []).append(r)
        else:
            keep.append(r)
    moved = len(keep) < len(state["rows"])
    state["rows"] = keep
    return moved


def main(argv: list[str] | None = None) -> None:
    ap = arg_parser("robustness", __doc__)
    ap.add_argument("recipes", nargs="*", default=RECIPES, help=f"default: {' '.join(RECIPES)}")
    ap.add_argument("--with-option", nargs="*", default=WITH_OPTION, metavar="RECIPE",
                    help=f"also trained with AugMix (default: {' '.join(WITH_OPTION)})")
    ap.add_argument("--images", type=int, default=None,
                    help="score a stratified subset of this many test images (default all)")
    add_data_dir(ap)
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--out", default=str(RESULTS / "robustness.json"))
    ap.add_argument("--resume", action="store_true", help="keep the rows already in --out")
    ap.add_argument("--retrain", nargs="+", default=[], metavar="RECIPE",
                    help="with --resume: measure these recipes' rows again")
    a = ap.parse_args(argv)
    path = Path(a.out)
    state = json.loads(path.read_text()) if a.resume and path.exists() else {}
    if state and state.get("images") != a.images:
        raise SystemExit(f"--resume: {path} was measured on {state.get('images')} images")
    try:
        data = load_data(a.data_dir)
    except CifarlabError as e:
        raise SystemExit(str(e)) from None
    state.setdefault("images", a.images)
    state.setdefault("rows", [])
    state.setdefault("invocation", provenance())
    if drop_superseded(state, a.retrain):
        write_json(path, state)
    if "generation" not in state:
        print("generating the full corrupted test set once (timed, nothing kept) ...", flush=True)
        state["generation"] = {**generation_seconds(data.test.images), **provenance()}
        write_json(path, state)
        g = state["generation"]
        print(f"{g['images']:,} images in {g['seconds']:.0f} s", flush=True)
    runs_dir = a.runs_dir or tempfile.mkdtemp(prefix="cifarlab-robust-")
    todo = []  # each recipe, then at once the same with the option
    for r in dict.fromkeys(a.recipes + a.with_option):
        todo += [(r, "none")] * (r in a.recipes) + [(r, "augmix")] * (r in a.with_option)
    for recipe, option in todo:
        if any(r["recipe"] == recipe and r["option"] == option for r in state["rows"]):
            print(f"{recipe} ({option}): recorded already", flush=True)
            continue
        row = row_for(recipe, option, data, runs_dir, a.images)
        state["rows"].append(row)
        write_json(path, state)
        print(f"{recipe} ({option}): clean {row['clean_acc']:.4f}, mCA {row['mca']:.4f} "
              f"({row['relative']:.3f} of clean), worst {row['worst_corruption']}, trained in "
              f"{row['train_seconds']:.0f} s", flush=True)
    print(path)


if __name__ == "__main__":
    main()
