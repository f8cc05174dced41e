"""`cifarlab search` on the command line: argument parsing only (importing this module imports
neither torch nor optuna; the work is in the other modules of this package).

    cifarlab search FILE [--study NAME] [--storage URL] [--max-minutes M] [--trials N]
                         [--runs-dir DIR] [--data-dir D] [--workers N] [--threads N]
    cifarlab search report STUDY [--storage URL] [--runs-dir DIR] [--out DIR]
    cifarlab search best STUDY [--storage URL] [--runs-dir DIR] --out FILE.toml [--trial N]
                         [--fill-budget] [--data-dir D]
    cifarlab search proxy STUDY [--storage URL] [--runs-dir DIR] [--designs N] [--data-dir D]

FILE is a search file (TOML) or a built-in one by name (seed001-rules, under-50k, edge-8m); STUDY a
study directory (runs/NAME, holding study.db) or a study name. `python -m cifarlab.search.cli`
takes the same arguments (what `--workers` starts).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import CifarlabError
from . import STORAGE_ENV

USAGE = """cifarlab search FILE [--study NAME] [--storage URL] [--max-minutes M] [--trials N]
                       [--runs-dir DIR] [--data-dir D] [--workers N] [--threads N]
                       [--queued-only] [--storage-wait MIN]
       cifarlab search report STUDY [--storage URL] [--runs-dir DIR] [--out DIR]
       cifarlab search best STUDY [--storage URL] [--runs-dir DIR] --out FILE.toml [--trial N]
                            [--fill-budget] [--data-dir D]
       cifarlab search proxy STUDY [--storage URL] [--runs-dir DIR] [--designs N] [--data-dir D]"""

DESCRIPTION = """Find the best network a rule set allows (Optuna). FILE names a base recipe,
the rules ([constraints]), the budget ([search]) and the dimensions ([space]); built-in files:
seed001-rules, under-50k, edge-8m. Candidates that break a rule are rejected before training;
trials train on the training set minus a validation split (the test set is never read) and are
pruned early when hopeless. The study lives in RUNS_DIR/NAME/study.db (or --storage URL, e.g. a
PostgreSQL server shared by workers on several machines); running the same command again
resumes it. `report` writes an HTML page, `best` the winner as an ordinary recipe
(`--fill-budget`: its schedule scaled to the measured time budget, picked on validation),
`proxy` the rank correlation between the proxy rung ([search] fidelity) and full-fidelity
accuracy."""

RUN_ONLY = ("study", "max_minutes", "trials", "workers", "threads", "queued_only",
            "storage_wait")
ACTIONS = ("report", "best", "proxy")


def add_search_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `search` subcommand to `cifarlab`'s subparsers; returns its parser."""
    p = subparsers.add_parser("search", help="search for the best network a rule set allows",
                              usage=USAGE, description=DESCRIPTION)
    _add_arguments(p)
    return p


def _positive(kind):
    def conv(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") \
                from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return v

    return conv


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="FILE|report|best|proxy",
                   help="a search file (or built-in name) to run, or report / best / proxy")
    p.add_argument("study_arg", nargs="?", metavar="STUDY",
                   help="report / best / proxy: a study directory or name")
    p.add_argument("--study", help="study name (default: the search file's name); the same "
                   "name resumes it")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL, e.g. postgresql://"
                   "user:pass@host/db (default: sqlite file RUNS_DIR/STUDY/study.db)")
    p.add_argument("--max-minutes", "--minutes", dest="max_minutes", type=_positive(float),
                   help="the study's budget: minutes during "
                   "which any worker runs a trial, over all sessions (default: the file's "
                   "[search] minutes)")
    p.add_argument("--trials", type=_positive(int),
                   help="stop once the study has N trained (complete or pruned) trials "
                   "(a killed trial's queued retry is still run)")
    p.add_argument("--runs-dir", default="runs",
                   help="where study directories go (default runs)")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py")
    p.add_argument("--workers", type=_positive(int), default=1, help="worker processes on "
                   "this machine (each with cores/N threads; default 1)")
    p.add_argument("--threads", type=_positive(int), help="torch threads per worker")
    p.add_argument("--queued-only", action="store_true", default=None,
                   help="run only the queued trials ([[enqueue]] designs, retries), then stop")
    p.add_argument("--storage-wait", type=float, metavar="MIN",
                   help="when the database stops answering, retry for MIN minutes (one line "
                   "per attempt) before giving up (default: the file's [search] "
                   "storage_wait_minutes, 5; 0: give up at once)")
    p.add_argument("--out", help="report: output folder (default STUDY_DIR/report); best: the "
                   "recipe file to write (.toml)")
    p.add_argument("--trial", type=int, help="best: this trial instead of the winner")
    p.add_argument("--fill-budget", action="store_true", default=None,
                   help="best: time the base recipe (the budget) and the winner's own and "
                   "longer schedules on the validation split, keep the best within the budget "
                   "(run it on an otherwise idle machine)")
    p.add_argument("--designs", type=_positive(int), help="proxy: how many designs, spread "
                   "over the proxy ranking (default 12)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cifarlab search", usage=USAGE, description=DESCRIPTION)
    _add_arguments(p)
    return p


def _given(a: argparse.Namespace, key: str) -> bool:
    v = getattr(a, key, None)
    return v is not None and not (key == "workers" and v == 1)


