"""Where a recipe's training step spends its time on this CPU, and which oneDNN kernels run
(issue 32: profile the small networks' steps, on every CPU model this project runs on).

    .venv/bin/python -m benchmarks.kernels fast-50k fast-seed001 --data-dir ../shared/data
        -> benchmarks/results/kernels.json (one entry per CPU model, per recipe)

Each recipe is measured in a fresh child process the way one of its `train.processes`
single-threaded workers trains: one thread, batch = batch_size / processes, the recipe's
precision and memory format, 32x32 images (progressive resizing off: the full-size epochs are the
expensive ones), through the real `cifarlab.train` on `--steps` batches of the training set.
The child runs three fits of the same size: an untimed warm-up (oneDNN primitive creation / JIT
for these shapes), a plain one whose `images_per_second` is the step speed without instruments,
and one under `torch.profiler` with oneDNN's verbose log on (ONEDNN_VERBOSE level 1: every
primitive execution with its implementation and milliseconds). The gradient all-reduce between
workers is not in it (one process); evaluation is one batch of 100 test images without TTA.

Recorded per recipe: `ops` (torch operators by self CPU time, share of the profiled fit),
`onednn` (oneDNN executions grouped by primitive, implementation, direction and source data
type -- bf16, or f32 where a conv runs in fp32 --: milliseconds,
calls, share of the profiled fit's wall time), `isa` (the shares of the fit spent in AMX,
AVX-512 and other oneDNN kernels), and `tiles`: every convolution of the network, statically,
with its share of the network's MACs and how well it fills AMX's bf16 tiles (a dense conv
multiplies in blocks of 32 input x 16 output channels; depthwise convolutions do not run on AMX
at all) -- the part of this analysis that does not need an AMX CPU to compute. The profiler
adds a few microseconds per operator, so shares of small operators are somewhat overstated;
`images_per_second` comes from the uninstrumented fit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from cifarlab.provenance import cpu

from .common import (
    RESULTS,
    add_data_dir,
    arg_parser,
    child_result,
    module_command,
    module_env,
    provenance,
    write_json,
)

DEFAULT_RECIPES = ("fast-50k", "fast-seed001")
AMX_K, AMX_N = 32, 16   # bf16 AMX tile block: 32 input channels (K) x 16 output channels (N)
TOP_OPS = 15


# ----------------------------------------------------------------------------- static: tiles

def tile_fill(cin: int, cout: int, groups: int) -> float:
    """The fraction of AMX bf16 tile work a dense conv's channels use (1.0 when the input
    channels are a multiple of 32 and the output channels of 16); 0.0 for a grouped or
    depthwise conv, which oneDNN does not run on AMX."""
    if groups != 1:
        return 0.0
    return cin / (math.ceil(cin / AMX_K) * AMX_K) * cout / (math.ceil(cout / AMX_N) * AMX_N)


def conv_tiles(model, fp32: frozenset[str] | set[str] = frozenset()) -> dict:
    """Every conv of `model` (one 32x32 image): channels, groups, share of the MACs, tile fill;
    and the MAC-weighted fill of the whole network (`amx_fill`). `fp32`: the qualified names
    of the convs that train in fp32 on this CPU (depthwise ones and any whose bf16 weight
    gradient this CPU gets wrong: layers.py), which use no bf16 tiles."""
    from cifarlab.analysis import trace

    events = trace(model).events
    convs = [e for e in events if e.kind == "conv"]
    total = sum(e.macs for e in events) or 1
    rows = [{"layer": e.ref, "in": e.in_channels, "out": e.out_channels, "groups": e.groups,
             "kernel": e.kernel, "stride": e.stride, "mac_share": e.macs / total,
             "fp32": e.module in fp32,
             "tile_fill": 0.0 if e.module in fp32 else
             tile_fill(e.in_channels, e.out_channels, e.groups)} for e in convs]
    return {"convs": rows,
            "amx_fill": sum(r["mac_share"] * r["tile_fill"] for r in rows),
            "depthwise_mac_share": sum(r["mac_share"] for r in rows if r["groups"] != 1),
            "fp32_mac_share": sum(r["mac_share"] for r in rows if r["fp32"])}


# ----------------------------------------------------------------------------- oneDNN log

def parse_verbose(lines) -> list[dict]:
    """oneDNN verbose `exec` lines -> [{primitive, impl, prop, dtype, problem, ms}] (dtype: the
    source's data type) (other lines, and
    creation lines, skipped). Format (v3, comma-separated): marker, [v1,] [timestamp,]
    [primitive,] exec, engine, primitive, implementation, propagation, memory descriptors,
    attributes, auxiliary, problem, milliseconds."""
    out = []
    for line in lines:
        f = line.rstrip("\n").split(",")
        if not f[0].endswith("_verbose") or "exec" not in f[:6]:
            continue
        i = f.index("exec")
        try:
            ms = float(f[-1])
        except ValueError:
            continue
        src = f[i + 5].split("src:", 1)[-1] if "src:" in f[i + 5] else ""
        out.append({"primitive": f[i + 2], "impl": f[i + 3], "prop": f[i + 4],
                    "dtype": src.split(":", 1)[0] or "?", "problem": f[-2], "ms": ms})
    return out


def isa_of(impl: str) -> str:
    """amx | avx512 | other, from an implementation name such as brg_conv_fwd:avx512_core_amx."""
    if "amx" in impl:
        return "amx"
    return "avx512" if "avx512" in impl else "other"


def summarize_onednn(execs: list[dict], wall_ms: float) -> tuple[list[dict], dict]:
    """Grouped by (primitive, implementation, propagation, source data type), largest first;
    and the share of `wall_ms` spent in each ISA's kernels."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for e in execs:
        groups[(e["primitive"], e["impl"], e["prop"], e["dtype"])].append(e["ms"])
    rows = sorted(({"primitive": p, "impl": i, "prop": d, "dtype": t, "ms": sum(v),
                    "calls": len(v), "share": sum(v) / wall_ms}
                   for (p, i, d, t), v in groups.items()),
                  key=lambda r: -r["ms"])
    isa: dict[str, float] = defaultdict(float)
    for r in rows:
        isa[isa_of(r["impl"])] += r["share"]
    return rows, {k: isa.get(k, 0.0) for k in ("amx", "avx512", "other")}


