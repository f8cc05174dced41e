"""Page faults and kernel time of training, with and without `cifarlab.memory` (issue 17).

    .venv/bin/python -m benchmarks.memory --data-dir ../shared/data
    -> benchmarks/results/memory.json

Each measurement is a fresh process (`python -m benchmarks.memory --child SPEC`, which runs
`measure_training`) that trains one epoch of a recipe on
`--images` training images in one process with one thread, and reports what the kernel
counted for it between the start and the end of `cifarlab.train`: user and system CPU seconds,
minor page faults, peak resident memory, wall seconds and the training loop's images/s. The
two settings alternate (`CIFARLAB_MALLOC=system`: glibc's defaults; unset: cifarlab keeps
freed memory), `--repeats` times each; the medians are recorded. CPU seconds and page faults
are counts, so other work on the machine changes them little; wall seconds and images/s are
only comparable on an otherwise idle machine (the load average at the start is recorded).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from cifarlab.data import find_data
from cifarlab.errors import CifarlabError

from .common import (
    add_data_dir,
    arg_parser,
    child_result,
    module_command,
    module_env,
    provenance,
    write_result,
)


def measure_training(spec: dict) -> None:
    """The child process (`--child SPEC`): one epoch of `spec["recipe"]` on `spec["images"]`
    training images in this one process; print, as one JSON line, what the kernel counted
    between the start and the end of `cifarlab.train` (CPU seconds, minor page faults, peak
    resident memory), its wall seconds and the training loop's images/s."""
    import resource
    import tempfile
    import time

    import cifarlab

    data = cifarlab.load_data(spec["data_dir"])
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    m = cifarlab.train(spec["recipe"], data=data, runs_dir=tempfile.mkdtemp(), progress=False,
                       plots=False, log=lambda s: None, epochs=1,
                       train_subset=spec["images"], test_subset=500,
                       **{"train.processes": 1})
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall_seconds": time.perf_counter() - t0,
                      "user_seconds": r1.ru_utime - r0.ru_utime,
                      "system_seconds": r1.ru_stime - r0.ru_stime,
                      "minor_faults": r1.ru_minflt - r0.ru_minflt,
                      "max_rss_mib": r1.ru_maxrss / 1024,
                      "images_per_second": m["images_per_second"]}))


def measure(recipe: str, images: int, data_dir: str, system: bool) -> dict:
    """`measure_training` in a fresh single-threaded process, with glibc's defaults (`system`)
    or cifarlab's kept memory."""
    env = module_env(dict(os.environ, OMP_NUM_THREADS="1"))
    env.pop("CIFARLAB_MALLOC", None)
    if system:
        env["CIFARLAB_MALLOC"] = "system"
    spec = {"data_dir": data_dir, "recipe": recipe, "images": images}
    out = subprocess.run(module_command("benchmarks.memory", "--child", json.dumps(spec)),
                         env=env, capture_output=True, text=True)
    return child_result(out, recipe)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return measure_training(json.loads(argv[1]))
    ap = arg_parser("memory", __doc__)
    add_data_dir(ap)
    ap.add_argument("--recipes", nargs="+", default=["fast-top", "fast-50k", "default"])
    ap.add_argument("--images", type=int, default=4000, help="training images (one epoch)")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args(argv)
    try:
        data_dir = str(find_data(a.data_dir))
    except CifarlabError as e:
        raise SystemExit(str(e)) from None
    prov = provenance()
    load = os.getloadavg()[0]
    rows = []
    for recipe in a.recipes:
        runs: dict[str, list[dict]] = {"system": [], "keep": []}
        for _ in range(a.repeats):
            for mode in runs:
                runs[mode].append(measure(recipe, a.images, data_dir, mode == "system"))
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
