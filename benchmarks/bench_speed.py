"""Time to accuracy (issue 5): run speed recipes with several seeds; record speed.json.

    .venv/bin/python benchmarks/bench_speed.py fast-50k fast-seed001 --seeds 0 1 2

Each run's `seconds` is the wall time of the whole `cifarlab.train` call with the data already
in memory: model build, every epoch, evaluation with TTA and checkpoint writes included (per-epoch
plots off, as `--no-plots` does). Runs replace earlier ones with the same recipe and seed; the
summary (mean/worst accuracy, median seconds, goals met) is recomputed from all recorded runs.
Run it on an otherwise idle machine: other work on the same cores inflates the seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SPEED_GOALS, merge_speed, provenance  # noqa: E402

import cifarlab  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recipes", nargs="+", help=f"e.g. {' '.join(SPEED_GOALS)}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-dir", default=None, help="default: $CIFAR10_DATA, then ./data")
    ap.add_argument("--runs-dir", default=None, help="keep the run directories here")
    a = ap.parse_args()
    prov = provenance()
    data = cifarlab.load_data(a.data_dir)
    runs_dir = a.runs_dir or tempfile.mkdtemp(prefix="cifarlab-speed-")
    for name in a.recipes:
        for seed in a.seeds:
            t0 = time.perf_counter()
            m = cifarlab.train(name, data=data, runs_dir=runs_dir, name=f"{name}-seed{seed}",
                               seed=seed, progress=False, plots=False, log=lambda s: None)
            seconds = time.perf_counter() - t0
            goal = SPEED_GOALS.get(name, {})
            print(f"{name} seed {seed}: test acc {m['test_acc']:.4f} in {seconds:.1f} s "
                  f"({m['epochs']} epochs; target {goal.get('acc', '-')}, "
                  f"required <= {goal.get('required_s', '-')} s)", flush=True)
            run = {"recipe": name, "seed": seed, "test_acc": m["test_acc"],
                   "seconds": seconds, "train_seconds": m["train_seconds"],
                   "epochs": m["epochs"], "params": m["params"], "macs": m["macs"],
                   "receptive_field": m["receptive_field"],
                   "images_per_second": m["images_per_second"], **prov}
            print(merge_speed(runs=[run]))


if __name__ == "__main__":
    main()