# ----------------------------------------------------------------------------- child

def child(recipe: str, steps: int, data_dir: str | None, verbose_log: str) -> dict:
    """In this (fresh) process: warm-up, plain and profiled fits of `recipe` as one worker."""
    import ctypes
    import time

    import torch

    import cifarlab
    from cifarlab.api import network
    from cifarlab.layers import Fp32Conv2d, for_cpu_training
    from cifarlab.recipe import resolve

    torch.set_num_threads(1)
    base = resolve(recipe)
    t = base["train"]
    batch = t["batch_size"] // t["processes"]
    cfg = resolve(recipe, {"train.processes": 1, "train.batch_size": batch, "train.epochs": 1,
                           "train.low_res": 0, "train.low_res_epochs": 0, "train.tta": False,
                           "train.eval_every": 0, "data.train_subset": batch * steps,
                           "data.test_subset": 100})
    data = cifarlab.load_data(data_dir)

    def fit() -> tuple[dict, float]:
        with tempfile.TemporaryDirectory(prefix="cifarlab-kernels-") as d:
            t0 = time.perf_counter()
            m = cifarlab.train(cfg, data=data, runs_dir=d, progress=False, plots=False,
                               log=lambda s: None)
            return m, (time.perf_counter() - t0) * 1000

    fit()                                   # warm-up
    plain, _ = fit()
    fd = os.open(verbose_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    saved = os.dup(1)
    sys.stdout.flush()
    os.dup2(fd, 1)                          # oneDNN prints its log on C stdout
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof, \
                torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            _, wall_ms = fit()
    finally:
        ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(fd)
    ops = sorted(((a.key, a.self_cpu_time_total / 1000, a.count) for a in prof.key_averages()),
                 key=lambda r: -r[1])
    model = network(recipe=recipe)  # which of its convs the engine trained in fp32 here:
    bf16 = t["precision"] == "bf16"  # depthwise and probed-wrong ones
    for_cpu_training(model, t["fast_dropout"], bf16_sizes=(32,) if bf16 else ())
    fp32 = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and (
        not bf16 or isinstance(m, Fp32Conv2d))}
    return {"batch_per_worker": batch, "steps": steps,
            "precision": t["precision"], "channels_last": t["channels_last"],
            "images_per_second": plain["images_per_second"], "profiled_wall_ms": wall_ms,
            "ops": [{"op": k, "self_ms": ms, "calls": n, "share": ms / wall_ms}
                    for k, ms, n in ops[:TOP_OPS]],
            "tiles": conv_tiles(model, fp32)}


