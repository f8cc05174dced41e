"""One worker: draws a candidate, checks it against the rules and the base recipe (rejected
without training when it breaks one), trains it on the training set minus a validation split
with early stopping, and records everything in the trial (user attributes) and its run
directory. See `cifarlab.search` for the whole picture."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from ..errors import CifarlabError
from ..models import create_model
from ..models import family as fam
from ..recipe import resolve
from . import pruning
from .fidelity import PROXY_STEP, proxy_epochs, proxy_overrides
from .rules import check_rules, rule_key, rules_table, untrainable
from .space import ARCH_DIMS, MODEL_ARG, TRAIN_DIMS, SearchSpec, max_epochs, sample
from .storage import database_cause, get_trial
from .timing import predict_seconds, schedule, time_room, time_steps
from .workers import proc_start


def load_train_data(data_dir: str | os.PathLike | None = None, download: bool = False):
    """CIFAR-10's training set only: a search never opens the test batch."""
    from ..data import CIFAR10, Split, find_data, load_split, read_classes

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


def describe(spec: SearchSpec, args: dict) -> str:
    """A few words for a design: the family's ('stem 24 | /a 1x residual 32 | ...'), or the
    user's network and its searched arguments ('mynet.py:Net width=32 depth=2')."""
    if spec.family:
        return fam.describe_design(args)
    path, _, attr = spec.model.rpartition(":")
    searched = [k[len(MODEL_ARG):] for k in spec.space if k.startswith(MODEL_ARG)]
    return " ".join([f"{Path(path).name}:{attr}"] + [f"{k}={args[k]}" for k in searched])


def trial_recipe(spec: SearchSpec, study: str, number: int, args: dict,
                 train: dict) -> tuple[dict, dict]:
    """(raw recipe, dotted overrides) of a trial: the base recipe with the family network,
    its searched settings, a validation split and no test evaluation. Every training key the
    space does not search comes from the base recipe."""
    raw = copy.deepcopy(spec.base_recipe)
    raw["name"] = f"{study}-trial-{number:04d}"
    raw["description"] = f"cifarlab search {study}, trial {number}"
    raw["model"] = spec.model
    raw["model_args"] = copy.deepcopy(args)
    raw["constraints"] = rules_table(spec.constraints)
    return raw, {**train, **protocol(spec)}


def protocol(spec: SearchSpec) -> dict:
    """The overrides every search training gets: the validation split, no test set, every
    epoch evaluated, `[search] processes` data-parallel processes (default one: workers run
    side by side), the search's seed."""
    s = spec.search
    over = {"data.val_split": s["val_split"], "train.test_eval": "never",
            "train.eval_every": 1, "train.processes": s["processes"], "train.target": 0.0,
            "train.seed": s["seed"]}
    if s["train_subset"]:
        over["data.train_subset"] = s["train_subset"]
    return over


class TrialError(RuntimeError):
    """A trial failed for a reason of its own (it is recorded; the search goes on)."""


@dataclass
class _Candidate:
    """One trial's design on its way through the objective: what was drawn, its recipe, and
    what the checks found."""

    trial: optuna.Trial
    t_start: float
    args: dict  # the network's arguments
    design: str  # a few words for it (`describe`)
    label: str | None  # a queued design's label: always trained in full
    raw: dict  # the trial's raw recipe ...
    over: dict  # ... and its dotted overrides (`trial_recipe`)
    cfg: dict  # both resolved
    model_facts: dict = field(default_factory=dict)  # params, MACs, RF (`check_rules`)
    cap: float | None = None  # the time rules' limit on training seconds (max_seconds)
    prev_epochs: int | None = None  # a retried trial's epochs from its first attempt
    cost_name: str | None = None  # the cost objective, if any


