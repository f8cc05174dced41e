"""Figures: a run's own plots, comparisons across runs, and views of the data.

Everything draws on a bare `matplotlib.figure.Figure` (the Agg renderer, no pyplot): no global
state, nothing left open, safe to call from a training loop. Every PNG is rendered into memory
and then written with `rundir.atomic_write_bytes` (temp file + rename), so a watcher never sees
a half-written image.

Per run (`plot_run`, cheap enough to call after every epoch):
  plots/curves.png       loss, accuracy and learning rate per epoch (history.csv)
  plots/per_class.png    per-class test accuracy (metrics.json; absent while the run is going)
  plots/confusion.png    confusion matrix with counts (metrics.json)
  plots/misclassified.png  (`plot_misclassified`, given the test predictions)
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from .rundir import RunDir, RunDirError, atomic_write_bytes, read_json, tested

DPI = 100
TRAIN_COLOR, TEST_COLOR, LR_COLOR, VAL_COLOR = "#1f77b4", "#d62728", "#2ca02c", "#9467bd"
_TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def run_color(i: int) -> str:
    """The colour of the i-th run in every comparison figure (tab10, then a darker cycle)."""
    if i < len(_TAB10):
        return _TAB10[i]
    import matplotlib

    cmap = matplotlib.colormaps["tab20b"]
    return to_hex(cmap((i - len(_TAB10)) % cmap.N))


def save_figure(fig: Figure, out: str | os.PathLike) -> Path:
    """Render `fig` to PNG in memory and write it atomically to `out`."""
    out = Path(out)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(out, buf.getvalue())
    return out


def _np(x: Any) -> np.ndarray:
    """A torch tensor, list or array as a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if isinstance(v, int | float) and math.isfinite(v)]


def clip_spikes(ax, values: Sequence[float], title: str) -> None:
    """Set `title`; where a few losses dwarf the rest (a test loss of 77 nats among values
    near 1, say), cap the y-axis just above the others so their curves stay readable, and say
    so in the title. An outlier is above 3x the 90th percentile."""
    vals = np.array(_finite(values))
    if len(vals) >= 5:
        limit = 3 * float(np.percentile(vals, 90))
        if limit > 0 and vals.max() > limit:
            top = 1.1 * float(vals[vals <= limit].max())
            ax.set_ylim(bottom=min(0.0, float(vals.min())), top=top)
            n = int((vals > top).sum())
            title += f" ({n} point{'s' * (n != 1)} above {top:.2f} cut off)"
    ax.set_title(title)


def class_names(metrics: dict, n: int) -> list[str]:
    classes = metrics.get("classes")
    if isinstance(classes, list) and len(classes) == n:
        return [str(c) for c in classes]
    return [f"class {i}" for i in range(n)]


# --------------------------------------------------------------------------- one run

def _curve_kw(n: int) -> dict:
    """Markers where there are few points (a 1-epoch run still shows a dot)."""
    if n > 40:
        return {}
    return {"marker": "o", "markersize": 7 if n == 1 else 3.5}


def _tested(rows: list[dict], key: str, scale: float = 1.0) -> tuple[list, list]:
    """(epochs, values) of the epochs that were tested, for plot()."""
    pts = tested(rows, key)
    return [e for e, _ in pts], [scale * v for _, v in pts]


