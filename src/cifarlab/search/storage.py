"""Where a study lives: an Optuna RDB storage (an SQLite file in the study directory, or a
database server shared by machines), opened, named and checked; the study created from a search
file or loaded (a study made from another file is refused); database errors as one line.

Everything here uses Optuna's public API: the storage object is opened here and passed on
(never read back from a study's private attributes).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import tomllib
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..provenance import mask_secrets
from . import pruning
from .space import SearchError, SearchSpec, parse_search

STUDY_FILE = "study.db"


def mask_url(url: str) -> str:
    """The storage URL with any password hidden."""
    return mask_secrets(url)


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
                  "heartbeat_stale_trial_callback": retry_callback()}
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                store = optuna.storages.RDBStorage(url, engine_kwargs=kw, **hb)
                if url.startswith("sqlite"):
                    _serialize_sqlite(store.engine)
                return store
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
        why = db_reason(err)
        raise SearchError(f"storage {mask_url(shown)}: cannot open ({why})") from None
    raise AssertionError("unreachable")


def _serialize_sqlite(engine) -> None:
    """Make each transaction on an SQLite file take the write lock when it begins (BEGIN
    IMMEDIATE). Python's sqlite3 driver opens a transaction only at the first write, so
    Optuna's "read the waiting trial, mark it running" (SELECT ... FOR UPDATE elsewhere; SQLite
    has no FOR UPDATE) let two workers read the same queued trial and both run it. SQLAlchemy's
    recipe for pysqlite: the driver starts no transaction itself, the "begin" event does."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def no_driver_transactions(dbapi_connection, record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners: closed, reopened with them


def _with_driver(url: str) -> str:
    """postgresql://... names SQLAlchemy's default driver (psycopg 3 since SQLAlchemy 2.1);
    use psycopg2 (what `pip install cifarlab[dev]` brings) when only that one is there."""
    import importlib.util

    if url.startswith(("postgresql://", "postgres://")):
        if importlib.util.find_spec("psycopg") is None and \
                importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def retry_callback():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=3, inherit_intermediate_values=True)


def db_reason(e: BaseException) -> str:
    """A database error's first line (the driver's own words), any credential masked."""
    msg = str(getattr(e, "orig", None) or e).strip().splitlines()
    return mask_secrets(msg[0] if msg else type(e).__name__)


def database_cause(e: BaseException) -> str | None:
    """The reason of the database error behind `e` (`db_reason`), or None when `e` has none:
    Optuna wraps SQLAlchemy's errors (StorageInternalError), and its `optimize`, when the
    database goes away while it records a trial's end, raises an UnboundLocalError of its own
    (Optuna 5.1) whose context is the database error."""
    import sqlalchemy.exc

    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.SQLAlchemyError):
            return db_reason(seen)
        seen = seen.__cause__ or seen.__context__
    return None


class StorageDown(SearchError):
    """The database stopped answering in the middle of a search (`wait_for_storage`)."""

    def __init__(self, message: str, why: str = ""):
        super().__init__(message)
        self.why = why


@contextlib.contextmanager
def storage_errors(url: str):
    """Turn a database failure in the middle of a search into a one-line StorageDown."""
    try:
        yield
    except StorageDown:
        raise
    except Exception as e:
        why = database_cause(e)
        if why is None:
            raise
        raise StorageDown(f"storage {mask_url(url)}: {why} (what was recorded is kept; run "
                          "the same command again to resume)", why) from None


def wait_for_storage(storage: optuna.storages.BaseStorage, url: str, study: str, why: str,
                     minutes: float, log: Callable[[str], None]) -> None:
    """The database stopped answering: try it again every few seconds, one log line per
    attempt, for `minutes`; return once it answers, else a one-line SearchError."""
    interval = min(10.0, max(1.0, 60 * minutes / 20))
    start, attempt = time.monotonic(), 0
    while True:
        left = 60 * minutes - (time.monotonic() - start)
        if left <= 0:
            raise SearchError(f"storage {mask_url(url)}: unreachable for {minutes:g} min "
                              f"({why}); giving up (what was recorded is kept; run the same "
                              "command again to resume)")
        attempt += 1
        log(f"storage {mask_url(url)} unreachable ({why}): attempt {attempt}, next in "
            f"{interval:.0f} s, giving up in {left / 60:.1f} min")
        time.sleep(min(interval, left))
        try:
            storage.get_study_id_from_name(study)
        except Exception as e:
            if database_cause(e) is None:
                raise
            why = database_cause(e) or why
            continue
        log(f"storage {mask_url(url)} answers again: carrying on")
        return


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


def create_or_load(spec: SearchSpec, name: str, url: str, minutes: float | None,
                   log: Callable[[str], None]
                   ) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    """(the study, its storage): opened, created (and the [[enqueue]] designs queued) if it is
    new; a study made from a different search file is refused."""
    storage = open_storage(url, spec.search["heartbeat"])
    directions = spec.directions
    with storage_errors(url), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            study = optuna.create_study(study_name=name, storage=storage,
                                        directions=directions, sampler=pruning.make_sampler(spec),
                                        pruner=pruning.make_pruner(spec))
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=storage,
                                      pruner=pruning.make_pruner(spec))
            created = False
        if created:
            study.set_user_attr("spec", spec.to_json())
            study.set_user_attr("created", datetime.now().isoformat(timespec="seconds"))
            study.set_user_attr("budget_minutes", minutes or spec.search["minutes"])
            study.set_metric_names(spec.objectives)
            for e in spec.enqueue:
                study.enqueue_trial(e["params"], user_attrs={"label": e["label"]}
                                    if e["label"] else None, skip_if_exists=True)
            seed = None  # the process that creates the study: the file's seed
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
            if [d.name.lower() for d in study.directions] != spec.directions:
                raise SearchError(f"study '{name}' has other objectives than the search file")
            if minutes:
                study.set_user_attr("budget_minutes", minutes)
            # another worker, or a later sitting: a random stream of its own (the same seed in
            # two workers would draw the same designs, and a resume would draw them again)
            seed = pruning.worker_seed(spec, len(study.get_trials(deepcopy=False)))
        study.sampler = pruning.make_sampler(spec, seed, study)  # bound to the study
    return study, storage


def _comparable(text: str) -> str:
    """A search file's content without the budget and the database patience (which a resume
    may change)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return text
    raw.get("search", {}).pop("minutes", None)
    raw.get("search", {}).pop("storage_wait_minutes", None)
    raw.pop("description", None)
    return json.dumps(raw, sort_keys=True, default=str)


def trial_id(storage: optuna.storages.BaseStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of trial `number` of `study` (what the storage's methods take)."""
    return storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number)


def get_trial(storage: optuna.storages.BaseStorage, study: optuna.Study,
              number: int) -> FrozenTrial:
    """Trial `number` as the storage has it now."""
    return storage.get_trial(trial_id(storage, study, number))


def requeue(study: optuna.Study, storage: optuna.storages.BaseStorage, t: FrozenTrial,
            why: str) -> None:
    """Mark a trial failed (if it still runs in the storage) and queue it again with the same
    parameters, user attributes and intermediate values (the retry resumes its run
    directory)."""
    tid = trial_id(storage, study, t.number)
    try:
        storage.set_trial_user_attr(tid, "failed", why)
        storage.set_trial_state_values(tid, TrialState.FAIL)
    except RuntimeError:  # finished meanwhile (UpdateFinishedTrialError)
        return
    retry_callback()(study, storage.get_trial(tid))
