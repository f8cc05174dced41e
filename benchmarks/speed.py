"""Time to accuracy (issues 5, 17): speed recipes against an anchor run in the same invocation.

    .venv/bin/python -m benchmarks.speed fast-top fast-50k fast-seed001 best-seed001 \\
        --seeds 0 1 2 --data-dir ../shared/data --runs-dir /tmp/speedruns

One invocation first runs the anchor (default ../shared/anchors/airbench94_cpu.py, a published
reference adapted to the CPU) as a subprocess on the same machine, then every recipe with every
seed, and records all of it in one results file (`--out`, default
benchmarks/results/speed.json): `anchor` (its accuracy and seconds, machine, date, command),
`roof` (the machine's bf16 and fp32 matmul GFLOP/s), `runs`, a per-recipe `summary` whose
times are also ratios to the anchor's seconds (`ratio_to_anchor`) and whose `gflops` (mean
MACs per training image, progressive-resizing epochs at their size, x 2 x 3 for forward +
backward, times training images/s) is also a fraction of the bf16
roof (`roof_fraction`), the verdicts against `targets.TARGETS` (as ratios), and `throughput` (kept
from benchmarks/results/throughput.json). Absolute seconds differ between machines; a ratio
measured side by side does not, so a time is only ever compared with the anchor of its own
invocation.

The file is rewritten after the anchor and after every run. If the invocation is interrupted,
`--resume` (same `--out`) continues it: the finished runs are kept and the run that was cut
short is started again (a timing cannot be resumed). A run is kept only while its recipe
resolves the same (`recipe_sha`, its description left out); one of this leg's CPU model
whose recipe has changed since moves to `superseded_runs` and is timed again (one of another
CPU model stays, marked `stale_recipe`, until a leg on that CPU model times it again); so do,
with `--retime NAME`, the runs of a recipe that resolves the same but should be timed with
the code as it is now. A run counts as done only on the CPU model it was timed on: a resumed
invocation on a new CPU model times every recipe and seed there. A resumed leg keeps
the last anchor only on the same machine, not rebooted since (`boot_id`), within ANCHOR_HOURS
of it; otherwise (another session, another CPU: these machines drift 2x between days) it runs
the anchor again first. Every run records which anchor (`anchors[i]`) its ratio is taken
against, so an invocation can span sessions and each ratio is still measured side by side.
Without `--resume` a new invocation replaces the file (an unfinished one is only discarded
with `--restart`).

Each run's `seconds` is the wall time of the whole `cifarlab.train` call with the data already
in memory (`common.timed_train`): model build, every epoch, evaluation with TTA and checkpoint
writes included (per-epoch plots off). The anchor's `seconds` is its own clock, from building
its network to the end of its test-time augmentation (data loading excluded). Run it on an
otherwise idle machine: other work on the same cores inflates the seconds.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from datetime import datetime
from pathlib import Path

from cifarlab.api import build
from cifarlab.data import load_data
from cifarlab.engine import train_macs
from cifarlab.errors import CifarlabError
from cifarlab.provenance import cpu as provenance_cpu
from cifarlab.recipe import resolve

from .anchor import DEFAULT_ANCHOR, AnchorError, display, run_anchor
from .common import (
    RESULTS,
    add_data_dir,
    arg_parser,
    boot_id,
    cpu_of,
    matmul_gflops,
    model_gflops,
    parse_sets,
    provenance,
    recipe_sha,
    timed_train,
    write_json,
)
from .targets import MIN_SEEDS, TARGETS, THROUGHPUT_REQUIRED_RATIO

ANCHOR_HOURS = 6  # a resumed leg runs the anchor again when the last one is older (or elsewhere)


def drop_changed(state: dict, shas: dict[str, str], cpu: str) -> None:
    """A resumed invocation keeps a run of this CPU model only if its recipe still resolves
    the same (runs recorded without a fingerprint cannot show it): the others move to
    `superseded_runs` and are timed again. A run of another CPU model cannot be timed again
    here: it stays, marked `stale_recipe` (its CPU model's figures are of the recipe as it
    was), until a leg on its own CPU model times it again."""
    keep = []
    for r in state["runs"]:
        same = r.get("recipe_sha") == shas.get(r["recipe"])
        if same or run_cpu(r, state["anchors"]) != cpu:
            if not same and not r.get("stale_recipe"):
                print(f"{r['recipe']} seed {r['seed']}: the recipe has changed since it was "
                      f"timed on another CPU model; kept, marked stale", flush=True)
            r["stale_recipe"] = not same
            keep.append(r)
        else:
            print(f"{r['recipe']} seed {r['seed']}: the recipe has changed since it was "
                  "timed (or is not recorded); timing it again", flush=True)
            state.setdefault("superseded_runs", []).append(r)
    state["runs"] = keep


def retime(state: dict, names: list[str], commit: str) -> None:
    """--retime: the runs of these recipes move to `superseded_runs`, marked with the commit
    that times them again, and are timed again."""
    for r in state["runs"]:
        if r["recipe"] in names:
            state.setdefault("superseded_runs", []).append({**r, "retimed_at": commit})
    state["runs"] = [r for r in state["runs"] if r["recipe"] not in names]


def fill_train_macs(runs: list[dict], overrides: dict) -> None:
    """Runs recorded before `train_macs` existed counted every epoch at 32 x 32: their mean
    MACs per training image (progressive-resizing epochs at their size) and GFLOP/s, derived
    from the recipe each was timed with (its recipe_sha still matches)."""
    for r in runs:
        if r.get("train_macs") is None and r.get("images_per_second"):
            cfg = resolve(r["recipe"], overrides)
            r["train_macs"] = train_macs(build(cfg).model_facts, cfg["train"], r["epochs"])
            r["gflops"] = model_gflops(r["train_macs"], r["images_per_second"])


ANCHOR_SEEDS = 3  # a CPU model's anchor accuracy: the mean of this many seeds


def run_cpu(run: dict, anchors: list[dict]) -> str:
    """The CPU model a run was timed on: its anchor's."""
    return cpu_of(anchors[run.get("anchor", 0)])


