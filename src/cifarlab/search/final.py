"""Trainings after a search, on the search's own protocol (the training set minus its validation
split; the test set is never read):

- `proxy_check`: what the proxy rung is worth (`fidelity.measure_proxy`): designs picked across
  the proxy ranking trained on the full schedule, and the Spearman correlation
  (`cifarlab search proxy STUDY`);
- `fill_budget`: the winner's schedule scaled to the time budget. With
  `max_train_time_vs_base = 1.0` the hand recipe's whole time is the budget, and a winner
  predicted at 0.74x of it leaves time unused: its epochs (and its low-resolution epochs, in
  proportion) are scaled by up to budget / predicted time; the scaled candidates are trained
  and the best validation accuracy wins (the winner's own schedule is the trial itself).
  `cifarlab search best STUDY --out W.toml --fill-budget`.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from ..recipe import low_res_epochs, resolve
from .fidelity import measure_proxy
from .space import SearchError, SearchSpec
from .storage import spec_of
from .worker import load_train_data, trial_recipe


def _train_trial(spec: SearchSpec, study: str, t: FrozenTrial, runs_dir: Path, name: str,
                 data, extra: dict | None = None, max_seconds: float | None = None) -> dict:
    """Trial t's recipe on the search's protocol (full schedule, no pruning) with `extra`
    overrides; its metrics."""
    from ..training import train as train_run

    raw, over = trial_recipe(spec, study, t.number, t.user_attrs["model_args"],
                             t.user_attrs.get("train") or {})
    over.update(extra or {})
    return train_run(copy.deepcopy(raw), runs_dir=runs_dir, name=name, data=data,
                     progress=False, plots=False, log=lambda s: None, max_seconds=max_seconds,
                     **over)


def proxy_check(study: optuna.Study, study_dir: Path, designs: int = 12, data=None,
                data_dir: str | os.PathLike | None = None,
                log: Callable[[str], None] = print) -> dict:
    """`fidelity.measure_proxy` on a study: results in STUDY_DIR/proxy.json."""
    spec = spec_of(study)
    if not spec.search["fidelity"]:
        raise SearchError(f"study '{study.study_name}' has no proxy rung ([search] fidelity)")
    if data is None:
        data = load_train_data(data_dir)

    def full(t: FrozenTrial) -> float:
        m = _train_trial(spec, study.study_name, t, study_dir / "proxy-check",
                         f"trial-{t.number:04d}-full", data)
        return float(m["val_acc"])

    trials = study.get_trials(deepcopy=False)
    if sum(1 for t in trials if "proxy_acc" in t.user_attrs) < 3:
        raise SearchError(f"study '{study.study_name}' has fewer than 3 trials with a proxy "
                          "value")
    return measure_proxy(trials, designs, full, study_dir / "proxy.json", log)


# ------------------------------------------------------------------------ filling the budget

def headroom(spec: SearchSpec, t: FrozenTrial) -> float:
    """Budget / the trial's predicted training time (>= 1 when it fits), from the search's
    time rule; SearchError when the search has none."""
    c, ua = spec.constraints, t.user_attrs
    ratios = []
    if c["max_train_time_vs_base"] and isinstance(ua.get("time_vs_base"), int | float):
        ratios.append(c["max_train_time_vs_base"] / ua["time_vs_base"])
    if c["max_train_seconds"] and isinstance(ua.get("predicted_seconds"), int | float):
        ratios.append(c["max_train_seconds"] / ua["predicted_seconds"])
    if not ratios:
        raise SearchError("--fill-budget needs the search's time rule ([constraints] "
                          "max_train_time_vs_base or max_train_seconds) and the trial's "
                          "predicted time")
    return min(ratios)


def scaled_schedules(cfg: dict, room: float) -> list[dict]:
    """Overrides of the scaled candidates: epochs x up to `room` (the most that fits and one
    halfway), low-resolution epochs in proportion; [] when nothing more fits."""
    t = cfg["train"]
    e0, low0 = t["epochs"], low_res_epochs(t)  # the low-res epochs the trial trained
    top = math.floor(e0 * room + 1e-9)
    out = []
    for e in sorted({top, round(e0 * (1 + room) / 2)}):
        if e <= e0:
            continue
        # in proportion; none when the trial had none (its network may not take low_res px)
        over = {"train.epochs": e, "train.low_res_epochs": max(1, round(low0 * e / e0))} \
            if low0 else {"train.epochs": e, "train.low_res": 0, "train.low_res_epochs": 0}
        out.append(over)
    return out


def fill_budget(study: optuna.Study, t: FrozenTrial, runs_dir: Path, data=None,
                data_dir: str | os.PathLike | None = None,
                log: Callable[[str], None] = print) -> dict:
    """Scale trial t's schedule to the time budget and pick on validation. Returns
    {'headroom', 'candidates': [{'overrides', 'val_acc', 'epochs', 'train_seconds',
    'stopped_by', 'run_dir'}...], 'chosen': overrides ({} = the trial's own schedule)}."""
    spec = spec_of(study)
    room = headroom(spec, t)
    raw, over = trial_recipe(spec, study.study_name, t.number, t.user_attrs["model_args"],
                             t.user_attrs.get("train") or {})
    cfg = resolve(copy.deepcopy(raw), over)
    own = {"overrides": {}, "epochs": cfg["train"]["epochs"], "val_acc": t.user_attrs.get(
        "val_acc"), "train_seconds": t.user_attrs.get("train_seconds"), "stopped_by": None,
        "run_dir": t.user_attrs.get("run_dir"), "note": "the trial itself"}
    cands = [own]
    scaled = scaled_schedules(cfg, room)
    if scaled and data is None:
        data = load_train_data(data_dir)
    base_s = t.user_attrs.get("base_predicted_seconds")
    cap = (1.1 * spec.constraints["max_train_time_vs_base"] * base_s
           if spec.constraints["max_train_time_vs_base"] and base_s else None)
    for i, o in enumerate(scaled):
        log(f"fill budget: trial {t.number} with {o['train.epochs']} epochs instead of "
            f"{own['epochs']} (headroom {room:.2f}x)")
        m = _train_trial(spec, study.study_name, t, runs_dir, f"fill-{t.number:04d}-{i + 1}",
                         data, o, max_seconds=cap)
        cands.append({"overrides": o, "epochs": m.get("epochs"), "val_acc": m.get("val_acc"),
                      "train_seconds": m.get("train_seconds"), "stopped_by":
                      m.get("stopped_by"), "run_dir": m.get("run_dir")})
    ok = [c for c in cands if isinstance(c["val_acc"], int | float)
          and (not c["overrides"] or c["epochs"] == c["overrides"]["train.epochs"])]
    best = max(ok, key=lambda c: (c["val_acc"], -c["epochs"])) if ok else own
    return {"headroom": room, "candidates": cands, "chosen": best["overrides"],
            "val_split": spec.search["val_split"]}
