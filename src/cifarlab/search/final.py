"""Trainings after a search, on the search's own protocol (the training set minus its validation
split; the test set is never read):

- `proxy_check`: what the proxy rung is worth (`fidelity.measure_proxy`): designs picked across
  the proxy ranking trained on the full schedule, and the Spearman correlation
  (`cifarlab search proxy STUDY`);
- `fill_budget`: the winner's schedule scaled to the time budget. With
  `max_train_time_vs_base = 1.0` the hand recipe's whole time is the budget, and a winner
  that trains in 0.9x of it leaves time unused, and one the search's few-step timing let
  through may train slightly over it. The base recipe, the trial's own schedule and schedules
  around the room it leaves (longer or shorter; low-resolution epochs in proportion) are
  trained one after another, alike, so the budget and each schedule's time are measured; the
  best validation accuracy among those within the budget wins - unless the base recipe itself,
  trained alike with the budget's whole time, validates at least as well (`base_wins`: then
  `winner.write_best` writes the study's base trial instead).
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

from ..recipe import resolve
from .fidelity import measure_proxy
from .space import SearchError, SearchSpec
from .storage import spec_of
from .timing import schedule, time_room
from .worker import load_train_data, protocol, trial_recipe

FIT = 0.98  # a schedule fits within 98% of the budget: timing varies by a few % run to run
MAX_FILL_RUNS = 6  # schedules measured at most (besides the base recipe)
DRIFT_WARN = 0.05  # the base recipe's two timings differ by more: said in the log


def _train_quietly(raw: dict, over: dict, runs_dir: Path, name: str, data,
                   max_seconds: float | None = None) -> dict:
    """One training run of a recipe with dotted overrides, no progress bar, plots or log
    lines; its metrics."""
    from ..training import train as train_run

    return train_run(copy.deepcopy(raw), runs_dir=runs_dir, name=name, data=data,
                     progress=False, plots=False, log=lambda s: None, max_seconds=max_seconds,
                     **over)


def _train_trial(spec: SearchSpec, study: str, t: FrozenTrial, runs_dir: Path, name: str,
                 data, extra: dict | None = None, max_seconds: float | None = None) -> dict:
    """Trial t's recipe on the search's protocol (full schedule, no pruning) with `extra`
    overrides; its metrics."""
    raw, over = trial_recipe(spec, study, t.number, t.user_attrs["model_args"],
                             t.user_attrs.get("train") or {})
    return _train_quietly(raw, {**over, **(extra or {})}, runs_dir, name, data, max_seconds)


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
    ua = t.user_attrs
    r = time_room(spec.constraints, ua.get("predicted_seconds"), ua.get("time_vs_base"))
    if r is None:
        raise SearchError("--fill-budget needs the search's time rule ([constraints] "
                          "max_train_time_vs_base or max_train_seconds) and the trial's "
                          "predicted time")
    return r


def epochs_around(e0: int, room: float) -> list[int]:
    """Epochs to measure beside the trial's own `e0`, given `room` = budget / its time: the
    most that should fit, one fewer and one more (timing is off by several percent either
    way); longer schedules only when its own fits, shorter ones only when it does not."""
    top = math.floor(e0 * room + 1e-9)
    if room >= 1:
        return list(range(max(e0 + 1, top - 1), max(e0 + 1, top + 1) + 1))
    return [e for e in (top + 1, top, top - 1) if 1 <= e < e0]


def budget_of(spec: SearchSpec, base_seconds: float | None) -> float:
    """The time rule's budget in training seconds, given the base recipe's measured time."""
    c = spec.constraints
    budgets = [c["max_train_time_vs_base"] * base_seconds] if base_seconds else []
    return min(budgets + ([float(c["max_train_seconds"])] if c["max_train_seconds"] else []))


def time_base(spec: SearchSpec, runs_dir: Path, data, same: dict, name: str,
              log: Callable[[str], None]) -> dict | None:
    """The base recipe trained here as the candidates are: its metrics (its training seconds,
    its validation accuracy); None when the time rule does not need it (`max_train_seconds`
    alone)."""
    if not spec.constraints["max_train_time_vs_base"]:
        return None
    log(f"fill budget: timing the base recipe '{spec.base}' (the budget)")
    return _train_quietly(spec.base_recipe, {**protocol(spec), **same}, runs_dir, name, data)


def base_is_an_answer(spec: SearchSpec) -> bool:
    """The base recipe itself meets the time rule: its whole time is the budget."""
    c = spec.constraints
    return (c["max_train_time_vs_base"] or 0) >= 1 and not c["max_train_seconds"]


def is_base_design(spec: SearchSpec, t: FrozenTrial) -> bool:
    """Trial t is the base recipe itself: a queued design labelled with the base recipe's name
    (the hand-written answer as trial 0), under a time rule whose budget is the base recipe's
    whole time. Its schedule takes the budget by definition; timing it against a margin would
    only shorten the hand recipe by noise."""
    return t.user_attrs.get("label") == spec.base_recipe.get("name") and base_is_an_answer(spec)


def base_trial(study: optuna.Study) -> FrozenTrial | None:
    """The study's complete trial that is the base recipe itself (`is_base_design`), if any."""
    spec = spec_of(study)
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return next((t for t in done if is_base_design(spec, t)), None)