def draw_curves(rows: list[dict], title: str, target: float | None = None) -> Figure:
    """Loss, accuracy and learning rate per epoch, side by side."""
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    ep = [r["epoch"] for r in rows]
    kw = _curve_kw(len(rows))
    train_loss, (test_ep, test_loss) = [r["train_loss"] for r in rows], _tested(rows, "test_loss")
    ax_loss.plot(ep, train_loss, color=TRAIN_COLOR, label="train", **kw)
    ax_loss.plot(test_ep, test_loss, color=TEST_COLOR, label="test", **kw)
    has_val = bool(rows) and "val_acc" in rows[0]
    val_loss = _tested(rows, "val_loss")[1] if has_val else []
    if has_val:
        ax_loss.plot(*_tested(rows, "val_loss"), color=VAL_COLOR, label="validation", **kw)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss (nats)")
    clip_spikes(ax_loss, train_loss + test_loss + val_loss, "Loss")
    ax_acc.plot(ep, [100 * r["train_acc"] for r in rows], color=TRAIN_COLOR, label="train", **kw)
    ax_acc.plot(*_tested(rows, "test_acc", 100), color=TEST_COLOR, label="test", **kw)
    if has_val:
        ax_acc.plot(*_tested(rows, "val_acc", 100), color=VAL_COLOR, label="validation", **kw)
    # the best epoch, on the split choices are made on (validation when there is one)
    key, color, what = (("val_acc", VAL_COLOR, "best validation") if has_val
                        else ("test_acc", TEST_COLOR, "best test (chosen on test)"))
    if tests := tested(rows, key):
        best_ep, best = max(tests, key=lambda t: t[1])
        ax_acc.plot([best_ep], [100 * best], linestyle="none", marker="*", markersize=13,
                    color=color, markeredgecolor="black", zorder=5,
                    label=f"{what} {100 * best:.2f}% (epoch {best_ep})")
    if target:
        ax_acc.axhline(100 * target, color="gray", linestyle=":", linewidth=1.2,
                       label=f"target {100 * target:.1f}%")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    ax_acc.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax_lr.plot(ep, [r["lr"] for r in rows], color=LR_COLOR, label="learning rate", **kw)
    ax_lr.set(title="Learning rate", xlabel="epoch", ylabel="learning rate at end of epoch")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
        ax.legend(loc="best", fontsize=9)
        if len(ep) == 1:
            ax.set_xlim(ep[0] - 1, ep[0] + 1)
    fig.suptitle(title)
    return fig


def draw_per_class(per_class: Sequence[float], classes: Sequence[str], title: str,
                   overall: float | None = None) -> Figure:
    """Horizontal bars (class names read without rotation), one per class, value at the end."""
    n = len(per_class)
    fig = Figure(figsize=(7.5, 0.4 * n + 1.6), layout="constrained")
    ax = fig.subplots()
    y = np.arange(n)
    vals = [100 * v for v in per_class]
    ax.barh(y, vals, color=TEST_COLOR, alpha=0.85, label="per-class test accuracy")
    for yi, v in zip(y, vals, strict=True):
        ax.text(min(v, 100) + 1, yi, f"{v:.1f}%", va="center", fontsize=9)
    if overall is not None:
        ax.axvline(100 * overall, color="black", linestyle="--", linewidth=1,
                   label=f"overall {100 * overall:.2f}%")
    ax.set_yticks(y, list(classes))
    ax.invert_yaxis()  # first class on top
    ax.set_xlim(0, 112)
    ax.xaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.set(title=title, xlabel="test accuracy (%)", ylabel="class")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=9, framealpha=0.9)
    return fig


def draw_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str],
                   title: str) -> Figure:
    """Rows: true class, columns: predicted; colour = fraction of the true class, text = count."""
    cm = np.asarray(confusion, dtype=np.int64)
    n = cm.shape[0]
    frac = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(0.62 * n + 2.6, 0.55 * n + 1.8), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    small = n > 12
    for i in range(n):
        for j in range(n):
            if small and cm[i, j] == 0:
                continue
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    fontsize=6 if small else 8, color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), list(classes), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), list(classes))
    ax.set(title=title, xlabel="predicted class", ylabel="true class")
    cb = fig.colorbar(im, ax=ax, shrink=0.85)
    cb.set_label("fraction of the true class")
    return fig


def _target_of(run: RunDir, metrics: dict | None) -> float | None:
    t = (metrics or {}).get("target")
    if isinstance(t, int | float) and t > 0:
        return float(t)
    try:
        t = read_json(run.config)["recipe"]["train"]["target"]
    except (RunDirError, KeyError, TypeError):
        return None
    return float(t) if isinstance(t, int | float) and t > 0 else None