def anchor_seed_accs(anchors: list[dict], cpu: str) -> dict[int, float]:
    """Seed -> the anchor's accuracy on this CPU model (deterministic for a seed and CPU
    model: the first recorded run of each seed counts)."""
    out: dict[int, float] = {}
    for an in anchors:
        if cpu_of(an) == cpu:
            for r in an.get("runs") or [{"seed": 0, "test_acc": an["test_acc"]}]:
                out.setdefault(r["seed"], r["test_acc"])
    return out


def by_cpu(runs: list[dict], anchors: list[dict]) -> dict:
    """Per CPU model measured: the anchor's mean accuracy over ANCHOR_SEEDS seeds (None until
    there are as many), and per recipe the median ratio to the anchors of its own legs, the
    worst accuracy and the verdicts on that CPU model (undecided while any of its runs trained
    the recipe otherwise: `overrides`, or `stale_recipe`, a recipe changed since)."""
    out = {}
    for cpu in sorted({cpu_of(a) for a in anchors}):
        accs = anchor_seed_accs(anchors, cpu)
        mean = statistics.fmean(accs.values()) if len(accs) >= ANCHOR_SEEDS else None
        recipes = {}
        for name in sorted({r["recipe"] for r in runs}):
            rs = [r for r in runs if r["recipe"] == name and run_cpu(r, anchors) == cpu]
            if not rs:
                continue
            s = {"ratio_to_anchor": statistics.median(r["ratio_to_anchor"] for r in rs),
                 "worst_acc": min(r["test_acc"] for r in rs), "n_runs": len(rs),
                 "stale_runs": sum(bool(r.get("stale_recipe")) for r in rs)}
            t = TARGETS.get(name)
            if t:
                acc = mean if t["acc"] == "anchor" else t["acc"]
                goal_acc = acc if t["acc"] == "anchor" else t.get("goal_acc", acc)
                decided = (len(rs) >= MIN_SEEDS and acc is not None  # of the recipe now:
                           and not any(r.get("overrides") or r.get("stale_recipe")
                                       for r in rs))
                s["target_acc"] = acc
                s["required_met"] = (s["worst_acc"] >= acc and s["ratio_to_anchor"]
                                     <= t["required_ratio"]) if decided else None
                s["goal_met"] = (s["worst_acc"] >= goal_acc and s["ratio_to_anchor"]
                                 <= t["goal_ratio"]) if decided else None
            recipes[name] = s
        out[cpu] = {"anchor_mean_acc": mean, "anchor_seed_accs": accs,
                    "anchor_threads": sorted({a.get("threads") for a in anchors
                                              if cpu_of(a) == cpu and a.get("threads")}),
                    "recipes": recipes}
    return out


