"""The winner as an ordinary recipe (`cifarlab search best`)."""

from __future__ import annotations

import copy
import json
import os
import tomllib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..recipe import nest, resolve
from .rules import rules_table
from .space import SearchError, to_toml
from .storage import spec_of
from .trials import best_trials, outcome, val_acc


def pick(study: optuna.Study, number: int | None = None) -> FrozenTrial:
    """Trial `number` (it must be complete), else the best one (several objectives: the
    front's best validation accuracy)."""
    if number is not None:
        ts = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        if not ts:
            raise SearchError(f"study '{study.study_name}' has no trial {number}")
        if ts[0].state != TrialState.COMPLETE:
            raise SearchError(f"trial {number} is {outcome(ts[0])}, not complete")
        return ts[0]
    best = best_trials(study)
    if not best:
        raise SearchError(f"study '{study.study_name}' has no complete trial yet")
    return best[0]


def winner_recipe(study: optuna.Study, t: FrozenTrial, name: str = "searched",
                  schedule: dict | None = None) -> dict:
    """The trial as an ordinary recipe: the base recipe with the trial's network and training
    settings and the search's rules, trained on the full training set (no validation split)
    and tested once."""
    spec = spec_of(study)
    raw = copy.deepcopy(spec.base_recipe)
    raw["name"] = name
    val = val_acc(t) if t.values else None
    raw["description"] = (f"winner of cifarlab search '{study.study_name}' (trial {t.number}, "
                          + (f"val acc {val:.4f}" if val is not None else "not complete") + ")")
    raw["model"] = spec.model  # family, or the base's own network (its absolute path)
    raw["model_args"] = copy.deepcopy(t.user_attrs["model_args"])
    raw["constraints"] = rules_table(spec.constraints)
    train = nest({**(t.user_attrs.get("train") or {}), **(schedule or {})})
    for section, vals in train.items():
        raw.setdefault(section, {})
        raw[section].update(vals)
    raw.setdefault("data", {}).pop("val_split", None)
    raw = {k: v for k, v in raw.items() if not (isinstance(v, dict) and not v
                                                 and k != "model_args")}
    order = ["name", "description", "model", "model_args"]
    raw = {**{k: raw[k] for k in order if k in raw},
           **{k: v for k, v in raw.items() if k not in order}}
    resolve(copy.deepcopy(raw))  # it must be a valid recipe
    return raw


def write_best(study: optuna.Study, out: str | os.PathLike, number: int | None = None,
               fill: Callable[[FrozenTrial], dict] | None = None) -> dict:
    """Write the winner (or trial `number`) as a recipe file; return {'path', 'trial', ...}.
    `fill(trial)`: the final stage that scales its schedule to the time budget
    (`final.fill_budget`); what it compared is kept in OUT.fill.json and the header."""
    from ..rundir import atomic_write_text

    out = Path(out)
    if out.suffix != ".toml":
        raise SearchError(f"--out {out}: the recipe file must end in .toml")
    t = pick(study, number)
    filled = fill(t) if fill else None
    schedule = filled["chosen"] if filled else None
    if filled and filled.get("base_wins") and number is None:
        from .final import base_trial  # the base recipe validated better, trained alike

        b = base_trial(study)
        if b is not None:
            filled, t, schedule = {**filled, "winner_trial": t.number}, b, None
    raw = winner_recipe(study, t, out.stem, schedule)
    ua = t.user_attrs
    header = "\n".join([
        f"Written by `cifarlab search best` from study '{study.study_name}', trial {t.number}",
        f"({datetime.now().isoformat(timespec='seconds')}).",
        f"Design: {ua.get('design')}",
        f"{ua.get('params', 0):,} params, {ua.get('macs', 0):,} MACs, receptive field "
        f"{ua.get('receptive_field')};",
        f"validation accuracy {val_acc(t):.4f} on {spec_of(study).search['val_split']:,} "
        "held-out training images"
        + (f" ({ua['corrupt_acc']:.4f} on corrupted ones)." if "corrupt_acc" in ua else "."),
        *(_fill_lines(filled) if filled else []),
        "Train it on the full training set (the test set is read once, at the end):",
        f"  cifarlab train --recipe {out}"])
    text = to_toml(raw, header)
    parsed = tomllib.loads(text)
    if parsed != raw:
        raise SearchError("internal error: the recipe does not read back as written")
    atomic_write_text(out, text)
    if filled:
        atomic_write_text(out.with_suffix(".fill.json"), json.dumps(filled, indent=1) + "\n")
    return {"path": str(out), "trial": t.number, "values": t.values, "fill": filled,
            "objectives": spec_of(study).objectives,
            "design": ua.get("design"), "recipe": raw}


def _fill_lines(filled: dict) -> list[str]:
    """The header's account of `--fill-budget`: each schedule's time and validation accuracy."""
    if filled.get("base_design"):
        return ["--fill-budget: this trial is the base recipe's own design and schedule (queued "
                "as the hand-written answer): its time is the budget, so the schedule is kept."]
    base = filled.get("base_runs") or [b for b in [filled.get("base_seconds")] if b]
    timed = " and ".join(f"{b:.0f}" for b in base)
    lines = [f"--fill-budget: budget {filled['budget_seconds']:.0f} s of training"
             + (f" (the base recipe trained here in {timed} s"
                + (", before and after)" if len(base) > 1 else ")") if base else "")
             + f"; each schedule trained alike ({filled['processes']} process(es)), compared "
             f"on validation among those within {filled.get('fit', 1.0):.0%} of it:"]
    for c in filled["candidates"]:
        acc, secs = c["val_acc"], c["train_seconds"]
        planned = c.get("planned_epochs", c["epochs"])  # fill records before it existed
        lines.append(f"  {planned} epochs: val acc "
                     + (f"{acc:.4f}" if isinstance(acc, int | float) else "-")
                     + (f", {secs:.0f} s" if isinstance(secs, int | float) else "")
                     + ("" if c["fits"] else " (over the budget)")
                     + (" (the trial's own schedule)" if not c["overrides"] else "")
                     + (f", stopped by {c['stopped_by']} after {c['epochs']} epochs"
                        if c.get("stopped_by") else "")
                     + ("  <- chosen" if c["overrides"] == filled["chosen"]
                        and filled.get("winner_trial") is None else ""))
    if not any(c["fits"] for c in filled["candidates"]):
        lines.append("  none fits the budget: the shortest schedule measured is written")
    vals = filled.get("base_val_accs") or []
    if vals:
        lines.append("  the base recipe itself, trained alike: val acc "
                     + " and ".join(f"{v:.4f}" for v in vals))
    if filled.get("winner_trial") is not None:
        lines.append(f"  (schedules of trial {filled['winner_trial']}, the search's best): the "
                     "base recipe validated at least as well, so its own design (this trial) "
                     "is written")
    return lines
