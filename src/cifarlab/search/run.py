"""`run_search`: run (or resume) a search in this process until its budget is used.

The loop: check the budget (and the other reasons to stop), run one trial (`Worker`), say how
it ended. When the database stops answering (a server restart, a network cut), the worker
waits and tries again (`storage.wait_for_storage`, one line per attempt, for
`[search] storage_wait_minutes`); when it answers again the trial that was running is queued
again and resumes from its last checkpoint; when it does not, one line and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import warnings
from collections.abc import Callable

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from ..errors import CifarlabError
from .pruning import queue_neighbour
from .space import SearchError, SearchSpec, load_search
from .storage import (
    StorageDown,
    create_or_load,
    database_cause,
    default_storage,
    get_trial,
    mask_url,
    requeue,
    retry_callback,
    storage_errors,
    study_dir_for,
    wait_for_storage,
)
from .trials import best_trials, met_rules, outcome, search_seconds, summary, trained, trial_seconds
from .worker import TrialError, Worker, load_train_data
from .workers import reap_local


def status_line(study: optuna.Study, t: FrozenTrial | None, budget_s: float,
                 trials_cap: int | None) -> str:
    trials = study.get_trials(deepcopy=False)
    used = search_seconds(trials)
    n_trained = len(trained(trials))
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
        b += f", {n_trained}/{trials_cap} trials"
    best = best_trials(study, trials)
    if best:
        name = (study.metric_names or ["val_acc"])[0].replace("_", " ")
        b += f"; best so far: trial {best[0].number} {name} {best[0].values[0]:.4f}"
    parts.append(b)
    return "  ".join(parts)


def run_search(search: str | os.PathLike | SearchSpec, *, study: str | None = None,
               storage: str | None = None, minutes: float | None = None,
               trials: int | None = None, runs_dir: str | os.PathLike = "runs",
               data=None, data_dir: str | os.PathLike | None = None,
               threads: int | None = None, log: Callable[[str], None] = print,
               tag: str = "", queued_only: bool = False,
               storage_wait: float | None = None) -> dict:
    """Run (or resume) a search in this process until the study's budget is used or it has
    `trials` trained trials; return `summary()`.

    The budget (`minutes`, else the study's stored one, else the file's) is the study's search
    time: the time during which any worker was running a trial, over all sessions (N workers
    side by side spend it at the pace of the clock); a trial that starts before it runs out is
    finished. Several processes on one or many machines may run the same study (same name and
    storage URL) at once. `queued_only`: run only the queued trials ([[enqueue]], retries),
    then stop. `storage_wait`: minutes to wait for a database that stops answering (default
    the file's `[search] storage_wait_minutes`; 0: stop at once).
    """
    spec = search if isinstance(search, SearchSpec) else load_search(search)
    name = study or spec.name
    _check_arguments(name, minutes, trials, storage_wait)
    sdir = study_dir_for(runs_dir, name)
    try:
        sdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SearchError(f"{sdir}: cannot create the study directory ({e.strerror})") from None
    url = storage or default_storage(sdir)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines say what happened
    optuna_study, store = create_or_load(spec, name, url, minutes, log)
    copy_path = sdir / "search.toml"
    if not copy_path.exists():
        from ..rundir import atomic_write_text

        atomic_write_text(copy_path, spec.text)
    if threads:
        torch.set_num_threads(threads)
    if data is None:
        data = load_train_data(data_dir)
    w = Worker(spec, optuna_study, store, sdir, data, log, tag)
    wait = spec.search["storage_wait_minutes"] if storage_wait is None else storage_wait
    loop = _Loop(optuna_study, store, url, w, trials, queued_only, wait)
    log(f"{tag}search '{name}': {spec.description or spec.source}; objectives "
        f"{', '.join(spec.objectives)}; budget {loop.budget_s / 60:.0f} min"
        + (f", {trials} trials" if trials else "") + f"; runs in {sdir}")
    with _interrupt_on_sigterm(), _quiet_storage_threads():
        loop.run()
    with storage_errors(url):
        return summary(optuna_study)


def _check_arguments(name: str, minutes: float | None, trials: int | None,
                     storage_wait: float | None) -> None:
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise SearchError(f"study name {name!r}: use letters, digits, '-', '_' or '.'")
    if minutes is not None and minutes <= 0:
        raise SearchError("--max-minutes must be positive")
    if trials is not None and trials <= 0:
        raise SearchError("--trials must be positive")
    if storage_wait is not None and storage_wait < 0:
        raise SearchError("--storage-wait must be 0 or more minutes")


class _Loop:
    """run_search's loop over trials in one worker, riding out database outages."""

    def __init__(self, study: optuna.Study, store: optuna.storages.BaseStorage, url: str,
                 w: Worker, trials: int | None, queued_only: bool, wait_minutes: float):
        self.study, self.store, self.url, self.w = study, store, url, w
        self.trials, self.queued_only, self.wait_minutes = trials, queued_only, wait_minutes
        self.spec, self.log = w.spec, w.log
        self.budget_s = 60 * float(study.user_attrs.get("budget_minutes")
                                   or self.spec.search["minutes"])
        self.failures = 0  # trials failed in a row
        self.rng = np.random.default_rng([self.spec.search["seed"], os.getpid()])  # mutate

    def run(self) -> None:
        while True:
            try:
                why = self.stop_reason()
                if why:
                    self.log(why)
                    return
                self.one_trial()
            except StorageDown as e:
                if not self.wait_minutes:
                    raise
                wait_for_storage(self.store, self.url, self.study.study_name, e.why,
                                 self.wait_minutes, self.log)
                _requeue_current(self.study, self.store, self.w)

    def stop_reason(self) -> str | None:
        """Why the search should stop now (None: run another trial)."""
        with storage_errors(self.url):
            reap_local(self.study, self.store, self.w.host, self.log)
            all_t = self.study.get_trials(deepcopy=False)
            used = search_seconds(all_t)
            n_trained = len(trained(all_t))
            self.budget_s = 60 * float(self.study.user_attrs.get("budget_minutes")
                                       or self.budget_s / 60)
        if used >= self.budget_s:
            return f"budget of {self.budget_s / 60:.0f} min used"
        retry_waiting = any(t.state == TrialState.WAITING and "failed_trial" in t.system_attrs
                            for t in all_t)  # a killed trial's rest: finished before stopping
        if self.trials is not None and n_trained >= self.trials and not retry_waiting:
            return f"{n_trained} trials trained"
        if self.queued_only and not any(t.state == TrialState.WAITING for t in all_t):
            return "no queued trial left"
        limit = self.spec.search["max_rejected_in_row"]
        if self.w.rejected_in_row >= limit and self.w.rejected_in_row % limit == 0:
            met = len(met_rules(all_t))
            if not met:
                raise SearchError(f"the rules rejected {self.w.rejected_in_row} candidates in "
                                  "a row and no design has met them: the space has (almost) "
                                  "no design that meets them; widen [space] or relax "
                                  "[constraints]")
            self.log(f"the rules rejected {self.w.rejected_in_row} candidates in a "
                     f"row; {met} design(s) met them so far: the feasible part of the "
                     "space is small for this sampler; going on (rejections cost search time)")
        if self.failures >= 3:
            raise SearchError(f"three trials in a row failed (the last: {self.w.last_error}); "
                              "stopping (the study is kept; fix the cause and run the same "
                              "command to resume)")
        return None

    def one_trial(self) -> None:
        """Ask Optuna for a trial and run it; then one line on how it ended."""
        w = self.w
        w.current = None
        try:
            with storage_errors(self.url), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if not self.queued_only:
                    queue_neighbour(self.study, self.spec, self.rng)
                self.study.optimize(w.objective, n_trials=1, catch=(TrialError,))
        except StorageDown:
            raise
        except (KeyboardInterrupt, CifarlabError):
            _requeue_current(self.study, self.store, w)
            raise
        except Exception as e:
            why = database_cause(e)
            if why is None:
                if isinstance(e, ValueError | RuntimeError) and self.finished_elsewhere():
                    return
                raise
            raise StorageDown(f"storage {mask_url(self.url)}: {why}", why) from None
        if w.current is not None:
            with storage_errors(self.url):
                t = get_trial(self.store, self.study, w.current)
                self.failures = self.failures + 1 if t.state == TrialState.FAIL else 0
                line = status_line(self.study, t, self.budget_s, self.trials)
            if line:
                self.log(line)

    def finished_elsewhere(self) -> bool:
        """After an error: was this worker's trial finished by another process while it ran
        (failed and re-queued when its heartbeat went stale, say)? Then Optuna refuses its
        result ("Cannot tell a FAIL trial"): one line, and the worker goes on."""
        if self.w.current is None:
            return False
        with storage_errors(self.url):
            t = get_trial(self.store, self.study, self.w.current)
        if not t.state.is_finished():
            return False
        self.log(f"trial {t.number}: another worker ended it ({outcome(t)}) while this one "
                 "ran it; this run's result is dropped")
        return True


@contextlib.contextmanager
def _interrupt_on_sigterm():
    """SIGTERM stops the worker as Ctrl-C does (the running trial is re-queued)."""
    def on_term(signum, frame):
        raise KeyboardInterrupt

    old = None
    with contextlib.suppress(ValueError):  # not the main thread: no handler
        old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        if old is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def _quiet_storage_threads():
    """A database error in a background thread (Optuna's heartbeat) prints no traceback: the
    main loop meets the same outage and says so in one line."""
    old = threading.excepthook

    def hook(args) -> None:
        if args.exc_value is None or database_cause(args.exc_value) is None:
            old(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = old


def _requeue_current(study: optuna.Study, storage: optuna.storages.BaseStorage,
                     w: Worker) -> None:
    """After an interrupt, an error that stops the search or a database outage: queue again
    the trial this worker was running (unless that is done already), so that it resumes from
    its checkpoint."""
    if w.current is None:
        return
    with contextlib.suppress(Exception):
        t = get_trial(storage, study, w.current)
        if t.state == TrialState.RUNNING:
            requeue(study, storage, t, "interrupted")
        elif t.state == TrialState.FAIL and not any(
                u.system_attrs.get("failed_trial") == t.number
                for u in study.get_trials(deepcopy=False)):
            retry_callback()(study, t)  # Optuna failed it (the reason is already set)
        else:
            return
        w.current = None
        w.log(f"trial {t.number} interrupted: re-queued (it resumes from its checkpoint)")