def all_cpus(per_cpu: dict, name: str, key: str) -> bool | None:
    """A verdict over every CPU model measured: met only where met on each; None while any
    is undecided (or the recipe was not timed on one of them)."""
    verdicts = [c["recipes"].get(name, {}).get(key) for c in per_cpu.values()]
    if any(v is False for v in verdicts):
        return False
    return None if any(v is None for v in verdicts) else True


def summarize(runs: list[dict], anchors: list[dict], roof: dict | None = None,
              per_cpu: dict | None = None) -> dict:
    """Per recipe: accuracy (mean, worst), median seconds, the median of its runs' ratios to
    their anchors, verdicts, and the model compute of its training loop in GFLOP/s and as a
    fraction of the bf16 roof. Of the recipe as shipped: runs marked `stale_recipe` (timed on
    another CPU model before a change) are left out (`stale_runs_left_out`) while any other
    run is there, and otherwise counted as `stale_runs`.

    A verdict (`required_met`, `goal_met`) holds for every CPU model measured (`by_cpu`): on
    each, MIN_SEEDS runs of the recipe as shipped, the anchor's accuracy the mean of its
    ANCHOR_SEEDS seeds there; null until then or when runs changed the recipe (`overrides`).
    """
    per_cpu = by_cpu(runs, anchors) if per_cpu is None else per_cpu
    out = {}
    for name in sorted({r["recipe"] for r in runs}):
        every = [r for r in runs if r["recipe"] == name]
        rs = [r for r in every if not r.get("stale_recipe")] or every  # the recipe as shipped
        accs, secs = [r["test_acc"] for r in rs], [r["seconds"] for r in rs]
        worst, median = min(accs), statistics.median(secs)
        ratio = statistics.median(r["ratio_to_anchor"] for r in rs)
        used = [anchors[i] for i in sorted({r.get("anchor", 0) for r in rs})]
        anchor = {"test_acc": max(a["test_acc"] for a in used),
                  "seconds": statistics.median(a["seconds"] for a in used)}
        s = {"mean_acc": statistics.fmean(accs), "worst_acc": worst, "median_seconds": median,
             "ratio_to_anchor": ratio, "n_runs": len(rs), "params": rs[-1]["params"],
             "anchors": len(used), "machines": sorted({a["machine"] for a in used}),
             "stale_runs": sum(bool(r.get("stale_recipe")) for r in rs),
             "stale_runs_left_out": len(every) - len(rs)}
        flops = [r["gflops"] for r in rs if r.get("gflops")]
        if flops and roof:
            s["gflops"] = statistics.median(flops)
            s["roof_fraction"] = s["gflops"] / roof["bf16_gflops"]
        overrides = {k: v for r in rs for k, v in r.get("overrides", {}).items()}
        if overrides:
            s["overrides"] = overrides
        t = TARGETS.get(name)
        if t:
            means = [c["anchor_mean_acc"] for c in per_cpu.values()]
            acc = (max(means) if None not in means else None) if t["acc"] == "anchor" \
                else t["acc"]
            goal_acc = acc if t["acc"] == "anchor" else t.get("goal_acc", acc)
            s.update(target_acc=acc, goal_acc=goal_acc, target_is_anchor=t["acc"] == "anchor",
                     required_ratio=t["required_ratio"], goal_ratio=t["goal_ratio"],
                     required_seconds=t["required_ratio"] * anchor["seconds"],
                     goal_seconds=t["goal_ratio"] * anchor["seconds"],
                     required_met=all_cpus(per_cpu, name, "required_met"),
                     goal_met=all_cpus(per_cpu, name, "goal_met"))
        out[name] = s
    return out


