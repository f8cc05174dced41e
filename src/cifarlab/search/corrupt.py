"""`corrupt_acc`, robustness as a search objective: a trial's accuracy on corrupted
*validation* images (the trial's own split held out of the training set; the test set is
never read).

The images: a fixed class-stratified subset (`[search] corrupt_images`, default 1,000) of the
validation split, each corrupted by the 15 CIFAR-10-C-style corruptions (`cifarlab.corruptions`)
at `[search] corrupt_severities` (default 1, 3, 5: 45,000 images), with a fixed seed. They are
generated once per worker and kept in memory (uint8, 3 KB an image: 138 MB by default).
A trial is scored after its last epoch as `cifarlab robustness` scores a run: one plain fp32
forward pass of its checkpoint (no test-time augmentation), so the cost per trial is one
forward pass over those images. Measured on the 2-core EPYC, one thread: making the 45,000
images takes about 8 s (once per worker); scoring a 10.7M-MAC network (fast-50k's until
issue 32) about 26 s per trial (0.57 s per 1,000 images), some 10-15% of a full-fidelity
trial of that size. Fewer images or severities make it cheaper in proportion.
`corrupt_acc` is the mean accuracy over every corruption and severity.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from ..corruptions import CORRUPTIONS, corrupt
from ..robust import _predictor, stratified_indices

SEED = 0  # the corruptions' random numbers: the same images in every worker and study


class CorruptedVal:
    """The corrupted validation images of one search (built once per worker)."""

    def __init__(self, train_split, val_split: int, val_seed: int, n: int,
                 severities: list[int]):
        _, held = train_split.hold_out(val_split, seed=val_seed)  # the trials' own split
        idx = stratified_indices(held.labels, n)
        images = held.images[torch.as_tensor(idx)]
        self.labels = held.labels[torch.as_tensor(idx)]
        self.severities = list(severities)
        t0 = time.perf_counter()
        self.sets = {(name, s): corrupt(images, name, s, seed=SEED, index=idx)
                     for name in CORRUPTIONS for s in self.severities}
        self.build_seconds = time.perf_counter() - t0

    @property
    def images(self) -> int:
        return len(self.labels) * len(self.sets)

    def score(self, run_dir: str | os.PathLike) -> dict:
        """{'corrupt_acc': mean accuracy, 'by_corruption': name -> mean over the severities,
        'seconds'} of a trained run's checkpoint."""
        t0 = time.perf_counter()
        predict, _ = _predictor(Path(run_dir))
        acc: dict[str, list[float]] = {}
        with torch.inference_mode():
            for (name, _), x in self.sets.items():
                right = (predict(x) == self.labels).float().mean().item()
                acc.setdefault(name, []).append(right)
        by = {name: sum(v) / len(v) for name, v in acc.items()}
        return {"corrupt_acc": sum(by.values()) / len(by), "by_corruption": by,
                "seconds": time.perf_counter() - t0}
