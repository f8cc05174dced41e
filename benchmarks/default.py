"""A newcomer's first command, timed as they run it; writes benchmarks/results/default.json.

    .venv/bin/python -m benchmarks.default [--data-dir ../shared/data]

Runs `cifarlab train` (the default recipe, what `make run` runs) as a separate process with
its output redirected, and records the wall time of the whole command (start-up, data
loading, training, final evaluation, plots) beside the run's own figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import add_data_dir, arg_parser, provenance, write_result


def main() -> None:
    ap = arg_parser("default", __doc__)
    add_data_dir(ap)
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--runs-dir", default=None, help="keep the run here (default: a temp dir)")
    a = ap.parse_args()
    prov = provenance()  # before training: the commit that was actually run
    runs = a.runs_dir or tempfile.mkdtemp(prefix="cifarlab-bench-")
    cmd = [str(Path(sys.executable).parent / "cifarlab"), "train", "--recipe", a.recipe,
           "--runs-dir", runs, "--name", a.recipe]
    if a.data_dir:
        cmd += ["--data-dir", a.data_dir]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr.strip()[-500:]}")
    m = json.loads((Path(runs) / a.recipe / "metrics.json").read_text())
    out = {
        **prov,
        "recipe": a.recipe,
        "user_command": "cifarlab train" + ("" if a.recipe == "default" else
                                           f" --recipe {a.recipe}"),
        "wall_seconds": wall,
        "test_acc": m["test_acc"],
        "selection": m["selection"],
        "train_seconds": m["train_seconds"],
        "images_per_second": m["images_per_second"],
        "epochs": m["epochs"],
        "params": m["params"],
        "log_lines": len(r.stdout.splitlines()),
        "log_bytes": len(r.stdout.encode()) + len(r.stderr.encode()),
        "last_line": r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "",
        "run_dir": str(Path(runs) / a.recipe),
    }
    print(write_result(f"{a.recipe}.json", out))


if __name__ == "__main__":
    main()
