"""Write the generated parts of the docs (never by hand): docs/results.md's tables and the
README's results summary from benchmarks/results/*.json, and the README's command-line
synopsis from the CLI's own parser.

    .venv/bin/python -m benchmarks.update_readme
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from .targets import MIN_SEEDS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"
MARKS = {"results": (START, END), "summary": ("<!-- summary:start -->", "<!-- summary:end -->"),
         "cli": ("<!-- cli:start -->", "<!-- cli:end -->")}

# What each seed write-up claims (test accuracy, fraction); None where it gives no number.
SEED_CLAIMS = {
    "seed000-m1": None, "seed000-m2": 0.74, "seed000-m3": 0.80096, "seed001": 0.8513,
    "seed001-dilated": 0.85, "seed002": 0.92, "seed003-net1": 0.53, "seed003-net2": 0.47,
    "seed003-net3": 0.46, "seed003-net4": 0.58, "seed003-net5": 0.61, "seed003-net6": 0.69,
    "seed003-net7": 0.72, "seed003-net8": 0.71, "seed004": 0.835,
}


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def default_section() -> list[str]:
    p = RESULTS / "default.json"
    if not p.exists():
        return ["No default benchmark recorded yet (`python -m benchmarks.default`)."]
    r = json.loads(p.read_text())
    if "wall_seconds" not in r:  # recorded before issue 19: the old default (seed001-fast)
        return [f"Recorded before the default changed (`{r['recipe']}` was then seed 001's "
                f"network, now `seed001-fast`): {pct(r['test_acc'])} in "
                f"{r['train_seconds'] / 60:.1f} min on {r['machine']}."]
    return [
        "| command | final test accuracy | whole command | training | epochs | images/s | "
        "log | machine | commit |", "|---|---|---|---|---|---|---|---|---|",
        f"| `{r['user_command']}` | **{pct(r['test_acc'])}** | "
        f"**{r['wall_seconds'] / 60:.1f} min** | {r['train_seconds'] / 60:.1f} min | "
        f"{r['epochs']} | {r['images_per_second']:.0f} | {r['log_lines']} lines | "
        f"{r['machine']} | `{r['commit'][:12]}` |",
        "",
        f"A newcomer's first command, timed as a whole process with its output redirected "
        f"(`{r['command']}`, {r['date']}; from `benchmarks/results/default.json`). Its last "
        f"line: `{r['last_line']}`",
    ]


def where(machine: str) -> str:
    """'NVIDIA H200' for a GPU run, else 'CPU, 2 cores' (from provenance's machine string)."""
    gpu = re.search(r"NVIDIA [^,]+", machine)
    cores = re.search(r"(\d+) cores", machine)
    return gpu.group(0) if gpu else f"CPU, {cores.group(1) if cores else '?'} cores"


def stop_note(r: dict) -> str:
    """How the run ended, when not after its full schedule."""
    if r.get("target_epoch"):
        split = "validation" if r.get("selection") == "validation" else "the test set"
        return f" (stopped at target on {split})"
    if r.get("stopped_by") == "patience":
        return " (early stop on validation)"
    if r.get("epochs", 0) < r.get("epochs_planned", 0):
        return " (partial)"
    return ""


def leg_commits(r: dict) -> str:
    """Each leg's commit, oldest first ('?' where no record holds it)."""
    shas = [g.get("commit") for g in r.get("legs") or []] or [r["commit"]]
    s = " → ".join(f"`{c[:8]}`" if c else "?" for c in shas)
    return s if r.get("verifiable", True) else s + " (unverifiable)"


def versus(r: dict) -> str:
    claim = SEED_CLAIMS.get(r["recipe"])
    if claim is None or r.get("test_acc") is None:
        return "–"
    d = 100 * (r["test_acc"] - claim)
    return f"+{d:.2f}" if d >= 0 else f"−{-d:.2f}"


def seed_row(r: dict) -> str:
    val = "–" if r.get("val_acc") is None else pct(r["val_acc"])
    return (f"| `{r['recipe']}` | {pct(SEED_CLAIMS.get(r['recipe']))} | "
            f"**{pct(r['test_acc'])}**{stop_note(r)} | {versus(r)} | {val} | "
            f"{r['epochs']}/{r['epochs_planned']} | {r['params']:,} | {r['receptive_field']} | "
            f"{r['train_seconds'] / 60:.1f} min | {where(r['machine'])} | {leg_commits(r)} |")


SEED_HEADER = ["| recipe | seed's claim | ours: final test acc | vs claim (points) | "
               "validation acc | epochs | params | RF | time | machine | commits (legs) |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]


def latest_rows(runs: list[dict]) -> list[dict]:
    """Each recipe's headline row: its newest run of the full schedule; else its newest run
    with a final test accuracy (stopped early); else its newest run (in progress)."""
    def rank(r: dict) -> tuple:
        full = r.get("epochs", 0) >= r.get("epochs_planned", 0)
        return (full, r.get("test_acc") is not None, r["date"])

    best: dict[str, dict] = {}
    for r in runs:
        if r["recipe"] not in best or rank(r) >= rank(best[r["recipe"]]):
            best[r["recipe"]] = r
    return [best[k] for k in sorted(best)]


def seeds_section() -> list[str]:
    p = RESULTS / "seeds.json"
    if not p.exists():
        return ["No seed recipe runs recorded yet (`python -m benchmarks.seeds`)."]
    runs = json.loads(p.read_text())
    return [*SEED_HEADER, *(seed_row(r) for r in latest_rows(runs)), "",
            "One row per seed recipe from `benchmarks/results/seeds.json`: its newest run of the "
            "full schedule, else its newest run that ended with a test accuracy. The "
            "headline is the **final** test accuracy of that run; nothing in this "
            "table was chosen on the test set except where a row says it stopped at a target "
            "on the test set. Every earlier setup and the provenance of each row (every leg "
            "that trained it: commit, date, command, epochs, machine): "
            "[docs/seed-history.md](docs/seed-history.md)."]


def seed_history_section() -> list[str]:
    """All rows, oldest setup first (docs/seed-history.md)."""
    runs = json.loads((RESULTS / "seeds.json").read_text())
    return [*SEED_HEADER, *(seed_row(r) for r in runs), "",
            "Every row of `benchmarks/results/seeds.json` (generated by "
            "`python -m benchmarks.update_readme`)."]


def speed_section() -> list[str]:
    out = []
    p = RESULTS / "throughput.json"
    if p.exists():
        r = json.loads(p.read_text())
        out += [
            "| seed 001 network, batch " + str(r["batch_size"]) + " | images/s |",
            "|---|---|",
            f"| conventional: per-image Dataset + DataLoader(num_workers=2), fp32, NCHW | "
            f"{r['baseline_img_s']:.0f} |",
            f"| cifarlab engine, same network (dropout 0.1), one process, 2 threads | "
            f"{r['engine_img_s']:.0f} (×{r['engine_img_s'] / r['baseline_img_s']:.2f}) |",
            *([f"| cifarlab engine, the same, 2 single-threaded processes (`train.processes = "
               f"2`), same batch | {r['engine_processes_img_s']:.0f} "
               f"(×{r['ratio_processes']:.2f}) |"] if "engine_processes_img_s" in r else []),
            f"| cifarlab engine, the seed 001 network as `seed001-fast` trains it (dropout 0, "
            f"batch {r.get('engine_default_recipe_batch_size', '?')}; then the default recipe) "
            f"| {r['engine_default_recipe_img_s']:.0f} |",
            "",
            f"Engine over the conventional pipeline: **{r['ratio']:.2f}×**"
            + (f" ({r['engine_mode']}, the faster engine row)" if "engine_mode" in r else "")
            + (f"; each figure of the first three rows is the median of {len(r['rounds'])} "
               "rounds, measured in turn" if r.get("rounds") else "")
            + f". Measured on {r['machine']}, {r['date'][:10]}; machine roof "
            f"{r['roof_gflops']:.0f} GFLOP/s bf16 matmul ({r['roof_gflops_fp32']:.0f} fp32); "
            f"the engine reaches {r['engine_gflops']:.0f} GFLOP/s of model compute "
            f"({100 * r['engine_roof_fraction']:.0f}% of the bf16 roof). "
            "From `benchmarks/results/throughput.json`.",
            "",
        ]
    p = RESULTS / "precision.json"
    if p.exists():
        r = json.loads(p.read_text())
        out += ["| dropout | precision | memory format | images/s |", "|---|---|---|---|"]
        for row in r["results"]:
            fmt = "channels_last" if row["channels_last"] else "NCHW"
            out.append(f"| {row['dropout']} | {row['precision']} | {fmt} | "
                       f"{row['images_per_second']:.0f} |")
        step = ("the engine's own step (`cifarlab.train`)" if r.get("step") else
                "a step re-implemented in the benchmark (before FastDropout; to be re-measured "
                "with `python -m benchmarks.precision`)")
        out += ["", f"Training step of the seed 001 network, batch {r['batch_size']}, "
                f"{step}, on {r['machine']}; from `benchmarks/results/precision.json`."]
    p = RESULTS / "memory.json"
    if p.exists():
        r = json.loads(p.read_text())
        out += ["", "| recipe (1 thread, one epoch of " f"{r['rows'][0]['images']:,} images) | "
                "page faults: glibc defaults → kept memory | kernel CPU | all CPU time |",
                "|---|---|---|---|"]
        for row in r["rows"]:
            sy, k = row["system"], row["keep"]
            out.append(f"| `{row['recipe']}` | {sy['minor_faults']:,.0f} → "
                       f"{k['minor_faults']:,.0f} | {sy['system_seconds']:.1f} s → "
                       f"{k['system_seconds']:.1f} s | ×{row['cpu_seconds_ratio']:.2f} |")
        out += ["", "`cifarlab.memory` keeps freed memory in the process (glibc `mallopt`); "
                "counted by `python -m benchmarks.memory` in fresh processes (medians "
                + (f"of {r['repeats']}" if "repeats" in r else "of the repeats")
                + f"), on {r['machine']}, {r['date']}, load "
                f"average {r['load_average_at_start']:.1f} at the start (CPU seconds and page "
                "faults are counts; wall time was not compared). From "
                "`benchmarks/results/memory.json`."]
    return out or ["No speed benchmark recorded yet."]


def kernels_section() -> list[str]:
    """benchmarks/results/kernels.json (benchmarks.kernels): per CPU model and recipe, where one
    worker's training step spends its time and which oneDNN kernels run."""
    p = RESULTS / "kernels.json"
    if not p.exists():
        return []
    out = ["| CPU | recipe | images/s per worker | oneDNN share of the step (AMX / AVX-512 / "
           "other) | largest torch operators (self time) | AMX tile fill of the MACs | "
           "MACs in depthwise / in fp32 convs |", "|---|---|---|---|---|---|---|"]
    def share(x: float) -> str:
        return f"{100 * x:.0f}%"

    entries = json.loads(p.read_text())["by_cpu"]
    for model, e in entries.items():
        for name, r in e["recipes"].items():
            isa = " / ".join(share(r["isa"][k]) for k in ("amx", "avx512", "other"))
            ops = ", ".join(f"`{o['op']}` {share(o['share'])}" for o in r["ops"][:4])
            t = r["tiles"]
            out.append(f"| {model} | `{name}` | {r['images_per_second']:.0f} (batch "
                       f"{r['batch_per_worker']}) | {share(r['onednn_share'])} ({isa}) | {ops} | "
                       f"{share(t['amx_fill'])} | {share(t['depthwise_mac_share'])} / "
                       f"{share(t['fp32_mac_share'])} |")
    out += ["", "One single-threaded worker's full-size training steps, profiled by `python -m "
            "benchmarks.kernels` (torch.profiler and oneDNN's verbose log; the profiler's "
            "per-operator overhead overstates small operators). The tile fill is static: the "
            "share of AMX's 32 x 16 bf16 channel blocks a network's dense convolutions use, "
            "weighted by MACs (depthwise convolutions never run on AMX; convs whose bf16 weight "
            "gradient this CPU gets wrong train in fp32 and count as unfilled). Measured on "
            + "; ".join(f"{e['machine']} at " + ", ".join(sorted(
                {f"{r.get('commit', e['commit'])[:7]}, {r.get('date', e['date'])[:10]}"
                 for r in e["recipes"].values()})) for e in entries.values())
            + ". From `benchmarks/results/kernels.json`.", ""]
    return out


def levers_section() -> list[str]:
    """One table per benchmarks/results/levers-RECIPE.json (benchmarks.levers)."""
    out: list[str] = []
    for p in sorted(RESULTS.glob("levers-*.json")):
        r = json.loads(p.read_text())
        out += [f"`{r['recipe']}`, one run per variant, each a fresh process, back to back on "
                f"{r['machine']}, the recipe as of commit `{r['commit'][:7]}`, "
                f"{r['date'][:10]}; scored on {r['val_split']:,} held-out training images "
                "(the test set is not read)"
                + (f"; for every variant {fmt_overrides(r['overrides'])}" if r.get("overrides")
                   else "") + ":", "",
                "| lever | change | val acc | Δ val | seconds | × recipe's time | s / epoch |",
                "|---|---|---|---|---|---|---|"]
        for v in r["variants"]:
            change = {k: x for k, x in v["overrides"].items()
                      if k not in ("data.val_split", "train.test_eval")
                      and r.get("overrides", {}).get(k) != x}
            what = ", ".join([fmt_overrides(change)] * bool(change)
                             + [f"`{k}={x}`" for k, x in v["env"].items()]) or "—"
            out.append(f"| {v['lever']} | {what} | {pct(v['val_acc'])} | "
                       f"{100 * v['val_acc_delta']:+.2f} | {v['seconds']:.0f} | "
                       f"×{v['seconds_ratio']:.2f} | {steady_epoch(v)} |")
        out += ["", f"From `benchmarks/results/{p.name}` (`python -m benchmarks.levers`). "
                "s / epoch: the median seconds of the epochs between the first (warm-up, "
                "a compiled graph's compile) and the last (final evaluation); – where not "
                "recorded.", ""]
    return out


def steady_epoch(variant: dict) -> str:
    """A lever variant's steady pace: the median of its middle epochs' seconds."""
    secs = variant.get("epoch_seconds") or []
    mid = secs[1:-1] if len(secs) >= 3 else secs
    return f"{statistics.median(mid):.1f}" if mid else "–"


def fmt_overrides(over: dict) -> str:
    return ", ".join(f"`{k}={json.dumps(v)}`" for k, v in over.items())


def time_to_accuracy_section() -> list[str]:
    """speed.json (benchmarks.speed): the anchor of the invocation, then one row per
    recipe with its median time as a ratio to the anchor and the verdicts, which use ratios."""
    p = RESULTS / "speed.json"
    data = json.loads(p.read_text()) if p.exists() else {}
    runs = data.get("summary", {})
    if not runs:
        return ["No time-to-accuracy runs recorded yet (`python -m benchmarks.speed`)."]
    anchors = data.get("anchors") or ([data["anchor"]] if data.get("anchor") else [])
    return [*anchor_lines(data, anchors), *speed_table(data, runs),
            *speed_notes(data, runs, anchors)]


def anchor_lines(data: dict, anchors: list[dict]) -> list[str]:
    """The anchor runs of the invocation (or why there are none), and the anchor's accuracy
    per CPU model."""
    out = []
    if anchors:
        n = len((data.get("invocation") or {}).get("resumed", []))
        resumed = (f" The invocation was continued {n} time{'s' * (n > 1)} with `--resume`; "
                   "a leg on another machine or day ran the anchor again." if n else "")
        for i, an in enumerate(anchors):
            out.append(f"{'- ' if len(anchors) > 1 else ''}Anchor"
                       + (f" {i}" if len(anchors) > 1 else "")
                       + f": `{an['name']}` (`{an['command']}`): **{pct(an['test_acc'])}** in "
                       f"**{an['seconds']:.0f} s**, on {an['machine']}, {an['date']}.")
        out += ["", "Every run's time is divided by the seconds of the anchor run in the same "
                "invocation on the same machine; `× anchor` is the median of those ratios, and "
                "the required / goal verdicts use them. The median time in seconds is shown "
                "only where every run of the recipe was measured on one machine." + resumed, ""]
    else:  # written before issue 17: absolute seconds, no anchor to compare with
        machines = sorted({r["machine"] for r in data.get("runs", []) if r.get("machine")})
        out += ["No anchor was run with these figures (written before issue 17); measured on "
                + ("; ".join(machines) or "an unrecorded machine") + ".", ""]
    per_cpu = data.get("by_cpu") or {}
    out += [f"Anchor accuracy per CPU model (the mean of {MIN_SEEDS} seeds; a recipe's target "
            "where it is the anchor's): " + "; ".join(
                f"{c}: " + (pct(v["anchor_mean_acc"]) if v["anchor_mean_acc"] is not None else
                            f"pending ({len(v['anchor_seed_accs'])} of {MIN_SEEDS} seeds)")
                for c, v in per_cpu.items()) + ".", ""] if per_cpu else []
    return out


def verdict(met, what: str, required: bool = True) -> str:
    word = {True: "met", False: "**not met**" if required else "not met", None: "pending"}
    return f"{word[met]} ({what})"


def verdicts(s: dict) -> tuple[str, str]:
    """A recipe's required and goal verdicts as table cells."""
    req = goal = "–"
    if "required_ratio" in s:
        acc, goal_acc = s["target_acc"], s.get("goal_acc", s["target_acc"])
        req = verdict(s.get("required_met"), f"≥ {pct(acc)}, ≤ {s['required_ratio']:g}×")
        goal = verdict(s.get("goal_met"), f"≥ {pct(goal_acc)}, ≤ {s['goal_ratio']:g}×",
                       required=False)
        if s.get("n_runs", 0) < MIN_SEEDS or s.get("overrides"):
            note = "overrides" if s.get("overrides") else f"{s['n_runs']} of {MIN_SEEDS} seeds"
            req, goal = req + f", {note}", goal + f", {note}"
    elif "required_met" in s:  # an issue-5 summary (absolute seconds)
        req = verdict(s["required_met"], f"≤ {s['required_seconds']} s")
        goal = verdict(s["goal_met"], f"≤ {s['goal_seconds']} s", required=False)
    return req, goal


def speed_table(data: dict, runs: dict) -> list[str]:
    """One row per timed recipe: target, times, ratios (overall and per CPU model),
    accuracies, GFLOP/s and verdicts."""
    per_cpu = data.get("by_cpu") or {}
    cpus = list(per_cpu)
    out = ["| target | recipe | params | median time | × anchor | mean acc | worst acc | runs |"
           + "".join(f" {c}: × anchor, worst |" for c in cpus)
           + " GFLOP/s (bf16 roof) | required (every CPU model) | goal |",
           "|---" * (11 + len(cpus)) + "|"]
    for name, s in runs.items():
        ratio = s.get("ratio_to_anchor")
        req, goal = verdicts(s)
        target = "–" if s.get("target_acc") is None else f"≥ {pct(s['target_acc'])}"
        target += " (anchor)" if s.get("target_is_anchor") else ""
        secs = f"{s['median_seconds']:.0f} s" if len(s.get("machines", [])) <= 1 else "–"
        cells = []
        for c in cpus:
            r = per_cpu[c]["recipes"].get(name)
            stale = " (recipe changed since)" if r and r.get("stale_runs") else ""
            cells.append(f" {r['ratio_to_anchor']:.3f}×, {pct(r['worst_acc'])}{stale} |"
                         if r else " – |")
        out.append(f"| {target} | `{name}` | {s['params']:,} | {secs} | "
                   + (f"**{ratio:.3f}×**" if ratio is not None else "–")
                   + f" | {pct(s['mean_acc'])} | {pct(s['worst_acc'])} | {s['n_runs']} |"
                   + "".join(cells) + " "
                   + (f"{s['gflops']:.0f} ({100 * s['roof_fraction']:.1f}%)"
                      if "roof_fraction" in s else "–") + f" | {req} | {goal} |")
    return out


def speed_notes(data: dict, runs: dict, anchors: list[dict]) -> list[str]:
    """Below the table: recipes not timed, runs set aside, how times are taken, throughput."""
    from .targets import TARGETS  # the one place the targets are declared

    out = []
    untimed = [f"`{name}`" for name in TARGETS if name not in runs]
    if untimed and anchors:
        out += ["", "Not timed in this invocation: " + ", ".join(untimed) + " (`python -m "
                "benchmarks.speed --resume NAME` adds a recipe, with a new anchor run if the "
                "machine or boot changed)."]
    retimed = [r for r in data.get("superseded_runs", []) if "retimed_at" in r]
    if retimed:
        names = ", ".join(f"`{n}`" for n in sorted({r["recipe"] for r in retimed}))
        out += ["", f"{len(retimed)} earlier run{'s' * (len(retimed) > 1)} of {names}, timed "
                "again with the code of a later commit (`--retime`: the recipe did not change), "
                "are kept in speed.json as `superseded_runs` and counted nowhere."]
    left_out = {n: s["stale_runs_left_out"] for n, s in runs.items()
                if s.get("stale_runs_left_out")}
    if left_out:
        out += ["", "Overall columns (median time, × anchor, accuracies, runs): of the recipe as "
                "shipped; left out there, shown in their CPU model's column as \"recipe changed "
                "since\": " + ", ".join(f"{k} run{'s' * (k > 1)} of `{n}`"
                                       for n, k in left_out.items()) + "."]
    gone = [r for r in data.get("superseded_runs", []) if "retimed_at" not in r]
    if gone:
        names = ", ".join(f"`{n}`" for n in sorted({r["recipe"] for r in gone}))
        out += ["", f"{len(gone)} earlier run{'s' * (len(gone) > 1)} of {names}, not shown to "
                "have trained the recipe as shipped now (it changed since, or they were recorded "
                "without its fingerprint), are kept in speed.json as `superseded_runs` and "
                "counted nowhere."]
    out += ["", "Worst seed for accuracy, median for time. A recipe's time is the wall time of "
            "the whole `train` call, data in memory, final evaluation with test-time "
            "augmentation included; the anchor's is its own clock, network creation to the end "
            "of its test-time augmentation. GFLOP/s: the network's mean MACs per training image "
            "(progressive-resizing epochs at their size) × 2 × 3 (forward and backward) × "
            "training images/s, as a share of the bf16 2048² matmul roof measured in "
            "the same invocation" + (f" ({data['roof']['bf16_gflops']:.0f} GFLOP/s)"
                                     if data.get("roof") else "") + ". Each run's seed, commit, "
            "command and machine are in `benchmarks/results/speed.json`."]
    tv = data.get("throughput_verdict")
    if tv:  # the target from benchmarks.speed, the measurement as recorded now
        from .speed import throughput_verdict  # met only where met on every CPU model

        tv = throughput_verdict(data.get("throughput")) or tv
        ratio, by_cpu, machine = tv["ratio"], tv.get("by_cpu"), tv.get("machine")
        if by_cpu:
            where_ = " (" + "; ".join(f"{m}: {r:.2f}×" for m, r in sorted(by_cpu.items())) + ")"
        else:
            where_ = f", measured on {machine}" if machine else ""
        out += ["", f"Throughput of the engine over the conventional pipeline (table below): "
                f"**{ratio:.2f}×**{where_}; required ≥ {tv['required_ratio']:g}× on every CPU "
                f"model measured: {'met' if ratio >= tv['required_ratio'] else '**not met**'}."]
    return out


def inference_section() -> list[str]:
    """inference.json (benchmarks.inference): one row per model, backend, batch."""
    p = RESULTS / "inference.json"
    if not p.exists():
        return ["No inference benchmark recorded yet (`python -m benchmarks.inference`)."]
    r = json.loads(p.read_text())
    out = ["| network | backend | batch 1 (images/s) | batch 256 (images/s) | test accuracy | "
           "file |", "|---|---|---|---|---|---|"]
    cells: dict[tuple[str, str], dict] = {}
    for row in r["rows"]:
        cells.setdefault((row["model"], row["backend"]), {})[row["batch_size"]] = row
    for (model, backend), by_batch in cells.items():
        any_row = next(iter(by_batch.values()))
        if any_row.get("error"):
            out.append(f"| `{model}` | {backend} | – | – | – | {any_row['error']} |")
            continue
        speed = [by_batch.get(b, {}).get("images_per_second") for b in (1, 256)]
        b1, b256 = ("–" if x is None else f"{x:,.0f}" for x in speed)
        out.append(f"| `{model}` | {backend} | {b1} | {b256} | "
                   f"{pct(any_row['test_acc'])} | {any_row['file_bytes'] / 1024:,.0f} KiB |")
    trained = [f"`{m}` (" + (f"trained here for {v['epochs']} epochs only" if v["trained_here"]
                             else f"its recipe as of {r['commit'][:7]}, fully trained") + ")"
               for m, v in r["runs"].items()]
    out += ["", f"Measured on {r['machine']}, {r['date']} "
            f"(`{r['command']}`); test accuracy on {r['test_images']:,} test images without "
            "test-time augmentation (the ONNX graph has none). Networks: " + ", ".join(trained)
            + ". From `benchmarks/results/inference.json`."]
    return out


def search_section() -> list[str]:
    """search.json (benchmarks.search): per rule set, the searched design against the
    hand-written recipe, trained in the same invocation with the same time budget."""
    p = RESULTS / "search.json"
    if not p.exists():
        return ["No search benchmark recorded yet (`python -m benchmarks.search`)."]
    r = json.loads(p.read_text())
    out = search_seeded_rows(r["rule_sets"], r.get("legs") or []) if r["rule_sets"] else []
    for name, s in r.get("in_progress", {}).items():
        parts = []
        for key, what in (("search", "search"), ("random_search", "random search")):
            summ = s.get(key)
            if not summ:
                continue
            best = (summ.get("best") or [{}])[0]
            parts.append(f"{what} {'finished' if summ.get('finished') else 'under way'} "
                         f"({summ.get('minutes_used', 0):.0f} of "
                         f"{summ.get('budget_minutes') or 0:.0f} min, "
                         f"{summ.get('complete', 0)} complete, {summ.get('pruned', 0)} pruned, "
                         f"{summ.get('rejected', 0)} rejected"
                         + (f"; best so far trial {best['number']}, validation "
                            f"{100 * best['val_acc']:.2f}%: {best['design']}"
                            if best.get("val_acc") is not None else "") + ")")
        out.append(f"- `{name}`, under way: " + ("; ".join(parts) or "nothing recorded yet")
                   + "; no test accuracy yet.")
    for d in r.get("discarded", []):
        out.append(f"- Discarded and redone: {d['what']} ({d['why']}).")
    w = r.get("workers")
    if w:
        one, many = w[f"1x{w['cores']}"], w[f"{w['cores']}x1"]
        out += ["", f"Trials per hour on {w['cores']} cores ({w['trial']}): one worker with "
                f"{w['cores']} threads {one['trials_per_hour']:.1f}, {w['cores']} single-threaded "
                f"workers {many['trials_per_hour']:.1f} "
                f"(**{w['speedup_single_threaded_workers']:.2f}×**)."]
    legs = r.get("legs") or [r]
    out += ["", "Measured on " + "; ".join(sorted({g["machine"] for g in legs})) + ", commits "
            + ", ".join(f"`{g['commit'][:12]}`" for g in legs) + f" (`{r['command']}`). From "
            "`benchmarks/results/search.json`."]
    return out[1:] if out[0] == "" else out


def _mean_spread(xs: list[float]) -> str:
    """'81.23% ± 0.31' (mean ± sample standard deviation, in points) of test accuracies."""
    import statistics

    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{pct(statistics.mean(xs))} ± {100 * sd:.2f}"


def _option(command: str, flag: str) -> list[str]:
    """The values after `flag` in a recorded command line (up to the next option)."""
    words = command.split()
    if flag not in words:
        return []
    rest = words[words.index(flag) + 1:]
    return rest[:next((i for i, w in enumerate(rest) if w.startswith("--")), len(rest))]


def sittings_of(name: str, s: dict, legs: list[dict]) -> list[dict]:
    """The legs (sittings) that can have added to rule set `name`'s record `s`: those in its
    runs directory that name it (or every rule set), up to the record's date; at least the
    record's own."""
    runs = _option(s["command"], "--runs-dir")
    mine = [g for g in legs if _option(g["command"], "--runs-dir") == runs
            and name in (_option(g["command"], "--rule-sets") or [name])
            and g["date"] <= s["date"]]
    return mine or [s]


def hand_network_changed(s: dict) -> str:
    """'' when a rule set's recorded hand network (params, MACs, RF) is the one its hand recipe
    trains now; otherwise then -> now, in words."""
    from cifarlab.analysis import describe
    from cifarlab.models import create_model
    from cifarlab.recipe import resolve

    h = s["hand"]
    cfg = resolve(s["hand_recipe"])
    f = describe(create_model(cfg["model"], **cfg["model_args"]))  # one trace
    now = (f["params"], f["macs"], f["receptive_field"])
    then = (h.get("params"), h.get("macs"), h.get("receptive_field"))
    if None in then or then == now:
        return ""
    return (f"then {then[0]:,} params, {then[1] / 1e6:.1f}M MACs, RF {then[2]}; now "
            f"`{cfg['model']}`, {now[0]:,} params, {now[1] / 1e6:.1f}M MACs, RF {now[2]}")


def search_seeded_rows(sets: dict, legs: list[dict]) -> list[str]:
    """benchmarks.search's records with seeds: hand, random search and search per rule set, each
    the mean ± standard deviation of its seeds' test accuracies and its mean training time;
    the proxy rung's rank correlation and the budget."""
    import statistics

    out = ["| rule set | hand recipe | hand: test acc | time | random search | time | searched | "
           "time | search budget | proxy Spearman |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in sets.items():
        cells, whos = [], ("hand", "random", "searched")
        top = max(statistics.mean(s[who]["test_accs"]) for who in whos)
        for who in whos:  # the best mean in bold (ties alike)
            w = s[who]
            acc = _mean_spread(w["test_accs"])
            cells += [f"**{acc}**" if statistics.mean(w["test_accs"]) == top else acc,
                      f"{statistics.mean(w['train_seconds']):.0f} s"]
        rho = s.get("proxy_spearman")
        hand = f"`{s['hand_recipe']}`" + (" (time reference: breaks "
                                          + ", ".join(b.split(":")[0] for b in broken) + ")"
                                          if (broken := s.get("hand_rules_broken")) else "")
        out.append(f"| `{name}` | {hand} | " + " | ".join(cells)
                   + f" | {s['budget_minutes']:g} min each | "
                   + (f"{rho:.2f}" if rho is not None else "– (no proxy rung)") + " |")
    out.append("")
    for name, s in sets.items():
        for who in ("searched", "random"):
            w = s[who]
            out.append(f"- `{name}` {'search' if who == 'searched' else 'random search'} "
                       f"winner, trial {w['trial']} (validation {pct(w['val_acc'])}): "
                       f"{w['design']}; {w['params']:,} params, {w['macs'] / 1e6:.1f}M MACs, "
                       f"RF {w['receptive_field']}; rules "
                       + ("met" if not w.get("rules_broken") else "**broken**")
                       + ("; the hand recipe's own design, queued first"
                          if (w.get("fill") or {}).get("base_design") else "")
                       + ({"searched": "; the same recipe as the search's winner, so its "
                                       "final trainings are the searched ones",
                           "hand": "; the hand recipe itself, so its final trainings are the "
                                   "hand recipe's"}.get(w.get("same_recipe_as"), "")) + ".")
        if v := s.get("verdict"):
            out.append(_verdict_line(name, v))
        if changed := hand_network_changed(s):
            out.append(f"- `{name}`: the hand recipe `{s['hand_recipe']}` trains another "
                       f"network since this record ({changed}): its figures are of the recipe "
                       "as it was then.")
        sit = sittings_of(name, s, legs)
        out.append(f"- `{name}` measured in {len(sit)} sitting{'s' * (len(sit) > 1)} "
                   f"{sit[0]['date'][:10]} to {s['date'][:10]}, at commits "
                   + ", ".join(dict.fromkeys(f"`{g['commit'][:12]}`" for g in sit))
                   + f", on {s['machine']} (last: `{s['command']}`).")
    n = len(next(iter(sets.values()))["hand"]["test_accs"])
    out += ["", f"Test accuracy: mean ± standard deviation (points) over {n} seeds, each "
            "trained on the full training set; the winners' time budget is the hand recipe's "
            "time with the same seed. Random search has the search's budget, space, rules, "
            "queued designs and pruning, with Optuna's RandomSampler. Designs are chosen on a "
            "validation split held out of the training set; the test set is read only by the "
            "final trainings. Proxy Spearman: rank correlation between the proxy rung's and "
            "full-fidelity validation accuracy over designs of the search."]
    return out


def _verdict_line(name: str, v: dict) -> str:
    """One rule set's verdict (benchmarks.search.verdict) in words."""
    def yes(x) -> str:
        return "n/a" if x is None else ("**yes**" if x else "no")

    return (f"- `{name}` verdict: searched − hand {v['searched_minus_hand_points']:+.2f} points "
            f"at {v['time_vs_hand']:.2f}× the hand recipe's time (≥ 0.5 points at ≤ 1.0×: "
            f"{yes(v['beats_hand_by_0_5_at_equal_time'])}; ≥ 1.0: "
            f"{yes(v['beats_hand_by_1_0_at_equal_time'])}; worst searched seed above the best "
            f"hand seed: {yes(v['worst_searched_above_best_hand'])}); searched − random "
            f"{v['searched_minus_random_points']:+.2f} points (beats random search: "
            f"{yes(v['beats_random'])}).")


def robustness_section() -> list[str]:
    """robustness.json (benchmarks.robustness): one row per recipe and option."""
    p = RESULTS / "robustness.json"
    if not p.exists():
        return ["No robustness runs recorded yet (`python -m benchmarks.robustness`)."]
    r = json.loads(p.read_text())
    rows = r.get("rows", [])
    out = ["| recipe | option | clean | mCA | mCA / clean | by severity 1-5 | worst corruption "
           "| training | machine | commit |", "|---" * 10 + "|"]
    for x in rows:
        sev = " / ".join(f"{100 * v:.1f}" for v in x["by_severity"])
        worst = x["worst_corruption"]
        worst_mean = sum(x["by_corruption"][worst]) / len(x["by_corruption"][worst])
        out.append(f"| `{x['recipe']}` | {x['option']} | {pct(x['clean_acc'])} | "
                   f"**{pct(x['mca'])}** | {x['relative']:.3f} | {sev} | {worst} "
                   f"({pct(worst_mean)}) | {x['train_seconds']:.0f} s (load "
                   f"{x['load_average'][0]:.1f}) | {x['machine']} | `{x['commit'][:12]}` |")
    falls = [x["recipe"] + (f" ({x['option']})" if x["option"] != "none" else "")
             for x in rows if not x["mca_falls_with_severity"]]
    n = r.get("images") or "all 10,000"
    g = r.get("generation")
    out += ["", f"Each recipe trained once (seed 0, its own schedule, the full training set) and "
            f"scored on {n} test images (stratified by class) under the 15 CIFAR-10-C-style "
            "corruptions × 5 severities, regenerated (`cifarlab robustness`: fp32, one plain "
            "forward pass, no test-time augmentation, so `clean` can differ from the run's own "
            "test accuracy). Option `augmix`: `augment.augmix = 3` (AugMix with the paper's "
            "settings, trained in the same invocation; nothing tuned). mCA falls with severity "
            + ("for every row." if not falls else "except for: " + ", ".join(falls) + ".")
            + " Training seconds were measured with other work on the machine (the load "
            "average is given): they are not speed figures."]
    if g:
        out += ["", f"Generating the full corrupted test set ({g['images']:,} images) took "
                f"{g['seconds']:.0f} s ({g['images_per_second']:,.0f} images/s) on "
                f"{g['machine']}."]
    out += ["", "From `benchmarks/results/robustness.json` (`" + r["invocation"]["command"]
            + "`)."]
    return out


def readme_results() -> str:
    levers = levers_section()
    body = ["### Default recipe", "", *default_section(), "", "### Time to accuracy", "",
            *time_to_accuracy_section(), "", *(["### Speed levers", "", *levers]
                                              if levers else []),
            "### Throughput", "", *speed_section(), "", *kernels_section(),
            "### Design search", "", *search_section(), "",
            "### Inference: PyTorch and ONNX (fp32, int8)", "", *inference_section(), "",
            "### Robustness under corruption", "", *robustness_section(), "",
            "### Seed recipes", "", *seeds_section()]
    return f"{START}\n" + "\n".join(body) + f"\n{END}"


def history_block() -> str:
    return f"{START}\n" + "\n".join(seed_history_section()) + f"\n{END}"


def summary_block() -> str:
    """The README's first table: each timed recipe's worst seed and median time against the
    anchor, per CPU model measured (speed.json)."""
    start, end = MARKS["summary"]
    p = RESULTS / "speed.json"
    data = json.loads(p.read_text()) if p.exists() else {}
    runs = data.get("summary", {})
    if not runs:
        return f"{start}\nNo timed runs recorded yet (`python -m benchmarks.speed`).\n{end}"
    from cifarlab.recipe import resolve

    per_cpu = data.get("by_cpu") or {}
    out = ["| recipe | what it is for | params |"
           + "".join(f" {c}: worst of {MIN_SEEDS} seeds, time × anchor |" for c in per_cpu),
           "|---|---|---|" + "---|" * len(per_cpu)]
    for name, s in runs.items():
        cells = [(c["recipes"].get(name)) for c in per_cpu.values()]
        out.append(f"| `{name}` | {resolve(name)['description']} | {s['params']:,} |"
                   + "".join(f" {pct(r['worst_acc'])}, {r['ratio_to_anchor']:.2f}×"
                             + f" ({r['n_runs']} of {MIN_SEEDS} seeds)" * (r["n_runs"] < MIN_SEEDS)
                             + " *" * bool(r.get("stale_runs")) + " |" if r
                             else " – |" for r in cells))
    if any(r.get("stale_runs") for c in per_cpu.values() for r in c["recipes"].values()):
        out += ["", "\\* timed with the recipe as it was: it resolves differently since "
                "(`stale_recipe` runs in speed.json), not timed again on that CPU model yet."]
    anchor = "; ".join(f"{c}: " + (pct(v["anchor_mean_acc"]) if v["anchor_mean_acc"]
                                   is not None else f"accuracy of {MIN_SEEDS} seeds pending")
                       for c, v in per_cpu.items())
    out += ["", f"Anchor: airbench94's CPU port (`../shared/anchors/airbench94_cpu.py`; {anchor}"
            "); a recipe's time is divided by the anchor's, measured beside it in the same "
            "invocation on the same machine. The shared CIFAR-10 copy went through JPEG "
            "(about 3.5 points below published figures). Every table, its commands and "
            "commits: [docs/results.md](docs/results.md)."]
    rob = RESULTS / "robustness.json"
    rec = json.loads(rob.read_text()) if rob.exists() else {}
    rows = rec.get("rows", [])
    if rows:
        n = f"{rec['images']:,}" if rec.get("images") else "all 10,000"
        out += ["", "Under the 15 CIFAR-10-C-style corruptions × 5 severities (regenerated; "
                f"`cifarlab robustness`), one training run each, scored on {n} test images "
                "(details: docs/results.md):", "",
                "| recipe | training option | clean | mean corruption accuracy | mCA / clean |",
                "|---|---|---|---|---|"]
        out += [f"| `{x['recipe']}` | {x['option']} | {pct(x['clean_acc'])} | "
                f"{pct(x['mca'])} | {x['relative']:.3f} |" for x in rows]
    return f"{start}\n" + "\n".join(out) + f"\n{end}"


def _wrap(command: str, width: int = 100) -> str:
    """A synopsis wrapped between options, never inside `[--opt VALUE]`."""
    lines = [""]
    for token in re.findall(r"\[[^\]]*\]|\S+", command):
        if lines[-1] and len(lines[-1]) + 1 + len(token) > width:
            lines.append("   ")
        lines[-1] += (" " if lines[-1] else "") + token
    return "\n".join(lines)


def _usages(parser) -> list[str]:
    """One synopsis per (sub)command, from its usage as `--help` prints it, without `-h`."""
    out = []
    for action in parser._actions:  # argparse has no public walk of its subcommands
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for sub in action.choices.values():
            nested = _usages(sub)
            if nested:
                out += nested
                continue
            commands: list[str] = []  # a usage may list several commands (`search`)
            for line in sub.format_usage().removeprefix("usage: ").splitlines():
                line = line.strip().replace(" [-h]", "")
                if line.startswith(sub.prog.split()[0] + " ") or not commands:
                    commands.append(line)
                else:
                    commands[-1] += " " + line
            out += [_wrap(c) for c in commands]
    return out


def cli_block() -> str:
    """The README's command-line synopsis, from the parser `cifarlab` itself uses."""
    import os

    os.environ["COLUMNS"] = "100"  # argparse wraps usage lines at the terminal width
    from cifarlab.cli import build_parser

    start, end = MARKS["cli"]
    return f"{start}\n```text\n" + "\n".join(_usages(build_parser())) + f"\n```\n{end}"


def replace_block(text: str, block: str, where: str, marks: tuple[str, str] = (START, END)
                  ) -> str:
    a, b = marks
    text, n = re.subn(re.escape(a) + ".*?" + re.escape(b), lambda m: block, text, flags=re.S)
    if n != 1:
        raise SystemExit(f"{where}: expected one {a} ... {b} section")
    return text


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m benchmarks.update_readme",
                            description=__doc__.split("\n\n")[0].replace("\n", " ")
                            ).parse_args(argv)
    readme = ROOT / "README.md"
    text = readme.read_text()
    text = replace_block(text, summary_block(), readme.name, MARKS["summary"])
    text = replace_block(text, cli_block(), readme.name, MARKS["cli"])
    readme.write_text(text)
    print("README.md: results summary and command-line synopsis updated")
    for path, block in ((ROOT / "docs" / "results.md", readme_results()),
                        (ROOT / "docs" / "seed-history.md", history_block())):
        path.write_text(replace_block(path.read_text(), block, path.name))
        print(f"{path.relative_to(ROOT)}: results section updated")


if __name__ == "__main__":
    main()
