"""Train the default recipe fully on the shared data; write benchmarks/results/default.json.

    .venv/bin/python benchmarks/bench_default.py [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance, write_result  # noqa: E402

import cifarlab  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--runs-dir", default=None, help="keep the run here (default: a temp dir)")
    a = ap.parse_args()
    prov = provenance()  # before training: the commit that was actually run
    data = cifarlab.load_data(a.data_dir)
    runs = a.runs_dir or tempfile.mkdtemp(prefix="cifarlab-bench-")
    m = cifarlab.train(a.recipe, data=data, runs_dir=runs, progress=False)
    out = {
        **prov,
        "recipe": a.recipe,
        "test_acc": m["test_acc"],
        "best_test_acc": m["best_test_acc"],
        "train_seconds": m["train_seconds"],
        "images_per_second": m["images_per_second"],
        "epochs": m["epochs"],
        "params": m["params"],
        "run_dir": m["run_dir"],
    }
    print(write_result(f"{a.recipe}.json", out))


if __name__ == "__main__":
    main()
