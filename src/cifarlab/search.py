"""`cifarlab search`: find the best network a rule set allows, with Optuna.

A search file (TOML) is data: a base recipe, the rules, the budget and method, the dimensions
to explore and designs to try first; `cifarlab.searchspace` reads, checks and samples it.

One trial:
  1. Optuna's sampler proposes a design and training settings.
  2. Rules before training: the network is built and traced (params, MACs, receptive field,
     required / forbidden layers) and, when the file sets a time budget, its training time is
     predicted from a few timed steps. A candidate that breaks a rule is *rejected*: it costs no
     training, and the rules it broke are recorded (a user attribute) and given to the sampler
     as constraint values (`Trial.set_constraint`), so TPE learns where the feasible region is.
  3. Training on the training set minus a validation split; the test set is never loaded.
     Validation accuracy is reported after every epoch and the trial is stopped early when it
     is hopeless: Optuna's Hyperband / successive halving for one objective, and for several
     objectives (which Optuna's pruners do not handle) `dominance_prune`: at each rung a trial
     is stopped when most trials that are no more expensive have a better validation accuracy
     at the same epoch.
  4. The trial's run directory is an ordinary one (config, history, metrics, checkpoints).

Storage: an SQLite file in the study directory by default (`runs/<study>/study.db`), or any
SQLAlchemy URL (`--storage postgresql://...`) shared by workers on many machines. A trial that
was running when its worker died is marked failed and re-queued: at once when the dead worker
was on this machine (its process is gone), else by Optuna's heartbeat after a grace period;
the re-queued trial resumes the dead trial's run directory from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import socket
import statistics
import time
import tomllib
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from .analysis import assess
from .errors import CifarlabError
from .models import create_model
from .models import family as fam
from .recipe import nest, resolve
from .searchspace import (
    ARCH_DIMS,
    TRAIN_DIMS,
    SearchError,
    SearchSpec,
    load_search,
    max_epochs,
    parse_search,
    sample,
    to_toml,
)

STUDY_FILE = "study.db"

# ------------------------------------------------------------------------------ rules

def check_rules(model: torch.nn.Module, cons: dict) -> tuple[dict, list[str], dict]:
    """(facts, broken rules as messages, constraint values for the sampler: > 0 = broken by
    that relative amount, <= 0 = met), from one trace (`analysis.assess`, which words every
    rule's message)."""
    facts, broken = assess(model, max_params=cons["max_params"] or None,
                           max_macs=cons["max_macs"] or None,
                           min_receptive_field=cons["min_receptive_field"] or None,
                           require=cons["require"], forbid=cons["forbid"])
    values: dict[str, float] = {}
    for key, fact in (("max_params", "params"), ("max_macs", "macs")):
        if cons[key]:
            values[key] = (facts[fact] - cons[key]) / cons[key]
    if cons["min_receptive_field"]:
        mrf = cons["min_receptive_field"]
        values["min_receptive_field"] = (mrf - facts["receptive_field"]) / mrf
    for kind in ("require", "forbid"):
        for rule in cons[kind]:
            hit = any(m.startswith(f"{kind} {rule}:") for m in broken)
            values[f"{kind}_{rule}"] = 1.0 if hit else 0.0
    return facts, broken, values


def rule_key(message: str) -> str:
    """'max_params 199999: model has ...' -> 'max_params'; 'require dilated: ...' ->
    'require dilated' (for counting rejections by rule)."""
    head = message.split(":", 1)[0].strip()
    words = head.split()
    if words and words[0] in ("require", "forbid") and len(words) > 1:
        return f"{words[0]} {words[1]}"
    for key in ("time budget", "invalid design", "untrainable"):
        if head.startswith(key):
            return key
    return words[0] if words else head


def step_timer(model: torch.nn.Module, cfg: dict, batch_size: int | None = None,
               size: int = 32) -> Callable[[], float]:
    """A function running one training step of a copy of `model` as `fit` would train it
    under the resolved recipe `cfg` (its layer swaps, optimizer, loss, precision, memory
    format and gradient clip, through `engine.train_step`) on random images of `size` px;
    it returns the step's seconds."""
    from .engine import grad_clipper, train_step
    from .layers import for_cpu_training
    from .optim import build_optimizer, loss_fn
    from .recipe import low_res_epochs

    t = cfg["train"]
    bs = batch_size or t["batch_size"]
    sizes = (32, t["low_res"]) if low_res_epochs(t) else (32,)
    net = for_cpu_training(copy.deepcopy(model), t["fast_dropout"],
                           bf16_sizes=sizes if t["precision"] == "bf16" else ()).train()
    x = torch.randn(bs, 3, size, size)
    if t["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,))
    opt, criterion, clip = build_optimizer(cfg, net), loss_fn(cfg), grad_clipper(t, net)

    def step() -> float:
        t0 = time.perf_counter()
        train_step(net, opt, criterion, x, y, t["precision"], "cpu", clip=clip)
        return time.perf_counter() - t0

    return step


def time_steps(models: list[tuple[torch.nn.Module, dict]], rounds: int = 3) -> list[float]:
    """Seconds per training step of each (model, resolved recipe), measured interleaved (one
    step of each per round, after a warm-up step) and taking each one's fastest round, so
    that a busy machine slows them alike."""
    timers = [step_timer(m, cfg) for m, cfg in models]
    for t in timers:
        t()
    best = [math.inf] * len(timers)
    for _ in range(rounds):
        for i, t in enumerate(timers):
            best[i] = min(best[i], t())
    return best


def untrainable(model: torch.nn.Module, cfg: dict) -> list[str]:
    """Why a candidate that meets the rules still could not train under its recipe `cfg`
    (empty: it can), found before training: a batch the processes cannot share, an image size
    of progressive resizing (`train.low_res`) the network does not take, a training step that
    raises (a shape error, a loss the outputs do not fit). One step of two random images at
    each size it trains at, on a copy (`step_timer`)."""
    from .engine import batch_split_error, check_low_res
    from .recipe import low_res_epochs

    t = cfg["train"]
    split = batch_split_error(t["batch_size"], t["processes"])
    if split:
        return [f"untrainable: {split}"]
    sizes = [32] + ([t["low_res"]] if low_res_epochs(t) else [])
    for size in sizes:
        try:
            if size != 32:
                check_low_res(copy.deepcopy(model), size, torch.device("cpu"))
            step_timer(model, cfg, batch_size=2, size=size)()
        except CifarlabError as e:
            return [f"untrainable: {e}"]
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return [f"untrainable: a training step on {size}x{size} images fails "
                    f"({type(e).__name__}: {first[:200]})"]
    return []


def predict_seconds(step_s: float, n_train: int, batch_size: int, epochs: int, n_val: int,
                    tta: bool) -> float:
    """Training time from the time of one step: steps per epoch (the last partial batch is
    dropped), 10% for augmentation and bookkeeping, and a validation pass per epoch (a forward
    pass costs about a third of a training step; twice with test-time flip)."""
    steps = max(1, n_train // batch_size)
    per_image = step_s / batch_size
    return epochs * (steps * step_s * 1.1 + n_val * (2 if tta else 1) * per_image / 3)


# ------------------------------------------------------------------------------ pruning

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


# ------------------------------------------------------------------------------ storage

def mask_url(url: str) -> str:
    """The storage URL with any password hidden."""
    import re

    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def default_storage(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / STUDY_FILE).resolve()}"


def open_storage(url: str, heartbeat: int | None = None) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage (SQLite file or a database server), or a one-line SearchError."""
    import sqlalchemy.exc

    shown, url = url, _with_driver(url)
    kw: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kw = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgresql"):
        kw = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    elif url.startswith("mysql"):
        kw = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    hb: dict[str, Any] = {}
    if heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hb = {"heartbeat_interval": heartbeat, "grace_period": 3 * heartbeat,
                  "heartbeat_stale_trial_callback": _retry_callback()}
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return optuna.storages.RDBStorage(url, engine_kwargs=kw, **hb)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, RuntimeError) as e:
            # workers starting together on an empty database race to create Optuna's tables
            # ("duplicate key", "already exists", "UNIQUE constraint failed", "locked"): the
            # loser finds them made a moment later
            text = str(e).lower()
            if attempt < 5 and any(w in text for w in ("already exists", "duplicate", "unique",
                                                       "database is locked")):
                time.sleep(0.5 + attempt)
                continue
            err: Exception = e
        msg = str(getattr(err, "orig", None) or err).strip().splitlines()
        why = msg[0] if msg else type(err).__name__
        raise SearchError(f"storage {mask_url(shown)}: cannot open ({why})") from None
    raise AssertionError("unreachable")


def _with_driver(url: str) -> str:
    """postgresql://... names SQLAlchemy's default driver (psycopg 3 since SQLAlchemy 2.1);
    use psycopg2 (what `pip install cifarlab[dev]` brings) when only that one is there."""
    import importlib.util

    if url.startswith(("postgresql://", "postgres://")):
        if importlib.util.find_spec("psycopg") is None and \
                importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def _retry_callback():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=3, inherit_intermediate_values=True)


@contextlib.contextmanager
def storage_errors(url: str):
    """Turn a database failure in the middle of a search into a one-line SearchError."""
    import sqlalchemy.exc

    try:
        yield
    except sqlalchemy.exc.SQLAlchemyError as e:
        msg = str(getattr(e, "orig", None) or e).strip().splitlines()
        why = msg[0] if msg else type(e).__name__
        raise SearchError(f"storage {mask_url(url)}: {why} (what was recorded is kept; run "
                          "the same command again to resume)") from None


def _sampler(spec: SearchSpec, seed: int | None = None):
    s = spec.search
    seed = s["seed"] if seed is None else seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if s["sampler"] == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if s["sampler"] == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(
                4, s["startup_trials"]))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s["startup_trials"],
                                          multivariate=True, group=True, constant_liar=True)


def _pruner(spec: SearchSpec):
    s = spec.search
    if spec.multi or s["pruner"] == "none":
        return optuna.pruners.NopPruner()  # multi-objective: dominance_prune, in the worker
    max_ep = max_epochs(spec.space, spec.base_recipe)
    if s["pruner"] == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=s["min_epochs"],
                                              max_resource=max_ep,
                                              reduction_factor=s["reduction_factor"])
    if s["pruner"] == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=s["min_epochs"],
                                                      reduction_factor=s["reduction_factor"])
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=s["min_epochs"] - 1)


def study_dir_for(runs_dir: str | os.PathLike, name: str) -> Path:
    return Path(runs_dir) / name


def resolve_study(study: str, storage: str | None = None,
                  runs_dir: str | os.PathLike = "runs") -> tuple[str, str, Path]:
    """(study name, storage URL, study directory) from a study directory or a name."""
    p = Path(study)
    if p.is_dir():
        sdir = p
        if storage is None and not (p / STUDY_FILE).is_file():
            raise SearchError(f"{p}: no {STUDY_FILE} in this directory (for a study kept on a "
                              "database server, give --storage URL)")
        name = p.resolve().name
        url = storage or default_storage(p)
        if storage is None:
            names = optuna.study.get_all_study_names(open_storage(url))
            if len(names) == 1:
                name = names[0]
        return name, url, sdir
    sdir = study_dir_for(runs_dir, study)
    if storage is None and not (sdir / STUDY_FILE).is_file():
        known = sorted(x.parent.name for x in Path(runs_dir).glob(f"*/{STUDY_FILE}"))
        raise SearchError(f"unknown study '{study}': no {sdir / STUDY_FILE}"
                          + (f" (studies in {runs_dir}: {', '.join(known)})" if known else "")
                          + "; for a study on a database server give --storage URL")
    return study, storage or default_storage(sdir), sdir


def load_study(name: str, url: str) -> optuna.Study:
    storage = open_storage(url)
    with storage_errors(url):
        names = optuna.study.get_all_study_names(storage)
    if name not in names:
        raise SearchError(f"unknown study '{name}' in {mask_url(url)}"
                          + (f" (known: {', '.join(sorted(names))})" if names else
                             " (it holds no study)"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.load_study(study_name=name, storage=storage)


def spec_of(study: optuna.Study) -> SearchSpec:
    """The search spec a study was created from (stored in the study itself)."""
    stored = study.user_attrs.get("spec")
    if not isinstance(stored, dict) or "text" not in stored:
        raise SearchError(f"study '{study.study_name}' was not made by cifarlab search")
    return parse_search(stored["text"], f"study {study.study_name}",
                        base_recipe=stored["base_recipe"])


# ------------------------------------------------------------------------------ trials

def outcome(t: FrozenTrial) -> str:
    """complete | pruned | rejected | failed | running | waiting."""
    if t.state == TrialState.COMPLETE:
        return "complete"
    if t.state == TrialState.PRUNED:
        return "rejected" if t.user_attrs.get("rejected") else "pruned"
    return {TrialState.FAIL: "failed", TrialState.RUNNING: "running",
            TrialState.WAITING: "waiting"}.get(t.state, t.state.name.lower())


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
            "rejected_by_rule": dict(sorted(why.items(), key=lambda kv: -kv[1])),
            "minutes_used": search_seconds(trials) / 60,
            "worker_minutes": sum(trial_seconds(t) for t in trials) / 60,
            "budget_minutes": study.user_attrs.get("budget_minutes"),
            "best": [{"number": t.number, "values": t.values,
                      "val_acc": t.values[0], "run_dir": t.user_attrs.get("run_dir"),
                      "design": t.user_attrs.get("design")} for t in best]}


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
    front = [t for t in done if not any(
        u.values[0] >= t.values[0] and u.values[1] <= t.values[1]
        and (u.values[0] > t.values[0] or u.values[1] < t.values[1]) for u in done)]
    return sorted(front, key=lambda t: (-t.values[0], t.values[1]))


def _proc_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _proc_start(pid)
    return start is None or now is None or now == start  # pid reused by another process


def requeue(study: optuna.Study, t: FrozenTrial, why: str) -> None:
    """Mark a trial failed (if it still runs in the storage) and queue it again with the same
    parameters, user attributes and intermediate values (the retry resumes its run
    directory)."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(t._trial_id, "failed", why)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    except RuntimeError:  # finished meanwhile (UpdateFinishedTrialError)
        return
    _retry_callback()(study, storage.get_trial(t._trial_id))


def reap_local(study: optuna.Study, host: str, log: Callable[[str], None]) -> int:
    """Re-queue trials left RUNNING by dead workers of this machine (a kill, a crash, a power
    cut): their process is gone, so there is no need to wait for the heartbeat."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker")
        if not isinstance(w, dict) or w.get("host") != host or w.get("pid") == os.getpid():
            continue
        started = t.datetime_start.timestamp() if t.datetime_start else 0.0
        if float(w.get("since", 0.0)) < started - 1.0:
            continue  # inherited by a retry that another worker has just taken: not ours
        if _alive(int(w.get("pid", -1)), w.get("start")):
            continue
        requeue(study, t, f"worker {host}:{w.get('pid')} died")
        log(f"trial {t.number}: its worker (pid {w.get('pid')}) is gone: marked failed and "
            "re-queued")
        n += 1
    return n


# ------------------------------------------------------------------------------ the worker

def load_train_data(data_dir: str | os.PathLike | None = None, download: bool = False):
    """CIFAR-10's training set only: a search never opens the test batch."""
    from .data import CIFAR10, Split, find_data, load_split, read_classes

    folder = find_data(data_dir, download=download)
    empty = Split(torch.empty((0, 3, 32, 32), dtype=torch.uint8),
                  torch.empty((0,), dtype=torch.int64))
    return CIFAR10(load_split(folder, "train"), empty, read_classes(folder), folder)


def _fmt_count(x: float | None) -> str:
    if x is None:
        return "?"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= size:
            return f"{x / size:.1f}{unit}"
    return f"{x:.0f}"


def _train_words(train: dict) -> str:
    short = {"optim.lr": "lr", "optim.weight_decay": "wd", "train.batch_size": "bs",
             "train.epochs": "ep", "loss.label_smoothing": "ls", "augment.crop_pad": "pad",
             "augment.cutout": "cutout", "optim.name": "opt", "optim.muon_lr": "muon_lr"}
    out = []
    for k, v in train.items():
        if k == "augment.backend":
            continue
        s = short.get(k, k)
        out.append(f"{s} {v:.3g}" if isinstance(v, float) else f"{s} {v}")
    return " ".join(out)


def rules_table(cons: dict) -> dict:
    """The search's network rules as a recipe's [constraints] table."""
    return {"max_params": cons["max_params"], "max_macs": cons["max_macs"],
            "min_receptive_field": cons["min_receptive_field"],
            "require": list(cons["require"]), "forbid": list(cons["forbid"])}


def trial_recipe(spec: SearchSpec, study: str, number: int, args: dict,
                 train: dict) -> tuple[dict, dict]:
    """(raw recipe, dotted overrides) of a trial: the base recipe with the family network,
    its searched settings, a validation split and no test evaluation. Every training key the
    space does not search comes from the base recipe."""
    raw = copy.deepcopy(spec.base_recipe)
    raw["name"] = f"{study}-trial-{number:04d}"
    raw["description"] = f"cifarlab search {study}, trial {number}"
    raw["model"] = "family"
    raw["model_args"] = copy.deepcopy(args)
    raw["constraints"] = rules_table(spec.constraints)
    s = spec.search
    over = dict(train)
    over.update({"data.val_split": s["val_split"], "train.test_eval": "never",
                 "train.eval_every": 1, "train.processes": 1, "train.target": 0.0,
                 "train.seed": s["seed"]})
    if s["train_subset"]:
        over["data.train_subset"] = s["train_subset"]
    return raw, over


class _TrialError(RuntimeError):
    """A trial failed for a reason of its own (it is recorded; the search goes on)."""


class Worker:
    """Runs trials of one study in this process (see `run_search`)."""

    def __init__(self, spec: SearchSpec, study: optuna.Study, url: str, study_dir: Path,
                 data, log: Callable[[str], None], tag: str = ""):
        self.spec, self.study, self.url, self.dir, self.data = spec, study, url, study_dir, data
        self.log = (lambda s: log(f"{tag}{s}")) if tag else log
        self.host = socket.gethostname()
        self.cons = spec.constraints
        self.base_cfg = resolve(copy.deepcopy(spec.base_recipe))
        self.base_model = None
        self.trials_dir = study_dir / "trials"
        s = spec.search
        self.rungs = rungs(s["min_epochs"], s["reduction_factor"],
                           max_epochs(spec.space, spec.base_recipe))
        self.n_val = s["val_split"]  # held out of the full set first, then the subset drawn
        self.n_train = max(1, len(data.train) - self.n_val)
        if s["train_subset"]:
            self.n_train = min(self.n_train, s["train_subset"])
        self.rejected_in_row = 0
        self.current: int | None = None  # storage id of the trial this worker runs
        self.base_step = math.inf  # fastest step of the base model measured so far
        self.last_error = ""  # of the last failed trial

    def recipe(self, number: int, args: dict, train: dict) -> tuple[dict, dict]:
        return trial_recipe(self.spec, self.study.study_name, number, args, train)

    # -- time -----------------------------------------------------------------------------
    def _base(self) -> torch.nn.Module:
        if self.base_model is None:
            b = self.base_cfg
            self.base_model = create_model(b["model"], **b["model_args"])
        return self.base_model

    def predict(self, model: torch.nn.Module, cfg: dict) -> tuple[float, float]:
        """(predicted training seconds of this trial, of the base recipe), timed together."""
        b, t = self.base_cfg["train"], cfg["train"]
        sc, sb = time_steps([(model, cfg), (self._base(), self.base_cfg)])
        # other work can only slow a measurement down: the base's fastest one so far is the
        # truest (a busy moment must not make a slow candidate look cheap)
        sb = self.base_step = min(self.base_step, sb)
        pc = predict_seconds(sc, self.n_train, t["batch_size"], t["epochs"], self.n_val,
                             t["tta"])
        pb = predict_seconds(sb, self.n_train, b["batch_size"], b["epochs"], self.n_val,
                             b["tta"])
        return pc, pb

    def calibration(self) -> float:
        """Median of measured / predicted training time over this study's trials (1 before
        there are three)."""
        r = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            a, p = t.user_attrs.get("train_seconds"), t.user_attrs.get("predicted_seconds")
            if isinstance(a, int | float) and isinstance(p, int | float) and p > 0:
                r.append(a / p)
        return statistics.median(r) if len(r) >= 3 else 1.0

    # -- the objective ----------------------------------------------------------------------
    def objective(self, trial: optuna.Trial):
        """Reject, prune or train one trial. Whatever goes wrong inside a trial (its network,
        its training, a CifarlabError the engine raises for it) fails this trial only: it is
        recorded (user attribute `error`) and the worker goes on. A database error or an
        interrupt stops the worker (the trial is re-queued)."""
        import sqlalchemy.exc

        try:
            return self._objective(trial)
        except KeyboardInterrupt:
            with contextlib.suppress(Exception):
                trial.set_user_attr("failed", "interrupted")
            raise
        except (optuna.TrialPruned, sqlalchemy.exc.SQLAlchemyError):
            raise
        except Exception as e:
            what = str(e) if isinstance(e, CifarlabError) else f"{type(e).__name__}: {e}"
            what = (what.strip().splitlines() or [type(e).__name__])[0][:500]
            self.last_error = what
            trial.set_user_attr("error", what)
            raise _TrialError(what) from e

    def _objective(self, trial: optuna.Trial):
        t_start = time.time()
        self.current = trial._trial_id
        trial.set_user_attr("worker", {"host": self.host, "pid": os.getpid(),
                                       "start": _proc_start(os.getpid()), "since": time.time()})
        trial.set_user_attr("seconds_used", 0.0)
        for k in ("rejected", "rejected_rules", "pruned", "failed", "error"):
            if k in trial.user_attrs:  # inherited from a failed attempt
                trial.set_user_attr(k, None)
        args, train = sample(self.spec.space, trial)
        design = fam.describe_design(args)
        label = trial.user_attrs.get("label")
        trial.set_user_attr("model_args", args)
        trial.set_user_attr("train", train)
        trial.set_user_attr("design", design)
        raw, over = self.recipe(trial.number, args, train)
        cfg = resolve(copy.deepcopy(raw), over)

        def reject(msgs: list[str], values: dict) -> None:
            for k, v in values.items():
                trial.set_constraint(k, v)
            trial.set_user_attr("rejected", "; ".join(msgs))
            trial.set_user_attr("rejected_rules", sorted({rule_key(m) for m in msgs}))
            trial.set_user_attr("seconds_used", time.time() - t_start)
            self.rejected_in_row += 1
            f = trial.user_attrs
            facts = (f"  {f['params']:,} params, {_fmt_count(f['macs'])} MACs, RF "
                     f"{f['receptive_field']}" if "params" in f else "")
            self.log(f"trial {trial.number} rejected: {'; '.join(msgs)}  [{design}]{facts}")
            raise optuna.TrialPruned("rejected: " + "; ".join(msgs))

        try:
            model = create_model("family", **args)
            facts, broken, values = check_rules(model, self.cons)
        except CifarlabError as e:
            reject([f"invalid design: {e}"], {"design": 1.0})
        except Exception as e:  # the trace (one forward pass) fails: a shape error
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            reject([f"untrainable: a forward pass fails ({type(e).__name__}: {first[:200]})"],
                   {"trainable": 1.0})
        for k in ("params", "macs", "receptive_field"):
            trial.set_user_attr(k, facts[k])
        if not broken:
            broken = untrainable(model, cfg)
            values["trainable"] = 1.0 if broken else 0.0
        c = self.cons
        cap = None
        need_time = (c["max_train_seconds"] or c["max_train_time_vs_base"]
                     or "seconds" in self.spec.objectives)
        pred = None
        if need_time and not broken:
            pred, pred_base = self.predict(model, cfg)
            pred *= self.calibration()
            pred_base *= self.calibration()
            trial.set_user_attr("predicted_seconds", pred)
            trial.set_user_attr("base_predicted_seconds", pred_base)
            if c["max_train_seconds"]:
                lim = c["max_train_seconds"]
                values["time_seconds"] = (pred - lim) / lim
                cap = 1.25 * lim
                if pred > lim and not label:
                    broken.append(f"time budget: predicted {pred:.0f} s of training, more "
                                  f"than max_train_seconds {lim:.0f}")
            if c["max_train_time_vs_base"]:
                lim = c["max_train_time_vs_base"]
                ratio = pred / pred_base
                trial.set_user_attr("time_vs_base", ratio)
                values["time_vs_base"] = (ratio - lim) / lim
                cap = min(cap or math.inf, 1.5 * lim * pred_base)
                if ratio > lim and not label:
                    broken.append(f"time budget: predicted training time {ratio:.2f}x the "
                                  f"base recipe's, more than max_train_time_vs_base {lim:g}")
        if broken:
            reject(broken, values)
        for k, v in values.items():
            trial.set_constraint(k, min(v, 0.0))
        self.rejected_in_row = 0
        cost_name = self.spec.objectives[1] if self.spec.multi else None
        cost = None
        if cost_name in ("params", "macs"):
            cost = float(facts[cost_name])
        elif cost_name == "seconds":
            cost = pred
        if cost is not None:
            trial.set_user_attr("cost", cost)
        return self._train(trial, cfg, raw, over, facts, design, label, cap, cost_name,
                           t_start)

    def _train(self, trial, cfg, raw, over, facts, design, label, cap, cost_name, t_start):
        from .api import train as api_train

        epochs = cfg["train"]["epochs"]
        curve = {int(k): v for k, v in (trial.user_attrs.get("curve") or {}).items()}
        stop: dict[str, str] = {}
        t_train = time.time()
        searched = {TRAIN_DIMS.get(k) or k for k, d in self.spec.space.items()
                    if d.kind != "fixed" and k not in ARCH_DIMS}
        if "augment" in searched:
            searched |= {"augment.crop_pad", "augment.cutout"}
        words = _train_words({k: v for k, v in trial.user_attrs["train"].items()
                              if k in searched})
        self.log(f"trial {trial.number} training: {design}  {words}"
                 f"  {facts['params']:,} params, {_fmt_count(facts['macs'])} MACs, "
                 f"RF {facts['receptive_field']}"
                 + (f", predicted {trial.user_attrs['predicted_seconds'] / 60:.1f} min"
                    if trial.user_attrs.get("predicted_seconds") else "")
                 + (f"  [{label}]" if label else ""))

        def on_epoch(row: dict) -> bool:
            e, acc = int(row["epoch"]), row.get("val_acc")
            trial.set_user_attr("seconds_used", time.time() - t_start)
            if acc is None or not math.isfinite(acc):
                return False
            curve[e] = float(acc)
            trial.set_user_attr("curve", {str(k): v for k, v in sorted(curve.items())})
            if cost_name == "seconds":  # measured so far, extrapolated to the planned epochs
                spent = time.time() - t_train
                trial.set_user_attr("cost", spent / max(1, len(curve)) * epochs)
            self.log(f"  trial {trial.number} epoch {e}/{epochs}  val acc {acc:.4f}")
            if label or e >= epochs:
                return False
            if not self.spec.multi:
                trial.report(float(acc), e)
                if trial.should_prune():
                    stop["why"] = (f"{self.spec.search['pruner']} pruner at epoch {e} "
                                   f"(val acc {acc:.4f})")
                    return True
            elif e in self.rungs:
                why = self._dominance(trial, e, float(acc))
                if why:
                    stop["why"] = f"dominance rule at epoch {e} (val acc {acc:.4f}): {why}"
                    return True
            return False

        prev = trial.user_attrs.get("run_dir")
        retried = trial.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        resume = (prev if retried is not None and prev and (Path(prev) / "last.pt").is_file()
                  else None)
        name = f"trial-{trial.number:04d}"
        kw = dict(data=self.data, progress=False, plots=False, log=self._engine_log,
                  max_seconds=cap, epoch_callback=on_epoch)
        metrics = None
        if resume:
            trial.set_user_attr("run_dir", str(resume))
            self.log(f"  trial {trial.number}: resuming {resume} (retry of trial {retried})")
            try:
                metrics = api_train(resume=resume, **kw)
            except optuna.TrialPruned:
                raise
            except CifarlabError as e:
                if "diverged" in str(e):
                    raise
                self.log(f"  trial {trial.number}: cannot resume {resume} ({e}); "
                         "training afresh")
                metrics = None
        if metrics is None:
            run_dir = self.trials_dir / name
            trial.set_user_attr("run_dir", str(run_dir))
            try:
                metrics = api_train(copy.deepcopy(raw), runs_dir=self.trials_dir, name=name,
                                    **kw, **over)
            except CifarlabError as e:
                if "diverged" not in str(e):
                    raise
                trial.set_user_attr("pruned", f"diverged ({e})")
                trial.set_user_attr("seconds_used", time.time() - t_start)
                self.log(f"trial {trial.number} pruned: training diverged")
                raise optuna.TrialPruned(str(e)) from None
            trial.set_user_attr("run_dir", metrics.get("run_dir", str(run_dir)))
        val = metrics.get("val_acc")
        trial.set_user_attr("val_acc", val)
        trial.set_user_attr("train_seconds", metrics.get("train_seconds"))
        trial.set_user_attr("epochs_done", metrics.get("epochs"))
        trial.set_user_attr("seconds_used", time.time() - t_start)
        if stop:
            trial.set_user_attr("pruned", stop["why"])
            raise optuna.TrialPruned(stop["why"])
        if metrics.get("epochs", epochs) < epochs:
            why = (f"time budget: stopped after {metrics.get('epochs')} of {epochs} epochs "
                   f"({metrics.get('train_seconds', 0):.0f} s)")
            trial.set_user_attr("pruned", why)
            raise optuna.TrialPruned(why)
        if val is None or not math.isfinite(val):
            raise RuntimeError("training returned no validation accuracy")
        if not self.spec.multi:
            return float(val)
        cost_name = self.spec.objectives[1]
        cost = float(metrics["train_seconds"]) if cost_name == "seconds" else float(
            facts[cost_name])
        trial.set_user_attr("cost", cost)
        return float(val), cost

    def _engine_log(self, line: str) -> None:
        if line.startswith("warning") or "time budget" in line:
            self.log(f"  {line}")

    def _dominance(self, trial: optuna.Trial, epoch: int, acc: float) -> str | None:
        cost = trial.user_attrs.get("cost")
        if not isinstance(cost, int | float):
            return None
        peers = []
        for t in self.study.get_trials(deepcopy=False):
            if t.number == trial.number or t.user_attrs.get("rejected"):
                continue
            a = (t.user_attrs.get("curve") or {}).get(str(epoch))
            c = t.user_attrs.get("cost")
            if isinstance(a, int | float) and isinstance(c, int | float):
                peers.append((float(c), float(a)))
        return dominance_prune(peers, acc, float(cost), self.spec.search["reduction_factor"])


# ------------------------------------------------------------------------------ run

def _status_line(study: optuna.Study, t: FrozenTrial | None, budget_s: float,
                 trials_cap: int | None) -> str:
    trials = study.get_trials(deepcopy=False)
    used = search_seconds(trials)
    trained = sum(1 for x in trials if outcome(x) in ("complete", "pruned"))
    parts = []
    if t is not None:
        o = outcome(t)
        val = t.user_attrs.get("val_acc")
        acc = f"val acc {val:.4f}" if isinstance(val, int | float) else ""
        curve = t.user_attrs.get("curve") or {}
        if o == "pruned" and curve:
            last = max(curve, key=int)
            acc = f"val acc {curve[last]:.4f} at epoch {last}"
        why = (t.user_attrs.get("pruned") or t.user_attrs.get("failed")
               or t.user_attrs.get("error") or "")
        if o == "rejected":
            return ""  # already said when it was rejected
        parts.append(f"trial {t.number} {o}" + (f": {acc}" if acc else "")
                     + (f" ({why})" if why and o != "complete" else "")
                     + f"  {trial_seconds(t) / 60:.1f} min")
    left = max(0.0, budget_s - used)
    b = f"budget {used / 60:.1f}/{budget_s / 60:.0f} min, ~{left / 60:.0f} min left"
    if trials_cap:
        b += f", {trained}/{trials_cap} trials"
    best = best_trials(study, trials)
    if best:
        b += f"; best so far: trial {best[0].number} val acc {best[0].values[0]:.4f}"
    parts.append(b)
    return "  ".join(parts)


def create_or_load(spec: SearchSpec, name: str, url: str, minutes: float | None,
                   log: Callable[[str], None]) -> optuna.Study:
    """Open the study, creating it (and queueing the [[enqueue]] designs) if it is new; a study
    made from a different search file is refused."""
    storage = open_storage(url, spec.search["heartbeat"])
    directions = ["maximize"] + (["minimize"] if spec.multi else [])
    with storage_errors(url), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            study = optuna.create_study(study_name=name, storage=storage,
                                        directions=directions, sampler=_sampler(spec),
                                        pruner=_pruner(spec))
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=storage,
                                      sampler=_sampler(spec), pruner=_pruner(spec))
            created = False
        if created:
            study.set_user_attr("spec", spec.to_json())
            study.set_user_attr("created", datetime.now().isoformat(timespec="seconds"))
            study.set_user_attr("budget_minutes", minutes or spec.search["minutes"])
            study.set_metric_names(["val_acc"] + spec.objectives[1:])
            for e in spec.enqueue:
                study.enqueue_trial(e["params"], user_attrs={"label": e["label"]}
                                    if e["label"] else None, skip_if_exists=True)
            log(f"study '{name}' created in {mask_url(url)}"
                + (f"; {len(spec.enqueue)} design(s) queued first" if spec.enqueue else ""))
        else:
            stored = study.user_attrs.get("spec")
            for _ in range(40):  # another worker created it a moment ago: its spec follows
                if isinstance(stored, dict) and "text" in stored:
                    break
                time.sleep(0.25)
                stored = study.user_attrs.get("spec")
            if not isinstance(stored, dict) or "text" not in stored:
                raise SearchError(f"study '{name}' in {mask_url(url)} was not made by "
                                  "cifarlab search; choose another --study name")
            if _comparable(stored["text"]) != _comparable(spec.text):
                raise SearchError(f"study '{name}' was created from a different search file "
                                  f"({stored.get('source')}); resume it with that file or "
                                  "start a new study (--study NEW_NAME)")
            if study.directions != [optuna.study.StudyDirection.MAXIMIZE] + (
                    [optuna.study.StudyDirection.MINIMIZE] if spec.multi else []):
                raise SearchError(f"study '{name}' has other objectives than the search file")
            if minutes:
                study.set_user_attr("budget_minutes", minutes)
    return study


def _comparable(text: str) -> str:
    """A search file's content without the budget (which a resume may change)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return text
    raw.get("search", {}).pop("minutes", None)
    raw.pop("description", None)
    return json.dumps(raw, sort_keys=True, default=str)


def run_search(search: str | os.PathLike | SearchSpec, *, study: str | None = None,
               storage: str | None = None, minutes: float | None = None,
               trials: int | None = None, runs_dir: str | os.PathLike = "runs",
               data=None, data_dir: str | os.PathLike | None = None,
               threads: int | None = None, log: Callable[[str], None] = print,
               tag: str = "", queued_only: bool = False) -> dict:
    """Run (or resume) a search in this process until the study's budget is used or it has
    `trials` trained trials; return `summary()`.

    The budget (`minutes`, else the study's stored one, else the file's) is the study's search
    time: the time during which any worker was running a trial, over all sessions (N workers
    side by side spend it at the pace of the clock); a trial that starts before it runs out is
    finished. Several processes on one or many machines may run the same study (same name and
    storage URL) at once. `queued_only`: run only the queued trials ([[enqueue]], retries),
    then stop.
    """
    spec = search if isinstance(search, SearchSpec) else load_search(search)
    name = study or spec.name
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise SearchError(f"study name {name!r}: use letters, digits, '-', '_' or '.'")
    if minutes is not None and minutes <= 0:
        raise SearchError("--minutes must be positive")
    if trials is not None and trials <= 0:
        raise SearchError("--trials must be positive")
    sdir = study_dir_for(runs_dir, name)
    try:
        sdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SearchError(f"{sdir}: cannot create the study directory ({e.strerror})") from None
    url = storage or default_storage(sdir)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines say what happened
    st = create_or_load(spec, name, url, minutes, log)
    copy_path = sdir / "search.toml"
    if not copy_path.exists():
        from .rundir import atomic_write_text

        atomic_write_text(copy_path, spec.text)
    if threads:
        torch.set_num_threads(threads)
    if data is None:
        data = load_train_data(data_dir)
    w = Worker(spec, st, url, sdir, data, log, tag)
    budget_s = 60 * float(st.user_attrs.get("budget_minutes") or spec.search["minutes"])
    log(f"{tag}search '{name}': {spec.description or spec.source}; objectives "
        f"{', '.join(spec.objectives)}; budget {budget_s / 60:.0f} min"
        + (f", {trials} trials" if trials else "") + f"; runs in {sdir}")
    failures = 0

    def on_term(signum, frame):
        raise KeyboardInterrupt

    old = None
    with contextlib.suppress(ValueError):  # not the main thread: no handler
        old = signal.signal(signal.SIGTERM, on_term)
    try:
        while True:
            with storage_errors(url):
                reap_local(st, w.host, w.log)
                all_t = st.get_trials(deepcopy=False)
                used = search_seconds(all_t)
                trained = sum(1 for t in all_t if outcome(t) in ("complete", "pruned"))
                budget_s = 60 * float(st.user_attrs.get("budget_minutes") or budget_s / 60)
            if used >= budget_s:
                log(f"{tag}budget of {budget_s / 60:.0f} min used")
                break
            if trials is not None and trained >= trials:
                log(f"{tag}{trained} trials trained")
                break
            if queued_only and not any(t.state == TrialState.WAITING for t in all_t):
                log(f"{tag}no queued trial left")
                break
            if w.rejected_in_row >= spec.search["max_rejected_in_row"]:
                raise SearchError(f"the rules rejected {w.rejected_in_row} candidates in a "
                                  "row: the space has (almost) no design that meets them; "
                                  "widen [space] or relax [constraints]")
            w.current = None
            try:
                with storage_errors(url), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    st.optimize(w.objective, n_trials=1, catch=(_TrialError,))
            except KeyboardInterrupt:
                _requeue_current(st, w)
                raise
            except CifarlabError:
                _requeue_current(st, w)
                raise
            if w.current is not None:
                with storage_errors(url):
                    t = st._storage.get_trial(w.current)
                    failures = failures + 1 if t.state == TrialState.FAIL else 0
                    line = _status_line(st, t, budget_s, trials)
                if line:
                    log(f"{tag}{line}")
            if failures >= 3:
                raise SearchError(f"three trials in a row failed (the last: {w.last_error}); "
                                  "stopping (the study is kept; fix the cause and run the "
                                  "same command to resume)")
    finally:
        if old is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, old)
    with storage_errors(url):
        return summary(st)


def _requeue_current(study: optuna.Study, w: Worker) -> None:
    """After an interrupt or an error that stops the search: queue again the trial this worker
    was running (Optuna marked it failed), so the next run resumes it."""
    if w.current is None:
        return
    with contextlib.suppress(Exception):
        storage = study._storage
        t = storage.get_trial(w.current)
        if t.state == TrialState.RUNNING:
            requeue(study, t, "interrupted")
        elif t.state == TrialState.FAIL:  # Optuna failed it (the reason is already set)
            _retry_callback()(study, t)
        else:
            return
        w.log(f"trial {t.number} interrupted: re-queued (run the same command to resume it)")


# ------------------------------------------------------------------------------ the winner

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


def winner_recipe(study: optuna.Study, t: FrozenTrial, name: str = "searched") -> dict:
    """The trial as an ordinary recipe: the base recipe with the trial's network and training
    settings and the search's rules, trained on the full training set (no validation split)
    and tested once."""
    spec = spec_of(study)
    raw = copy.deepcopy(spec.base_recipe)
    raw["name"] = name
    val = t.values[0] if t.values else None
    raw["description"] = (f"winner of cifarlab search '{study.study_name}' (trial {t.number}, "
                          + (f"val acc {val:.4f}" if val is not None else "not complete") + ")")
    raw["model"] = "family"
    raw["model_args"] = copy.deepcopy(t.user_attrs["model_args"])
    raw["constraints"] = rules_table(spec.constraints)
    train = nest(t.user_attrs.get("train") or {})
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


def write_best(study: optuna.Study, out: str | os.PathLike, number: int | None = None) -> dict:
    """Write the winner (or trial `number`) as a recipe file; return {'path', 'trial', ...}."""
    from .rundir import atomic_write_text

    out = Path(out)
    if out.suffix != ".toml":
        raise SearchError(f"--out {out}: the recipe file must end in .toml")
    t = pick(study, number)
    raw = winner_recipe(study, t, out.stem)
    ua = t.user_attrs
    header = "\n".join([
        f"Written by `cifarlab search best` from study '{study.study_name}', trial {t.number}",
        f"({datetime.now().isoformat(timespec='seconds')}).",
        f"Design: {ua.get('design')}",
        f"{ua.get('params', 0):,} params, {ua.get('macs', 0):,} MACs, receptive field "
        f"{ua.get('receptive_field')};",
        f"validation accuracy {t.values[0]:.4f} on {spec_of(study).search['val_split']:,} "
        "held-out training images.",
        "Train it on the full training set (the test set is read once, at the end):",
        f"  cifarlab train --recipe {out}"])
    text = to_toml(raw, header)
    parsed = tomllib.loads(text)
    if parsed != raw:
        raise SearchError("internal error: the recipe does not read back as written")
    atomic_write_text(out, text)
    return {"path": str(out), "trial": t.number, "values": t.values,
            "design": ua.get("design"), "recipe": raw}
