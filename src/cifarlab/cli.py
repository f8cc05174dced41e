"""`cifarlab` command line: argument parsing and printing only; the work is done by api.py.

The `train` flags come from recipe.SETTINGS (each recipe key declared once). Heavy modules
(torch, matplotlib) are imported inside the command that needs them, so `cifarlab --help`
and `cifarlab recipes` start at once.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import CifarlabError
from .recipe import SETTINGS
from .version import __version__

EXIT_USER_ERROR = 2

GETTING_STARTED = """\
cifarlab: design, train and compare CIFAR-10 CNNs on the machine you have.

Start here:
  cifarlab recipes                      the built-in recipes (seed experiments, fast nets)
  cifarlab train --recipe default       train one (a few minutes on a CPU) into runs/default
  cifarlab report runs/default          an HTML page of a run (or several, side by side)

More: cifarlab --help, cifarlab COMMAND --help.
"""


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py (or that folder "
                   "itself); default: $CIFAR10_DATA, then ./data")
    p.add_argument("--download", action="store_true",
                   help="fetch the official archive if the data is not found")


def _recipe_flags(t: argparse.ArgumentParser) -> None:
    """One flag per recipe setting that has one (recipe.SETTINGS), stored under its key."""
    for s in SETTINGS:
        if not s.flag:
            continue
        if s.const is not None:
            t.add_argument(s.flag, action="store_const", const=s.const, dest=s.key,
                           help=s.help)
            continue
        kind = type(s.default)
        t.add_argument(s.flag, dest=s.key, type=kind if kind in (int, float) else str,
                       metavar=s.flag.lstrip("-").upper().replace("-", "_"),
                       help=s.help + (f" ({' | '.join(s.choices)})" if s.choices else ""))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cifarlab", description=__doc__.split(":")[0])
    ap.add_argument("--version", action="version", version=f"cifarlab {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    _add_train_parser(sub)
    _add_eval_predict_parsers(sub)
    _add_export_robustness_parsers(sub)
    _add_data_parser(sub)
    _add_plot_report_parsers(sub)
    _add_model_parsers(sub)

    from .search.cli import add_search_parser  # light: no torch or optuna at import

    add_search_parser(sub)
    return ap


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a recipe into a run directory")
    t.add_argument("--recipe", default="default", help="built-in recipe name or a .toml path")
    t.add_argument("--name", help="run name (default: the recipe name)")
    t.add_argument("--runs-dir", default="runs", help="where run directories go (default runs)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last.pt")
    _add_data_args(t)
    _recipe_flags(t)
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any recipe key, e.g. --set augment.cutout=8 (repeatable)")
    t.add_argument("--max-minutes", type=float, help="stop (resumably) after this much "
                   "training time; --resume continues later")
    t.add_argument("--device", default="auto",
                   help="auto (a CUDA GPU if torch sees one, else the CPU) | cpu | cuda | cuda:N")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar (redirected output never has one: a line per epoch)")
    t.add_argument("--no-plots", action="store_true",
                   help="do not draw plots/ during training (`cifarlab plot RUN` makes them later)")


def _add_eval_predict_parsers(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="test accuracy, per-class accuracy, confusion matrix")
    e.add_argument("path", metavar="RUN_DIR_CHECKPOINT_OR_ONNX")
    e.add_argument("--data-dir")
    e.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time horizontal flip (default: as trained)")

    p = sub.add_parser("predict", help="classify image files")
    p.add_argument("checkpoint", metavar="CHECKPOINT_RUN_DIR_OR_ONNX")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=int, default=1)


def _add_export_robustness_parsers(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser("export", help="write an ONNX file (fp32, optionally int8), verified "
                       "against PyTorch in onnxruntime")
    x.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT")
    x.add_argument("--out", help="the .onnx file or a folder (default RUN_DIR/model.onnx)")
    x.add_argument("--int8", action="store_true", help="also write a statically quantized "
                   "int8 file (calibrated on training images) and compare accuracies")
    x.add_argument("--opset", type=int, help="ONNX opset (default 20; at least 18)")
    x.add_argument("--parity-images", type=int, default=2000,
                   help="test images the parity gate compares on (default 2000)")
    x.add_argument("--data-dir")

    rb = sub.add_parser("robustness", help="accuracy under the 15 CIFAR-10-C-style corruptions "
                        "x 5 severities (regenerated); writes RUN_DIR/robustness.json")
    rb.add_argument("path", metavar="RUN_DIR_CHECKPOINT_OR_ONNX")
    rb.add_argument("--images", type=int, help="a stratified subset of this many test images "
                    "(the same every time; default all 10,000)")
    rb.add_argument("--seed", type=int, default=0, help="the corruptions' random draws (0)")
    rb.add_argument("--data-dir")
    rb.add_argument("--no-progress", action="store_true", help="no progress bar or lines")


def _add_data_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("data", help="data set tools")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    ds = dsub.add_parser("stats", help="per-channel mean/std and class distribution")
    _add_data_args(ds)
    dw = dsub.add_parser("show", help="figures: a grid of samples per class, class distribution")
    _add_data_args(dw)
    dw.add_argument("--out", default="plots", help="folder for the PNGs (default plots)")
    da = dsub.add_parser("augment", help="figure: images beside versions augmented by a recipe")
    da.add_argument("--recipe", default="default", help="built-in recipe name or a .toml path")
    _add_data_args(da)
    da.add_argument("--out", default="plots", help="folder for the PNG (default plots)")


def _add_plot_report_parsers(sub: argparse._SubParsersAction) -> None:
    pl = sub.add_parser("plot", help="(re)draw a run's figures into RUN_DIR/plots")
    pl.add_argument("run_dir", metavar="RUN_DIR")

    rp = sub.add_parser("report", help="compare runs: one self-contained HTML page + Markdown")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    rp.add_argument("--out", default="report", help="output folder (default report)")
    rp.add_argument("--reached", type=float, metavar="ACC",
                    help="test accuracy (fraction, e.g. 0.85): add the first epoch each run "
                    "reached it (train's --target is a stopping rule; this only reads)")


def _add_model_parsers(sub: argparse._SubParsersAction) -> None:
    """recipes, models, summary and check: the commands that train nothing."""
    sub.add_parser("recipes", help="list the built-in recipes")
    sub.add_parser("models", help="list the registered models (params, MACs, RF)")

    sm = sub.add_parser("summary", help="layer table, totals, MACs and receptive-field table")
    sm.add_argument("model", nargs="?", help="a built-in model or FILE.py:NAME (a class or "
                    "function in your own file); default: --recipe's network")
    sm.add_argument("--recipe", help="the network this recipe trains (model + model_args)")
    sm.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                    help="model argument, e.g. --arg dropout=0 (repeatable)")

    ck = sub.add_parser("check", help="check a model against architecture rules")
    ck.add_argument("model", nargs="?", help="a built-in model or FILE.py:NAME (a class or "
                    "function in your own file); default: --recipe's network")
    ck.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE")
    ck.add_argument("--recipe", help="also apply this recipe's [constraints]; without MODEL, "
                    "check the network it trains")
    ck.add_argument("--max-params", type=int)
    ck.add_argument("--max-macs", type=int)
    ck.add_argument("--min-rf", type=int, help="smallest receptive field allowed")
    ck.add_argument("--require", action="append", default=[], metavar="RULE",
                    help="depthwise_separable | dilated | gap | maxpool | avgpool | "
                    "strided_conv (repeatable)")
    ck.add_argument("--forbid", action="append", default=[], metavar="RULE")


def cmd_train(a: argparse.Namespace) -> int:
    from .api import train
    from .recipe import parse_override

    overrides = dict(parse_override(s) for s in a.set)
    overrides |= {s.key: getattr(a, s.key) for s in SETTINGS
                  if s.flag and getattr(a, s.key) is not None}
    if a.max_minutes is not None and a.max_minutes <= 0:
        raise CifarlabError("--max-minutes must be positive")
    m = train(a.recipe, data_dir=a.data_dir, download=a.download, runs_dir=a.runs_dir,
              name=a.name, resume=a.resume, progress=not a.no_progress, plots=not a.no_plots,
              device=a.device,
              max_seconds=None if a.max_minutes is None else a.max_minutes * 60, **overrides)
    if "epochs" not in m:  # a torchrun rank other than 0: rank 0 reports
        return 0
    if not a.resume:
        print(NEXT_STEPS.format(run=m["run_dir"]), end="")
    print(final_line(m))  # the last line: the result and the time it took
    return 0


NEXT_STEPS = """\
next: cifarlab report {run} --out report   (a page with its curves and per-class bars)
      cifarlab recipes                      (the seed experiments: seed001 is seed 001 as written)
      cifarlab search FILE --max-minutes 60 (find the best network a rule set allows)
