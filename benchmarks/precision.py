"""Training throughput of the seed 001 network under each precision / memory format, through
the engine's own training step (`cifarlab.train`: in-memory batches, batched augmentation,
FastDropout, forward, backward, optimizer and schedule step).

    .venv/bin/python -m benchmarks.precision [--data-dir D]  -> results/precision.json

Each setting trains the `seed001-fast` recipe (seed 001's network) for 3 epochs on a subset of
`--images` training images with one process; the figure is the second epoch's images per second
(the first warms up; no evaluation runs in either), dropout 0.1 (the seed's) and 0 (the recipe's).
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import cifarlab

from .common import add_data_dir, arg_parser, provenance, write_result


def throughput(data, precision: str, channels_last: bool, dropout: float, batch: int,
               images: int) -> float:
    with tempfile.TemporaryDirectory() as runs:
        m = cifarlab.train("seed001-fast", data=data, runs_dir=runs, progress=False,
                           plots=False, log=lambda s: None, epochs=3, batch_size=batch, procs=1,
                           precision=precision, channels_last=channels_last,
                           **{"model_args": {"dropout": dropout}, "data.train_subset": images,
                              "data.test_subset": 500, "train.eval_every": 0,
                              "train.tta": False})
        with open(Path(m["run_dir"]) / "history.csv", newline="") as f:
            second = list(csv.DictReader(f))[1]
    return (images // batch) * batch / float(second["seconds"])


def main() -> None:
    ap = arg_parser("precision", __doc__)
    add_data_dir(ap)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--images", type=int, default=256 * 24)
    a = ap.parse_args()
    prov = provenance()
    data = cifarlab.load_data(a.data_dir)
    rows = []
    for dropout in (0.1, 0.0):
        for precision in ("fp32", "bf16"):
            for cl in (False, True):
                ips = throughput(data, precision, cl, dropout, a.batch_size, a.images)
                rows.append({"dropout": dropout, "precision": precision, "channels_last": cl,
                             "images_per_second": ips})
                print(rows[-1], flush=True)
    print(write_result("precision.json", {**prov, "model": "seed001", "recipe": "seed001-fast",
                                          "step": "engine (cifarlab.train)",
                                          "batch_size": a.batch_size, "results": rows}))


if __name__ == "__main__":
    main()
