"""Robustness to common corruptions (`cifarlab robustness`): a network's accuracy on the clean
test images and on the 15 x 5 CIFAR-10-C-style corrupted versions (`corruptions.py`),
streamed: each corruption and severity is generated in chunks, scored and thrown away
(nothing cached on disk). (Not called robustness.py: importing a submodule of that name would
hide the API function `cifarlab.robustness`.)

A checkpoint or run directory is scored as the exported ONNX graph computes it: one plain
forward pass in fp32, no test-time augmentation, on the plain test images, so a run and its
export give the same figures (an int8 file: within its quantisation noise). `clean_acc` here
may therefore differ from the run's own test accuracy (which may use flips, shifts, bf16).

Results (`robustness.json`): clean_acc, mca (mean over the 75), relative (mca / clean_acc),
by_severity (5 means over the corruptions), by_corruption (name -> 5 accuracies),
worst_corruption, images, seed, subset, source, timing and provenance.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .corruptions import CORRUPTIONS, SEVERITIES, corrupt
from .data import CIFAR10, load_data
from .errors import CifarlabError
from .provenance import provenance
from .rundir import RunDir, write_json

CHUNK = 1000  # images generated and scored at a time
SUBSET_SEED = 0  # which images a --images subset takes (never the corruption seed)


def stratified_indices(labels: torch.Tensor, n: int | None) -> np.ndarray:
    """Sorted indices of n images, each class giving its share (rounded, largest remainders
    first), drawn with a fixed seed: the same images every time. All images for None or n at
    least the set's size."""
    labels = np.asarray(labels)
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    if n < 1:
        raise CifarlabError(f"--images {n}: expected at least 1")
    counts = np.bincount(labels)
    exact = counts * n / len(labels)
    share = np.floor(exact).astype(int)
    share[np.argsort(-(exact - share), kind="stable")[:n - share.sum()]] += 1
    rng = np.random.default_rng(SUBSET_SEED)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:share[c]] for c in range(len(counts))]
    return np.sort(np.concatenate(picks))


