"""`cifarlab search` against the hand-written recipes (issue 16).

    .venv/bin/python benchmarks/bench_search.py --data-dir ../shared/data \\
        --runs-dir /tmp/searchbench            # about 2 x 75 min of search + retraining

For each rule set - seed 001's full rules (`seed001-rules`, hand recipe fast-seed001) and
seed 000's < 50k parameters (`under-50k`, hand recipe fast-50k) - one invocation:

1. runs the built-in search file with a fixed budget (`--minutes`, default the file's 75):
   trials train on 45,000 training images and are selected on the 5,000 held out; the test set
   is not read; the hand-written design is trial 0 and the file's time rule keeps every
   candidate's predicted training time at or below the hand recipe's;
2. trains the hand recipe on the full training set (test set read once), timed;
3. writes the search's winner as a recipe (`cifarlab search best`) and trains it the same way
   with the hand recipe's seconds as its training-time budget (`max_seconds`), timed;
4. checks the winner against the rules (built and traced again, `cifarlab check`'s rules).

Before the searches it measures, on this machine, trials per hour of one worker with all the
cores' threads against one single-threaded worker per core (the same fixed trials, queued in
both studies, pruning off), and the searches then use the faster configuration (`--workers`
overrides). Everything goes to benchmarks/results/search.json (`--out` elsewhere), rewritten
after each step; the study directories and a state file live in `--runs-dir`, so an
interrupted invocation, started again with the same arguments, resumes: a search continues
where it was, finished steps are kept and a cut-short training run is started again.

`--quick` proves the plumbing in a few minutes (tiny subsets, 1-2 epochs, its own study names);
its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, provenance, write_json  # noqa: E402

import cifarlab  # noqa: E402
import cifarlab.models.family  # noqa: E402, F401  (registers "family")
from cifarlab.data import load_data  # noqa: E402
from cifarlab.search import rules, storage, winner  # noqa: E402
from cifarlab.search import space as SP  # noqa: E402
from cifarlab.search.run import run_search  # noqa: E402
from cifarlab.search.trials import outcome, summary  # noqa: E402

RULE_SETS = {"seed001-rules": "fast-seed001", "under-50k": "fast-50k"}


def quick_text(name: str, runs_dir: Path) -> str:
    """A built-in search file cut down to minutes: small subsets, 1-2 epochs, rungs at 1, and
    a base recipe of 2 epochs (the time rule compares with it)."""
    from cifarlab.recipe import load_recipe_file

    raw = tomllib.loads((SP.searches_dir() / f"{name}.toml").read_text())
    base = load_recipe_file(raw["base"])
    base.setdefault("train", {})["epochs"] = 2
    base_file = runs_dir / f"quick-base-{raw['base']}.toml"
    base_file.write_text(SP.to_toml(base))
    raw["base"] = str(base_file.resolve())
    raw["name"] = f"quick-{name}"
    raw["search"].update({"train_subset": 2000, "val_split": 500, "min_epochs": 1,
                          "startup_trials": 2, "minutes": 1.5})
    raw["space"]["epochs"] = {"low": 1, "high": 2}
    for e in raw.get("enqueue", []):
        e["epochs"] = 2
    return SP.to_toml(raw)


def spec_for(name: str, quick: bool, runs_dir: Path) -> SP.SearchSpec:
    if quick:
        return SP.parse_search(quick_text(name, runs_dir), f"quick {name}")
    return SP.load_search(name)


def load_state(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def save_state(path: Path, state: dict) -> None:
    write_json(path, state, indent=1)


def write_out(out: Path | None, result: dict) -> Path:
    return write_json(out or RESULTS / "search.json", result)


def run_workers(spec_file: Path, study: str, runs_dir: Path, workers: int, threads: int,
                data_dir: str | None, minutes: float | None = None,
                trials: int | None = None, queued_only: bool = False) -> None:
    """`workers` search processes on one study (SQLite in the study directory)."""
    cmd = [sys.executable, "-m", "cifarlab.search.cli", str(spec_file), "--study", study,
           "--runs-dir", str(runs_dir), "--threads", str(threads)]
    if minutes:
        cmd += ["--minutes", str(minutes)]
    if trials:
        cmd += ["--trials", str(trials)]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    if queued_only:
        cmd += ["--queued-only"]
    procs = [subprocess.Popen(cmd, env=dict(os.environ, CIFARLAB_SEARCH_TAG=f"[w{i + 1}] ",
                                            OMP_NUM_THREADS=str(threads)))
             for i in range(workers)]
    try:
        rcs = [p.wait() for p in procs]
    finally:  # stopped (Ctrl-C, SIGTERM): the workers re-queue their trials and exit
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
    if any(rcs):
        raise SystemExit(f"a search worker failed (exit codes {rcs})")


# ------------------------------------------------------------------------------ workers

def compare_workers(runs_dir: Path, data_dir: str | None, quick: bool) -> dict:
    """Trials per hour: 1 worker x all threads against 1 single-threaded worker per core, on
    the same queued trials (designs drawn once from the under-50k space, pruning off)."""
    import optuna

    cores = os.cpu_count() or 1
    k = 4 * cores if not quick else cores
    base = tomllib.loads((SP.searches_dir() / "under-50k.toml").read_text())
    base.pop("enqueue", None)
    base["constraints"]["max_train_time_vs_base"] = 0.0  # the same trials in both: no timing
    base["search"].update({"pruner": "none", "min_epochs": 1,
                           "train_subset": 2000 if quick else 10000,
                           "val_split": 500 if quick else 2000, "minutes": 600})
    base["space"]["epochs"] = 1 if quick else 2
    spec = SP.parse_search(SP.to_toml(base), "workers benchmark")
    # the same feasible designs for both configurations
    sampler = optuna.samplers.RandomSampler(seed=7)
    probe = optuna.create_study(sampler=sampler)
    designs = []
    from cifarlab.models import create_model

    while len(designs) < k:
        t = probe.ask()
        args, _ = SP.sample(spec.space, t)
        try:
            m = create_model("family", **args)
        except Exception:
            probe.tell(t, 0.0)
            continue
        _, broken, _ = rules.check_rules(m, spec.constraints)
        probe.tell(t, 0.0)
        if not broken:
            designs.append({name: v for name, v in t.params.items()})
    out = {"trials": k, "cores": cores,
           "trial": f"{base['space']['epochs']} epoch(s) on {base['search']['train_subset']:,} "
                    "images, under-50k designs"}
    for workers, threads in ((1, cores), (cores, 1)):
        name = f"workers-{workers}x{threads}" + ("-quick" if quick else "")
        # enqueue entries use the file's dimension names: rebuild them from Optuna's params
        entries = [_entry_from_params(d) for d in designs]
        text = SP.to_toml({**base, "name": name, "enqueue": entries})
        f = runs_dir / f"{name}.toml"
        f.write_text(text)
        sdir = runs_dir / name
        if sdir.exists():  # a timing cannot be resumed: measure afresh
            import shutil

            shutil.rmtree(sdir)
        sdir.mkdir(parents=True)
        storage.create_or_load(SP.parse_search(text, str(f)), name,
                               storage.default_storage(sdir), None, print)
        t0 = time.perf_counter()
        run_workers(f, name, runs_dir, workers, threads, data_dir, queued_only=True)
        wall = time.perf_counter() - t0
        st = storage.load_study(name, storage.default_storage(sdir))
        done = sum(1 for t in st.get_trials(deepcopy=False)
                   if outcome(t) in ("complete", "pruned")
                   and "fixed_params" in t.system_attrs)  # the queued ones
        out[f"{workers}x{threads}"] = {"workers": workers, "threads_per_worker": threads,
                                       "trials": done, "wall_seconds": wall,
                                       "trials_per_hour": 3600 * done / wall}
    one, many = out[f"1x{cores}"], out[f"{cores}x1"]
    out["faster"] = f"{cores}x1" if many["trials_per_hour"] > one["trials_per_hour"] \
        else f"1x{cores}"
    out["speedup_single_threaded_workers"] = many["trials_per_hour"] / one["trials_per_hour"]
    return out


def _entry_from_params(params: dict) -> dict:
    """Optuna parameter names (s1_width, ...) back to an [[enqueue]] table (width = [...])."""
    n = params["stages"]
    e: dict = {}
    for k, v in params.items():
        if k[0] == "s" and "_" in k and k.split("_", 1)[0][1:].isdigit():
            continue
        e[k] = v
    for key in SP.PER_STAGE:
        vals = [params.get(f"s{i}_{key}") for i in range(1, n + 1)]
        if all(v is not None for v in vals):
            e[key] = vals
    return e


# ------------------------------------------------------------------------------ rule sets

def timed_train(recipe, data, runs_dir: Path, name: str, overrides: dict,
                max_seconds: float | None = None) -> tuple[dict, float]:
    t0 = time.perf_counter()
    m = cifarlab.train(recipe, data=data, runs_dir=runs_dir, name=name, progress=False,
                       plots=False, log=lambda s: None, max_seconds=max_seconds, **overrides)
    return m, time.perf_counter() - t0


def rule_set(name: str, hand: str, args, data, state: dict, save) -> dict:
    runs = Path(args.runs_dir)
    spec = spec_for(name, args.quick, runs)
    study = spec.name
    st_state = state.setdefault(name, {})
    faster = (state.get("workers") or {}).get("faster", "1x0")
    workers = args.workers or int(faster.split("x")[0])
    threads = max(1, (os.cpu_count() or 1) // workers)
    print(f"== {name}: search (study {study}, {workers} worker(s) x {threads} thread(s))")
    minutes = args.minutes if not args.quick else 1.5
    if workers == 1:
        run_search(spec, study=study, minutes=minutes, runs_dir=runs, data=data,
                     trials=3 if args.quick else None)
    else:
        f = runs / f"{study}.toml"
        f.write_text(spec.text)
        sdir = runs / study
        sdir.mkdir(parents=True, exist_ok=True)
        storage.create_or_load(spec, study, storage.default_storage(sdir), minutes, print)
        run_workers(f, study, runs, workers, threads, args.data_dir, minutes=minutes,
                    trials=3 if args.quick else None)
    st = storage.load_study(study, storage.default_storage(runs / study))
    summ = summary(st)
    st_state["search"] = summ
    save()

    over = {"train_subset": 2000, "epochs": 2} if args.quick else {}
    here = provenance()["machine"]
    if "searched" not in st_state and st_state.get("hand", {}).get("machine") != here:
        st_state.pop("hand", None)  # the two trainings are compared on one machine only
    if "hand" not in st_state:
        print(f"== {name}: training the hand recipe {hand}")
        m, secs = timed_train(hand, data, runs, f"{name}-hand", over)
        st_state["hand"] = {"test_acc": m["test_acc"], "seconds": secs,
                            "train_seconds": m["train_seconds"], "params": m["params"],
                            "macs": m["macs"], "receptive_field": m["receptive_field"],
                            "epochs": m["epochs"], "run_dir": m["run_dir"], "machine": here}
        save()
    hand_s = st_state["hand"]["seconds"]
    recipe = runs / f"{name}-winner.toml"
    if "searched" not in st_state:
        win = winner.write_best(st, recipe)
        print(f"== {name}: training the winner (trial {win['trial']}: {win['design']}) with "
              f"a {hand_s:.0f} s budget")
        m, secs = timed_train(recipe, data, runs, f"{name}-searched", over, max_seconds=hand_s)
        st_state["searched"] = {
            "test_acc": m["test_acc"], "seconds": secs, "train_seconds": m["train_seconds"],
            "params": m["params"], "macs": m["macs"], "receptive_field": m["receptive_field"],
            "epochs": m["epochs"], "epochs_planned": m.get("epochs_planned"),
            "stopped_by": m.get("stopped_by"), "run_dir": m["run_dir"],
            "trial": win["trial"], "val_acc": win["values"][0], "design": win["design"],
            "recipe": str(recipe), "model_args": win["recipe"]["model_args"],
            "machine": here}
        save()
    s = st_state["searched"]
    from cifarlab.analysis import check_constraints
    from cifarlab.models import create_model

    c = spec.constraints
    model = create_model("family", **s["model_args"])
    broken = check_constraints(model, max_params=c["max_params"] or None,
                               min_receptive_field=c["min_receptive_field"] or None,
                               require=c["require"], forbid=c["forbid"])
    h = st_state["hand"]
    return {
        "search_file": name, "hand_recipe": hand, "study": study, "trained_on": here,
        "searched_test_acc": s["test_acc"], "hand_test_acc": h["test_acc"],
        "searched_seconds": s["seconds"], "hand_seconds": h["seconds"],
        "searched_train_seconds": s["train_seconds"], "hand_train_seconds": h["train_seconds"],
        "rules_met": not broken, "rules_broken": broken,
        "beats_or_matches_hand": s["test_acc"] >= h["test_acc"],
        "equal_time": s["seconds"] <= 1.05 * h["seconds"],
        "search_minutes": summ["minutes_used"], "search_worker_minutes": summ["worker_minutes"],
        "search_workers": f"{workers} x {threads} thread(s)",
        "trials_complete": summ["complete"], "trials_pruned": summ["pruned"],
        "trials_rejected": summ["rejected"], "trials_failed": summ["failed"],
        "rejected_by_rule": summ["rejected_by_rule"],
        "winner": {k: s[k] for k in ("trial", "val_acc", "design", "params", "macs",
                                     "receptive_field", "epochs", "epochs_planned",
                                     "stopped_by", "recipe", "run_dir")},
        "hand": {k: h[k] for k in ("params", "macs", "receptive_field", "epochs", "run_dir")},
    }


def stop_on_sigterm() -> None:
    """SIGTERM stops this process as Ctrl-C does (the study and state file are saved); a
    training process it forked (train.processes) just exits, and its parent reports."""
    import signal

    main_pid = os.getpid()

    def stop(signum, frame):
        if os.getpid() != main_pid:
            os._exit(128 + signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def main() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    stop_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--runs-dir", default="runs/bench-search")
    ap.add_argument("--minutes", type=float, help="search budget per rule set (default: the "
                    "search file's)")
    ap.add_argument("--workers", type=int, help="search workers (default: the faster "
                    "configuration measured first)")
    ap.add_argument("--rule-sets", nargs="+", default=list(RULE_SETS), choices=list(RULE_SETS))
    ap.add_argument("--skip-workers", action="store_true",
                    help="do not measure 1 x N threads against N x 1 thread")
    ap.add_argument("--quick", action="store_true", help="minutes, not hours: plumbing only")
    ap.add_argument("--out", type=Path, help="results file (default "
                    "benchmarks/results/search.json)")
    args = ap.parse_args()
    runs = Path(args.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    state_path = runs / ("bench-search-quick.json" if args.quick else "bench-search.json")
    state = load_state(state_path)

    def save() -> None:
        save_state(state_path, state)
        write_out(args.out, result())

    def result() -> dict:
        done = state.get("results", {})
        return {**provenance(), "quick": args.quick, "legs": state["legs"],
                "workers": state.get("workers"),
                "rule_sets": copy.deepcopy(done),
                # searches under way: what is recorded so far, no verdict yet
                "in_progress": {n: copy.deepcopy(v) for n, v in state.items()
                                if n in RULE_SETS and n not in done}}

    state.setdefault("legs", []).append(provenance())  # every invocation that added to it

    if not args.skip_workers and "workers" not in state:
        print("== trials per hour: one worker with every thread vs one per core")
        state["workers"] = compare_workers(runs, args.data_dir, args.quick)
        save()
        print(json.dumps(state["workers"], indent=1))
    data = load_data(args.data_dir)
    for name in args.rule_sets:
        r = rule_set(name, RULE_SETS[name], args, data, state, save)
        state.setdefault("results", {})[name] = r
        save()
        print(f"== {name}: searched {r['searched_test_acc']:.4f} in {r['searched_seconds']:.0f} s"
              f" vs hand {r['hand_test_acc']:.4f} in {r['hand_seconds']:.0f} s; rules met: "
              f"{r['rules_met']}")
    path = write_out(args.out, result())
    print(f"wrote {path}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the study and the state file are saved
        raise SystemExit("bench_search: stopped; run the same command to resume") from None