class _EpochWatch:
    """A trial's `epoch_callback`: records its validation curve (and, for the seconds
    objective, the cost so far) and stops it early, by the pruner (one objective) or the
    dominance rule at a rung (several); `why` says why it stopped (None: it did not)."""

    def __init__(self, worker: Worker, c: _Candidate, epochs: int):
        self.worker, self.c, self.epochs = worker, c, epochs
        self.curve = {int(k): v for k, v in (c.trial.user_attrs.get("curve") or {}).items()}
        self.why: str | None = None
        self.t_train = time.time()  # reset after the proxy rung

    def __call__(self, row: dict) -> bool:
        w, trial, epochs, curve = self.worker, self.c.trial, self.epochs, self.curve
        e, acc = int(row["epoch"]), row.get("val_acc")
        trial.set_user_attr("seconds_used", time.time() - self.c.t_start)
        if acc is None or not math.isfinite(acc):
            return False
        curve[e] = float(acc)
        trial.set_user_attr("curve", {str(k): v for k, v in sorted(curve.items())})
        if self.c.cost_name == "seconds":  # measured so far, extrapolated to the planned epochs
            spent = time.time() - self.t_train
            trial.set_user_attr("cost", spent / max(1, len(curve)) * epochs)
        w.log(f"  trial {trial.number} epoch {e}/{epochs}  val acc {acc:.4f}")
        if self.c.label or e >= epochs:
            return False
        if not w.spec.multi:
            trial.report(float(acc), w.step0 + e)
            if trial.should_prune():
                self.why = (f"{w.spec.search['pruner']} pruner at epoch {e} "
                            f"(val acc {acc:.4f})")
                return True
        elif e in w.rungs:
            why = w._dominance(trial, float(acc), e)
            if why:
                self.why = f"dominance rule at epoch {e} (val acc {acc:.4f}): {why}"
                return True
        return False