def plot_run(run_dir: str | os.PathLike) -> list[Path]:
    """(Re)draw a run's figures into run_dir/plots/ and return the paths written.

    A run still in progress (no metrics.json yet) gets only curves.png. Raises `RunDirError`
    when `run_dir` is not a directory, metrics.json is corrupt, or there is nothing to draw.
    """
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise RunDirError(f"{run.path}: no such run directory")
    rows, _problems = run.read_history()  # a torn last line is skipped, the rest drawn
    metrics = read_json(run.metrics) if run.metrics.exists() else None
    if metrics is not None and not isinstance(metrics, dict):
        raise RunDirError(f"{run.metrics}: expected a JSON object")
    if not rows and metrics is None:
        raise RunDirError(f"{run.path}: not a run directory, or no epoch finished yet "
                          "(no readable history.csv rows and no metrics.json)")
    name = run.path.resolve().name
    written = []
    if rows:
        fig = draw_curves(rows, f"{name}: training curves", _target_of(run, metrics))
        written.append(save_figure(fig, run.plots / "curves.png"))
    if metrics is not None:
        per_class = metrics.get("per_class_acc")
        if isinstance(per_class, list) and per_class:
            classes = class_names(metrics, len(per_class))
            acc = metrics.get("test_acc")
            fig = draw_per_class(per_class, classes, f"{name}: per-class test accuracy",
                                 acc if isinstance(acc, int | float) else None)
            written.append(save_figure(fig, run.plots / "per_class.png"))
        cm = metrics.get("confusion")
        if isinstance(cm, list) and cm:
            classes = class_names(metrics, len(cm))
            fig = draw_confusion(cm, classes, f"{name}: confusion matrix (test set)")
            written.append(save_figure(fig, run.plots / "confusion.png"))
    return written


def _hwc(images: Any) -> np.ndarray:
    """uint8 N×3×H×W (tensor or array) -> N×H×W×3 for imshow."""
    a = _np(images)
    if a.ndim != 4 or a.shape[1] != 3:
        raise ValueError(f"expected images N×3×H×W, got shape {a.shape}")
    return a.transpose(0, 2, 3, 1)


def _hide_axes(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def plot_misclassified(run_dir: str | os.PathLike, images_uint8: Any, labels: Any, preds: Any,
                       classes: Sequence[str], n: int = 32, cols: int = 8,
                       out: str | os.PathLike | None = None) -> Path:
    """Grid of the first `n` misclassified test images, each titled with true and predicted class.

    images_uint8: N×3×32×32 uint8 (tensor or array); labels, preds: N class indices. Writes
    run_dir/plots/misclassified.png (or `out`) and returns its path.
    """
    imgs = _hwc(images_uint8)
    labels, preds = _np(labels).astype(np.int64), _np(preds).astype(np.int64)
    if not (len(imgs) == len(labels) == len(preds)):
        raise ValueError(f"images ({len(imgs)}), labels ({len(labels)}) and preds "
                         f"({len(preds)}) differ in length")
    wrong = np.flatnonzero(labels != preds)
    shown = wrong[:n]
    out = Path(out) if out is not None else RunDir(run_dir).plots / "misclassified.png"
    cols = max(1, min(cols, len(shown) or 1))
    nrows = max(1, math.ceil(len(shown) / cols))
    fig = Figure(figsize=(1.55 * cols, 1.75 * nrows + 0.7), layout="constrained")
    title = (f"Misclassified test images: {len(shown)} of {len(wrong)} errors "
             f"({100 * len(wrong) / max(len(labels), 1):.1f}% of {len(labels)} images)")
    fig.suptitle(title, fontsize=11)
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).ravel()
    for ax in axes:
        _hide_axes(ax)
    if len(shown) == 0:
        axes[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    for ax, i in zip(axes, shown, strict=False):
        ax.imshow(imgs[i], interpolation="nearest")
        ax.set_title(f"true: {classes[labels[i]]}\npred: {classes[preds[i]]}", fontsize=8)
    return save_figure(fig, out)


# --------------------------------------------------------------------------- across runs

def draw_compare_curves(runs: Sequence[tuple[str, list[dict]]],
                        target: float | None = None) -> Figure:
    """Train accuracy, test accuracy and loss of several runs overlaid; one colour per run
    (`run_color(i)` for the i-th entry, so the report's figures agree)."""
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    ax_tr, ax_te, ax_loss = fig.subplots(1, 3)
    losses: list[float] = []
    for i, (name, rows) in enumerate(runs):
        if not rows:
            continue
        losses += [r["train_loss"] for r in rows] + _tested(rows, "test_loss")[1]
        c, ep, kw = run_color(i), [r["epoch"] for r in rows], _curve_kw(len(rows))
        ax_tr.plot(ep, [100 * r["train_acc"] for r in rows], color=c, label=name, **kw)
        ax_te.plot(*_tested(rows, "test_acc", 100), color=c, label=name, **kw)
        if "val_acc" in rows[0]:  # a validation split: its curve, dotted
            ax_te.plot(*_tested(rows, "val_acc", 100), color=c, linestyle=":",
                       label=f"{name} (validation)", **kw)
        ax_loss.plot(*_tested(rows, "test_loss"), color=c, label=f"{name} (test)", **kw)
        ax_loss.plot(ep, [r["train_loss"] for r in rows], color=c, linestyle="--", alpha=0.7,
                     label=f"{name} (train)", **kw)
    if target:
        ax_te.axhline(100 * target, color="gray", linestyle=":", linewidth=1.2,
                      label=f"target {100 * target:.1f}%")
    ax_tr.set(title="Train accuracy", xlabel="epoch", ylabel="train accuracy (%)")
    ax_te.set(title="Test accuracy (dotted: validation)", xlabel="epoch",
              ylabel="held-out accuracy (%)")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss (nats)")
    clip_spikes(ax_loss, losses, "Loss (solid: test, dashed: train)")
    for ax in (ax_tr, ax_te):
        ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    for ax in (ax_tr, ax_te, ax_loss):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
    handles, labels = ax_te.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center",
                   ncol=min(len(handles), 5), fontsize=9, title="run")
    fig.suptitle("Training curves of all runs")
    return fig


