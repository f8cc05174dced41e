"""The Python API: everything the CLI does is one of these functions first."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from . import parallel as par
from .data import CIFAR10, load_data
from .engine import build_model, fit, resolve_device
from .errors import CifarlabError
from .evaluate import predict_logits, summarize
from .images import ImageError, load_image
from .models import create_model
from .plots import plot_misclassified, plot_run
from .recipe import resolve
from .rundir import RunDir, load_checkpoint, read_json

# Short keyword names for the overrides people use most (`train(epochs=3, lr=0.01)`).
SHORTCUTS = {
    "epochs": "train.epochs", "batch_size": "train.batch_size", "seed": "train.seed",
    "precision": "train.precision", "target": "train.target", "grad_clip": "train.grad_clip",
    "ema": "train.ema", "tta": "train.tta", "channels_last": "train.channels_last",
    "lr": "optim.lr", "optimizer": "optim.name", "weight_decay": "optim.weight_decay",
    "momentum": "optim.momentum", "label_smoothing": "loss.label_smoothing",
    "loss": "loss.name", "schedule": "schedule.name",
    "train_subset": "data.train_subset", "test_subset": "data.test_subset",
    "procs": "train.processes",
}


def _expand(overrides: dict) -> dict:
    return {SHORTCUTS.get(k, k): v for k, v in overrides.items() if v is not None}


def train(recipe: str | os.PathLike | dict = "default", *, data: CIFAR10 | None = None,
          data_dir: str | os.PathLike | None = None, download: bool = False,
          runs_dir: str | os.PathLike = "runs", name: str | None = None,
          resume: str | os.PathLike | None = None, progress: bool = True, log=print,
          max_seconds: float | None = None, plots: bool = True, device: str = "auto",
          **overrides) -> dict:
    """Train a recipe (built-in name, TOML path or dict) and return its metrics + `run_dir`.

    Overrides are keyword arguments: shortcuts (`epochs=3`, `lr=0.01`) or dotted keys passed
    as a dict (`**{"augment.cutout": 8}`). With `resume=RUN_DIR` the run continues from its
    `last.pt`, exactly as configured (no overrides). `plots` redraws runs/NAME/plots/ after
    every epoch (curves, per-class accuracy, confusion matrix, misclassified images).
    `device`: auto (a CUDA GPU if there is one), cpu, cuda or cuda:N; on a GPU, a recipe's
    `train.processes` (a CPU speed-up) is ignored: one process trains the same batches.
    """
    if resume is not None:
        run = RunDir(resume)
        if not run.config.is_file():
            raise CifarlabError(f"{run.path}: not a run directory (no config.json)")
        if _expand(overrides):
            raise CifarlabError("--resume continues a run exactly as configured; "
                                "no other options are allowed")
        cfg = resolve(read_json(run.config)["recipe"])
    else:
        cfg = resolve(recipe, _expand(overrides))
    build_model(cfg)  # unknown model, bad model_args, broken constraints: fail before data
    processes = cfg["train"]["processes"]  # under torchrun, torchrun decides the processes
    dev = resolve_device(device)
    if dev.type == "cuda" and processes > 1:
        log(f"train.processes = {processes} is for CPU training: one process on {dev}")
        processes = 1
    par.check_split(cfg["train"]["batch_size"], processes)  # before any run dir is made
    if data is None:
        data = load_data(data_dir, download=download)
    par.from_environment()  # started by torchrun: join its process group
    rank, world = par.rank_world()
    if resume is None:
        made = RunDir.create(runs_dir, name or cfg["name"]) if rank == 0 else None
        run = made if world == 1 else RunDir(par.broadcast_object(made and str(made.path)))

    def redraw(run: RunDir) -> None:  # plots never stop a training run
        try:
            plot_run(run.path)
        except Exception as e:
            log(f"warning: plots not updated ({e})")

    def finish(run: RunDir, images, labels, preds) -> None:
        redraw(run)
        try:
            plot_misclassified(run.path, images, labels, preds, data.classes)
        except Exception as e:
            log(f"warning: misclassified-images plot not written ({e})")

    def run_fit() -> dict:
        return fit(cfg, data, run, resume=resume is not None, progress=progress, log=log,
                   max_seconds=max_seconds, device=str(dev), on_epoch=redraw if plots else None,
                   on_end=finish if plots else None)

    local = processes > 1 and world == 1
    metrics = par.launch_local(processes, run_fit) if local else run_fit()
    return {"run_dir": str(run.path), **metrics}  # only run_dir on ranks other than 0


def _checkpoint_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise CifarlabError(f"{p}: no best.pt or last.pt in this directory")
    if not p.exists():
        raise CifarlabError(f"{p}: no such run directory or checkpoint")
    return p


def load_model(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """A model ready for inference from a checkpoint or run directory, and its metadata."""
    st = load_checkpoint(_checkpoint_path(path))
    meta = st["meta"]
    model = create_model(meta["model"], **meta["model_args"])
    model.load_state_dict(st["ema"] if st.get("ema") else st["model"])
    if meta.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), meta


def _infer(model, meta, images: torch.Tensor, tta: bool | None = None) -> torch.Tensor:
    return predict_logits(model, images, meta["mean"], meta["std"],
                          precision=meta["precision"], channels_last=meta["channels_last"],
                          tta=meta["tta"] if tta is None else tta,
                          tta_shift=meta.get("tta_shift", 0))


def evaluate(path: str | os.PathLike, *, data: CIFAR10 | None = None,
             data_dir: str | os.PathLike | None = None, tta: bool | None = None) -> dict:
    """Test accuracy, per-class accuracy and confusion matrix of a checkpoint or run dir."""
    model, meta = load_model(path)
    if data is None:
        data = load_data(data_dir)
    out = summarize(_infer(model, meta, data.test.images, tta), data.test.labels, meta["loss"])
    out["classes"] = list(data.classes)
    return out


def predict(path: str | os.PathLike, images: list[str | os.PathLike], top_k: int = 1) -> list:
    """Per file: {'path', 'top': [(class, probability), ...]} or {'path', 'error'}."""
    model, meta = load_model(path)
    k = max(1, min(top_k, len(meta["classes"])))
    results, loaded, rows = [], [], []
    for p in images:
        try:
            loaded.append(load_image(p))
            rows.append(len(results))
            results.append({"path": str(p)})
        except ImageError as e:
            results.append({"path": str(p), "error": str(e)})
    if loaded:
        logits = _infer(model, meta, torch.stack(loaded))
        probs = logits.softmax(1) if meta["loss"] != "nll" else logits.exp()
        top_p, top_i = probs.topk(k, dim=1)
        for r, ps, ids in zip(rows, top_p.tolist(), top_i.tolist(), strict=True):
            results[r]["top"] = [(meta["classes"][i], p) for i, p in zip(ids, ps, strict=True)]
    return results
