"""Per-run figures and data views: files appear, are whole PNGs of a sane size, and broken or
unfinished runs are handled. Not pixel tests."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest_runs import CLASSES, has_line, tear_history, write_run
from PIL import Image

from cifarlab import plots, rundir
from cifarlab.augment import AugmentConfig, Pipeline
from cifarlab.cli import main
from cifarlab.data import Split
from cifarlab.rundir import RunDirError


def png_size(path: Path, min_w: int = 300, min_h: int = 200) -> tuple[int, int]:
    """Open (and fully decode) a PNG; check it is neither tiny nor absurdly large."""
    assert path.is_file(), path
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # a truncated file fails here
        w, h = im.size
    assert min_w <= w <= 4000 and min_h <= h <= 4000, (path.name, w, h)
    return w, h


def no_temp_files(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_plot_run_finished(tmp_path):
    run = write_run(tmp_path, "done", epochs=8)
    paths = plots.plot_run(run)
    assert [p.name for p in paths] == ["curves.png", "per_class.png", "confusion.png"]
    assert all(p.parent == run / "plots" for p in paths)
    w, h = png_size(run / "plots" / "curves.png")
    assert w > 2 * h  # three panels side by side
    png_size(run / "plots" / "per_class.png")
    png_size(run / "plots" / "confusion.png")
    no_temp_files(run / "plots")


def test_plot_run_in_progress_draws_curves_only(tmp_path):
    run = write_run(tmp_path, "going", epochs=3, planned=30, finished=False)
    assert [p.name for p in plots.plot_run(run)] == ["curves.png"]
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["curves.png"]
    # after another epoch the figure is redrawn from the new history and replaced in place
    curves = run / "plots" / "curves.png"
    first = curves.read_bytes()
    plots.plot_run(run)
    assert curves.read_bytes() == first  # the same history draws the same figure ...
    write_run(tmp_path / "more", "going", epochs=4, planned=30, finished=False)
    (run / "history.csv").write_text((tmp_path / "more/going/history.csv").read_text())
    plots.plot_run(run)
    assert curves.read_bytes() != first  # ... a longer one a new figure, in the same place
    png_size(curves)
    no_temp_files(run / "plots")


def test_plot_run_is_cheap(tmp_path):
    run = write_run(tmp_path, "going", epochs=30, planned=40, finished=False)
    plots.plot_run(run)  # first call pays for imports and the font cache
    t = time.perf_counter()
    plots.plot_run(run)
    assert time.perf_counter() - t < 3.0  # ~0.3 s on an idle laptop core; loose for busy CI


def test_plot_run_single_epoch_and_torn_history(tmp_path):
    one = write_run(tmp_path, "one", epochs=1)
    assert len(plots.plot_run(one)) == 3
    torn = write_run(tmp_path, "torn", epochs=5, finished=False)
    tear_history(torn)
    assert [p.name for p in plots.plot_run(torn)] == ["curves.png"]


def test_plot_run_target_from_config(tmp_path):
    run = write_run(tmp_path, "t", epochs=4, finished=False)
    cfg = json.loads((run / "config.json").read_text())
    cfg["recipe"]["train"]["target"] = 0.8
    (run / "config.json").write_text(json.dumps(cfg))
    assert plots._target_of(plots.RunDir(run), None) == 0.8
    plots.plot_run(run)


# --------------------------------------------------------------------------- engine-written runs


def test_plot_run_on_a_run_the_engine_wrote(engine_runs, tmp_path, drawn):
    run = shutil.copytree(engine_runs["plain"], tmp_path / "plain")
    paths = plots.plot_run(run)
    assert [p.name for p in paths] == ["curves.png", "per_class.png", "confusion.png"]
    for p in paths:
        png_size(p)
    no_temp_files(run / "plots")
    rows, problems = plots.RunDir(run).read_history()
    metrics = json.loads((run / "metrics.json").read_text())
    assert problems == [] and [r["epoch"] for r in rows] == [1, 2]
    curves = drawn["curves.png"]  # the history as the engine wrote it
    assert has_line(curves, [1, 2], [100 * r["train_acc"] for r in rows])
    assert has_line(curves, [1, 2], [100 * r["test_acc"] for r in rows])
    assert has_line(curves, [1, 2], [r["test_loss"] for r in rows])
    assert has_line(curves, [1, 2], [r["lr"] for r in rows])
    assert metrics["test_acc"] == rows[-1]["test_acc"]
    (ax,) = drawn["per_class.png"].axes  # bars: metrics.json's per-class accuracy
    assert [b.get_width() for b in ax.patches] == pytest.approx(
        [100 * v for v in metrics["per_class_acc"]])
    assert f"overall {100 * metrics['test_acc']:.2f}%" in ax.get_legend_handles_labels()[1]
    cm = np.array(metrics["confusion"])
    assert cm.sum() == metrics["test_images"] == 200
    counts = sorted(int(t.get_text()) for t in drawn["confusion.png"].axes[0].texts)
    assert counts == sorted(cm.flatten().tolist())


def test_plot_run_draws_the_validation_curve(engine_runs, tmp_path, drawn):
    """A run with a validation split (test set read once, at the end) shows its validation
    accuracy per epoch: the only held-out curve it has."""
    run = shutil.copytree(engine_runs["val"], tmp_path / "val")
    assert [p.name for p in plots.plot_run(run)] == ["curves.png", "per_class.png",
                                                     "confusion.png"]
    rows, _ = plots.RunDir(run).read_history()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["selection"] == "validation" and metrics["val_images"] == 100
    assert [e for e, _ in rundir.tested(rows, "val_acc")] == [1, 2]
    assert rundir.tested(rows, "test_acc") == []  # the test set was not read during training
    assert has_line(drawn["curves.png"], [1, 2], [100 * r["val_acc"] for r in rows])


@pytest.mark.parametrize("make, needle", [
    (lambda p: p / "missing", "no such run directory"),
    (lambda p: p, "not a run directory"),
])
def test_plot_run_errors(tmp_path, make, needle):
    with pytest.raises(RunDirError, match=needle):
        plots.plot_run(make(tmp_path))


def test_plot_run_corrupt_metrics(tmp_path):
    run = write_run(tmp_path, "bad", epochs=3)
    (run / "metrics.json").write_text('{"test_acc": 0.5, "per_cl')
    with pytest.raises(RunDirError, match="metrics.json"):
        plots.plot_run(run)


def _rows(test_losses):
    return [{"epoch": i + 1, "lr": 0.1, "train_loss": 1.0 / (i + 1), "train_acc": 0.5,
             "test_loss": v, "test_acc": 0.5} for i, v in enumerate(test_losses)]


def test_loss_spikes_are_cut_off_not_scaled_to():
    """A 77-nat spike among losses near 1 (seed 004's Adam runs) must not flatten the rest."""
    spiky = _rows([1.2, 1.0, 0.9, 77.0, 0.8, 0.7, 0.7, 0.6, 0.6, 0.6])
    for fig in (plots.draw_curves(spiky, "run"),
                plots.draw_compare_curves([("a", spiky), ("b", _rows([1.0] * 10))])):
        ax_loss = [ax for ax in fig.axes if ax.get_title().startswith("Loss")][0]
        assert ax_loss.get_ylim()[1] < 3
        assert "1 point above" in ax_loss.get_title()
    smooth = plots.draw_curves(_rows([1.2, 1.0, 0.9, 0.85, 0.8, 0.7]), "run")
    ax_loss = [ax for ax in smooth.axes if ax.get_title().startswith("Loss")][0]
    assert ax_loss.get_title() == "Loss" and ax_loss.get_ylim()[1] > 1.2


def test_run_colors_distinct():
    colors = [plots.run_color(i) for i in range(25)]
    assert len(set(colors[:20])) == 20
    assert colors[3] == plots.run_color(3)  # stable


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def test_plot_misclassified(tmp_path):
    run = write_run(tmp_path, "r", epochs=2)
    labels = torch.arange(100) % 10
    preds = labels.clone()
    preds[::3] = (preds[::3] + 1) % 10  # 34 errors
    out = plots.plot_misclassified(run, _images(100), labels, preds, CLASSES, n=32)
    assert out == run / "plots" / "misclassified.png"
    w, h = png_size(out)
    assert h > 300  # 4 rows of 8
    # numpy inputs, no errors at all, a custom destination
    out2 = plots.plot_misclassified(run, _images(10).numpy(), np.arange(10), np.arange(10),
                                    CLASSES, out=tmp_path / "none.png")
    png_size(out2, min_w=100, min_h=100)
    with pytest.raises(ValueError, match="differ in length"):
        plots.plot_misclassified(run, _images(10), labels, preds, CLASSES)


def test_plot_samples_and_distribution(tmp_path, monkeypatch):
    labels = torch.arange(300) % 10
    labels[labels == 9] = 8  # class 9 absent: an empty row, no crash
    split = Split(_images(300), labels)
    drawn = []
    save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, out: drawn.append(fig) or save(fig, out))
    png_size(plots.plot_samples(split, CLASSES, tmp_path / "s.png", per_class=6))
    axes = drawn[0].axes
    rows = [axes[c * 6:(c + 1) * 6] for c in range(10)]
    assert [sum(len(ax.images) for ax in row) for row in rows] == [6] * 9 + [0]  # empty row
    assert rows[9][0].get_ylabel() == "truck\n(0)" and rows[8][0].get_ylabel() == "ship\n(60)"
    out = plots.plot_class_distribution(labels, torch.arange(50) % 10, CLASSES,
                                        tmp_path / "d.png")
    png_size(out)


