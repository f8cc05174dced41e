"""The search method: Optuna's sampler and pruner for a search file, for several objectives
(which Optuna's pruners do not handle) cifarlab's own early stop, `dominance_prune`, and the
local step, `queue_neighbour`: small changes to the best designs trained so far."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from .fidelity import PROXY_STEP
from .space import SearchSpec, max_epochs
from .trials import best_trials, trained


def rungs(min_epochs: int, eta: int, max_epochs: int) -> list[int]:
    """Epochs at which trials are compared: min_epochs * eta**k below max_epochs."""
    out, r = [], min_epochs
    while r < max_epochs:
        out.append(r)
        r *= eta
    return out


def dominance_prune(peers: list[tuple[float, float]], acc: float, cost: float, eta: int = 3,
                    min_peers: int | None = None) -> str | None:
    """The multi-objective early stop (Optuna's pruners handle one objective only).

    `peers`: (cost, validation accuracy at this rung's epoch) of the other trials that reached
    it. A trial keeps running if it is in the top 1/eta by accuracy among itself and the peers
    that cost no more than it does (successive halving inside each cost bracket): it is stopped
    only when enough cheaper-or-equal trials beat it at the same epoch that it could hardly end
    on the Pareto front. The cheapest trials are never stopped (they have no cheaper peers),
    so the low-cost end of the front is kept. Needs at least `min_peers` (default eta)
    cheaper-or-equal peers to decide. Returns the reason, or None to continue.
    """
    min_peers = eta if min_peers is None else min_peers
    cheaper = [a for c, a in peers if c <= cost]
    if len(cheaper) < min_peers:
        return None
    keep = math.ceil((len(cheaper) + 1) / eta)
    better = sum(1 for a in cheaper if a > acc)
    if better >= keep:
        return (f"{better} of {len(cheaper)} trials that cost no more had a better val acc at "
                f"this epoch (keeps the top 1/{eta})")
    return None


def worker_seed(spec: SearchSpec, trials_so_far: int) -> int:
    """The sampler's seed in a process that joins an existing study (another worker, or a
    resumed sitting): the search file's `seed` mixed with this process's id and the number of
    trials already in the study, so no two workers and no two sittings draw the same sequence.
    (The process that creates the study uses the file's seed alone: a one-worker search from
    scratch is reproducible.)"""
    entropy = [spec.search["seed"], os.getpid(), trials_so_far]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def trained_gamma(study: optuna.Study):
    """TPE's split: its "good" group is the best 10% (at most 25) of the *trained* trials, as
    Optuna's default gamma counts them, but without the designs the rules rejected untrained.
    Optuna counts those too, and fills the good group with the least infeasible ones while
    few designs are trained; in a search with tight rules TPE then kept proposing designs that
    break the same rule (seen: hundreds of rejections in a row, all for receptive field 40
    against a minimum of 45). Rejected designs stay in the "bad" group: TPE learns to avoid
    them, and to sample near the trained designs that did well."""
    def gamma(n: int) -> int:
        n = len(trained(study.get_trials(deepcopy=False,
                                         states=(TrialState.COMPLETE, TrialState.PRUNED))))
        return min(math.ceil(0.1 * n), 25)
    return gamma


def make_sampler(spec: SearchSpec, seed: int | None = None, study: optuna.Study | None = None):
    """The search file's sampler; with `study`, TPE's split counts its trained trials only
    (`trained_gamma`)."""
    s = spec.search
    seed = s["seed"] if seed is None else seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if s["sampler"] == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if s["sampler"] == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(
                4, s["startup_trials"]))
        extra = {"gamma": trained_gamma(study)} if study is not None else {}
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s["startup_trials"],
                                          multivariate=True, group=True, constant_liar=True,
                                          **extra)


STEP = 1.25       # a neighbour's factor on a log scale
LINEAR_STEP = 0.1  # ... and its share of the range on a linear one
PARENTS = 3       # single objective: neighbours of the best few trained designs


def _move(d, v, up: bool):
    """Value `v` one small step up or down within distribution `d` (None when it cannot)."""
    if isinstance(d, IntDistribution):
        if d.log:
            new = max(v + 1, round(v * STEP)) if up else min(v - 1, round(v / STEP))
        else:
            new = v + d.step if up else v - d.step
    elif d.log:
        new = v * STEP if up else v / STEP
    else:
        new = v + LINEAR_STEP * (d.high - d.low) * (1 if up else -1)
    new = min(d.high, max(d.low, new))
    if isinstance(d, FloatDistribution) and d.step:
        new = d.low + round((new - d.low) / d.step) * d.step
    return None if new == v else new


def mutate(params: dict, distributions: dict, rng: np.random.Generator,
           changes: int = 2) -> dict:
    """A neighbour of a design: `changes` of its searched values, picked at random, each moved
    one small step within its distribution (an integer by its step, or a factor of STEP on a
    log scale; a float by a factor of STEP (log) or LINEAR_STEP of its range; a choice to
    another choice). A value at the end of its range moves the other way."""
    out = dict(params)
    names = sorted(n for n, d in distributions.items() if n in params and not d.single())
    for name in map(str, rng.permutation(names)[:changes]):
        d, v = distributions[name], params[name]
        if isinstance(d, CategoricalDistribution):
            others = [c for c in d.choices if c != v]
            out[name] = others[int(rng.integers(len(others)))]
            continue
        up = bool(rng.integers(2))
        for new in (_move(d, v, up), _move(d, v, not up), v):
            if new is not None:
                out[name] = new
                break
    return out


def parents(study: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The designs a neighbour is made from: the best PARENTS complete trials (one
    objective), or the Pareto front (several)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    if done and len(done[0].values) == 1:
        return sorted(done, key=lambda t: (-t.values[0], t.number))[:PARENTS]
    return best_trials(study, trials)


def pick_parent(ps: list[FrozenTrial], rng: np.random.Generator) -> FrozenTrial:
    """One of `parents`: with one objective the better it ranks, the likelier (weights 1, 1/2,
    1/3: the best is picked about half the time; seen: a hand design far ahead of the rest got
    only a third of the local steps); the designs of a Pareto front alike."""
    w = 1 / np.arange(1, len(ps) + 1) if len(ps[0].values) == 1 else np.ones(len(ps))
    return ps[int(rng.choice(len(ps), p=w / w.sum()))]


def queue_neighbour(study: optuna.Study, spec: SearchSpec, rng: np.random.Generator
                    ) -> FrozenTrial | None:
    """The local step (`[search] mutate` = p): with probability p, once `startup_trials`
    designs have trained and nothing else is queued, queue a neighbour (`mutate`) of one of the
    best designs (`parents`; with one objective, picked with weight 1/rank) as the next trial;
    the sampler draws any value the neighbour needs that its parent lacked (a stage it adds);
    a neighbour already tried is not queued again. Random search never takes it (the baseline
    is the sampler alone). Returns the parent, or None."""
    p = spec.search["mutate"]
    if not p or spec.search["sampler"] == "random" or rng.random() >= p:
        return None
    trials = study.get_trials(deepcopy=False)
    if len(trained(trials)) < spec.search["startup_trials"] or any(
            t.state == TrialState.WAITING for t in trials):
        return None
    ps = parents(study, trials)
    if not ps:
        return None
    parent = pick_parent(ps, rng)
    drawn = {k: d for k, d in parent.distributions.items() if k not in spec.derived}
    study.enqueue_trial(mutate(parent.params, drawn, rng),
                        user_attrs={"neighbour_of": parent.number}, skip_if_exists=True)
    return parent


class ProxyRungPruner(optuna.pruners.BasePruner):
    """`pruner = "proxy"`: successive halving at the proxy rung only. A design is promoted to
    the full schedule when its proxy accuracy is among the best n // reduction_factor of the n
    proxies so far, or the best (Optuna's SuccessiveHalvingPruner, asked at that step alone);
    a promoted design then trains its whole schedule. Why not prune at later epochs too: the
    designs' schedules differ in length (one-cycle learning rates over 8-20 epochs), so at
    epoch 2 or 8 a trial is compared with trials at another point of their schedules; the
    proxy compares every design at the same cost. In the first seed001-rules benchmark
    Hyperband stopped, at full-fidelity epoch 2, the design that reached the best full-fidelity
    validation accuracy there (trial 800; search.json, `discarded`)."""

    def __init__(self, reduction_factor: int):
        self._halving = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=PROXY_STEP, reduction_factor=reduction_factor)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return trial.last_step == PROXY_STEP and self._halving.prune(study, trial)


def make_pruner(spec: SearchSpec):
    s = spec.search
    if spec.multi or s["pruner"] == "none":
        return optuna.pruners.NopPruner()  # multi-objective: dominance_prune, in the worker
    if s["pruner"] == "proxy":
        return ProxyRungPruner(s["reduction_factor"])
    # steps: full-fidelity epochs, after the proxy rung's step when there is one (fidelity.py)
    step0 = PROXY_STEP if s["fidelity"] else 0
    max_ep = max_epochs(spec.space, spec.base_recipe) + step0
    first = PROXY_STEP if step0 else s["min_epochs"]
    if s["pruner"] == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=max_ep,
                                              reduction_factor=s["reduction_factor"])
    if s["pruner"] == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first,
                                                      reduction_factor=s["reduction_factor"])
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=first - 1)