def fill_budget(study: optuna.Study, t: FrozenTrial, runs_dir: Path, data=None,
                data_dir: str | os.PathLike | None = None,
                log: Callable[[str], None] = print) -> dict:
    """Scale trial t's schedule to the time budget and pick on validation. Trained one after
    another here, all alike (the search's protocol with the base recipe's processes, as the
    winner will train), so times are measured, not predicted: the base recipe (the budget),
    the trial's own schedule, then `epochs_around` its measured room (longer when it fits,
    shorter when not), then shorter still while none fits, then the base recipe again (the
    machine's speed drifts over minutes: the budget comes from the mean of the two, their
    difference is kept as 'drift'). A schedule fits when it trains all its epochs within FIT
    of the budget (a margin for run-to-run noise); the best validation accuracy among those
    that fit wins (the machine should be otherwise idle). The base recipe's own design
    (`is_base_design`) keeps its schedule untimed: {'headroom', 'base_design': True,
    'candidates': [], 'chosen': {}}. Otherwise returns {'headroom' (predicted by
    the search), 'measured_headroom', 'fit', 'budget_seconds', 'base_seconds' (the mean),
    'base_runs', 'drift', 'base_val_accs' (the base recipe's runs' validation accuracies),
    'base_wins' (the base recipe meets the time rule and validates at least as well as the
    chosen schedule, or none fits), 'processes', 'candidates': [{'overrides',
    'planned_epochs', 'epochs', 'val_acc', 'train_seconds', 'trained_all', 'fits',
    'stopped_by', 'run_dir'} ...], 'chosen': overrides ({}: the trial's own schedule; the
    shortest measured when none fits)}."""
    spec = spec_of(study)
    room = headroom(spec, t)
    if is_base_design(spec, t):
        log(f"fill budget: trial {t.number} is the base recipe's own design and schedule "
            f"(enqueued as '{t.user_attrs['label']}'): it is the budget, nothing to fill")
        return {"headroom": room, "base_design": True, "candidates": [], "chosen": {},
                "val_split": spec.search["val_split"]}
    raw, over = trial_recipe(spec, study.study_name, t.number, t.user_attrs["model_args"],
                             t.user_attrs.get("train") or {})
    cfg = resolve(copy.deepcopy(raw), over)
    e0 = cfg["train"]["epochs"]
    same = {"train.processes": resolve(copy.deepcopy(spec.base_recipe))["train"]["processes"]}
    if data is None:
        data = load_train_data(data_dir)
    first = time_base(spec, runs_dir, data, same, "fill-base", log)
    base_runs = [first] if first else []  # the base recipe's runs (metrics): the budget
    budget = budget_of(spec, float(first["train_seconds"]) if first else None)
    cands: list[dict] = []

    def fits(c: dict) -> bool:  # all its epochs trained, within FIT of the budget
        return bool(c["trained_all"] and c["train_seconds"] <= FIT * budget)

    def measure(e: int) -> dict:
        o = schedule(cfg, e)
        log(f"fill budget: trial {t.number} with {e} epochs (its own: {e0}; predicted "
            f"headroom {room:.2f}x, budget {budget:.0f} s)")
        m = _train_trial(spec, study.study_name, t, runs_dir, f"fill-{t.number:04d}-{len(cands)}",
                         data, {**o, **same}, max_seconds=1.1 * budget)
        c = {"overrides": o, "planned_epochs": e, "epochs": m.get("epochs"),
             "val_acc": m.get("val_acc"), "train_seconds": m.get("train_seconds"),
             "trained_all": m.get("epochs") == e and isinstance(m.get("val_acc"), int | float),
             "stopped_by": m.get("stopped_by"), "run_dir": m.get("run_dir")}
        c["fits"] = fits(c)
        cands.append(c)
        return c

    own = measure(e0)
    # its full schedule's time, from the epochs it trained when stopped by time
    full = own["train_seconds"] * e0 / max(1, own["epochs"] or 0)
    measured_room = FIT * budget / full
    for e in epochs_around(e0, measured_room):
        measure(e)
    while not any(c["fits"] for c in cands) and len(cands) < MAX_FILL_RUNS:
        shortest = min(c["planned_epochs"] for c in cands)
        if shortest <= 1:
            break
        measure(shortest - 1)
    drift = None
    if base_runs:  # the machine's speed drifts over minutes: time the base again, use the mean
        base_runs.append(time_base(spec, runs_dir, data, same, "fill-base-after", log))
    base = [float(m["train_seconds"]) for m in base_runs]  # the base recipe's seconds
    if base:
        drift = base[1] / base[0] - 1
        if abs(drift) > DRIFT_WARN:
            log(f"fill budget: the base recipe trained {abs(100 * drift):.0f}% "
                f"{'slower' if drift > 0 else 'faster'} after the schedules than before: this "
                "machine's speed drifted, the choice is uncertain (run it again on an "
                "otherwise idle machine)")
        budget = budget_of(spec, sum(base) / 2)
        for c in cands:
            c["fits"] = fits(c)
    ok = [c for c in cands if c["fits"]]
    best = (max(ok, key=lambda c: (c["val_acc"], -c["epochs"])) if ok
            else min(cands, key=lambda c: c["planned_epochs"]))
    # the base recipe trained alike, with its whole time (the budget): when it meets the time
    # rule and validates at least as well as every schedule of the trial that fits, it is the
    # better answer
    base_val = [float(m["val_acc"]) for m in base_runs
                if isinstance(m.get("val_acc"), int | float)]
    base_val_acc = sum(base_val) / len(base_val) if base_val else None
    base_wins = bool(base_is_an_answer(spec) and base_val_acc is not None
                     and (not ok or base_val_acc >= best["val_acc"]))
    if base_wins:
        log(f"fill budget: the base recipe '{spec.base}' validated at {base_val_acc:.4f}, "
            + (f"above trial {t.number}'s best schedule within the budget "
               f"({best['val_acc']:.4f})" if ok
               else f"and no schedule of trial {t.number} fits the budget"))
    return {"headroom": room, "measured_headroom": measured_room, "fit": FIT,
            "budget_seconds": budget, "base_seconds": sum(base) / len(base) if base else None,
            "base_runs": base, "drift": drift,
            "base_val_accs": base_val, "base_wins": base_wins,
            "processes": same["train.processes"], "candidates": cands,
            "chosen": best["overrides"], "val_split": spec.search["val_split"]}
