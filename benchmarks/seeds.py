"""Run seed recipes fully on the shared data; record each in benchmarks/results/seeds.json.

    .venv/bin/python -m benchmarks.seeds seed003-net1 seed000-m3 ... [--max-minutes M]
    .venv/bin/python -m benchmarks.seeds --resume runs/seed002 --max-minutes 60

A run cut short by --max-minutes is recorded with the epochs done (epochs < epochs_planned),
its accuracy so far and seconds per epoch; --resume continues it and replaces its row. Rows of
other runs of the same recipe (an earlier setup, say) stay.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import cifarlab
from cifarlab.errors import CifarlabError

from .common import (
    RESULTS,
    add_data_dir,
    add_recipe_flags,
    arg_parser,
    provenance,
    write_result,
)

# the `cifarlab train` flags a seed run may take (recipe keys: declared in recipe.SETTINGS)
RECIPE_FLAGS = ("train.target", "data.val_split", "train.processes")


def record(m: dict, prov: dict) -> dict:
    """A seeds.json row: the final test accuracy is the headline; a best epoch is labelled by
    the split it was chosen on; every leg that trained the run (legs.json) comes along."""
    return {
        "recipe": m["recipe"], "test_acc": m["test_acc"],
        "val_acc": m.get("val_acc"), "val_images": m.get("val_images", 0),
        "selection": m.get("selection", "test"), "best_epoch": m["best_epoch"],
        "best_acc": m.get("best_val_acc", m.get("best_test_acc")),
        "stopped_by": m.get("stopped_by"),
        "epochs": m["epochs"], "epochs_planned": m["epochs_planned"],
        "target_epoch": m["target_epoch"], "train_seconds": m["train_seconds"],
        "seconds_per_epoch": m["train_seconds"] / max(1, m["epochs"]),
        "images_per_second": m["images_per_second"], "params": m["params"],
        "macs": m["macs"], "receptive_field": m["receptive_field"], "run_dir": m["run_dir"],
        **prov,
        "date_started": m["legs"][0]["started"] if m.get("legs") else prov["date"],
        "legs": m.get("legs", []),
    }


def save(rec: dict) -> None:
    path = RESULTS / "seeds.json"
    with open(RESULTS / ".seeds.lock", "w") as lock:  # runs in parallel may end together
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = json.loads(path.read_text()) if path.exists() else []
        # one row per run: a resumed run replaces its own row, a new run of a recipe adds one
        runs = [r for r in runs if r["run_dir"] != rec["run_dir"]] + [rec]
        runs.sort(key=lambda r: (r["recipe"], r["date"]))
        print(write_result("seeds.json", runs))


def main() -> None:
    ap = arg_parser("seeds", __doc__)
    ap.add_argument("recipes", nargs="*")
    ap.add_argument("--resume", help="continue this run directory")
    add_data_dir(ap, " (with --resume: the run's)")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--max-minutes", type=float, help="stop (resumably) after this much "
                    "training time; --resume continues later")
    add_recipe_flags(ap, RECIPE_FLAGS)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    a = ap.parse_args()
    try:
        run(a)
    except CifarlabError as e:  # a bad path or option: one line, not a traceback
        raise SystemExit(f"benchmarks.seeds: {e}") from None


def run(a) -> None:
    prov = provenance()
    data_dir = a.data_dir
    config = Path(a.resume or "") / "config.json"
    if a.resume and data_dir is None and config.is_file():  # the data the run started with
        data_dir = json.loads(config.read_text()).get("data")
    data = cifarlab.load_data(data_dir)
    limit = a.max_minutes * 60 if a.max_minutes else None
    if a.resume:
        save(record(cifarlab.train(resume=a.resume, data=data, progress=False,
                                   max_seconds=limit, device=a.device), prov))
    flags = {k: v for k, v in vars(a).items() if k in RECIPE_FLAGS and v}
    for name in a.recipes:
        m = cifarlab.train(name, data=data, runs_dir=a.runs_dir, progress=False,
                           max_seconds=limit, device=a.device, **flags)
        save(record(m, prov))


if __name__ == "__main__":
    main()
