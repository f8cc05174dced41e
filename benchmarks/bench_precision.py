"""Measure training throughput of the seed 001 network under each precision / memory format.

    .venv/bin/python benchmarks/bench_precision.py   -> benchmarks/results/precision.json

Same engine step (augmented in-memory batch, forward, backward, SGD step) for fp32 / bf16
autocast x NCHW / channels_last, with dropout 0.1 (the seed's) and 0 (the default recipe's).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance, write_result  # noqa: E402

from cifarlab.augment import AugmentConfig, Pipeline  # noqa: E402
from cifarlab.inference import autocast  # noqa: E402
from cifarlab.models import create_model  # noqa: E402


def throughput(precision: str, channels_last: bool, dropout: float, batch: int = 256,
               steps: int = 30, warmup: int = 5) -> float:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = create_model("seed001", dropout=dropout)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    pipe = Pipeline(AugmentConfig(cutout=8), [0.49, 0.48, 0.45], [0.25, 0.24, 0.26])
    images = torch.randint(0, 256, (batch * 4, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (batch * 4,))
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        x = pipe(images[idx], gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(precision):
            loss = F.cross_entropy(model(x).float(), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    prov = provenance()
    rows = []
    for dropout in (0.1, 0.0):
        for precision in ("fp32", "bf16"):
            for cl in (False, True):
                ips = throughput(precision, cl, dropout)
                rows.append({"dropout": dropout, "precision": precision, "channels_last": cl,
                             "images_per_second": ips})
                print(rows[-1], flush=True)
    print(write_result("precision.json", {**prov, "model": "seed001", "batch_size": 256,
                                          "results": rows}))


if __name__ == "__main__":
    main()
