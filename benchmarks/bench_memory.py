"""Page faults and kernel time of training, with and without `cifarlab.memory` (issue 17).

    .venv/bin/python benchmarks/bench_memory.py --data-dir ../shared/data
    -> benchmarks/results/memory.json

Each measurement is a fresh process (`python -c ...`) that trains one epoch of a recipe on
`--images` training images in one process with one thread, and reports what the kernel
counted for it between the start and the end of `cifarlab.train`: user and system CPU seconds,
minor page faults, peak resident memory, wall seconds and the training loop's images/s. The
two settings alternate (`CIFARLAB_MALLOC=system`: glibc's defaults; unset: cifarlab keeps
freed memory), `--repeats` times each; the medians are recorded. CPU seconds and page faults
are counts, so other work on the machine changes them little; wall seconds and images/s are
only comparable on an otherwise idle machine (the load average at the start is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance, write_result  # noqa: E402

CHILD = r"""
import json, resource, sys, tempfile, time
import cifarlab
data = cifarlab.load_data(sys.argv[1])
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
m = cifarlab.train(sys.argv[2], data=data, runs_dir=tempfile.mkdtemp(), progress=False,
                   plots=False, log=lambda s: None, epochs=1, train_subset=int(sys.argv[3]),
                   test_subset=500, **{"train.processes": 1})
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_seconds": time.perf_counter() - t0,
                  "user_seconds": r1.ru_utime - r0.ru_utime,
                  "system_seconds": r1.ru_stime - r0.ru_stime,
                  "minor_faults": r1.ru_minflt - r0.ru_minflt,
                  "max_rss_mib": r1.ru_maxrss / 1024,
                  "images_per_second": m["images_per_second"]}))
"""


def measure(recipe: str, images: int, data_dir: str, system: bool) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("CIFARLAB_MALLOC", None)
    if system:
        env["CIFARLAB_MALLOC"] = "system"
    out = subprocess.run([sys.executable, "-c", CHILD, data_dir, recipe, str(images)],
                         env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{recipe}: the measuring process failed: "
                         f"{out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--recipes", nargs="+", default=["fast-top", "fast-50k", "default"])
    ap.add_argument("--images", type=int, default=4000, help="training images (one epoch)")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    prov = provenance()
    load = os.getloadavg()[0]
    rows = []
    for recipe in a.recipes:
        runs: dict[str, list[dict]] = {"system": [], "keep": []}
        for _ in range(a.repeats):
            for mode in runs:
                runs[mode].append(measure(recipe, a.images, a.data_dir, mode == "system"))
        row = {"recipe": recipe, "images": a.images, **prov}
        for mode, rs in runs.items():
            row[mode] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        s, k = row["system"], row["keep"]
        row["faults_ratio"] = k["minor_faults"] / s["minor_faults"]
        row["cpu_seconds_ratio"] = ((k["user_seconds"] + k["system_seconds"])
                                    / (s["user_seconds"] + s["system_seconds"]))
        rows.append(row)
        print(f"{recipe}: page faults {s['minor_faults']:,} -> {k['minor_faults']:,}; system "
              f"CPU {s['system_seconds']:.1f} s -> {k['system_seconds']:.1f} s; CPU time x"
              f"{row['cpu_seconds_ratio']:.2f}", flush=True)
    print(write_result("memory.json", {**prov, "load_average_at_start": load,
                                       "repeats": a.repeats,
                                       "threads": 1, "rows": rows}))


if __name__ == "__main__":
    main()
