"""The Python API: everything the CLI does is one of these functions first. `train` (and
`build`) live in training.py, the one training path."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .analysis import assess
from .data import CIFAR10, channel_stats, load_data
from .errors import CifarlabError
from .images import classify_files
from .inference import checkpoint_path, fixed_test_inputs, infer, load_model, score_logits  # noqa: F401
from .models import REGISTRY, create_model
from .models.registry import load_entry_points
from .recipe import resolve
from .training import build, instance_name, train  # noqa: F401  (the API's own)

__all__ = ["train", "evaluate", "predict", "load_data", "load_model", "build", "check",
           "summary", "network", "model_table", "augment_figure", "robustness", "export",
           "report", "plot", "data_stats", "data_figures", "search", "search_report",
           "search_best", "search_proxy"]


def evaluate(path: str | os.PathLike, *, data: CIFAR10 | None = None,
             data_dir: str | os.PathLike | None = None, tta: bool | None = None,
             model: nn.Module | None = None) -> dict:
    """Test accuracy, per-class accuracy and confusion matrix of a checkpoint or run dir
    (scored on the same input as the run: with augment.test, the test set augmented once),
    or of an exported .onnx file (run by onnxruntime). `model`: the network to load the
    weights into (see `load_model`)."""
    if Path(path).suffix == ".onnx":
        from .export import onnx_evaluate

        if tta is not None:
            raise CifarlabError("--tta: an exported .onnx file has no test-time augmentation")
        return onnx_evaluate(path, data=data, data_dir=data_dir)
    model, meta = load_model(path, model)
    if data is None:
        data = load_data(data_dir)
    images = fixed_test_inputs(data.test.images, meta)
    out = score_logits(infer(model, images, meta, tta=tta), data.test.labels, meta["loss"])
    out["classes"] = list(data.classes)
    return out


def predict(path: str | os.PathLike, images: list[str | os.PathLike], top_k: int = 1, *,
            model: nn.Module | None = None) -> list:
    """Per file: {'path', 'top': [(class, probability), ...]} or {'path', 'error'}; `path` a
    checkpoint, a run directory or an exported .onnx file."""
    if Path(path).suffix == ".onnx":
        from .export import onnx_predict

        return onnx_predict(path, images, top_k=top_k)
    model, meta = load_model(path, model)
    return classify_files(images, meta["classes"], lambda x: infer(model, x, meta),
                          log_probs=meta["loss"] == "nll", top_k=top_k)


def robustness(path: str | os.PathLike, *, data: CIFAR10 | None = None,
               data_dir: str | os.PathLike | None = None, images: int | None = None,
               seed: int = 0, progress: bool = True, log=print) -> dict:
    """Accuracy of a checkpoint, run directory or exported .onnx file on the clean test images
    and on the 15 CIFAR-10-C-style corruptions x 5 severities (regenerated, streamed):
    clean_acc, mca, relative, by_severity, by_corruption, worst_corruption, ... (see
    `robust.py`). `images`: a stratified subset of the test set (default: all 10,000);
    `seed`: the corruptions' random draws. A run directory (or a file in one) gets
    robustness.json (robustness-<stem>.json for an .onnx file) and a heatmap in plots/."""
    from .robust import evaluate_robustness

    return evaluate_robustness(path, data=data, data_dir=data_dir, images=images, seed=seed,
                               progress=progress, log=log)


def export(path: str | os.PathLike, out: str | os.PathLike | None = None, *,
           int8: bool = False, opset: int | None = None,
           data_dir: str | os.PathLike | None = None, parity_images: int = 2000) -> dict:
    """An ONNX file of a run or checkpoint (default RUN_DIR/model.onnx), kept only if it
    passes the parity gate against PyTorch; with `int8`, also a quantized file kept only
    within 1 point of the fp32 file's accuracy. What was written and measured: see
    `export.export_onnx`."""
    from .export import export_onnx

    if parity_images < 1:
        raise CifarlabError("--parity-images must be at least 1")
    return export_onnx(path, out, int8=int8, opset=opset, data_dir=data_dir,
                       parity_images=parity_images)


def report(run_dirs: list[str | os.PathLike], out: str | os.PathLike = "report", *,
           reached: float | None = None) -> Path:
    """One self-contained HTML page (out/index.html, returned) and out/report.md comparing
    runs; `reached`: a test accuracy whose first epoch each run's row shows."""
    from .report import make_report

    if reached is not None and not 0 < reached <= 1:
        raise CifarlabError(f"--reached {reached}: expected a fraction in (0, 1], e.g. 0.85")
    return make_report(run_dirs, out, target=reached)


