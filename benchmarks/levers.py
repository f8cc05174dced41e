"""Speed levers (issue 17): one recipe with and without each lever, back to back, one invocation.

    .venv/bin/python -m benchmarks.levers fast-50k --data-dir ../shared/data \\
        --lever "muon-10ep:optim.name=muon,optim.muon_lr=0.1,train.epochs=10"
    -> benchmarks/results/levers-fast-50k.json (`--out` elsewhere)

Every variant trains the recipe on 45,000 training images and is scored on the 5,000 held out
(`data.val_split`, `train.test_eval = never`): a lever is kept or dropped on validation
accuracy, and the test set is not read; each variant records its seconds per epoch too
(`epoch_seconds`: a compiled graph's steady pace apart from its compile time). Each variant
is a fresh process (so an environment setting such as `CIFARLAB_MALLOC` or a compiled graph
cannot leak into the next:
`python -m benchmarks.levers --child SPEC` runs `train_variant`), timed from just before
`cifarlab.train` to its return with the data already in memory; the baseline
("recipe", no change) runs first and every variant's seconds are also a ratio to it. The
built-in levers are in `LEVERS`; `--lever NAME:KEY=VALUE,...` adds one (or replaces one of
that name), `--only NAME ...` picks some. Run it on an otherwise idle machine: the seconds of
two jobs sharing the cores mean nothing. `--resume` continues an interrupted invocation in
`--out` when it is on the same machine and boot (`/proc/sys/kernel/random/boot_id`);
otherwise it starts again, baseline included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cifarlab.data import find_data
from cifarlab.errors import CifarlabError
from cifarlab.recipe import resolve
from cifarlab.rundir import RunDir

from .common import (
    RESULTS,
    add_data_dir,
    arg_parser,
    boot_id,
    child_result,
    module_command,
    module_env,
    parse_sets,
    provenance,
    timed_train,
    write_json,
)

# name -> (recipe overrides, environment); "recipe" is the baseline every ratio is taken to.
# Recipe-specific levers (epochs, learning rates) are given with --lever.
LEVERS: dict[str, tuple[dict, dict]] = {
    "recipe": ({}, {}),
    "compile": ({"train.compile": True}, {}),
    "glibc-malloc": ({}, {"CIFARLAB_MALLOC": "system"}),  # cifarlab.memory off
    "unfused-pools": ({}, {"CIFARLAB_FUSE_POOLS": "0"}),  # layers.fuse_conv_avgpool off
    "muon": ({"optim.name": "muon", "optim.muon_lr": 0.1}, {}),
}


def parse_lever(text: str) -> tuple[str, dict]:
    """NAME:KEY=VALUE,KEY=VALUE -> (name, overrides)."""
    name, sep, body = text.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"--lever {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
    items = [s.strip() for s in body.split(",") if s.strip()]
    return name.strip(), parse_sets(items, f"--lever {name.strip()}")


def train_variant(spec: dict) -> None:
    """The child process (`--child SPEC`): load the data, train `spec["recipe"]` with
    `spec["overrides"]` into `spec["runs_dir"]` / `spec["name"]`, timed, and print the metrics
    with `seconds` as one JSON line."""
    import cifarlab

    data = cifarlab.load_data(spec["data_dir"])
    m, seconds = timed_train(spec["recipe"], data, spec["runs_dir"], spec["name"],
                             spec["overrides"])
    print(json.dumps({**m, "seconds": seconds}, default=str))


def run_variant(recipe: str, name: str, over: dict, env: dict, data_dir: str,
                runs_dir: Path, val_split: int) -> dict:
    """One variant in a fresh process (`train_variant`), with its environment settings."""
    over = {"data.val_split": val_split, "train.test_eval": "never", **over}
    spec = {"data_dir": data_dir, "recipe": recipe, "runs_dir": str(runs_dir),
            "name": f"{Path(recipe).stem}-{name}", "overrides": over}
    child_env = {k: v for k, v in module_env().items() if k != "CIFARLAB_MALLOC"} | env
    out = subprocess.run(module_command("benchmarks.levers", "--child", json.dumps(spec)),
                         env=child_env, capture_output=True, text=True)
    m = child_result(out, f"{recipe} / {name}")
    rows, _ = RunDir(Path(m["run_dir"])).read_history()
    return {"lever": name, "overrides": over, "env": env, "val_acc": m["val_acc"],
            "seconds": m["seconds"], "train_seconds": m["train_seconds"],
            "images_per_second": m["images_per_second"], "epochs": m["epochs"],
            "epoch_seconds": [r["seconds"] for r in rows],
            "run_dir": m["run_dir"], **provenance()}


def parse_args(argv: list[str] | None):
    ap = arg_parser("levers", __doc__)
    ap.add_argument("recipe", help="e.g. fast-50k")
    add_data_dir(ap)
    ap.add_argument("--runs-dir", default="runs/bench-levers")
    ap.add_argument("--lever", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                    help="a lever of this recipe (repeatable)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="these levers (and the baseline)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override for every variant, baseline included")
    ap.add_argument("--val-split", type=int, default=5000,
                    help="training images held out for validation (default 5000)")
    ap.add_argument("--out", type=Path, help="default benchmarks/results/levers-RECIPE.json")
    ap.add_argument("--resume", action="store_true",
                    help="keep the variants already measured in --out (same machine and boot)")
    a = ap.parse_args(argv)
    a.out = a.out or RESULTS / f"levers-{Path(a.recipe).stem}.json"
    return a


def pick_levers(a) -> dict[str, tuple[dict, dict]]:
    """The built-in levers with --lever's added, cut to --only's (and the baseline)."""
    levers = dict(LEVERS)
    for text in a.lever:
        name, over = parse_lever(text)
        levers[name] = (over, {})
    if a.only:
        unknown = [n for n in a.only if n not in levers]
        if unknown:
            raise SystemExit(f"--only: unknown lever(s) {', '.join(unknown)} "
                             f"(known: {', '.join(levers)})")
        levers = {n: v for n, v in levers.items() if n == "recipe" or n in a.only}
    return levers


def start_state(a, common: dict, prov: dict) -> dict:
    """The results file's state: the one in --out when --resume continues it there (same
    recipe as resolved now, settings, machine and boot), else a new one."""
    try:  # the recipe as resolved now: a resumed baseline must have trained the same one
        config = json.loads(json.dumps(resolve(a.recipe, common), default=str))
    except CifarlabError as e:
        raise SystemExit(str(e)) from None
    old = json.loads(a.out.read_text()) if a.resume and a.out.exists() else {}
    same = (old.get("recipe") == a.recipe and old.get("boot_id") == boot_id()
            and old.get("machine") == prov["machine"] and old.get("overrides") == common
            and old.get("val_split") == a.val_split
            and old.get("recipe_config", config) == config)  # (files before it: trusted)
    if a.resume and old and not same:
        print("--resume: recorded for another recipe, recipe version, settings, machine or "
              "boot; measuring afresh", flush=True)
    state = old if same else {**prov, "recipe": a.recipe, "boot_id": boot_id(),
                              "val_split": a.val_split, "overrides": common,
                              "load_average_at_start":
                              os.getloadavg()[0], "variants": []}
    state.setdefault("recipe_config", config)  # new files, and files written before it
    state.setdefault("legs", []).append(prov)
    return state


def save(path: Path, state: dict) -> None:
    """Every variant's seconds and validation accuracy against the baseline's; write."""
    base = next((v for v in state["variants"] if v["lever"] == "recipe"), None)
    for v in state["variants"]:
        if base is not None:
            v["seconds_ratio"] = v["seconds"] / base["seconds"]
            v["val_acc_delta"] = v["val_acc"] - base["val_acc"]
    write_json(path, state)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return train_variant(json.loads(argv[1]))
    a = parse_args(argv)
    common = parse_sets(a.set)
    levers = pick_levers(a)
    try:
        data_dir = str(find_data(a.data_dir))
    except CifarlabError as e:
        raise SystemExit(str(e)) from None
    state = start_state(a, common, provenance())
    done = {v["lever"] for v in state["variants"]}
    runs_dir = Path(a.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    save(a.out, state)  # this leg is recorded even if it measures nothing new
    for name, (over, env) in levers.items():
        if name in done:
            print(f"{name}: recorded already", flush=True)
            continue
        print(f"{a.recipe} / {name} ...", flush=True)
        v = run_variant(a.recipe, name, {**common, **over}, env, data_dir, runs_dir,
                        a.val_split)
        state["variants"].append(v)
        save(a.out, state)
        print(f"{a.recipe} / {name}: val acc {v['val_acc']:.4f}, {v['seconds']:.1f} s "
              f"(x{v.get('seconds_ratio', 1):.2f} of the recipe), {v['epochs']} epochs",
              flush=True)
    print(a.out)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit("benchmarks.levers: stopped; run it again with --resume") from None