def throughput_verdict(throughput: dict | None) -> dict | None:
    """Engine over the conventional pipeline against its target: met only when met on every
    CPU model measured (`by_cpu`; `ratio` is the lowest of them)."""
    if not throughput or "ratio" not in throughput:
        return None
    by_cpu = {m: r["ratio"] for m, r in (throughput.get("by_cpu") or {}).items()}
    ratio = min(by_cpu.values()) if by_cpu else throughput["ratio"]
    return {"ratio": ratio, "required_ratio": THROUGHPUT_REQUIRED_RATIO,
            "required_met": ratio >= THROUGHPUT_REQUIRED_RATIO,
            "machine": throughput.get("machine"), "by_cpu": by_cpu}


def load_throughput(old: dict) -> dict | None:
    """The last engine-vs-conventional measurement (benchmarks.throughput)."""
    p = RESULTS / "throughput.json"
    if p.exists():
        return json.loads(p.read_text())
    return old.get("throughput")


def save(path: Path, state: dict) -> None:
    """Recompute the summary and write the results file atomically."""
    if state.get("anchors"):
        state["by_cpu"] = by_cpu(state["runs"], state["anchors"])
        state["summary"] = summarize(state["runs"], state["anchors"], state.get("roof"),
                                     state["by_cpu"])
    state["throughput_verdict"] = throughput_verdict(state.get("throughput"))
    write_json(path, state)


def read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path}: not a results file ({e})") from None


def begin(a, path: Path, prov: dict) -> dict:
    """The invocation to run: a new one, or (--resume) the one recorded in `path`."""
    old = read_state(path)
    inv = old.get("invocation")
    unfinished = inv is not None and not inv.get("complete")
    if a.resume:
        if inv is None:
            raise SystemExit(f"--resume: {path} holds no invocation of this benchmark to "
                             "continue; start one without --resume")
        if old.get("anchor") and "anchors" not in old:  # written before anchors per leg
            old["anchors"] = [old["anchor"]]
        for r in a.recipes:
            if r not in inv["recipes"]:
                inv["recipes"].append(r)
        for s in a.seeds_given or []:
            if s not in inv["seeds"]:
                inv["seeds"].append(s)
        inv["complete"] = False
        inv.setdefault("resumed", []).append({"date": prov["date"], "commit": prov["commit"],
                                              "command": prov["command"]})
        return old
    if unfinished and not a.restart:
        done = len(old.get("runs", []))
        raise SystemExit(f"{path} holds an unfinished invocation (started {inv['date']}, "
                         f"{done} of {len(inv['recipes']) * len(inv['seeds'])} runs): "
                         "--resume continues it, --restart discards it")
    if not a.recipes:
        raise SystemExit("name the recipes to time, e.g. fast-top fast-50k")
    return {"invocation": {"recipes": list(a.recipes), "seeds": list(a.seeds),
                           "overrides": a.overrides, "device": a.device, "complete": False,
                           **prov},
            "anchor": None, "anchors": [], "runs": [], "summary": {},
            "throughput": load_throughput(old)}


def anchor_still_valid(anchor: dict | None, prov: dict) -> bool:
    """May the runs of this leg be compared with `anchor`? The same machine, booted once (not
    another session's machine of the same model), within ANCHOR_HOURS."""
    if not anchor or anchor["machine"] != prov["machine"]:
        return False
    if anchor.get("boot_id") != boot_id():
        return False
    age = datetime.fromisoformat(prov["date"]) - datetime.fromisoformat(anchor["date"])
    return age.total_seconds() <= ANCHOR_HOURS * 3600