"""


def final_line(m: dict) -> str:
    """The last line of `cifarlab train`: the final figures, each named by its split."""
    parts = []
    if m.get("val_acc") is not None:
        parts.append(f"validation accuracy {m['val_acc']:.4f}")
    if m.get("test_acc") is not None:
        parts.append(f"final test accuracy {m['test_acc']:.4f}")
    if m["selection"] == "validation":
        parts.append(f"best validation {m['best_val_acc']:.4f} at epoch {m['best_epoch']}")
    elif m["selection"] == "test" and m["best_epoch"] != m["epochs"]:
        parts.append(f"best test {m['best_test_acc']:.4f} at epoch {m['best_epoch']}, "
                     "chosen on the test set")
    line = (", ".join(parts or ["no held-out accuracy read (train.test_eval = never)"])
            + f"; {m['epochs']} epochs in {m['train_seconds']:.0f}s, "
            f"{m['images_per_second']:.0f} img/s -> {m['run_dir']}")
    if m["stopped_by"] == "time":
        line = (f"stopped after {m['epochs']}/{m['epochs_planned']} epochs (time budget); "
                f"continue with: cifarlab train --resume {m['run_dir']}\n" + line)
    return line


def print_class_table(classes, per_class, confusion) -> None:
    w = max(len(c) for c in classes)
    print("per-class accuracy:")
    for c, acc in zip(classes, per_class, strict=True):
        print(f"  {c:<{w}}  {acc:.4f}")
    print("confusion matrix (rows: true, columns: predicted):")
    print(" " * (w + 2) + " ".join(f"{c[:5]:>5}" for c in classes))
    for c, row in zip(classes, confusion, strict=True):
        print(f"  {c:<{w}}" + " ".join(f"{v:5d}" for v in row))


def cmd_eval(a: argparse.Namespace) -> int:
    from .api import evaluate

    r = evaluate(a.path, data_dir=a.data_dir, tta=a.tta)
    print(f"test accuracy {r['acc']:.4f}  (loss {r['loss']:.4f})")
    print_class_table(r["classes"], r["per_class_acc"], r["confusion"])
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from .api import predict

    if a.top_k < 1:
        raise CifarlabError("--top-k must be at least 1")
    failed = 0
    for r in predict(a.checkpoint, a.images, top_k=a.top_k):
        if "error" in r:
            failed += 1
            print(f"error: {r['error']}", file=sys.stderr)
            continue
        print(r["path"] + ": " + ", ".join(f"{c} {p:.4f}" for c, p in r["top"]))
    return 1 if failed else 0


def cmd_export(a: argparse.Namespace) -> int:
    from .api import export

    export(a.path, a.out, int8=a.int8, opset=a.opset, data_dir=a.data_dir,
           parity_images=a.parity_images)
    return 0


def cmd_robustness(a: argparse.Namespace) -> int:
    from .api import robustness

    r = robustness(a.path, data_dir=a.data_dir, images=a.images, seed=a.seed,
                   progress=not a.no_progress)
    print(f"clean {r['clean_acc']:.4f}  mCA {r['mca']:.4f}  relative {r['relative']:.3f}  "
          f"({r['images']:,} test images, seed {r['seed']})")
    print("by severity   " + "  ".join(f"{s}: {v:.4f}" for s, v in
                                       enumerate(r["by_severity"], start=1)))
    w = max(len(k) for k in r["by_corruption"])
    for k, accs in r["by_corruption"].items():
        print(f"  {k:<{w}}  " + " ".join(f"{v:.4f}" for v in accs))
    worst = r["worst_corruption"]
    print(f"worst corruption: {worst} (mean {sum(r['by_corruption'][worst]) / 5:.4f})")
    if r["json"]:
        print(f"-> {r['json']}")
    return 0


def cmd_data(a: argparse.Namespace) -> int:
    from . import api

    if a.data_command == "show":
        for path in api.data_figures(a.out, data_dir=a.data_dir, download=a.download):
            print(path)
        return 0
    if a.data_command == "augment":
        print(api.augment_figure(a.recipe, a.out, data_dir=a.data_dir, download=a.download))
        return 0
    s = api.data_stats(a.data_dir, download=a.download)
    print(f"data: {s['root']}")
    print(f"train images: {s['train_images']}, test images: {s['test_images']}")
    print("mean " + " ".join(f"{m:.4f}" for m in s["mean"]))
    print("std  " + " ".join(f"{v:.4f}" for v in s["std"]))
    w = max(len(c) for c in s["classes"])
    print(f"{'class':<{w + 10}} {'train':>6} {'test':>6}")
    for i, (c, tr, te) in enumerate(zip(s["classes"], s["train_counts"], s["test_counts"],
                                        strict=True)):
        print(f"Class {i} ({c:<{w}}) {tr:6d} {te:6d}")
    return 0


def cmd_plot(a: argparse.Namespace) -> int:
    from .api import plot

    for p in plot(a.run_dir):
        print(p)
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from .api import report

    index = report(a.run_dirs, a.out, reached=a.reached)
    print(index)
    print(index.parent / "report.md")
    return 0


def cmd_recipes(a: argparse.Namespace) -> int:
    from .recipe import list_recipes

    for name, desc in list_recipes():
        print(f"{name:<20} {desc}")
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from .api import model_table

    print(f"{'model':<16} {'params':>10} {'MACs':>13} {'RF':>4}  provenance")
    for m in model_table():
        print(f"{m['name']:<16} {m['params']:>10,} {m['macs']:>13,} "
              f"{m['receptive_field']:>4}  {m['provenance']}")
    return 0


def _model_args(strings: list[str]) -> dict:
    from .recipe import parse_override

    return dict(parse_override(s) for s in strings)


def _same_name_note(command: str, model: str | None, args: list[str] | None) -> None:
    """A built-in model and a built-in recipe can share a name and not the network (the
    fast-50k and fast-seed001 recipes train newer networks than the models so named): say
    which one a bare name means, on stderr."""
    from .recipe import recipes_dir, resolve

    if not model or args or not (recipes_dir() / f"{model}.toml").is_file():
        return
    cfg = resolve(model)
    if cfg["model"] != model or cfg["model_args"]:
        print(f"note: '{model}' is the built-in model of that name; the {model} recipe trains "
              f"'{cfg['model']}'" + (" with other arguments" if cfg["model"] == model else "")
              + f" (cifarlab {command} --recipe {model})", file=sys.stderr)


def cmd_summary(a: argparse.Namespace) -> int:
    from .api import summary

    print(summary(a.model, model_args=_model_args(a.arg), recipe=a.recipe))
    _same_name_note("summary", a.model, a.arg)
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    from .api import check

    f = check(a.model, model_args=_model_args(a.arg), recipe=a.recipe,
              max_params=a.max_params, max_macs=a.max_macs, min_receptive_field=a.min_rf,
              require=a.require, forbid=a.forbid)
    _same_name_note("check", a.model, a.arg)  # (after check: the name is a model)
    print(f"{a.model or a.recipe}: {f['params']:,} params, {f['macs']:,} MACs, "
          f"receptive field {f['receptive_field']}")
    for msg in f["broken"]:
        print(f"FAIL {msg}")
    if f["ok"]:
        print("OK: all constraints hold")
    return 0 if f["ok"] else 1


def cmd_search(a: argparse.Namespace) -> int:
    from .search.cli import run_search_command

    return run_search_command(a)


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "data": cmd_data,
            "recipes": cmd_recipes, "models": cmd_models, "summary": cmd_summary,
            "check": cmd_check, "plot": cmd_plot, "report": cmd_report, "export": cmd_export,
            "search": cmd_search, "robustness": cmd_robustness}


def main(argv: list[str] | None = None) -> int:
    code = run_command(argv)
    par = sys.modules.get("cifarlab.parallel")  # imported only by commands that train
    if par is not None:
        par.exit_torchrun_rank(code)  # a torchrun rank ends here, without gloo's teardown
    return code


def run_command(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:  # `cifarlab` alone: how to begin
        print(GETTING_STARTED, end="")
        return 0
    try:
        return COMMANDS[args.command](args)
    except CifarlabError as e:
        print(f"cifarlab: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        hint = ""
        if args.command == "train":
            hint = "; continue with: cifarlab train --resume RUN_DIR (last.pt is intact)"
        print(f"cifarlab: interrupted{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cifarlab models | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