def measure(recipe: str, steps: int, data_dir: str | None) -> dict:
    """`child` in a fresh process (one thread from the start), plus its oneDNN log summarised."""
    with tempfile.TemporaryDirectory(prefix="cifarlab-kernels-") as d:
        log = Path(d) / "onednn.log"
        args = ["--child", recipe, "--steps", str(steps), "--verbose-log", str(log)]
        if data_dir:
            args += ["--data-dir", data_dir]
        env = module_env({**os.environ, "OMP_NUM_THREADS": "1"})
        out = subprocess.run(module_command("benchmarks.kernels", *args), env=env,
                             capture_output=True, text=True)
        r = child_result(out, recipe)
        with open(log, errors="replace") as f:
            execs = parse_verbose(f)
    r["onednn"], r["isa"] = summarize_onednn(execs, r["profiled_wall_ms"])
    r["onednn_share"] = sum(r["isa"].values())
    return r


# ----------------------------------------------------------------------------- report

def report(entry: dict) -> str:
    lines = []
    for name, r in entry["recipes"].items():
        isa = ", ".join(f"{k} {v:.0%}" for k, v in r["isa"].items())
        lines += [f"{name}: {r['images_per_second']:.0f} img/s per single-threaded worker "
                  f"(batch {r['batch_per_worker']}); oneDNN {r['onednn_share']:.0%} of the "
                  f"step ({isa}); AMX tile fill of the MACs {r['tiles']['amx_fill']:.0%}, "
                  f"depthwise {r['tiles']['depthwise_mac_share']:.0%} of the MACs"]
        lines += [f"    {o['share']:6.1%}  {o['op']}" for o in r["ops"][:8]]
        lines += [f"    {k['share']:6.1%}  oneDNN {k['primitive']} {k['dtype']} {k['prop']} "
                  f"{k['impl']}"
                  for k in r["onednn"][:6]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = arg_parser("kernels", __doc__)
    ap.add_argument("recipes", nargs="*", default=list(DEFAULT_RECIPES))
    ap.add_argument("--steps", type=int, default=30, help="training steps per fit (default 30)")
    ap.add_argument("--out", default=str(RESULTS / "kernels.json"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--verbose-log", default=None, help=argparse.SUPPRESS)
    add_data_dir(ap)
    a = ap.parse_args(argv)
    if a.steps < 1:
        ap.error("--steps must be >= 1")
    if a.child:
        print(json.dumps(child(a.child, a.steps, a.data_dir, a.verbose_log)))
        return
    prov = {**provenance(), "cpu": cpu()}
    stamp = {k: prov[k] for k in STAMP}
    entry = {**prov, "recipes": {name: {**measure(name, a.steps, a.data_dir), **stamp}
                                 for name in a.recipes}}
    print(report(entry))
    path = Path(a.out)
    old = json.loads(path.read_text()) if path.exists() else {}
    by_cpu = old.get("by_cpu", {})
    by_cpu[prov["cpu"]["model"]] = merged(by_cpu.get(prov["cpu"]["model"]), entry)
    print(write_json(path, {"by_cpu": by_cpu}))


STAMP = ("commit", "date", "command")  # each recipe's own measurement


def merged(old: dict | None, entry: dict) -> dict:
    """A CPU model's entry after this invocation: its recipes replace those of the same name;
    the others stay, each with the commit, date and command it was measured with."""
    if not old:
        return entry
    kept = {name: {**{k: old[k] for k in STAMP if k in old}, **r}
            for name, r in old["recipes"].items() if name not in entry["recipes"]}
    return {**entry, "recipes": {**kept, **entry["recipes"]}}


if __name__ == "__main__":
    main()