def anchor_seeds(have: dict[int, float], runs: int, fill: bool = True) -> list[int]:
    """The seeds this leg runs the anchor with: at least `runs` (its time is their median),
    and (`fill`) as many more as this CPU model needs for ANCHOR_SEEDS seeds of accuracy."""
    missing = [s for s in range(ANCHOR_SEEDS) if s not in have] if fill else []
    return missing if len(missing) >= runs else (missing + [s for s in range(runs * 2)
                                                            if s not in missing])[:runs]


def anchor_leg(a, data_dir: Path, anchors: list[dict]) -> dict:
    """Run the anchor for this leg: its seconds the median of its runs, its threads given."""
    cpu = provenance_cpu()
    seeds = anchor_seeds(anchor_seed_accs(anchors, cpu["model"]), a.anchor_runs,
                         fill=not a.quick)
    runs = []
    for seed in seeds:
        print(f"anchor {display(Path(a.anchor))} seed {seed} on {display(data_dir)}, "
              f"{a.anchor_threads} threads ...", flush=True)
        try:
            runs.append(run_anchor(a.anchor, data_dir, a.anchor_threads,
                                   echo=lambda s: print(s, flush=True), seed=seed))
        except AnchorError as e:
            raise SystemExit(str(e)) from None
        print(f"anchor seed {seed}: test acc {runs[-1]['test_acc']:.4f} in "
              f"{runs[-1]['seconds']:.0f} s", flush=True)
    prov = provenance()
    return {"name": runs[0]["name"], "test_acc": statistics.fmean(r["test_acc"] for r in runs),
            "seconds": statistics.median(r["seconds"] for r in runs),
            "wall_seconds": statistics.median(r["wall_seconds"] for r in runs),
            "command": runs[0]["command"], "threads": a.anchor_threads, "cpu": cpu,
            "runs": [{k: r[k] for k in ("seed", "test_acc", "seconds", "wall_seconds",
                                        "command")} for r in runs],
            "machine": prov["machine"], "date": prov["date"], "commit": prov["commit"],
            "boot_id": boot_id()}


QUICK = ["fast-50k", "fast-seed001", "fast-top"]


