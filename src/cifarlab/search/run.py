"""`run_search`: run (or resume) a search in this process until its budget is used."""

from __future__ import annotations

import contextlib
import os
import signal
import warnings
from collections.abc import Callable

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from ..errors import CifarlabError
from .space import SearchError, SearchSpec, load_search
from .storage import (
    create_or_load,
    default_storage,
    get_trial,
    requeue,
    retry_callback,
    storage_errors,
    study_dir_for,
)
from .trials import best_trials, outcome, search_seconds, summary, trial_seconds
from .worker import TrialError, Worker, load_train_data
from .workers import reap_local


def status_line(study: optuna.Study, t: FrozenTrial | None, budget_s: float,
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
    st, store = create_or_load(spec, name, url, minutes, log)
    copy_path = sdir / "search.toml"
    if not copy_path.exists():
        from ..rundir import atomic_write_text

        atomic_write_text(copy_path, spec.text)
    if threads:
        torch.set_num_threads(threads)
    if data is None:
        data = load_train_data(data_dir)
    w = Worker(spec, st, store, sdir, data, log, tag)
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
                reap_local(st, store, w.host, w.log)
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
                    st.optimize(w.objective, n_trials=1, catch=(TrialError,))
            except KeyboardInterrupt:
                _requeue_current(st, store, w)
                raise
            except CifarlabError:
                _requeue_current(st, store, w)
                raise
            if w.current is not None:
                with storage_errors(url):
                    t = get_trial(store, st, w.current)
                    failures = failures + 1 if t.state == TrialState.FAIL else 0
                    line = status_line(st, t, budget_s, trials)
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


def _requeue_current(study: optuna.Study, storage: optuna.storages.BaseStorage,
                     w: Worker) -> None:
    """After an interrupt or an error that stops the search: queue again the trial this worker
    was running (Optuna marked it failed), so the next run resumes it."""
    if w.current is None:
        return
    with contextlib.suppress(Exception):
        t = get_trial(storage, study, w.current)
        if t.state == TrialState.RUNNING:
            requeue(study, storage, t, "interrupted")
        elif t.state == TrialState.FAIL:  # Optuna failed it (the reason is already set)
            retry_callback()(study, t)
        else:
            return
        w.log(f"trial {t.number} interrupted: re-queued (run the same command to resume it)")