def plot(run_dir: str | os.PathLike) -> list[Path]:
    """(Re)draw a run's figures into RUN_DIR/plots; the files written."""
    from .plots import plot_run

    return plot_run(run_dir)


def data_stats(data_dir: str | os.PathLike | None = None, *, download: bool = False) -> dict:
    """The data set's folder, sizes, per-channel mean/std (training set) and class counts."""
    from .data import class_counts

    d = load_data(data_dir, download=download)
    mean, std = channel_stats(d.train.images)
    return {"root": str(d.root), "train_images": len(d.train), "test_images": len(d.test),
            "mean": list(mean), "std": list(std), "classes": list(d.classes),
            "train_counts": list(class_counts(d.train.labels)),
            "test_counts": list(class_counts(d.test.labels))}


def data_figures(out_dir: str | os.PathLike = "plots", *,
                 data_dir: str | os.PathLike | None = None, download: bool = False
                 ) -> list[Path]:
    """Figures of the data: samples per class, class distribution (out_dir/*.png)."""
    from .plots import plot_class_distribution, plot_samples

    d = load_data(data_dir, download=download)
    out = Path(out_dir)
    return [plot_samples(d.train, d.classes, out / "samples.png"),
            plot_class_distribution(d.train.labels, d.test.labels, d.classes,
                                    out / "class_distribution.png")]


def search(search_file: str | os.PathLike, *, study: str | None = None,
           storage: str | None = None, minutes: float | None = None,
           trials: int | None = None, runs_dir: str | os.PathLike = "runs",
           data_dir: str | os.PathLike | None = None, workers: int = 1,
           threads: int | None = None, tag: str = "", queued_only: bool = False,
           storage_wait: float | None = None, log=print) -> tuple[int, dict]:
    """Run (or resume) a design search (a search file or built-in name): in this process, or
    with `workers` > 1 in that many worker processes, replaced if killed while the budget
    lasts. (exit status, the study's summary). See `search.run.run_search`."""
    from .search.run import run_search
    from .search.space import load_search
    from .search.workers import run_workers

    spec = load_search(search_file)
    name = study or spec.name
    if workers > 1:
        return run_workers(str(search_file), spec, name, workers, storage=storage,
                           minutes=minutes, trials=trials, runs_dir=runs_dir,
                           data_dir=data_dir, threads=threads, queued_only=queued_only,
                           storage_wait=storage_wait, log=log)
    return 0, run_search(spec, study=name, storage=storage, minutes=minutes, trials=trials,
                         runs_dir=runs_dir, data_dir=data_dir, threads=threads, log=log,
                         tag=tag, queued_only=queued_only, storage_wait=storage_wait)


def search_report(study: str, *, storage: str | None = None,
                  runs_dir: str | os.PathLike = "runs", out: str | os.PathLike | None = None
                  ) -> Path:
    """A study's HTML report (trials, Pareto front, history, importances); its index.html."""
    from .search.report import make_search_report

    return make_search_report(study, storage=storage, runs_dir=runs_dir, out=out)


def search_best(study: str, out: str | os.PathLike | None, *, storage: str | None = None,
                runs_dir: str | os.PathLike = "runs", trial: int | None = None,
                fill_budget: bool = False, data_dir: str | os.PathLike | None = None) -> dict:
    """The winner (or `trial`) written as an ordinary recipe at `out`; with `fill_budget`, its
    schedule scaled to the search's time budget (measured: `search.final.fill_budget`) and
    picked on validation first."""
    from .search.storage import load_study, resolve_study
    from .search.winner import write_best

    if not out:
        raise CifarlabError("search best: --out FILE.toml is required (the recipe to write)")
    name, url, sdir = resolve_study(study, storage, runs_dir)
    optuna_study = load_study(name, url)
    fill = None
    if fill_budget:
        from .search.final import fill_budget as scale

        def fill(t):
            return scale(optuna_study, t, sdir / "fill-budget", data_dir=data_dir)

    return write_best(optuna_study, out, trial, fill)