def run_search_command(a: argparse.Namespace) -> int:
    """Run what the parsed `cifarlab search ...` arguments ask for; CifarlabError for bad
    input (the CLI prints its one line)."""
    action = a.target
    if action in ACTIONS:
        if not a.study_arg:
            raise CifarlabError(f"search {action}: name the study (a study directory or "
                                f"name), e.g. cifarlab search {action} runs/seed001-rules")
        run_only = [k for k in RUN_ONLY if _given(a, k)]
        if run_only:
            raise CifarlabError(f"search {action}: --{run_only[0].replace('_', '-')} is an "
                                "option of a search run")
        extra = [k for k, where in (("out", ("report", "best")), ("trial", ("best",)),
                                     ("fill_budget", ("best",)), ("designs", ("proxy",)))
                  if getattr(a, k) is not None and action not in where]
        if a.data_dir is not None and not (action == "proxy" or a.fill_budget):
            extra.append("data_dir")
        if extra:
            raise CifarlabError(f"search {action}: --{extra[0].replace('_', '-')} is not an "
                                f"option of search {action}")
        return {"report": _report, "best": _best, "proxy": _proxy}[action](a)
    if a.study_arg:
        raise CifarlabError(f"search: unexpected argument {a.study_arg!r} (run: cifarlab "
                            "search FILE [options]; or: search report|best|proxy STUDY)")
    for k in ("out", "trial", "fill_budget", "designs"):
        if getattr(a, k) is not None:
            raise CifarlabError(f"search: --{k.replace('_', '-')} is an option of search "
                                "report / best / proxy")
    return _run(a)


def _report(a: argparse.Namespace) -> int:
    from .. import api

    index = api.search_report(a.study_arg, storage=a.storage, runs_dir=a.runs_dir, out=a.out)
    print(f"wrote {index}")
    return 0


def _best(a: argparse.Namespace) -> int:
    from .. import api

    r = api.search_best(a.study_arg, a.out, storage=a.storage, runs_dir=a.runs_dir,
                        trial=a.trial, fill_budget=bool(a.fill_budget), data_dir=a.data_dir)
    print(f"wrote {r['path']}: trial {r['trial']} ({values_text(r['objectives'], r['values'])})"
          f", {r['design']}")
    if r["fill"] and r["fill"].get("base_design"):
        print("fill budget: the base recipe's own design: its schedule is the budget, kept")
    elif r["fill"]:
        chosen = r["fill"]["chosen"]
        print(f"fill budget: {len(r['fill']['candidates'])} schedule(s) timed against a "
              f"budget of {r['fill']['budget_seconds']:.0f} s and compared on validation: "
              + (f"{chosen['train.epochs']} epochs chosen" if chosen else
                 "the trial's own schedule kept")
              + f"; see {Path(r['path']).with_suffix('.fill.json')}")
    print(f"train it on the full training set: cifarlab train --recipe {r['path']}")
    return 0


def _proxy(a: argparse.Namespace) -> int:
    from .. import api

    r = api.search_proxy(a.study_arg, storage=a.storage, runs_dir=a.runs_dir,
                         designs=a.designs or 12, data_dir=a.data_dir)
    rho = r["spearman"]
    print(f"proxy rung vs full fidelity over {r['n']} designs: Spearman "
          + (f"{rho:.3f}" if rho is not None else "undefined") + f" (written to {r['json']})")
    if r["n"] < 12:
        print(f"warning: only {r['n']} designs have a proxy value; 12 or more mean more")
    return 0


def values_text(objectives: list[str], values: list[float]) -> str:
    """'val acc 0.8123, corrupt acc 0.6012' / 'val acc 0.8123, params 45,000'."""
    return ", ".join(f"{o.replace('_', ' ')} {v:.4f}" if o.endswith("_acc") else
                     f"{o} {v:,.0f}" for o, v in zip(objectives, values, strict=False))


def _summary_lines(s: dict) -> list[str]:
    rej = ", ".join(f"{k} {v}" for k, v in s["rejected_by_rule"].items())
    out = [f"study '{s['study']}': {s['complete']} complete, {s['pruned']} pruned, "
           f"{s['rejected']} rejected" + (f" ({rej})" if rej else "")
           + f", {s['failed']} failed; {s['minutes_used']:.1f} min of search "
           f"({s['worker_minutes']:.1f} worker-min)"]
    for b in s["best"][:5]:
        out.append(f"  {'best' if len(s['best']) == 1 else 'front'}: trial {b['number']} "
                   f"{values_text(s['objectives'], b['values'])}"
                   f"  {b['design']}  ({b['run_dir']})")
    return out


def _run(a: argparse.Namespace) -> int:
    from .. import api
    from .storage import mask_url

    tag = os.environ.get("CIFARLAB_SEARCH_TAG", "")
    storage = a.storage or os.environ.get(STORAGE_ENV) or None
    try:
        rc, s = api.search(a.target, study=a.study, storage=storage, minutes=a.max_minutes,
                           trials=a.trials, runs_dir=a.runs_dir, data_dir=a.data_dir,
                           workers=a.workers, threads=a.threads, tag=tag,
                           queued_only=bool(a.queued_only), storage_wait=a.storage_wait)
    except KeyboardInterrupt:  # the running trials are re-queued (workers too got Ctrl-C)
        print(f"{tag}interrupted: the running trial(s) re-queued; run the same command to "
              "resume", file=sys.stderr)
        return 130
    if not tag:
        for line in _summary_lines(s):
            print(line)
        if a.workers == 1:
            print(f"report: cifarlab search report {a.runs_dir}/{s['study']}"
                  + (f" --storage {mask_url(storage)}" if storage else "")
                  + ("  (password masked: give it with PGPASSWORD or ~/.pgpass)"
                     if storage and mask_url(storage) != storage else ""))
    return rc


def main(argv: list[str] | None = None) -> int:
    """`python -m cifarlab.search.cli ...` (a worker process; also usable by hand)."""
    a = build_parser().parse_args(argv)
    try:
        return run_search_command(a)
    except CifarlabError as e:
        tag = os.environ.get("CIFARLAB_SEARCH_TAG", "")
        print(f"{tag}error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
