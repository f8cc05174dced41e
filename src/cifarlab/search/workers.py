"""Processes: whether a trial's worker is still alive (this machine's /proc), re-queueing the
trials of dead ones, and starting worker processes (`--workers N`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import TrialState

from .storage import requeue


def proc_start(pid: int) -> str | None:
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
    now = proc_start(pid)
    return start is None or now is None or now == start  # pid reused by another process


def reap_local(study: optuna.Study, storage: optuna.storages.BaseStorage, host: str,
               log: Callable[[str], None]) -> int:
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
        requeue(study, storage, t, f"worker {host}:{w.get('pid')} died")
        log(f"trial {t.number}: its worker (pid {w.get('pid')}) is gone: marked failed and "
            "re-queued")
        n += 1
    return n