def search_proxy(study: str, *, storage: str | None = None,
                 runs_dir: str | os.PathLike = "runs", designs: int = 12,
                 data_dir: str | os.PathLike | None = None) -> dict:
    """How well the proxy rung ranks designs: Spearman between proxy and full-fidelity
    validation accuracy over `designs` designs spread over the proxy ranking (STUDY/proxy.json,
    named by the result's `json`)."""
    from .search.final import proxy_check
    from .search.storage import load_study, resolve_study

    name, url, sdir = resolve_study(study, storage, runs_dir)
    r = proxy_check(load_study(name, url), sdir, designs, data_dir=data_dir)
    return {**r, "json": str(sdir / "proxy.json")}


def network(model: str | nn.Module | None = None, model_args: dict | None = None, *,
            recipe: str | None = None) -> nn.Module:
    """A network: an instance as it is; a name (built-in or `FILE.py:NAME`) built with
    `model_args`; without a model, the recipe's network (its `model_args` under yours)."""
    if isinstance(model, nn.Module):
        if model_args:
            raise CifarlabError("model arguments go with a model name, not an instance")
        return model
    kwargs = {}
    if model is None:
        if not recipe:
            raise CifarlabError("name a model, or a recipe whose network to use (--recipe)")
        cfg = resolve(recipe)
        model, kwargs = cfg["model"], dict(cfg["model_args"])
    return create_model(model, **{**kwargs, **(model_args or {})})


def check(model: str | nn.Module | None = None, *, model_args: dict | None = None,
          recipe: str | None = None, max_params: int | None = None,
          max_macs: int | None = None, min_receptive_field: int | None = None,
          require=(), forbid=()) -> dict:
    """A network against rules (these plus a recipe's [constraints]): its facts (`params`,
    `macs`, `receptive_field`, `layers`, ...), `broken` (one line per broken rule) and `ok`.

        cifarlab.check(Net(), max_params=50_000, require=["gap"], forbid=["maxpool"])
    """
    require, forbid = list(require), list(forbid)
    if recipe:
        c = resolve(recipe)["constraints"]
        max_params = max_params or c["max_params"] or None
        max_macs = max_macs or c["max_macs"] or None
        min_receptive_field = min_receptive_field or c["min_receptive_field"] or None
        require, forbid = require + c["require"], forbid + c["forbid"]
    model_facts, broken = assess(network(model, model_args, recipe=recipe),
                                 max_params=max_params, max_macs=max_macs,
                                 min_receptive_field=min_receptive_field,
                                 require=require, forbid=forbid)
    return {**model_facts, "broken": broken, "ok": not broken}


def summary(model: str | nn.Module | None = None, *, model_args: dict | None = None,
            recipe: str | None = None) -> str:
    """The layer table (output shapes, params, MACs, receptive field), totals and the
    receptive-field table of a network, as `cifarlab summary` prints it."""
    from .analysis import format_rf_table, format_summary

    net = network(model, model_args, recipe=recipe)
    return (format_summary(net) + "\n\nReceptive field per layer (32x32 input):\n"
            + format_rf_table(net))


def model_table() -> list[dict]:
    """Every registered model (built-in and from packages' entry points): name, params,
    MACs, RF, provenance."""
    from .analysis import describe

    load_entry_points()
    return [{"name": name, **describe(create_model(name)), "provenance": info.provenance}
            for name, info in sorted(REGISTRY.items())]


def augment_figure(recipe: str, out_dir: str | os.PathLike, *,
                   data_dir: str | os.PathLike | None = None, download: bool = False) -> Path:
    """A figure of six training images beside versions augmented by the recipe."""
    from .augment import Pipeline
    from .data import splits
    from .plots import plot_augmentations

    cfg = resolve(recipe)  # validated before the data is read
    d = load_data(data_dir, download=download)
    train = splits(cfg, d)[0]
    mean, std = channel_stats(train.images)  # as the engine computes them
    pipeline = Pipeline(cfg["augment"], mean, std)
    # the first image of each of the first six classes present
    idx = [int(torch.nonzero(train.labels == c)[0]) for c in range(len(d.classes))
           if bool((train.labels == c).any())][:6]
    out = Path(out_dir) / f"augment-{Path(cfg['name']).name}.png"
    return plot_augmentations(train.images[idx], pipeline, mean, std, out,
                              n_images=len(idx), labels=train.labels[idx], classes=d.classes,
                              seed=cfg["train"]["seed"],
                              title=f"Augmentation of recipe '{cfg['name']}'")
