"""Processes: whether a trial's worker is still alive (this machine's /proc), re-queueing the
trials of dead ones, and starting worker processes (`--workers N`), replacing any that is
killed while the budget lasts."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import TrialState

from . import STORAGE_ENV
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


def launch(cmd: list[str], n: int, env: dict[str, str], budget_left: Callable[[], bool],
           log: Callable[[str], None], max_restarts: int | None = None) -> int:
    """Run `n` worker processes (`cmd`, tagged [w1], [w2], ...) until they all exit; return
    the worst exit status. A worker killed by a signal (kill -9, the kernel's out-of-memory
    killer, a crash) while `budget_left()` is replaced by a new process under the same tag,
    which re-queues the dead one's trial (`reap_local`) and so resumes it from its
    checkpoint; at most `max_restarts` (default 5 per worker) replacements. Ctrl-C: the
    workers get it too and re-queue their trials; KeyboardInterrupt once they have exited."""
    def start(i: int) -> subprocess.Popen:
        return subprocess.Popen(cmd, env=dict(env, CIFARLAB_SEARCH_TAG=f"[w{i + 1}] "))

    procs = {i: start(i) for i in range(n)}
    for i, p in procs.items():
        log(f"[w{i + 1}] worker pid {p.pid}")
    limit = 5 * n if max_restarts is None else max_restarts
    rc, restarts = 0, 0
    try:
        while procs:
            time.sleep(0.5)
            for i, p in list(procs.items()):
                r = p.poll()
                if r is None:
                    continue
                del procs[i]
                if r >= 0:
                    rc = max(rc, r)
                    continue
                name = signal.Signals(-r).name if -r in signal.valid_signals() else str(-r)
                if -r in (signal.SIGINT, signal.SIGTERM):
                    rc = max(rc, 128 - r)
                elif not budget_left():
                    log(f"[w{i + 1}] worker pid {p.pid} was killed ({name}); the budget is "
                        "used: not replaced")
                elif restarts >= limit:
                    log(f"[w{i + 1}] worker pid {p.pid} was killed ({name}); {limit} "
                        "replacements already: not replaced")
                    rc = max(rc, 128 - r)
                else:
                    restarts += 1
                    procs[i] = start(i)
                    log(f"[w{i + 1}] worker pid {p.pid} was killed ({name}): replaced by pid "
                        f"{procs[i].pid} (its trial resumes from its checkpoint)")
    except KeyboardInterrupt:
        for p in procs.values():
            p.wait()
        raise
    return rc



def run_workers(search: str, spec, name: str, workers: int, *, storage: str | None = None,
                minutes: float | None = None, trials: int | None = None,
                runs_dir: str | os.PathLike = "runs", data_dir: str | os.PathLike | None = None,
                threads: int | None = None, queued_only: bool = False,
                storage_wait: float | None = None, log: Callable[[str], None] = print
                ) -> tuple[int, dict]:
    """Create (or check) the study here, then run `workers` worker processes on it (each
    `python -m cifarlab.search.cli SEARCH ...`); one that is killed is replaced while the
    budget lasts (`launch`). (exit status, the study's summary)."""
    import sys

    from .storage import create_or_load, default_storage, mask_url, study_dir_for
    from .trials import budget_left, summary

    sdir = study_dir_for(runs_dir, name)
    sdir.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(sdir)
    study, _ = create_or_load(spec, name, url, minutes, log)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    procs, cores = spec.search["processes"], os.cpu_count() or 1
    if workers * procs > cores:
        log(f"note: {workers} workers x {procs} training processes ([search] processes) on "
            f"{cores} cores slow each other down and distort the timed steps: --workers "
            f"{max(1, cores // procs)} fits")
    cmd = [sys.executable, "-m", "cifarlab.search.cli", search, "--study", name,
           "--runs-dir", str(runs_dir), "--threads", str(threads)]
    for flag, value in (("--trials", trials), ("--data-dir", data_dir),
                        ("--storage-wait", storage_wait)):
        if value is not None:
            cmd += [flag, str(value)]
    if queued_only:
        cmd += ["--queued-only"]
    log(f"{workers} workers x {threads} thread(s) on study '{name}' ({mask_url(url)})")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env[STORAGE_ENV] = url  # the URL (and any password in it) stays out of the process list
    rc = launch(cmd, workers, env, lambda: budget_left(study, spec, trials), log)
    return rc, summary(study)
