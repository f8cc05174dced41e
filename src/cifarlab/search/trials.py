"""Reading a study: each trial's outcome and time, the search time used, the summary and the
best trial(s) or Pareto front. Pure functions of Optuna's frozen trials."""

from __future__ import annotations

import math

import optuna
from optuna.trial import FrozenTrial, TrialState


def outcome(t: FrozenTrial) -> str:
    """complete | pruned | rejected | failed | running | waiting."""
    if t.state == TrialState.COMPLETE:
        return "complete"
    if t.state == TrialState.PRUNED:
        return "rejected" if t.user_attrs.get("rejected") else "pruned"
    return {TrialState.FAIL: "failed", TrialState.RUNNING: "running",
            TrialState.WAITING: "waiting"}.get(t.state, t.state.name.lower())


def trained(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that trained (complete or pruned; the rejected ones never did)."""
    return [t for t in trials if outcome(t) in ("complete", "pruned")]


def met_rules(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials whose design met the rules: trained, or training now (`met_rules`, set when
    the checks pass). A queued design counts: it is in the space, so the space has designs
    that meet the rules, however rarely a sampler draws them."""
    return [t for t in trials if outcome(t) in ("complete", "pruned")
            or outcome(t) == "running" and t.user_attrs.get("met_rules")]


def trial_seconds(t: FrozenTrial) -> float:
    """Worker time a trial took (finished) or has taken so far (its last update)."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.datetime_start \
            and t.datetime_complete:
        return (t.datetime_complete - t.datetime_start).total_seconds()
    v = t.user_attrs.get("seconds_used", 0.0)
    return float(v) if isinstance(v, int | float) else 0.0


def search_seconds(trials: list[FrozenTrial]) -> float:
    """The study's search time: how long at least one worker was running a trial (the union
    of the trials' time spans), so N workers side by side use the budget at the pace of the
    clock, and the time between sessions does not count."""
    spans = []
    for t in trials:
        if t.datetime_start is None:
            continue
        a = t.datetime_start.timestamp()
        spans.append((a, a + trial_seconds(t)))
    total, end = 0.0, -math.inf
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def summary(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> dict:
    """Counts by outcome, rejections by rule, minutes used, the budget and the best trial."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    counts = {k: 0 for k in ("complete", "pruned", "rejected", "failed", "running", "waiting")}
    why: dict[str, int] = {}
    for t in trials:
        o = outcome(t)
        counts[o] = counts.get(o, 0) + 1
        if o == "rejected":
            for r in t.user_attrs.get("rejected_rules") or ["?"]:
                why[r] = why.get(r, 0) + 1
    best = best_trials(study, trials)
    return {"study": study.study_name, "trials": len(trials), **counts,
            "objectives": list(study.metric_names or ["val_acc"]),
            "rejected_by_rule": dict(sorted(why.items(), key=lambda kv: -kv[1])),
            "minutes_used": search_seconds(trials) / 60,
            "worker_minutes": sum(trial_seconds(t) for t in trials) / 60,
            "budget_minutes": study.user_attrs.get("budget_minutes"),
            "best": [{"number": t.number, "values": t.values,
                      "val_acc": val_acc(t), "run_dir": t.user_attrs.get("run_dir"),
                      "design": t.user_attrs.get("design")} for t in best]}


def val_acc(t: FrozenTrial) -> float | None:
    """A complete trial's validation accuracy (its first value, or its recorded attribute when
    the first objective is another one, corrupt_acc)."""
    v = t.user_attrs.get("val_acc")
    if isinstance(v, int | float):
        return float(v)
    return t.values[0] if t.values else None


def best_trials(study: optuna.Study, trials: list[FrozenTrial] | None = None
                ) -> list[FrozenTrial]:
    """Single objective: [the best trial] (or []); several: the Pareto front, best val acc
    first. Only complete trials count (rejected ones never trained)."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    if not done:
        return []
    if len(done[0].values) == 1:
        return [max(done, key=lambda t: (t.values[0], -t.number))]
    # every objective as "higher is better": a cost is minimised, an accuracy maximised
    signs = [1 if d == optuna.study.StudyDirection.MAXIMIZE else -1 for d in study.directions]

    def key(t: FrozenTrial) -> list[float]:
        return [s * v for s, v in zip(signs, t.values, strict=True)]

    front = [t for t in done if not any(
        all(a >= b for a, b in zip(key(u), key(t), strict=True)) and key(u) != key(t)
        for u in done)]
    return sorted(front, key=lambda t: [-v for v in key(t)])


def budget_left(study: optuna.Study, spec, trials_cap: int | None = None) -> bool:
    """Whether the study has search time (and trials, under a cap) left; True when the
    storage cannot tell (the workers find out for themselves)."""
    try:
        trials = study.get_trials(deepcopy=False)
        minutes = study.user_attrs.get("budget_minutes") or spec.search["minutes"]
    except Exception:
        return True
    return (search_seconds(trials) < 60 * float(minutes)
            and (trials_cap is None or len(trained(trials)) < trials_cap))