def parse_args(argv: list[str] | None):
    ap = arg_parser("speed", __doc__)
    ap.add_argument("recipes", nargs="*", help=f"e.g. {' '.join(TARGETS)} (with --resume: "
                    "those recorded, plus any named here)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2")
    add_data_dir(ap, " (with --resume: the invocation's)")
    ap.add_argument("--runs-dir", default=None, help="keep the run directories here")
    ap.add_argument("--anchor", default=str(DEFAULT_ANCHOR),
                    help="the reference script, run as `python ANCHOR DATA_DIR [THREADS]`; "
                    f"default {display(DEFAULT_ANCHOR)}")
    ap.add_argument("--anchor-threads", type=int, default=os.cpu_count(),
                    help="THREADS argument for the anchor, recorded (default: every core, "
                    f"{os.cpu_count()} here)")
    ap.add_argument("--anchor-runs", type=int, default=2,
                    help="anchor runs per leg, its time their median (default 2); a CPU model "
                    f"with fewer than {ANCHOR_SEEDS} anchor seeds recorded gets more")
    ap.add_argument("--quick", action="store_true",
                    help=f"check the claims on your CPU: the anchor once, then {', '.join(QUICK)}"
                    " once each (seed 0), side by side (about 35 min on 2 cores); prints the "
                    "ratios with the CPU model, writes ./speed-quick.json unless --out")
    ap.add_argument("--out", default=str(RESULTS / "speed.json"),
                    help="results file of this invocation (default benchmarks/results/speed.json)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="continue the interrupted invocation recorded in --out (same anchor)")
    g.add_argument("--restart", action="store_true",
                   help="discard an unfinished invocation in --out and start a new one")
    g.add_argument("--summarize", action="store_true",
                   help="only recompute the summary and by_cpu of --out from its recorded "
                   "runs and anchors (after a change to how they are summarised); runs nothing")
    ap.add_argument("--retime", nargs="+", default=[], metavar="RECIPE",
                    help="with --resume: time these recipes again although they resolve the "
                    "same (after a change to the engine, say); their runs move to "
                    "superseded_runs. Give it once: a later --resume without it continues")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override for every run (smoke tests; such runs get no verdict)")
    ap.add_argument("--device", default="cpu",
                    help="where cifarlab trains (default cpu: the anchor runs on the CPU)")
    return check_args(ap.parse_args(argv))


def check_args(a):
    """--quick's settings; arguments that do not go together; `seeds_given` (None: not
    given) beside `seeds` (default 0 1 2) and the --set `overrides`."""
    if a.quick:
        if a.resume or a.retime:
            raise SystemExit("--quick is one short invocation of its own (no --resume)")
        a.recipes, a.seeds, a.anchor_runs, a.restart = a.recipes or QUICK, a.seeds or [0], 1, True
        if a.out == str(RESULTS / "speed.json"):
            a.out = "speed-quick.json"
    if a.anchor_runs < 1:
        raise SystemExit("--anchor-runs must be at least 1")
    if a.retime and not (a.resume or a.summarize):
        raise SystemExit("--retime goes with --resume (a new invocation times everything)")
    a.seeds_given, a.seeds = a.seeds, a.seeds if a.seeds is not None else [0, 1, 2]
    a.overrides = parse_sets(a.set)
    return a


def prepare(a, path: Path, prov: dict) -> tuple[dict, object, dict[str, str]]:
    """The invocation's state (new or resumed, checked), its data and each recipe's
    fingerprint; runs whose recipe changed (or --retime) moved aside. Nothing timed yet."""
    state = begin(a, path, prov)
    inv = state["invocation"]
    unknown = [r for r in a.retime if r not in inv["recipes"]]
    if unknown:
        raise SystemExit(f"--retime: {', '.join(unknown)} not in this invocation "
                         f"({', '.join(inv['recipes'])})")
    if a.resume and a.overrides and a.overrides != inv.get("overrides", {}):
        raise SystemExit("--resume continues the invocation with its own --set overrides "
                         f"({inv.get('overrides') or 'none'})")
    if not anchor_still_valid(state.get("anchor"), prov) and not Path(a.anchor).is_file():
        raise SystemExit(f"anchor not found: {a.anchor} (pass --anchor PATH)")
    try:  # a resumed invocation reads the data it started with unless told otherwise
        data = load_data(a.data_dir or (inv.get("data_dir") if a.resume else None))
    except CifarlabError as e:
        raise SystemExit(str(e)) from None
    inv["data_dir"] = str(data.root)
    overrides = inv.get("overrides", {})
    try:  # every recipe resolves before the anchor's minutes are spent
        shas = {name: recipe_sha(name, overrides) for name in inv["recipes"]}
    except CifarlabError as e:
        raise SystemExit(str(e)) from None
    drop_changed(state, shas, provenance_cpu()["model"])
    retime(state, a.retime, prov["commit"])
    fill_train_macs(state["runs"], overrides)
    save(path, state)
    return state, data, shas


def measure_anchor_and_roof(a, path: Path, state: dict, data, prov: dict) -> None:
    """The anchor of this leg (unless the last one still holds) and, beside it, the machine's
    bf16 / fp32 matmul roof."""
    if not anchor_still_valid(state.get("anchor"), prov):
        data_dir = data.root.parent if data.root.name == "cifar-10-batches-py" else data.root
        state["anchor"] = anchor_leg(a, data_dir, state["anchors"])
        state["anchors"].append(state["anchor"])
        state["roof"] = None  # measured again beside the new anchor
        save(path, state)
    if state.get("roof") is None:
        import torch

        state["roof"] = {"bf16_gflops": matmul_gflops(torch.bfloat16),
                         "fp32_gflops": matmul_gflops(torch.float32), "matmul": "2048 x 2048"}
        save(path, state)


def time_runs(a, path: Path, state: dict, data, shas: dict[str, str]) -> None:
    """Every recipe with every seed not recorded yet on this CPU model (a run timed on another
    one does not count here), each ratio to this leg's anchor; the results file rewritten
    after each."""
    inv = state["invocation"]
    overrides = inv.get("overrides", {})
    anchor_s, anchor_i = state["anchor"]["seconds"], len(state["anchors"]) - 1
    runs_dir = a.runs_dir or tempfile.mkdtemp(prefix="cifarlab-speed-")
    cpu = cpu_of(state["anchor"])  # a run counts as done on the CPU model it was timed on
    done = {(r["recipe"], r["seed"]) for r in state["runs"]
            if run_cpu(r, state["anchors"]) == cpu}
    for name in inv["recipes"]:
        for seed in inv["seeds"]:
            if (name, seed) in done:
                print(f"{name} seed {seed}: recorded already on {cpu}", flush=True)
                continue
            m, seconds = timed_train(name, data, runs_dir, f"{name}-seed{seed}", overrides,
                                     seed=seed, device=inv["device"])
            run = {"recipe": name, "seed": seed, "test_acc": m["test_acc"],
                   "seconds": seconds, "ratio_to_anchor": seconds / anchor_s,
                   "anchor": anchor_i, "recipe_sha": shas[name],
                   "epochs": m["epochs"], "params": m["params"],
                   **{k: m.get(k) for k in ("train_seconds", "macs", "train_macs",
                                            "receptive_field", "images_per_second")},
                   **provenance()}
            if run["train_macs"] and run["images_per_second"]:
                run["gflops"] = model_gflops(run["train_macs"], run["images_per_second"])
            if overrides:
                run["overrides"] = overrides
            state["runs"].append(run)
            save(path, state)
            print(f"{name} seed {seed}: test acc {m['test_acc']:.4f} in {seconds:.1f} s = "
                  f"{seconds / anchor_s:.3f}x the anchor ({m['epochs']} epochs)", flush=True)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    path = Path(a.out)
    if a.summarize:
        state = read_state(path)
        if not state.get("anchors"):
            raise SystemExit(f"--summarize: {a.out} holds no anchored runs")
        save(path, state)
        print(report(state))
        return
    prov = provenance()
    state, data, shas = prepare(a, path, prov)
    measure_anchor_and_roof(a, path, state, data, prov)
    time_runs(a, path, state, data, shas)
    state["invocation"]["complete"] = True
    save(path, state)
    print(report(state))
    print(path)


def report(state: dict) -> str:
    """The summary as lines of text."""
    lines = [f"anchor {an['name']}: {100 * an['test_acc']:.2f}% in {an['seconds']:.0f} s "
             f"on {an['machine']} ({cpu_words(an.get('cpu'))}), {an['date']}"
             for an in state["anchors"]]
    for name, s in state["summary"].items():
        line = (f"{name}: worst {100 * s['worst_acc']:.2f}%, median {s['median_seconds']:.0f} s"
                f", {s['ratio_to_anchor']:.3f}x the anchor ({s['n_runs']} runs)")
        if "roof_fraction" in s:
            line += f"; {s['gflops']:.0f} GFLOP/s = {s['roof_fraction']:.1%} of the bf16 roof"
        if "required_met" in s:
            verdict = {True: "met", False: "NOT met", None: "undecided"}
            def pc(x):
                return "the anchor (pending)" if x is None else f"{100 * x:.2f}%"

            line += (f"; required (>= {pc(s['target_acc'])}, <= {s['required_ratio']}x):"
                     f" {verdict[s['required_met']]}; goal (>= {pc(s['goal_acc'])}, <= "
                     f"{s['goal_ratio']}x): {verdict[s['goal_met']]}")
        lines.append(line)
    tv = state.get("throughput_verdict")
    if tv:
        lines.append(f"throughput: {tv['ratio']:.2f}x the conventional pipeline (required >= "
                     f"{tv['required_ratio']}x: {'met' if tv['required_met'] else 'NOT met'})")
    return "\n".join(lines)


def cpu_words(cpu: dict | None) -> str:
    if not cpu:
        return "CPU flags not recorded"
    return ", ".join([cpu["model"], "AMX" if cpu.get("amx_bf16") else "no AMX",
                      "avx512_bf16" if cpu.get("avx512_bf16") else "no avx512_bf16"])


if __name__ == "__main__":
    main()