def _predictor(path: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """(uint8 N×3×32×32 -> class indices, kind) for a checkpoint, run dir or .onnx file."""
    if path.suffix == ".onnx":
        from .export import open_onnx, run_onnx

        sess, meta = open_onnx(path)
        return (lambda x: run_onnx(sess, meta, x).argmax(1)), "onnx"
    from .inference import load_model, predict_logits

    model, meta = load_model(path)
    model = model.float().to(memory_format=torch.channels_last).eval()  # faster on a CPU
    return (lambda x: predict_logits(model, x, meta["mean"], meta["std"], precision="fp32",
                                     channels_last=True, tta=False).argmax(1)), "checkpoint"


def output_paths(path: Path) -> tuple[Path, Path] | None:
    """(json, heatmap) for a run's own checkpoint: RUN_DIR/robustness.json and
    plots/robustness.png; for any other file in a run directory (an .onnx export, another
    checkpoint) robustness-<stem>.json and plots/robustness-<stem>.png beside it; None
    outside a run directory."""
    from .inference import checkpoint_path

    run = RunDir(path if path.is_dir() else path.parent)
    if not run.config.is_file():
        return None
    own = path.is_dir() or (path.suffix != ".onnx" and checkpoint_path(run.path) == path)
    stem = "robustness" if own else f"robustness-{path.stem}"
    return run.path / f"{stem}.json", run.plots / f"{stem}.png"


class _Progress:
    """A tqdm bar over all images on a terminal; otherwise one line per corruption."""

    def __init__(self, enabled: bool, total: int, log: Callable[[str], None]):
        self.log, self.bar = log, None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", desc="robustness", dynamic_ncols=True,
                            leave=False, file=sys.stderr)
        self.enabled = enabled

    def step(self, n: int, desc: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(desc, refresh=False)
            self.bar.update(n)

    def line(self, text: str) -> None:
        if self.enabled and self.bar is None:
            self.log(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Scorer:
    """Accuracy of `classify` on the chosen test images, clean or corrupted, generated and
    scored CHUNK images at a time; adds up the seconds spent generating and evaluating."""

    def __init__(self, classify: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor, idx: np.ndarray, seed: int, bar: _Progress):
        self.classify, self.x, self.y, self.idx, self.seed, self.bar = (
            classify, x, y, idx, seed, bar)
        self.n = len(idx)
        self.gen_s = self.eval_s = 0.0

    def accuracy(self, name: str | None, severity: int = 0) -> float:
        """On the clean images (`name` None) or on corruption `name` at `severity`."""
        x, y, idx = self.x, self.y, self.idx
        correct = 0
        for i in range(0, self.n, CHUNK):
            t0 = time.perf_counter()
            batch = x[i:i + CHUNK] if name is None else corrupt(
                x[i:i + CHUNK], name, severity, seed=self.seed, index=idx[i:i + CHUNK])
            t1 = time.perf_counter()
            correct += int((self.classify(batch) == y[i:i + CHUNK]).sum())
            self.gen_s += t1 - t0
            self.eval_s += time.perf_counter() - t1
            self.bar.step(len(batch), name or "clean")
        return correct / self.n


def evaluate_robustness(path: str | os.PathLike, *, data: CIFAR10 | None = None,
                        data_dir: str | os.PathLike | None = None, images: int | None = None,
                        seed: int = 0, progress: bool = True, log=print,
                        write: bool = True) -> dict:
    """Accuracy of a checkpoint, run directory or exported .onnx file on the clean test set
    and on every corruption x severity (`images`: a stratified subset of that many test
    images; default all 10,000). With `write`, a run directory gets robustness.json and a
    heatmap (see `output_paths`); the result's `json` names the file (None if none)."""
    p = Path(path)
    if not p.exists():
        raise CifarlabError(f"{p}: no such run directory, checkpoint or ONNX file")
    if seed < 0:
        raise CifarlabError(f"--seed {seed}: expected 0 or more")
    classify, kind = _predictor(p)
    if data is None:
        data = load_data(data_dir)
    idx = stratified_indices(data.test.labels, images)
    n = len(idx)
    bar = _Progress(progress, n * (1 + len(CORRUPTIONS) * len(SEVERITIES)), log)
    scorer = _Scorer(classify, data.test.images[idx].contiguous(), data.test.labels[idx], idx,
                     seed, bar)
    try:
        started = time.perf_counter()
        clean, by_corruption = _score_all(scorer, bar)
    finally:
        bar.close()
    result = _result(clean, by_corruption, scorer, started, len(data.test), seed, p, kind)
    out = output_paths(p) if write else None
    if out is not None:
        _write_outputs(result, out, p, kind, log)
    return result


def _score_all(scorer: _Scorer, bar: _Progress) -> tuple[float, dict[str, list[float]]]:
    """(clean accuracy, corruption name -> its accuracy at each severity)."""
    clean = scorer.accuracy(None)
    bar.line(f"clean: {clean:.4f} on {scorer.n:,} test images")
    by_corruption = {}
    for name in CORRUPTIONS:
        t0 = time.perf_counter()
        by_corruption[name] = [scorer.accuracy(name, s) for s in SEVERITIES]
        bar.line(f"{name}: " + " ".join(f"{a:.4f}" for a in by_corruption[name])
                 + f"  ({time.perf_counter() - t0:.0f}s)")
    return clean, by_corruption


def _result(clean: float, by_corruption: dict[str, list[float]], scorer: _Scorer,
            started: float, test_size: int, seed: int, p: Path, kind: str) -> dict:
    """The figures robustness.json holds (its `json` still None)."""
    n = scorer.n
    acc = np.array(list(by_corruption.values()))
    mca = float(acc.mean())
    corrupted = n * acc.size
    gen_s, eval_s = scorer.gen_s, scorer.eval_s
    return {
        "clean_acc": clean,
        "mca": mca,
        "relative": mca / clean if clean else 0.0,
        "by_severity": acc.mean(axis=0).tolist(),
        "by_corruption": by_corruption,
        "worst_corruption": min(by_corruption, key=lambda k: float(np.mean(by_corruption[k]))),
        "images": n,
        "subset": "all" if n == test_size else f"stratified, seed {SUBSET_SEED}",
        "seed": seed,
        "source": str(p),
        "kind": kind,
        "scored_as": "one plain forward pass, fp32, no test-time augmentation",
        "corruptions": "CIFAR-10-C-style, regenerated by cifarlab.corruptions (not the "
                       "published files; frost procedural)",
        "timing": {"seconds": time.perf_counter() - started,
                   "generate_images_per_second": corrupted / gen_s if gen_s else None,
                   "evaluate_images_per_second": (corrupted + n) / eval_s if eval_s else None},
        **provenance(),
        "json": None,
    }


def _write_outputs(result: dict, out: tuple[Path, Path], p: Path, kind: str, log) -> None:
    """The heatmap (a failure only warns) and robustness.json, named in `result`."""
    from .plots import plot_robustness

    run_name = out[0].parent.resolve().name
    title = f"{run_name}: {p.name}" if kind == "onnx" else run_name
    try:
        result["heatmap"] = str(plot_robustness(result, out[1], title))
    except Exception as e:  # a figure never costs the figures
        log(f"warning: robustness heatmap not written ({e})")
    result["json"] = str(out[0])
    write_json(out[0], result)
