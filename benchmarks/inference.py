"""Inference per backend (issue 18): images/s, test accuracy and file size of each network.

Backends torch fp32 / bf16 and onnxruntime fp32 / int8; networks default, fast-50k, fast-top.

    .venv/bin/python -m benchmarks.inference --run default=runs/default \\
        --run fast-50k=runs/fast-50k --run fast-top=runs/fast-top
    -> benchmarks/results/inference.json

Rows, one per (model, backend, batch size): images/s at batch 1 and batch 256, test accuracy
on the whole test set (10,000 images) and the bytes of the weights as deployed. All backends do
the same thing: uint8 images in, one forward pass, float32 logits out (conversion and
normalisation included in the timing); no test-time augmentation anywhere (the ONNX graph has
none, so the torch rows leave it out too and their accuracy is the run's without TTA).

- torch-fp32 / torch-bf16: `cifarlab.inference.predict_logits` in eval mode, fp32 or bf16
  autocast, with the run's memory format (channels_last for these recipes); file_bytes is
  `torch.save(model.state_dict())` (fp32 weights: bf16 autocast keeps them fp32). The run's
  checkpoint is bigger (optimizer state, history).
- onnxruntime-fp32 / -int8: the files `cifarlab.export.export_onnx(..., int8=True)` writes
  (both pass its parity gates), in sessions from `cifarlab.export.make_session`. An int8
  file that fails export_onnx's int8 gate is not written: its rows then hold `error` and nulls.

Threads: torch's thread count (`--threads`) for both torch and onnxruntime (no spinning).
On a busy machine two torch threads can wait on each other at every layer: batch 1 then
drops by orders of magnitude (seen on the shared 2-core CPU: 3.7 vs 684 images/s with one).
Timing: `--warmup` untimed calls, then `--rounds` rounds of `--iters-1` single-image calls or
`--iters-256` batches of 256 (the same test images each round); images/s = images / wall
seconds of the timed calls of the best round.

A model without `--run MODEL=RUN_DIR` is trained first, briefly: its recipe with `--epochs`
epochs (default 3) instead of the recipe's, so its accuracy is far below the recipe's; the JSON
states per model whether it was trained here and for how many epochs. `--quick` (a check that
the script works, not a measurement): 1 epoch on 2,000 training images, 1,000 test images,
one round of 3 timed calls, 200 parity images; write it elsewhere with `--out`.
Run it on an otherwise idle machine: other work on the same cores lowers every images/s.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from pathlib import Path

import torch

import cifarlab
from cifarlab.api import load_model
from cifarlab.data import Split
from cifarlab.errors import CifarlabError
from cifarlab.export import export_onnx, open_onnx, run_onnx
from cifarlab.inference import predict_logits, score_logits

from .common import RESULTS, add_data_dir, arg_parser, provenance, write_json

MODELS = ("default", "fast-50k", "fast-top")
BATCHES = (1, 256)
BACKENDS = ("torch-fp32", "torch-bf16", "onnxruntime-fp32", "onnxruntime-int8")


def parse_runs(items: list[str]) -> dict[str, str]:
    runs = {}
    for item in items:
        model, sep, path = item.partition("=")
        if not sep or not model or not path:
            raise SystemExit(f"--run {item!r}: expected MODEL=RUN_DIR")
        runs[model] = path
    return runs


def images_per_second(infer, images: torch.Tensor, batch: int, warmup: int, iters: int,
                      rounds: int) -> float:
    """Best of `rounds` rounds of `iters` timed calls (after `warmup` untimed ones)."""
    n = len(images)
    starts = [(i * batch) % n for i in range(warmup + iters)]
    batches = [images[s:s + batch] if s + batch <= n else images[:batch] for s in starts]
    for b in batches[:warmup]:
        infer(b)
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for b in batches[warmup:]:
            infer(b)
        best = max(best, batch * iters / (time.perf_counter() - t0))
    return best


def weight_bytes(model: torch.nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def backends(run_dir: str, onnx_dir: Path, data, parity_images: int) -> dict:
    """name -> (infer(uint8 batch) -> logits, loss name, file_bytes), or name -> error text
    (an int8 file that failed export_onnx's gate is not written, so it cannot be timed)."""
    model, meta = load_model(run_dir)
    out: dict = {}
    for precision in ("fp32", "bf16"):
        def infer(x, precision=precision):
            return predict_logits(model, x, meta["mean"], meta["std"], batch_size=256,
                                  precision=precision, channels_last=meta["channels_last"],
                                  tta=False)
        out[f"torch-{precision}"] = (infer, meta["loss"], weight_bytes(model))
    files = {"onnxruntime-fp32": onnx_dir / "model.onnx",
             "onnxruntime-int8": onnx_dir / "model-int8.onnx"}
    try:
        export_onnx(run_dir, files["onnxruntime-fp32"], int8=True, data=data,
                    parity_images=parity_images, log=lambda s: print("  " + s, flush=True))
    except CifarlabError as e:
        if not files["onnxruntime-fp32"].is_file():  # the fp32 file is written first
            raise
        print(f"  warning: {e}", flush=True)
    for name, path in files.items():
        if not path.is_file():
            out[name] = "not written: the int8 gate of export_onnx failed"
            continue
        sess, md = open_onnx(path)
        loss = "nll" if md["output"] == "log_probs" else "ce"
        out[name] = ((lambda x, sess=sess, md=md: run_onnx(sess, md, x, batch_size=256)),
                     loss, path.stat().st_size)
    return out


def parse_args(argv: list[str] | None = None):
    ap = arg_parser("inference", __doc__)
    ap.add_argument("--run", action="append", default=[], metavar="MODEL=RUN_DIR",
                    help="a trained run directory for MODEL (repeatable)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), help="recipe names")
    ap.add_argument("--epochs", type=int, default=3,
                    help="epochs for a model trained here (one without --run)")
    add_data_dir(ap)
    ap.add_argument("--runs-dir", default=None, help="keep runs trained here (default: temp)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters-1", type=int, default=500, help="timed batch-1 calls")
    ap.add_argument("--iters-256", type=int, default=20, help="timed batch-256 calls")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds; the best is kept")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for torch and onnxruntime alike (default: torch's)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny trainings and few timed calls: checks the script works")
    ap.add_argument("--out", default=None, help="write here instead of results/inference.json")
    a = ap.parse_args(argv)
    a.runs = parse_runs(a.run)
    unknown = sorted(set(a.runs) - set(a.models))
    if unknown:
        raise SystemExit(f"--run for {', '.join(unknown)}: not in --models")
    a.train_subset, a.test_subset, a.parity = 0, 0, 2000
    if a.quick:
        a.epochs, a.train_subset, a.test_subset, a.parity = 1, 2000, 1000, 200
        a.warmup, a.iters_1, a.iters_256, a.rounds = 1, 3, 3, 1
    return a


def trained_run(name: str, a, data) -> dict:
    """The run of model `name`: the one given with --run, or one trained here (briefly)."""
    if name in a.runs:
        return {"run_dir": a.runs[name], "trained_here": False}
    print(f"{name}: no --run given; training it for {a.epochs} epoch(s)", flush=True)
    overrides = ({"data.train_subset": a.train_subset, "train.processes": 1}
                 if a.quick else {})
    a.runs_dir = a.runs_dir or tempfile.mkdtemp(prefix="cifarlab-inference-")
    m = cifarlab.train(name, data=data, runs_dir=a.runs_dir, name=f"{name}-inference",
                       epochs=a.epochs, progress=False, plots=False,
                       log=lambda s: None, **overrides)
    return {"run_dir": m["run_dir"], "trained_here": True, "epochs": a.epochs,
            "train_images": m["train_images"], "test_acc_with_recipe_tta": m["test_acc"]}


def model_rows(name: str, run_dir: str, onnx_dir: Path, data, a) -> list[dict]:
    """One row per backend and batch size of one network: images/s, accuracy, file size."""
    rows = []
    for backend, how in backends(run_dir, onnx_dir, data, a.parity).items():
        if isinstance(how, str):
            rows += [{"model": name, "backend": backend, "batch_size": batch,
                      "images_per_second": None, "test_acc": None, "file_bytes": None,
                      "error": how} for batch in BATCHES]
            print(f"  {backend:<17} {how}", flush=True)
            continue
        infer, loss, size = how
        acc = score_logits(infer(data.test.images), data.test.labels, loss)["acc"]
        for batch in BATCHES:
            iters = a.iters_1 if batch == 1 else a.iters_256
            ips = images_per_second(infer, data.test.images, batch, a.warmup, iters, a.rounds)
            rows.append({"model": name, "backend": backend, "batch_size": batch,
                         "images_per_second": ips, "test_acc": acc, "file_bytes": size})
            print(f"  {backend:<17} batch {batch:>3}: {ips:9.1f} images/s  "
                  f"test acc {acc:.4f}  {size:>10,} bytes", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)  # make_session takes torch's count too
    prov = provenance()  # before any training: the commit that was actually run
    data = cifarlab.load_data(a.data_dir)
    if a.test_subset:
        data.test = Split(data.test.images[:a.test_subset], data.test.labels[:a.test_subset])
    onnx_root = Path(tempfile.mkdtemp(prefix="cifarlab-onnx-"))
    trained, rows = {}, []
    for name in a.models:
        trained[name] = trained_run(name, a, data)
        print(f"{name}: {trained[name]['run_dir']}", flush=True)
        rows += model_rows(name, trained[name]["run_dir"], onnx_root / name, data, a)
    shutil.rmtree(onnx_root, ignore_errors=True)  # the exported files were only for timing
    rows = [{**r, **prov} for r in rows]  # every row names its commit, date, machine, command
    out = {**prov, "threads": torch.get_num_threads(), "quick": a.quick,
           "test_images": len(data.test), "tta": False,
           "timing": {"warmup": a.warmup, "iters_batch_1": a.iters_1,
                      "iters_batch_256": a.iters_256, "rounds": a.rounds, "kept": "best round"},
           "runs": trained, "rows": rows}
    print(write_json(Path(a.out) if a.out else RESULTS / "inference.json", out))


if __name__ == "__main__":
    main()