class Counting:
    """Wraps a pipeline and records the batches it is called with."""

    def __init__(self, pipeline):
        self.pipeline, self.calls = pipeline, []
        self.cfg = pipeline.cfg

    def __call__(self, x, gen):
        self.calls.append(tuple(x.shape))
        return self.pipeline(x, gen)


@pytest.mark.parametrize("cfg", [
    AugmentConfig(cutout=8),
    AugmentConfig(backend="none"),
    AugmentConfig(brightness=0.3, flip=False, crop_pad=0),
])
def test_plot_augmentations_uses_the_pipeline(tmp_path, cfg):
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    pipe = Counting(Pipeline(cfg, mean, std))
    out = plots.plot_augmentations(_images(10), pipe, mean, std, tmp_path / "a.png",
                                   n_images=4, n_aug=5, labels=torch.arange(10),
                                   classes=CLASSES)
    assert pipe.calls == [(4, 3, 32, 32)] * 5
    png_size(out)


def test_augmentation_display_roundtrip():
    """With no augmentation, denormalising the pipeline's output gives the original back."""
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    x = _images(3)
    y = Pipeline(AugmentConfig(backend="none"), mean, std)(x, torch.Generator())
    back = y * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert torch.allclose(back * 255, x.float(), atol=1e-3)


# --------------------------------------------------------------------------- CLI


def test_cli_plot(tmp_path, capsys):
    run = write_run(tmp_path, "r", epochs=3)
    assert main(["plot", str(run)]) == 0
    printed = capsys.readouterr().out.split()
    assert [Path(p).name for p in printed] == ["curves.png", "per_class.png", "confusion.png"]


def test_cli_plot_missing(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such run directory" in err[0]


def test_cli_data_show_and_augment(shared_cifar_dir, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["data", "show", "--data-dir", str(shared_cifar_dir), "--out", str(out)]) == 0
    assert main(["data", "augment", "--recipe", "default", "--data-dir", str(shared_cifar_dir),
                 "--out", str(out)]) == 0
    printed = [Path(p) for p in capsys.readouterr().out.split()]
    assert [p.name for p in printed] == ["samples.png", "class_distribution.png",
                                         "augment-default.png"]
    for p in printed:
        png_size(p)


def test_cli_data_augment_bad_recipe(shared_cifar_dir, tmp_path, capsys):
    assert main(["data", "augment", "--recipe", "nope", "--data-dir", str(shared_cifar_dir),
                 "--out", str(tmp_path)]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
