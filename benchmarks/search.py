"""`cifarlab search` against the hand-written recipes and against random search (issues 16, 29).

    .venv/bin/python -m benchmarks.search --data-dir ../shared/data \\
        --runs-dir /tmp/searchbench --max-minutes 90   # per rule set: 2 searches + 9 trainings

For each rule set - seed 001's full rules (`seed001-rules`, hand recipe fast-seed001), seed
000's < 50k parameters (`under-50k`, hand recipe fast-50k) and cifarlab's own `edge-8m`, which no
hand recipe targets (its base fast-50k breaks its rules and is trained as the time reference
only) - one invocation:

1. runs the built-in search file with a fixed budget (`--max-minutes`, default the file's): trials
   train on the training set minus the file's validation split and are selected on it; the
   hand-written design is trial 0 and the file's time rule keeps every candidate's predicted
   training time at or below the hand recipe's;
2. runs *random search* with the same budget, space, rules, queued designs and pruning (the
   file's pruner, Hyperband: the fair comparison is the sampler alone), Optuna's RandomSampler;
3. when the file has a proxy rung ([search] fidelity), measures its Spearman rank correlation
   with full fidelity over `--proxy-designs` designs (`cifarlab search proxy`);
4. writes both winners as recipes (`cifarlab search best --fill-budget`: the final stage times
   the hand recipe and each winner's own and longer schedules on the validation split and picks
   the best among those within the budget; the same stage for both) and checks them against
   the rules;
5. trains the hand recipe and both winners with 3 seeds each on the full training set, timed,
   each winner with the hand recipe's time (same seed) as its budget (`max_seconds`). A winner
   that is the hand recipe itself (the search's base recipe's queued design, kept by the fill
   stage) has the hand recipe's trainings, and random search's winner the searched one's when
   both wrote the same recipe: the same recipe is not trained twice. The test set is read by
   these final trainings only: the searches get the training batches alone.

Before the searches it measures, on this machine, trials per hour of one worker with all the
cores' threads against one single-threaded worker per core (the same fixed trials, queued in
both studies, pruning off), and the searches then use the faster configuration (`--workers`
overrides; several workers are started by `cifarlab.search.workers.run_workers`, as
`cifarlab search --workers N` starts them). Everything goes to benchmarks/results/search.json
(`--out` elsewhere), rewritten after each step: per rule set `hand`, `searched`, `random` (each with
`test_accs` and `train_seconds`, one per seed), `proxy_spearman`, `budget_minutes` and the rule
set's own commit, date, machine and command, and its `verdict` (`verdict()`: the searched
design against the hand recipe and random search, from the final trainings). The study
directories and a state file live in `--runs-dir`, so an interrupted invocation, started again
with the same arguments, resumes: a search continues where it was, finished searches and
trainings are kept, a finished rule set is not run again, and a cut-short training run is
started again. When that runs directory is gone (a new machine), `--continue-results` starts a
new one from the results file: finished rule sets stay, searches that were under way are
moved to `discarded` and start again.

`--quick` proves the plumbing in a few minutes (tiny subsets, 1-2 epochs, its own study names);
its numbers mean nothing.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import statistics
import time
import tomllib
from pathlib import Path

import cifarlab.models.family  # noqa: F401  (registers "family")
from cifarlab.data import load_data
from cifarlab.search import rules, storage, winner
from cifarlab.search import space as SP
from cifarlab.search import workers as search_workers
from cifarlab.search.final import fill_budget
from cifarlab.search.run import run_search
from cifarlab.search.trials import outcome, summary

from .common import RESULTS, add_data_dir, arg_parser, provenance, timed_train, write_json

# rule set -> its hand recipe; edge-8m is cifarlab's own, which no hand recipe targets: its base
# fast-50k breaks its rules and is trained as the time reference only
RULE_SETS = {"seed001-rules": "fast-seed001", "under-50k": "fast-50k", "edge-8m": "fast-50k"}


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
    if raw["search"].get("fidelity"):
        raw["search"]["fidelity"] = {"train_subset": 1000, "epochs": 1}
    raw["space"]["epochs"] = {"low": 1, "high": 2}
    for e in raw.get("enqueue", []):
        e["epochs"] = 2
    return SP.to_toml(raw)


def spec_for(name: str, quick: bool, runs_dir: Path) -> SP.SearchSpec:
    if quick:
        return SP.parse_search(quick_text(name, runs_dir), f"quick {name}")
    return SP.load_search(name)


def searches_of(name: str, quick: bool, runs_dir: Path) -> tuple[tuple[str, SP.SearchSpec], ...]:
    """A rule set's two searches, keyed as the state keeps them: its search file, and the same
    file with Optuna's RandomSampler."""
    spec = spec_for(name, quick, runs_dir)
    return (("search", spec),
            ("random_search", SP.parse_search(random_text(spec), f"random {name}")))