def draw_compare_per_class(runs: Sequence[tuple[str, int, Sequence[float]]],
                           classes: Sequence[str]) -> Figure:
    """Grouped bars: for each class, one bar per run. `runs`: (name, colour index, per-class)."""
    k, n = max(len(runs), 1), len(classes)
    fig = Figure(figsize=(max(9.0, 0.25 * n * k + 3), 5.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / k
    x = np.arange(n)
    for j, (name, ci, per_class) in enumerate(runs):
        ax.bar(x - 0.4 + width * (j + 0.5), [100 * v for v in per_class], width,
               color=run_color(ci), label=name)
    ax.set_xticks(x, list(classes), rotation=30, ha="right", rotation_mode="anchor")
    ax.set_ylim(0, 100)
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.set(title="Per-class test accuracy of all finished runs", xlabel="class",
           ylabel="test accuracy (%)")
    ax.grid(True, axis="y", alpha=0.3)
    if runs:
        fig.legend(loc="outside lower center", ncol=min(len(runs), 5), fontsize=9, title="run")
    return fig


# --------------------------------------------------------------------------- data views

def plot_samples(split: Any, classes: Sequence[str], out: str | os.PathLike,
                 per_class: int = 8, seed: int = 0) -> Path:
    """A grid of training images: one row per class (named on the left), `per_class` columns,
    drawn at random (fixed `seed`). `split` has .images (uint8 N×3×32×32) and .labels."""
    imgs, labels = _hwc(split.images), _np(split.labels)
    rng = np.random.default_rng(seed)
    n = len(classes)
    fig = Figure(figsize=(1.05 * per_class + 1.6, 1.05 * n + 0.6), layout="constrained")
    axes = fig.subplots(n, per_class, squeeze=False)
    for c in range(n):
        idx = np.flatnonzero(labels == c)
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else []
        for j in range(per_class):
            ax = axes[c, j]
            _hide_axes(ax)
            if j < len(pick):
                ax.imshow(imgs[pick[j]], interpolation="nearest")
        axes[c, 0].set_ylabel(f"{classes[c]}\n({len(idx)})", rotation=0, ha="right",
                              va="center", fontsize=10)
    fig.suptitle(f"Training samples: {per_class} random images per class "
                 "(number of images of the class in brackets)")
    return save_figure(fig, out)


def plot_class_distribution(train_labels: Any, test_labels: Any, classes: Sequence[str],
                            out: str | os.PathLike) -> Path:
    """Images per class in the training and test splits, side by side, counts on the bars."""
    n = len(classes)
    tr = np.bincount(_np(train_labels).astype(np.int64), minlength=n)[:n]
    te = np.bincount(_np(test_labels).astype(np.int64), minlength=n)[:n]
    fig = Figure(figsize=(max(8.0, 0.9 * n + 2), 4.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(n)
    for off, vals, color, label in ((-0.2, tr, TRAIN_COLOR, f"train ({tr.sum():,} images)"),
                                    (0.2, te, TEST_COLOR, f"test ({te.sum():,} images)")):
        bars = ax.bar(x + off, vals, 0.4, color=color, label=label)
        ax.bar_label(bars, [f"{v:,}" for v in vals], fontsize=7, padding=2)
    ax.set_xticks(x, list(classes), rotation=30, ha="right", rotation_mode="anchor")
    ax.set(title="Class distribution", xlabel="class", ylabel="number of images")
    ax.set_ylim(0, max(int(tr.max(initial=0)), int(te.max(initial=0)), 1) * 1.3)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncol=2, fontsize=9)
    return save_figure(fig, out)


def _describe(pipeline: Any) -> str:
    cfg = getattr(pipeline, "cfg", None)
    if cfg is None:
        return ""
    if cfg.backend == "none":
        return "backend none (normalise only)"
    if cfg.backend == "albumentations":
        parts = [f"flip p={getattr(cfg, 'flip_p', 0.5):g}" if cfg.flip else None,
                 f"shift {cfg.shift_limit:g} scale {cfg.scale_limit:g} rotate "
                 f"{cfg.rotate_limit:g}°",
                 f"coarse dropout {cfg.coarse_dropout}px" if cfg.coarse_dropout else None]
    else:
        jit = [f"{k} {getattr(cfg, k):g}" for k in ("brightness", "contrast", "saturation", "hue")
               if getattr(cfg, k)]
        flip_p, vflip_p = getattr(cfg, "flip_p", 0.5), getattr(cfg, "vflip_p", 0.0)
        rotate = getattr(cfg, "rotate", 0.0)
        parts = [f"jitter {', '.join(jit)}" if jit else None,
                 f"crop pad {cfg.crop_pad} ({cfg.crop_mode})" if cfg.crop_pad else None,
                 f"flip p={flip_p:g}" if cfg.flip and flip_p > 0 else None,
                 f"vertical flip p={vflip_p:g}" if vflip_p > 0 else None,
                 f"rotate ±{rotate:g}°" if rotate > 0 else None,
                 f"cutout {cfg.cutout}px" if cfg.cutout else None]
    return f"backend {cfg.backend}: " + (", ".join(p for p in parts if p) or "nothing")


def plot_augmentations(images_uint8: Any, pipeline: Any, mean: Sequence[float],
                       std: Sequence[float], out: str | os.PathLike, n_images: int = 6,
                       n_aug: int = 6, seed: int = 0, labels: Any = None,
                       classes: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Each of the first `n_images` images beside `n_aug` versions made by `pipeline`
    ((uint8 batch, torch.Generator) -> normalised batch), denormalised with mean/std to show."""
    import torch

    x = images_uint8 if isinstance(images_uint8, torch.Tensor) else torch.as_tensor(
        _np(images_uint8))
    x = x[:n_images].contiguous()
    k = len(x)
    gen = torch.Generator().manual_seed(seed)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    augs = []
    for _ in range(n_aug):
        y = pipeline(x.clone(), gen).float()
        augs.append((y * s + m).clamp(0, 1).permute(0, 2, 3, 1).numpy())
    orig = _hwc(x)
    fig = Figure(figsize=(1.3 * (n_aug + 1) + 0.8, 1.35 * k + 0.9), layout="constrained")
    axes = fig.subplots(max(k, 1), n_aug + 1, squeeze=False)
    for i in range(k):
        for j in range(n_aug + 1):
            ax = axes[i, j]
            _hide_axes(ax)
            ax.imshow(orig[i] if j == 0 else augs[j - 1][i], interpolation="nearest")
            if i == 0:
                ax.set_title("original" if j == 0 else f"augmented {j}", fontsize=9)
        if labels is not None and classes is not None:
            axes[i, 0].set_ylabel(str(classes[int(_np(labels)[i])]), fontsize=9)
    desc = _describe(pipeline)
    fig.suptitle((title or "Augmentation") + (f"\n{desc}" if desc else ""), fontsize=11)
    return save_figure(fig, out)


# --------------------------------------------------------------------------- robustness

def draw_corruptions(images_hwc: np.ndarray, seed: int = 0,
                     index: Sequence[int] | None = None) -> Figure:
    """Every corruption (rows) at every severity, beside the clean image, for each image
    (uint8 N×32×32×3): columns clean, 1, ..., 5, then the next image."""
    from .corruptions import CORRUPTIONS, SEVERITIES, corrupt

    imgs = np.asarray(images_hwc)
    n, cols = len(imgs), 1 + len(SEVERITIES)
    idx = np.arange(n) if index is None else np.asarray(index)
    fig = Figure(figsize=(1.05 * cols * n + 1.9, 1.05 * len(CORRUPTIONS) + 0.9),
                 layout="constrained")
    axes = fig.subplots(len(CORRUPTIONS), cols * n, squeeze=False)
    for r, name in enumerate(CORRUPTIONS):
        views = [corrupt(imgs, name, s, seed=seed, index=idx) for s in SEVERITIES]
        for i in range(n):
            for j in range(cols):
                ax = axes[r, i * cols + j]
                _hide_axes(ax)
                ax.imshow(imgs[i] if j == 0 else views[j - 1][i], interpolation="nearest")
                if r == 0:
                    ax.set_title("clean" if j == 0 else f"severity {j}", fontsize=9)
        axes[r, 0].set_ylabel(name.replace("_", " "), rotation=0, ha="right", va="center",
                              fontsize=10)
    fig.suptitle("CIFAR-10-C-style corruptions, regenerated by cifarlab (not the published "
                 f"files; frost procedural), seed {seed}")
    return fig


def plot_corruptions(images_hwc: np.ndarray, out: str | os.PathLike, seed: int = 0,
                     index: Sequence[int] | None = None) -> Path:
    """`draw_corruptions` written to `out` (docs/corruptions.png)."""
    return save_figure(draw_corruptions(images_hwc, seed, index), out)


def draw_robustness(result: dict, title: str) -> Figure:
    """Accuracy per corruption (rows) and severity (columns), the value in each cell, a last
    row with the mean per severity (mCA by severity)."""
    names = list(result["by_corruption"])
    acc = 100 * np.array([result["by_corruption"][k] for k in names] + [result["by_severity"]])
    fig = Figure(figsize=(7.2, 0.36 * len(acc) + 1.8), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(acc, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for i, row in enumerate(acc):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8,
                    fontweight="bold" if i == len(acc) - 1 else "normal")
    ax.axhline(len(acc) - 1.5, color="black", linewidth=1)
    ax.set_xticks(range(acc.shape[1]), [str(s) for s in range(1, acc.shape[1] + 1)])
    ax.set_yticks(range(len(acc)), [k.replace("_", " ") for k in names] + ["mean (mCA)"])
    ax.set(xlabel="severity", title=(
        f"{title}\nclean {100 * result['clean_acc']:.2f}%, mCA {100 * result['mca']:.2f}%, "
        f"relative {result['relative']:.3f} ({result['images']:,} images)"))
    cb = fig.colorbar(im, ax=ax, shrink=0.8)
    cb.set_label("accuracy (%)")
    return fig


def plot_robustness(result: dict, out: str | os.PathLike, title: str) -> Path:
    """The `draw_robustness` heatmap written to `out` (RUN_DIR/plots/robustness.png)."""
    return save_figure(draw_robustness(result, title), out)


def draw_compare_robustness(runs: Sequence[tuple[str, int, dict]]) -> Figure:
    """Mean corruption accuracy by severity, one line per run (`runs`: name, colour index,
    robustness.json), the clean accuracy at severity 0."""
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    for name, ci, r in runs:
        ys = [100 * r["clean_acc"]] + [100 * v for v in r["by_severity"]]
        ax.plot(range(len(ys)), ys, marker="o", color=run_color(ci),
                label=f"{name} (mCA {100 * r['mca']:.1f}%)")
    ax.set_xticks(range(6), ["clean", "1", "2", "3", "4", "5"])
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.set(title="Accuracy under CIFAR-10-C-style corruptions (mean of 15) by severity",
           xlabel="severity", ylabel="accuracy (%)")
    ax.grid(True, alpha=0.3)
    if runs:
        ax.legend(loc="lower left", fontsize=9)
    return fig