class Worker:
    """Runs trials of one study in this process (see `run_search`)."""

    def __init__(self, spec: SearchSpec, study: optuna.Study,
                 storage: optuna.storages.BaseStorage, study_dir: Path, data,
                 log: Callable[[str], None], tag: str = ""):
        self.spec, self.study, self.storage = spec, study, storage
        self.dir, self.data = study_dir, data
        self.log = (lambda s: log(f"{tag}{s}")) if tag else log
        self.host = socket.gethostname()
        self.cons = spec.constraints
        self.base_cfg = resolve(copy.deepcopy(spec.base_recipe))
        self.base_model = None
        self.trials_dir = study_dir / "trials"
        s = spec.search
        self.rungs = [] if s["pruner"] == "proxy" else pruning.rungs(
            s["min_epochs"], s["reduction_factor"], max_epochs(spec.space, spec.base_recipe))
        self.n_val = s["val_split"]  # held out of the full set first, then the subset drawn
        self.n_train = max(1, len(data.train) - self.n_val)
        if s["train_subset"]:
            self.n_train = min(self.n_train, s["train_subset"])
        self.rejected_in_row = 0
        self.current: int | None = None  # number of the trial this worker runs
        self.base_step = math.inf  # fastest step of the base model measured so far
        self.last_error = ""  # of the last failed trial
        self.corrupted = None  # the corrupted validation images (corrupt_acc), once built
        self.fid = s["fidelity"]  # the proxy rung ({}: none), see fidelity.py
        self.step0 = PROXY_STEP if self.fid else 0  # full-fidelity epoch e is step step0 + e

    def recipe(self, number: int, args: dict, train: dict) -> tuple[dict, dict]:
        return trial_recipe(self.spec, self.study.study_name, number, args, train)

    # -- time -----------------------------------------------------------------------------
    def _base(self) -> torch.nn.Module:
        if self.base_model is None:
            b = self.base_cfg
            self.base_model = create_model(b["model"], **b["model_args"])
        return self.base_model

    def predict_train_seconds(self, model: torch.nn.Module, cfg: dict,
                              hopeless: Callable[[float, float], bool] | None = None
                              ) -> tuple[float, float]:
        """(predicted training seconds of this trial, of the base recipe), timed together;
        the timing stops after the first round where `hopeless(these predictions)`."""
        b, t = self.base_cfg["train"], cfg["train"]

        def predict(sc: float, sb: float) -> tuple[float, float]:
            # other work can only slow a measurement down: the base's fastest one so far is
            # the truest (a busy moment must not make a slow candidate look cheap)
            sb = min(self.base_step, sb)
            return (predict_seconds(sc, self.n_train, t["batch_size"], t["epochs"], self.n_val,
                                    t["tta"], t["processes"]),
                    predict_seconds(sb, self.n_train, b["batch_size"], b["epochs"], self.n_val,
                                    b["tta"], t["processes"]))

        sc, sb = time_steps([(model, cfg), (self._base(), self.base_cfg)],
                            enough=hopeless and (lambda best: hopeless(*predict(*best))),
                            processes=t["processes"])
        self.base_step = min(self.base_step, sb)
        return predict(sc, sb)

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
        try:
            return self._objective(trial)
        except KeyboardInterrupt:
            with contextlib.suppress(Exception):
                trial.set_user_attr("failed", "interrupted")
            raise
        except optuna.TrialPruned:
            raise
        except Exception as e:
            if database_cause(e) is not None:
                raise
            what = str(e) if isinstance(e, CifarlabError) else f"{type(e).__name__}: {e}"
            what = (what.strip().splitlines() or [type(e).__name__])[0][:500]
            self.last_error = what
            trial.set_user_attr("error", what)
            raise TrialError(what) from e

    def _objective(self, trial: optuna.Trial):
        t_start = time.time()
        self._claim(trial)
        c = self._draw(trial, t_start)
        model, broken, values = self._check_design(c)
        pred = None
        if self._needs_time() and not broken:
            pred = self._check_time(c, model, broken, values)
        if broken:
            self._reject(c, broken, values)
        for k, v in values.items():
            trial.set_constraint(k, min(v, 0.0))
        trial.set_user_attr("met_rules", True)
        self.rejected_in_row = 0
        self._record_cost(c, pred)
        return self._train(c)

    def _claim(self, trial: optuna.Trial) -> None:
        """Mark the trial as this worker's; clear what a failed attempt left on it."""
        self.current = trial.number
        trial.set_user_attr("worker", {"host": self.host, "pid": os.getpid(),
                                       "start": proc_start(os.getpid()), "since": time.time()})
        trial.set_user_attr("seconds_used", 0.0)
        for k in ("rejected", "rejected_rules", "pruned", "failed", "error"):
            if k in trial.user_attrs:  # inherited from a failed attempt
                trial.set_user_attr(k, None)

    def _draw(self, trial: optuna.Trial, t_start: float) -> _Candidate:
        """The trial's design and settings, sampled and recorded, and its recipe."""
        label = trial.user_attrs.get("label")  # a queued design keeps its own epochs
        # a retry (Optuna copies the failed attempt's user attributes) of an attempt that met
        # the rules keeps its schedule: its run directory resumes with it. One stopped before
        # the checks ended (`train` is recorded below, before them) is checked afresh.
        first = trial.user_attrs.get("train") if trial.user_attrs.get("met_rules") else None
        prev_epochs = (first or {}).get("train.epochs")
        args, train = sample(self.spec.space, trial, self.spec.model_args,
                             () if label else self.spec.derived)
        design = describe(self.spec, args)
        trial.set_user_attr("model_args", args)
        trial.set_user_attr("train", train)
        trial.set_user_attr("design", design)
        raw, over = self.recipe(trial.number, args, train)
        c = _Candidate(trial=trial, t_start=t_start, args=args, design=design, label=label,
                       raw=raw, over=over, cfg={},
                       prev_epochs=prev_epochs if isinstance(prev_epochs, int) else None)
        try:
            c.cfg = resolve(copy.deepcopy(raw), over)
        except CifarlabError as e:  # settings that do not go together: a batch that the
            self._reject(c, [f"untrainable: {e}"], {"trainable": 1.0})  # processes cannot share
        return c

    def _reject(self, c: _Candidate, msgs: list[str], values: dict) -> None:
        """Record why the design is refused untrained, and prune the trial (always raises)."""
        trial = c.trial
        for k, v in values.items():
            trial.set_constraint(k, v)
        trial.set_user_attr("rejected", "; ".join(msgs))
        trial.set_user_attr("rejected_rules", sorted({rule_key(m) for m in msgs}))
        trial.set_user_attr("seconds_used", time.time() - c.t_start)
        self.rejected_in_row += 1
        f = trial.user_attrs
        size = (f"  {f['params']:,} params, {_fmt_count(f['macs'])} MACs, RF "
                f"{f['receptive_field']}" if "params" in f else "")
        self.log(f"trial {trial.number} rejected: {'; '.join(msgs)}  [{c.design}]{size}")
        raise optuna.TrialPruned("rejected: " + "; ".join(msgs))

    def _check_design(self, c: _Candidate) -> tuple[torch.nn.Module, list[str], dict]:
        """(model, broken rules, constraint values): the network built and traced against the
        rules, then whether it trains (also at the proxy rung's resolution). A design that
        cannot be built or traced is rejected here."""
        try:
            model = create_model(self.spec.model, **c.args)
            c.model_facts, broken, values = check_rules(model, self.cons)
        except CifarlabError as e:
            self._reject(c, [f"invalid design: {e}"], {"design": 1.0})
        except Exception as e:  # the trace (one forward pass) fails: a shape error
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            self._reject(c, [f"untrainable: a forward pass fails ({type(e).__name__}: "
                             f"{first[:200]})"], {"trainable": 1.0})
        for k in ("params", "macs", "receptive_field"):
            c.trial.set_user_attr(k, c.model_facts[k])
        if not broken:
            broken = untrainable(model, c.cfg, self.base_cfg["train"]["processes"])
            if not broken and self.fid.get("low_res"):  # the proxy trains at low_res px
                proxy = resolve(copy.deepcopy(c.raw), {**c.over, **proxy_overrides(self.fid)})
                broken = [f"{m} (the proxy rung's fidelity.low_res)"
                          for m in untrainable(model, proxy)]
            values["trainable"] = 1.0 if broken else 0.0
        return model, broken, values

    def _needs_time(self) -> bool:
        """Whether a trial's training time must be predicted (a time rule or objective)."""
        c = self.cons
        return bool(c["max_train_seconds"] or c["max_train_time_vs_base"]
                    or "seconds" in self.spec.objectives)

    def _check_time(self, c: _Candidate, model: torch.nn.Module, broken: list[str],
                    values: dict) -> float:
        """The predicted training seconds (calibrated), checked against the time rules:
        adds to `broken` and `values`, sets the candidate's time cap. Returns the prediction."""
        trial, label, cons = c.trial, c.label, self.cons
        cal = self.calibration()
        fill = bool(self.spec.derived) and not label  # fill_time: epochs set from the time
        fewest = self.spec.space["epochs"].low / c.cfg["train"]["epochs"] if fill else 1.0

        def hopeless(pred: float, pred_base: float) -> bool:
            """Twice over a time rule after a round (with fill_time, at the fewest epochs):
            the fastest of more rounds would not bring it under (seen: hundreds of designs
            2-10x over, timed 8 s each)."""
            return not label and bool(self._over_time(pred * cal * fewest, pred_base * cal, 2))

        pred, pred_base = self.predict_train_seconds(model, c.cfg, hopeless)
        pred *= cal
        pred_base *= cal
        if fill:
            pred = self._fill_time(c, pred, pred_base)
        trial.set_user_attr("predicted_seconds", pred)
        trial.set_user_attr("base_predicted_seconds", pred_base)
        if cons["max_train_seconds"]:
            lim = cons["max_train_seconds"]
            values["time_seconds"] = (pred - lim) / lim
            c.cap = 1.25 * lim
        if cons["max_train_time_vs_base"]:
            lim = cons["max_train_time_vs_base"]
            trial.set_user_attr("time_vs_base", pred / pred_base)
            values["time_vs_base"] = (pred / pred_base - lim) / lim
            c.cap = min(c.cap or math.inf, 1.5 * lim * pred_base)
        if not label and not c.prev_epochs:  # a retry met the time rules in its first attempt
            broken += self._over_time(pred, pred_base)
        return pred

    def _over_time(self, pred: float, pred_base: float, factor: float = 1) -> list[str]:
        """The time rules that a predicted `pred` training seconds (the base recipe's:
        `pred_base`) breaks by more than `factor` x their limit, as rejection reasons."""
        cons, out = self.cons, []
        lim = cons["max_train_seconds"]
        if lim and pred > factor * lim:
            out.append(f"time budget: predicted {pred:.0f} s of training, more than "
                       f"max_train_seconds {lim:.0f}")
        lim = cons["max_train_time_vs_base"]
        if lim and pred / pred_base > factor * lim:
            out.append(f"time budget: predicted training time {pred / pred_base:.2f}x the "
                       f"base recipe's, more than max_train_time_vs_base {lim:g}")
        return out

    def _fill_time(self, c: _Candidate, pred: float, pred_base: float) -> float:
        """`[search] fill_time`: the trial trains the most epochs (within the space's range)
        whose predicted time meets the time rules, its low-resolution epochs in proportion
        (`timing.schedule`, as the final stage scales a schedule); recorded in the trial's
        training settings; a retried trial keeps its first attempt's epochs. Returns the
        predicted seconds of that schedule (at the fewest epochs when none fits: the time
        rules then reject it)."""
        cons, d, e0 = self.cons, self.spec.space["epochs"], c.cfg["train"]["epochs"]
        per_epoch = pred / e0
        fits = e0 * time_room(cons, pred, pred / pred_base)  # epochs within the time rules
        e = c.prev_epochs or int(min(d.high, max(d.low, math.floor(fits + 1e-9))))
        over = schedule(c.cfg, e)
        c.over = {**c.over, **over}
        c.cfg = resolve(copy.deepcopy(c.raw), c.over)
        train = {**c.trial.user_attrs["train"], **over, "train.epochs": e}
        c.trial.set_user_attr("train", train)
        return per_epoch * e

    def _record_cost(self, c: _Candidate, pred: float | None) -> None:
        """The cost objective known before training (params, MACs, predicted seconds)."""
        c.cost_name = self.spec.cost
        cost = None
        if c.cost_name in ("params", "macs"):
            cost = float(c.model_facts[c.cost_name])
        elif c.cost_name == "seconds":
            cost = pred
        if cost is not None:
            c.trial.set_user_attr("cost", cost)

    # -- training a trial -------------------------------------------------------------------
    def _train(self, c: _Candidate):
        """Train the accepted design (after its proxy rung, if any) and return the trial's
        objective values; TrialPruned when a rule stops it early."""
        epochs = c.cfg["train"]["epochs"]
        watch = _EpochWatch(self, c, epochs)
        self._log_training(c)
        if self.fid:
            self._proxy(c)  # TrialPruned when not promoted
            watch.t_train = time.time()
        metrics = self._run_training(c, watch)
        return self._objective_values(c, metrics, watch.why, epochs)

    def _log_training(self, c: _Candidate) -> None:
        """One line: the design, its searched training settings, its size and time."""
        trial, f = c.trial, c.model_facts
        searched = {TRAIN_DIMS.get(k) or k for k, d in self.spec.space.items()
                    if d.kind != "fixed" and k not in ARCH_DIMS and not k.startswith(MODEL_ARG)}
        if "augment" in searched:
            searched |= {"augment.crop_pad", "augment.cutout"}
        words = _train_words({k: v for k, v in trial.user_attrs["train"].items()
                              if k in searched})
        self.log(f"trial {trial.number} training: {c.design}  {words}"
                 f"  {f['params']:,} params, {_fmt_count(f['macs'])} MACs, "
                 f"RF {f['receptive_field']}"
                 + (f", predicted {trial.user_attrs['predicted_seconds'] / 60:.1f} min"
                    if trial.user_attrs.get("predicted_seconds") else "")
                 + (f"  [{c.label}]" if c.label else "")
                 + (f"  [neighbour of trial {trial.user_attrs['neighbour_of']}]"
                    if "neighbour_of" in trial.user_attrs else ""))

    def _run_training(self, c: _Candidate, watch: _EpochWatch) -> dict:
        """The run's metrics: a retried trial resumes its run directory when it can, else
        the trial trains afresh."""
        trial = c.trial
        prev = trial.user_attrs.get("run_dir")
        retried = get_trial(self.storage, self.study, trial.number).system_attrs.get(
            "failed_trial")
        resume = (prev if retried is not None and prev and (Path(prev) / "last.pt").is_file()
                  else None)
        kw = dict(data=self.data, progress=False, plots=False, log=self._engine_log,
                  max_seconds=c.cap, epoch_callback=watch)
        metrics = self._resume(trial, resume, retried, kw) if resume else None
        if metrics is None:
            metrics = self._train_afresh(c, kw)
        return metrics

    def _resume(self, trial: optuna.Trial, resume: str, retried, kw: dict) -> dict | None:
        """Continue a failed attempt's run; None when it cannot be resumed."""
        from ..training import train as train_run

        trial.set_user_attr("run_dir", str(resume))
        self.log(f"  trial {trial.number}: resuming {resume} (retry of trial {retried})")
        try:
            return train_run(resume=resume, **kw)
        except optuna.TrialPruned:
            raise
        except CifarlabError as e:
            if "diverged" in str(e):
                raise
            self.log(f"  trial {trial.number}: cannot resume {resume} ({e}); "
                     "training afresh")
            return None

    def _train_afresh(self, c: _Candidate, kw: dict) -> dict:
        """Train the trial into trials/trial-NNNN; a diverged run prunes it."""
        from ..training import train as train_run

        trial = c.trial
        name = f"trial-{trial.number:04d}"
        run_dir = self.trials_dir / name
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            metrics = train_run(copy.deepcopy(c.raw), runs_dir=self.trials_dir, name=name,
                                **kw, **c.over)
        except CifarlabError as e:
            if "diverged" not in str(e):
                raise
            trial.set_user_attr("pruned", f"diverged ({e})")
            trial.set_user_attr("seconds_used", time.time() - c.t_start)
            self.log(f"trial {trial.number} pruned: training diverged")
            raise optuna.TrialPruned(str(e)) from None
        trial.set_user_attr("run_dir", metrics.get("run_dir", str(run_dir)))
        return metrics

    def _objective_values(self, c: _Candidate, metrics: dict, why: str | None, epochs: int):
        """Record the run's figures; prune a run stopped early (a rule, the time budget);
        else the objective value(s) in the spec's order."""
        trial = c.trial
        val = metrics.get("val_acc")
        trial.set_user_attr("val_acc", val)
        trial.set_user_attr("train_seconds", metrics.get("train_seconds"))
        trial.set_user_attr("epochs_done", metrics.get("epochs"))
        trial.set_user_attr("seconds_used", time.time() - c.t_start)
        if why:
            trial.set_user_attr("pruned", why)
            raise optuna.TrialPruned(why)
        if metrics.get("epochs", epochs) < epochs:
            why = (f"time budget: stopped after {metrics.get('epochs')} of {epochs} epochs "
                   f"({metrics.get('train_seconds', 0):.0f} s)")
            trial.set_user_attr("pruned", why)
            raise optuna.TrialPruned(why)
        if val is None or not math.isfinite(val):
            raise RuntimeError("training returned no validation accuracy")
        values = {"val_acc": float(val)}
        if "corrupt_acc" in self.spec.objectives:
            values["corrupt_acc"] = self._corrupt_acc(trial, c.cfg)
        if c.cost_name:
            values[c.cost_name] = (float(metrics["train_seconds"]) if c.cost_name == "seconds"
                                   else float(c.model_facts[c.cost_name]))
            trial.set_user_attr("cost", values[c.cost_name])
        out = tuple(values[o] for o in self.spec.objectives)
        return out if self.spec.multi else out[0]

    def _corrupt_acc(self, trial: optuna.Trial, cfg: dict) -> float:
        """The trained trial's accuracy on the corrupted validation images (`corrupt.py`; the
        images built at the first trial that needs them, then kept)."""
        from .corrupt import CorruptedVal

        s, d = self.spec.search, cfg["data"]
        if self.corrupted is None:
            self.corrupted = CorruptedVal(self.data.train, d["val_split"], d["val_seed"],
                                          s["corrupt_images"], s["corrupt_severities"])
            self.log(f"  corrupted validation images: {self.corrupted.images:,} "
                     f"({len(self.corrupted.labels):,} x 15 corruptions x severities "
                     f"{s['corrupt_severities']}), made in "
                     f"{self.corrupted.build_seconds:.0f} s")
        r = self.corrupted.score(trial.user_attrs["run_dir"])
        trial.set_user_attr("corrupt_acc", r["corrupt_acc"])
        trial.set_user_attr("corrupt_by", r["by_corruption"])
        trial.set_user_attr("corrupt_seconds", r["seconds"])
        self.log(f"  trial {trial.number} corrupted val acc {r['corrupt_acc']:.4f} "
                 f"({r['seconds']:.0f} s)")
        return float(r["corrupt_acc"])

    def _proxy(self, c: _Candidate) -> None:
        """The proxy rung (`fidelity.py`): train the trial's design cheaply (a retry keeps the
        proxy its first attempt finished), record `proxy_acc`, and let the pruner (or the
        dominance rule) decide whether it goes on to the full schedule. With fill_time the
        proxy's epochs scale with the trial's (`fidelity.proxy_epochs`)."""
        from ..training import train as train_run

        trial, label = c.trial, c.label
        scale = (c.cfg["train"]["epochs"] / self.base_cfg["train"]["epochs"]
                 if self.spec.derived else 1.0)
        acc = trial.user_attrs.get("proxy_acc")
        if not isinstance(acc, int | float):
            t0 = time.time()
            m = train_run(copy.deepcopy(c.raw), runs_dir=self.trials_dir,
                          name=f"trial-{trial.number:04d}-proxy", data=self.data,
                          progress=False, plots=False, log=self._engine_log,
                          **{**c.over, **proxy_overrides(self.fid, scale)})
            acc = m.get("val_acc")
            if acc is None or not math.isfinite(acc):
                raise RuntimeError("the proxy run returned no validation accuracy")
            trial.set_user_attr("proxy_acc", float(acc))
            trial.set_user_attr("proxy_seconds", time.time() - t0)
            trial.set_user_attr("proxy_run_dir", m.get("run_dir"))
        f = self.fid
        self.log(f"  trial {trial.number} proxy ({proxy_epochs(f, scale)} epochs on "
                 f"{f['train_subset']:,} images" + (f", {f['low_res']} px" if f["low_res"]
                                                    else "") + f"): val acc {acc:.4f}")
        why = None
        if not self.spec.multi:
            trial.report(float(acc), PROXY_STEP)
            # asked for a queued design too, which always runs in full: Optuna's pruner
            # records the value when asked, so the hand design's proxy is one the others
            # must compete with from the first trials on
            if trial.should_prune() and not label:
                why = f"{self.spec.search['pruner']} pruner"
        elif not label:
            why = self._dominance(trial, float(acc), "proxy")
            why = why and f"dominance rule: {why}"
        if why:
            why = f"not promoted from the proxy rung (proxy val acc {acc:.4f}): {why}"
            trial.set_user_attr("pruned", why)
            trial.set_user_attr("seconds_used", time.time() - trial.user_attrs["worker"]["since"])
            raise optuna.TrialPruned(why)

    def _engine_log(self, line: str) -> None:
        if line.startswith("warning") or "time budget" in line:
            self.log(f"  {line}")

    def _dominance(self, trial: optuna.Trial, acc: float, epoch: int | str) -> str | None:
        """The multi-objective early stop on validation accuracy at this rung (an epoch, or
        "proxy": the proxy rung's accuracies): among the trials that cost no more (every trial,
        when no objective is a cost: val_acc + corrupt_acc)."""
        costed = self.spec.cost is not None
        cost = trial.user_attrs.get("cost") if costed else 0.0
        if not isinstance(cost, int | float):
            return None
        peers = []
        for t in self.study.get_trials(deepcopy=False):
            if t.number == trial.number or t.user_attrs.get("rejected"):
                continue
            a = (t.user_attrs.get("proxy_acc") if epoch == "proxy"
                 else (t.user_attrs.get("curve") or {}).get(str(epoch)))
            c = t.user_attrs.get("cost") if costed else 0.0
            if isinstance(a, int | float) and isinstance(c, int | float):
                peers.append((float(c), float(a)))
        return pruning.dominance_prune(peers, acc, float(cost),
                                       self.spec.search["reduction_factor"])