def study_of(sp: SP.SearchSpec, runs: Path):
    """A search's study in the runs directory."""
    return storage.load_study(sp.name, storage.default_storage(runs / sp.name))


def load_state(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def state_from_results(results: dict, runs: Path) -> dict:
    """A state for a new runs directory that continues a results file (`--continue-results`:
    the machine that held the old runs directory is gone): its finished rule sets, legs,
    worker comparison and discarded measurements are kept; a search under way whose runs
    directory is not here cannot resume, so it is moved to `discarded` with why."""
    state = {"legs": list(results.get("legs", [])), "workers": results.get("workers"),
             "discarded": list(results.get("discarded", [])),
             "results": {n: {k: v for k, v in r.items() if k != "verdict"}
                         for n, r in (results.get("rule_sets") or {}).items()}}
    for name, record in (results.get("in_progress") or {}).items():
        state["discarded"].append({
            "what": f"{name}: the searches under way ({', '.join(record)}), as far as they got",
            "why": f"their runs directory was on a machine that is gone; started again from "
                   f"scratch in {runs}", "record": record})
    return state


def redo(state: dict, name: str, why: str, runs: Path, quick: bool) -> None:
    """`--redo NAME WHY`: rule set NAME is measured again from scratch; what the state holds
    of it (finished or under way: searches, winners, final trainings) is moved to
    `discarded` with WHY, once (an interrupted redo resumes, it is not discarded again). Its
    studies must not be in this runs directory (they would resume): use a new one with
    --continue-results."""
    if [name, why] in state.setdefault("redone", []):
        return
    for _, sp in searches_of(name, quick, runs):
        if (runs / sp.name).exists():
            raise SystemExit(f"--redo {name}: {runs / sp.name} holds its study from before: "
                             "give a new --runs-dir (with --continue-results)")
    record = {k: v for k, v in (state.get("results", {}).pop(name, None)
                                 or state.get(name) or {}).items() if k != "verdict"}
    state.pop(name, None)
    if record:
        accs = "; ".join(f"{who} {100 * statistics.mean(record[who]['test_accs']):.2f}%"
                         for who in WHO if (record.get(who) or {}).get("test_accs"))
        state.setdefault("discarded", []).append({
            "what": f"{name}: its searches, winners and final trainings as far as they got"
                    + (f" ({accs})" if accs else ""), "why": why, "record": record})
    state["redone"].append([name, why])


def save_state(path: Path, state: dict) -> None:
    write_json(path, state, indent=1)


def run_workers(spec_file: Path, spec: SP.SearchSpec, study: str, runs_dir: Path,
                workers: int, threads: int, data_dir: str | None, minutes: float | None = None,
                trials: int | None = None, queued_only: bool = False) -> None:
    """`workers` search processes on one study (SQLite in the study directory), each with
    `threads` torch threads, started by the search package as `cifarlab search --workers N`
    starts them (a worker killed while the budget lasts is replaced)."""
    with sigterm_to_children():
        rc, _ = search_workers.run_workers(
            str(spec_file), spec, study, workers, minutes=minutes, trials=trials,
            runs_dir=runs_dir, data_dir=data_dir, threads=threads, queued_only=queued_only)
    if rc:
        raise SystemExit(f"a search worker failed (exit status {rc})")


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
        sp = SP.parse_search(text, str(f))
        storage.create_or_load(sp, name, storage.default_storage(sdir), None, print)  # untimed
        t0 = time.perf_counter()
        run_workers(f, sp, name, runs_dir, workers, threads, data_dir, queued_only=True)
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

SEEDS = (0, 1, 2)  # the final trainings: each recipe with each seed
WHO = ("hand", "searched", "random")


def random_text(spec: SP.SearchSpec) -> str:
    """The same search file with Optuna's RandomSampler: the same space, rules, budget, queued
    designs and pruner (the file's own: Hyperband), under its own study name."""
    raw = tomllib.loads(spec.text)
    raw["name"] = f"{spec.name}-random"
    raw.setdefault("search", {})["sampler"] = "random"
    return SP.to_toml(raw)


def search(spec: SP.SearchSpec, args, runs: Path, data, workers: int, threads: int) -> dict:
    """Run (or resume) one study to its budget; its summary."""
    minutes = args.minutes if not args.quick else 1.5
    trials = 3 if args.quick else None
    if workers == 1:
        run_search(spec, study=spec.name, minutes=minutes, runs_dir=runs, data=data,
                   trials=trials)
    else:
        f = runs / f"{spec.name}.toml"
        f.write_text(spec.text)
        run_workers(f, spec, spec.name, runs, workers, threads, args.data_dir,
                    minutes=minutes, trials=trials)
    return summary(study_of(spec, runs))


def searches_so_far(args, runs: Path, state: dict) -> None:
    """For --write-only: each unfinished search of the chosen rule sets, as far as its study
    got (its summary, `finished` false), into `state` (not saved)."""
    for name in args.rule_sets:
        if name in state.get("results", {}):
            continue
        for key, sp in searches_of(name, args.quick, runs):
            done = ((state.get(name) or {}).get(key) or {}).get("finished")
            if not done and (runs / sp.name / storage.STUDY_FILE).exists():
                state.setdefault(name, {})[key] = {**summary(study_of(sp, runs)),
                                                   "finished": False}


def proxy_worth(spec: SP.SearchSpec, args, runs: Path, data) -> float | None:
    """Spearman of the proxy rung against full fidelity over --proxy-designs designs of the
    searched study (None: the search file has no proxy rung, or --proxy-designs 0)."""
    if not spec.search["fidelity"] or not args.proxy_designs:
        return None
    from cifarlab.search.final import proxy_check

    st = study_of(spec, runs)
    return proxy_check(st, runs / spec.name, args.proxy_designs, data=data)["spearman"]


def same_training(a: Path, b: Path) -> bool:
    """Whether two recipe files train the same network the same way (all but their name and
    description equal): e.g. both searches returned the same queued design."""
    def body(path: Path) -> dict:
        raw = tomllib.loads(Path(path).read_text())
        return {k: v for k, v in raw.items() if k not in ("name", "description")}

    return body(a) == body(b)


def is_hand_design(spec: SP.SearchSpec, hand: str, winner_entry: dict) -> bool:
    """Whether a search's written winner is the hand recipe itself: the search's base recipe is
    the hand recipe and the fill stage kept or wrote the base recipe's own queued design and
    schedule (`final.is_base_design`: `base_design`, or `winner_trial` when the base recipe
    validated better than the winner's schedules)."""
    f = winner_entry.get("fill") or {}
    return spec.base == hand and bool(f.get("base_design") or f.get("winner_trial") is not None)


def final_trainings(name: str, hand: str, recipes: dict, runs: Path, over: dict, st_state: dict,
                    save, final_data, as_hand: frozenset = frozenset()) -> None:
    """Each of hand / searched / random with each seed on the full training set (the test set
    read once, here only); a winner's time budget is the hand recipe's time with that seed.
    A winner in `as_hand` (the hand recipe itself, `is_hand_design`) has the hand recipe's
    trainings, and when random search returned the very recipe the search did, its trainings
    are the searched ones (`same_recipe_as`), not trained again. Each finished training is
    kept in the state (resumable)."""
    done = st_state.setdefault("final", {})
    twins = same_training(recipes["searched"], recipes["random"])
    for seed in SEEDS:
        for who in WHO:
            key = f"{who}-{seed}"
            if key in done:
                continue
            same = ("hand" if who in as_hand
                    else "searched" if who == "random" and twins else None)
            if same:
                print(f"== {name}: final training {who}, seed {seed}: the {same} recipe's")
                done[key] = {**done[f"{same}-{seed}"], "same_recipe_as": same}
                save()
                continue
            cap = None if who == "hand" else done[f"hand-{seed}"]["seconds"]
            print(f"== {name}: final training {who}, seed {seed}"
                  + (f", {cap:.0f} s budget" if cap else ""))
            m, secs = timed_train(hand if who == "hand" else recipes[who], final_data(), runs,
                                  f"{name}-{key}", {**over, "seed": seed}, max_seconds=cap)
            done[key] = {"test_acc": m["test_acc"], "seconds": secs,
                         "train_seconds": m["train_seconds"], "epochs": m["epochs"],
                         "stopped_by": m.get("stopped_by"), "run_dir": m["run_dir"],
                         "params": m["params"], "macs": m["macs"],
                         "receptive_field": m["receptive_field"]}
            save()


def rules_broken(spec: SP.SearchSpec, recipe: dict | str) -> list[str]:
    """The rules of the search file a recipe (a dict, or a recipe's name) breaks."""
    from cifarlab.models import create_model
    from cifarlab.recipe import resolve

    if isinstance(recipe, str):
        recipe = resolve(recipe)
    model = create_model(recipe["model"], **recipe["model_args"])
    return rules.check_rules(model, spec.constraints)[1]


def rule_set(name: str, hand: str, args, state: dict, save, search_data, final_data) -> dict:
    """One rule set: the search and random search with the same budget, space, rules and
    pruner; the proxy's worth; then hand, searched and random winners trained with 3 seeds at
    equal time. Every finished part is kept in `state` (a later sitting resumes)."""
    runs = Path(args.runs_dir)
    searches = searches_of(name, args.quick, runs)
    (_, spec), (_, rnd) = searches
    st_state = state.setdefault(name, {})
    faster = (state.get("workers") or {}).get("faster", "1x0")
    procs = spec.search["processes"]  # trainings of several processes: one worker per share
    workers = args.workers or (max(1, (os.cpu_count() or 1) // procs) if procs > 1
                               else int(faster.split("x")[0]))
    threads = max(1, (os.cpu_count() or 1) // workers)
    for key, sp in searches:
        if key not in st_state or not st_state[key].get("finished"):
            print(f"== {name}: {sp.search['sampler']} search (study {sp.name}, {workers} "
                  f"worker(s) x {threads} thread(s))")
            st_state[key] = {**search(sp, args, runs, search_data, workers, threads),
                             "finished": True}
            save()
    if "proxy_spearman" not in st_state:
        st_state["proxy_spearman"] = proxy_worth(spec, args, runs, search_data)
        save()
    recipes, winners = {}, st_state.setdefault("winners", {})
    for who, sp in (("searched", spec), ("random", rnd)):
        recipes[who] = runs / f"{name}-{who}.toml"
        if who not in winners or not recipes[who].exists():
            st = study_of(sp, runs)
            w = winner.write_best(st, recipes[who], fill=lambda t, st=st, sp=sp: fill_budget(
                st, t, runs / sp.name / "fill-budget", data=search_data))
            winners[who] = {"trial": w["trial"], "val_acc": w["values"][0],
                            "design": w["design"], "recipe": str(recipes[who]),
                            "fill": w["fill"], "rules_broken": rules_broken(spec, w["recipe"])}
            save()
    over = {"train_subset": 2000, "epochs": 2} if args.quick else {}
    as_hand = frozenset(w for w, e in winners.items() if is_hand_design(spec, hand, e))
    final_trainings(name, hand, recipes, runs, over, st_state, save, final_data, as_hand)
    return rule_set_record(name, hand, spec, st_state)


def rule_set_record(name: str, hand: str, spec: SP.SearchSpec, st: dict) -> dict:
    """What search.json keeps for a finished rule set (its own provenance)."""
    final = st["final"]

    def runs_of(who: str) -> dict:
        rows = [final[f"{who}-{s}"] for s in SEEDS]
        out = {"test_accs": [r["test_acc"] for r in rows],
               "train_seconds": [r["train_seconds"] for r in rows],
               "seconds": [r["seconds"] for r in rows], "epochs": [r["epochs"] for r in rows],
               "stopped_by": [r["stopped_by"] for r in rows],
               "params": rows[0]["params"], "macs": rows[0]["macs"],
               "receptive_field": rows[0]["receptive_field"], "seeds": list(SEEDS)}
        if rows[0].get("same_recipe_as"):
            out["same_recipe_as"] = rows[0]["same_recipe_as"]
        if who != "hand":
            out.update(st["winners"][who])
            out["search"] = st["search" if who == "searched" else "random_search"]
        return out

    return {**provenance(), "search_file": name, "hand_recipe": hand,
            "hand_rules_broken": rules_broken(spec, hand),
            "budget_minutes": st["search"].get("budget_minutes") or spec.search["minutes"],
            "proxy_spearman": st.get("proxy_spearman"),
            "fidelity": spec.search["fidelity"] or None,
            "sampler": spec.search["sampler"], "pruner": spec.search["pruner"],
            "hand": runs_of("hand"), "searched": runs_of("searched"),
            "random": runs_of("random")}


def verdict(r: dict) -> dict:
    """The issue's questions, answered from a finished rule set's final trainings: the searched
    design's mean test accuracy over the hand recipe's and random search's (points), its mean
    wall time over the hand recipe's, whether its worst seed beats the hand recipe's best; and
    whether it beats the hand recipe by >= 0.5 / 1.0 point at <= 1.0x time (None where the hand
    recipe breaks the rules: a time reference only) and random search at all."""
    mean = {who: statistics.mean(r[who]["test_accs"]) for who in WHO}
    time_ratio = statistics.mean(r["searched"]["seconds"]) / statistics.mean(r["hand"]["seconds"])
    over_hand = 100 * (mean["searched"] - mean["hand"])
    rivals = not r.get("hand_rules_broken")
    return {"searched_minus_hand_points": over_hand,
            "searched_minus_random_points": 100 * (mean["searched"] - mean["random"]),
            "time_vs_hand": time_ratio,
            "worst_searched_above_best_hand": min(r["searched"]["test_accs"])
            > max(r["hand"]["test_accs"]),
            "beats_hand_by_0_5_at_equal_time": (over_hand >= 0.5 and time_ratio <= 1.0)
            if rivals else None,
            "beats_hand_by_1_0_at_equal_time": (over_hand >= 1.0 and time_ratio <= 1.0)
            if rivals else None,
            "beats_random": mean["searched"] > mean["random"],
            "same_recipe_as_random": r["random"].get("same_recipe_as") == "searched"
            or r["random"].get("same_recipe_as") == r["searched"].get("same_recipe_as") == "hand"}


# ------------------------------------------------------------------------------ stopping

_FORWARD_SIGTERM = {"on": False}  # while search workers run: see sigterm_to_children


def child_pids() -> list[int]:
    """This process's child processes (Linux /proc)."""
    me, out = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == me:
                out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


@contextlib.contextmanager
def sigterm_to_children():
    """While the block runs, a SIGTERM to this process reaches its children (the search
    workers) too: each re-queues its trial and exits, as after a Ctrl-C in the terminal."""
    _FORWARD_SIGTERM["on"] = True
    try:
        yield
    finally:
        _FORWARD_SIGTERM["on"] = False


def stop_on_sigterm() -> None:
    """SIGTERM stops this process as Ctrl-C does (the study and state file are saved); a
    training process it forked (train.processes) just exits, and its parent reports."""
    main_pid = os.getpid()

    def stop(signum, frame):
        if os.getpid() != main_pid:
            os._exit(128 + signum)
        if _FORWARD_SIGTERM["on"]:
            for pid in child_pids():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


# ------------------------------------------------------------------------------ main

def parse_args(argv: list[str] | None = None):
    ap = arg_parser("search", __doc__)
    add_data_dir(ap)
    ap.add_argument("--runs-dir", default="runs/bench-search")
    ap.add_argument("--max-minutes", "--minutes", dest="minutes", type=float,
                    help="search budget per rule set (default: the "
                    "search file's)")
    ap.add_argument("--workers", type=int, help="search workers (default: the faster "
                    "configuration measured first)")
    ap.add_argument("--rule-sets", nargs="+", default=list(RULE_SETS), choices=list(RULE_SETS))
    ap.add_argument("--skip-workers", action="store_true",
                    help="do not measure 1 x N threads against N x 1 thread")
    ap.add_argument("--proxy-designs", type=int, default=12, help="designs trained on the "
                    "full schedule to measure the proxy rung's Spearman correlation, when the "
                    "search file has one ([search] fidelity; default 12, 0: skip)")
    ap.add_argument("--quick", action="store_true", help="minutes, not hours: plumbing only")
    ap.add_argument("--write-only", action="store_true", help="write the results file from "
                    "the state (finished rule sets, searches under way as far as they got, "
                    "what was discarded) and stop: nothing is run")
    ap.add_argument("--out", type=Path, default=RESULTS / "search.json",
                    help="results file (default benchmarks/results/search.json)")
    ap.add_argument("--redo", nargs=2, action="append", default=[],
                    metavar=("RULE_SET", "WHY"), help="measure RULE_SET again from scratch: "
                    "its record so far (finished or under way) is moved to `discarded` with "
                    "WHY (a new --runs-dir, with --continue-results)")
    ap.add_argument("--continue-results", action="store_true", help="a new --runs-dir "
                    "continues the results file: its finished rule sets are kept, searches "
                    "under way there are discarded (with why) and start again here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    stop_on_sigterm()
    args = parse_args(argv)
    runs = Path(args.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    state_path = runs / ("bench-search-quick.json" if args.quick else "bench-search.json")
    state = load_state(state_path)
    if args.continue_results and not state:
        state = state_from_results(json.loads(args.out.read_text()), runs)
    for name, why in args.redo:
        if name not in RULE_SETS:
            raise SystemExit(f"--redo {name}: no such rule set ({', '.join(RULE_SETS)})")
        redo(state, name, why, runs, args.quick)

    def save() -> None:
        save_state(state_path, state)
        write_json(args.out, result())

    def result() -> dict:
        done = state.get("results", {})
        return {**provenance(), "quick": args.quick, "legs": state["legs"],
                "workers": state.get("workers"),
                "rule_sets": {n: {**copy.deepcopy(v), "verdict": verdict(v)}
                              for n, v in done.items()},
                # searches under way: what is recorded so far, no verdict yet
                "in_progress": {n: copy.deepcopy(v) for n, v in state.items()
                                if n in RULE_SETS and n not in done},
                # measurements thrown away and redone, with why (kept for anyone checking)
                "discarded": state.get("discarded", [])}

    if args.write_only:
        searches_so_far(args, runs, state)
        print(f"wrote {write_json(args.out, result())}")
        return
    state.setdefault("legs", []).append(provenance())  # every invocation that added to it,
    save_state(state_path, state)  # kept at once: a sitting stopped mid-search saves no more

    if not args.skip_workers and "workers" not in state:
        print("== trials per hour: one worker with every thread vs one per core")
        state["workers"] = compare_workers(runs, args.data_dir, args.quick)
        save()
        print(json.dumps(state["workers"], indent=1))
    from cifarlab.search.worker import load_train_data

    search_data = load_train_data(args.data_dir)  # the training set only: no test batch
    final: dict = {}

    def final_data():  # the full data set, test included: for the final trainings only
        if "data" not in final:
            final["data"] = load_data(args.data_dir)
        return final["data"]

    for name in args.rule_sets:
        if name in state.get("results", {}):
            continue  # finished in an earlier sitting, with its own provenance
        r = rule_set(name, RULE_SETS[name], args, state, save, search_data, final_data)
        state.setdefault("results", {})[name] = r
        save()
        print(f"== {name}: " + "; ".join(
            f"{who} {statistics.mean(r[who]['test_accs']):.4f}" for who in WHO))
    path = write_json(args.out, result())
    print(f"wrote {path}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the study and the state file are saved
        raise SystemExit("benchmarks.search: stopped; run the same command to resume") from None
