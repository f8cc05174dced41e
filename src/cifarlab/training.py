"""Training a recipe into a run directory: `train` checks everything (recipe keys and
cross-key rules, the model's constraints, device, processes, split sizes) before it creates a
run directory, builds and traces the model once (`build`), and hands it to `engine.fit`. The
one training path: the CLI, the search and the benchmarks all reach it (`api.train`).
"""

from __future__ import annotations

import copy
import inspect
import os
from pathlib import Path

import torch
from torch import nn

from . import parallel as par
from .analysis import assess, macs_at
from .data import CIFAR10, check_sizes, load_data
from .device import resolve_device
from .engine import BuiltModel, check_low_res, fit
from .errors import CifarlabError
from .models import REGISTRY, create_model
from .models.registry import model_source
from .recipe import expand_shortcuts, low_res_epochs, resolve
from .rundir import RunDir, read_json


def instance_name(model: nn.Module) -> str:
    """What a run records for a model instance: its registered name, else `FILE.py:CLASS`
    when its class lives at the top of a Python file, else `instance:CLASS` (such a run's
    checkpoints load only into a network the caller passes)."""
    cls = type(model)
    for name, info in REGISTRY.items():
        if info.builder is cls:
            return name
    try:
        file = inspect.getsourcefile(cls)
    except TypeError:  # defined in an interactive session
        file = None
    if file and file.endswith(".py") and Path(file).is_file() and "<" not in cls.__qualname__:
        return f"{Path(file).resolve()}:{cls.__qualname__}"
    return f"instance:{cls.__qualname__}"


def build(cfg: dict, model: nn.Module | None = None) -> BuiltModel:
    """The recipe's model with its seed's initial weights (or a copy of `model`, a network
    instance, with its own weights), its facts from one trace, refused (one line per broken
    rule) if it breaks the recipe's [constraints]."""
    torch.manual_seed(cfg["train"]["seed"])
    if model is None:
        source = model_source(cfg["model"])
        model = create_model(cfg["model"], **cfg["model_args"])
    else:
        spec = cfg["model"]
        source = model_source(spec) if not spec.startswith("instance:") else None
        source = {**(source or {}), "instance": True}
        model = copy.deepcopy(model)
    rng = torch.get_rng_state()
    c = cfg["constraints"]
    model_facts, broken = assess(model, max_params=c["max_params"] or None,
                                 max_macs=c["max_macs"] or None,
                                 min_receptive_field=c["min_receptive_field"] or None,
                                 require=c["require"], forbid=c["forbid"])
    if model_facts["outputs"] != 10:
        raise CifarlabError(f"model '{cfg['model']}' returns {model_facts['outputs']} values per "
                            "image; CIFAR-10 needs 10 logits")
    if broken:
        raise CifarlabError(f"model '{cfg['model']}' breaks recipe '{cfg['name']}': "
                            + "; ".join(broken))
    if low_res_epochs(cfg["train"]):  # progressive resizing: takes the size? its compute
        check_low_res(model, cfg["train"]["low_res"], torch.device("cpu"))
        model_facts["low_res_macs"] = macs_at(model, cfg["train"]["low_res"])
    model_facts["model_source"] = source
    return BuiltModel(model, model_facts, rng)


def train(recipe: str | os.PathLike | dict = "default", *,
          model: str | nn.Module | None = None, data: CIFAR10 | None = None,
          data_dir: str | os.PathLike | None = None, download: bool = False,
          runs_dir: str | os.PathLike = "runs", name: str | None = None,
          resume: str | os.PathLike | None = None, progress: bool = True, log=print,
          max_seconds: float | None = None, plots: bool = True, device: str = "auto",
          epoch_callback=None, **overrides) -> dict:
    """Train a recipe (built-in name, TOML path or dict) and return its metrics + `run_dir`.

    `model` replaces the recipe's network: a name (built-in or `FILE.py:NAME`) or an
    `nn.Module` instance, trained from its own weights (the instance itself is not changed:
    `load_model(run_dir, model=net)` loads the trained weights into it); with `resume`, pass
    the instance again. Overrides are keyword arguments: shortcuts (`epochs=3`, `lr=0.01`,
    `val_split=5000`; see recipe.SETTINGS) or dotted keys passed as a dict
    (`**{"augment.cutout": 8}`). With `resume=RUN_DIR` the run continues from its `last.pt`,
    exactly as configured (no overrides). `plots` redraws runs/NAME/plots/ after every epoch
    (curves, per-class accuracy, confusion matrix, misclassified images). `device`: auto (a
    CUDA GPU if there is one), cpu, cuda or cuda:N; on a GPU, a recipe's `train.processes` (a
    CPU speed-up) is ignored: one process trains the same batches. `epoch_callback(row)`: see
    `engine.fit`.
    """
    if resume is not None:
        run = RunDir(resume)
        if not run.config.is_file():
            raise CifarlabError(f"{run.path}: not a run directory (no config.json)")
        if expand_shortcuts(overrides):
            raise CifarlabError("--resume continues a run exactly as configured; "
                                "no other options are allowed")
        cfg = resolve(read_json(run.config)["recipe"])
    else:
        if model is not None:
            overrides["model"] = model if isinstance(model, str) else instance_name(model)
        cfg = resolve(recipe, overrides)
    instance = model if isinstance(model, nn.Module) else None
    built = build(cfg, instance)  # unknown model, bad args, broken rules: fail before data
    processes = cfg["train"]["processes"]  # under torchrun, torchrun decides the processes
    dev = resolve_device(device)
    if dev.type == "cuda" and processes > 1:
        log(f"train.processes = {processes} is for CPU training: one process on {dev}")
        processes = 1
    if data is None:
        data = load_data(data_dir, download=download)
    check_sizes(cfg, data)
    par.from_environment()  # started by torchrun: join its process group
    rank, world = par.rank_world()
    if resume is None:
        made = RunDir.create(runs_dir, name or cfg["name"]) if rank == 0 else None
        run = made if world == 1 else RunDir(par.broadcast_object(made and str(made.path)))

    def redraw(run: RunDir) -> None:  # plots never stop a training run
        from .plots import plot_run

        try:
            plot_run(run.path)
        except Exception as e:
            log(f"warning: plots not updated ({e})")

    def plot_final(run: RunDir, images, labels, preds) -> None:
        from .plots import plot_misclassified

        redraw(run)
        try:
            plot_misclassified(run.path, images, labels, preds, data.classes)
        except Exception as e:
            log(f"warning: misclassified-images plot not written ({e})")

    def run_fit() -> dict:
        return fit(cfg, data, run, built, resume=resume is not None, progress=progress,
                   log=log, max_seconds=max_seconds, device=str(dev),
                   on_epoch=redraw if plots else None, on_end=plot_final if plots else None,
                   epoch_callback=epoch_callback)

    local = processes > 1 and world == 1
    metrics = par.launch_local(processes, run_fit) if local else run_fit()
    return {"run_dir": str(run.path), **metrics}  # only run_dir on ranks other than 0
