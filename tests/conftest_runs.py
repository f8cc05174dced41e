"""Run directories for the plot and report tests: synthetic ones written by hand in the
engine's format (and broken variants), and real ones the engine trains in seconds
(`train_engine_runs`, behind conftest.py's session fixture `engine_runs`).

Imported by test_plots.py, test_report.py and conftest.py (not a pytest conftest: plain
helpers).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck"]
FIELDS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]


def history_rows(epochs: int, top: float = 0.9, speed: float = 0.35) -> list[dict]:
    """A plausible learning curve: accuracy rises towards `top`, loss falls."""
    rows = []
    for e in range(1, epochs + 1):
        acc = top * (1 - math.exp(-speed * e)) + 0.1 * math.exp(-speed * e)
        rows.append({"epoch": e, "lr": 0.2 * min(e / 3, 1) * (1 - (e - 1) / (epochs + 1)),
                     "train_loss": 2.3 * math.exp(-0.25 * e) + 0.2,
                     "train_acc": min(acc + 0.03, 1.0),
                     "test_loss": 2.3 * math.exp(-0.22 * e) + 0.3,
                     "test_acc": acc, "seconds": 12.5})
    return rows


def write_history(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def confusion(per_class: list[float], n_per_class: int = 100) -> list[list[int]]:
    cm = []
    for i, acc in enumerate(per_class):
        right = round(acc * n_per_class)
        row = [0] * len(per_class)
        row[i] = right
        row[(i + 3) % len(per_class)] += n_per_class - right  # the errors go to one class
        cm.append(row)
    return cm


def write_run(root: Path, name: str, *, epochs: int = 6, planned: int | None = None,
              top: float = 0.9, model: str = "seed001", model_args: dict | None = None,
              finished: bool = True, history: bool = True, config: bool = True,
              metrics_extra: dict | None = None) -> Path:
    """root/name as `cifarlab train` leaves it (checkpoints left out)."""
    d = root / name
    d.mkdir(parents=True)
    planned = planned or epochs
    recipe = {"name": f"recipe-{name[:20]}", "model": model, "model_args": model_args or {},
              "train": {"epochs": planned, "batch_size": 256, "seed": 0, "target": 0.0}}
    if config:
        (d / "config.json").write_text(json.dumps(
            {"recipe": recipe, "environment": {"cifarlab": "0.1.0"}, "data": "data",
             "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}, indent=2))
    rows = history_rows(epochs, top)
    if history:
        write_history(d / "history.csv", rows)
    if finished:
        per_class = [max(0.0, min(1.0, top - 0.2 + 0.04 * i)) for i in range(10)]
        tests = [(r["test_acc"], r["epoch"]) for r in rows]
        best, best_ep = max(tests)
        m = {"recipe": recipe["name"], "model": model, "test_acc": rows[-1]["test_acc"],
             "test_loss": rows[-1]["test_loss"], "best_test_acc": best, "best_epoch": best_ep,
             "target": None, "target_epoch": None, "per_class_acc": per_class,
             "confusion": confusion(per_class), "classes": CLASSES, "params": 92394,
             "train_seconds": 12.5 * epochs, "images_per_second": 2050.5, "epochs": epochs,
             "epochs_planned": planned, "train_images": 50000, "test_images": 10000}
        m.update(metrics_extra or {})
        (d / "metrics.json").write_text(json.dumps(m, indent=2))
    return d


def tear_history(run: Path) -> None:
    """Cut history.csv in the middle of its last line (a write interrupted by a crash)."""
    text = (run / "history.csv").read_text()
    (run / "history.csv").write_text(text[: text.rstrip("\n").rfind("\n") + 12])


def train_engine_runs(data_dir: Path, root: Path) -> dict[str, Path]:
    """Two tiny fast-50k runs the engine really trains and writes (a few seconds each):
    "plain" reads the test set every epoch; "val" holds out a validation split, chooses on it
    every epoch and reads the test set once, at the end."""
    import cifarlab

    common = dict(data_dir=data_dir, runs_dir=root, progress=False, log=lambda s: None,
                  plots=False, procs=1, epochs=2, batch_size=100, train_subset=400,
                  **{"train.eval_every": 1})
    plain = cifarlab.train("fast-50k", name="plain", **common)
    val = cifarlab.train("fast-50k", name="val", val_split=100, **common)
    return {"plain": Path(plain["run_dir"]), "val": Path(val["run_dir"])}


def has_line(fig, xs, ys) -> bool:
    """Some line of the matplotlib figure `fig` goes through exactly these points."""
    import numpy as np

    return any(list(line.get_xdata()) == list(xs)
               and np.allclose(np.asarray(line.get_ydata(), float), ys, rtol=1e-9)
               for ax in fig.axes for line in ax.get_lines())
