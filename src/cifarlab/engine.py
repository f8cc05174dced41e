"""The training loop: `fit(cfg, data, run, built)` trains a resolved recipe into a run directory.

It reads top to bottom as: `prepare` (splits, statistics, augmentation, evaluation inputs),
`TrainState.start` (model on its device, optimizer, schedule, EMA / lookahead, random
streams; or all of them from a checkpoint), then for each epoch `train_epoch`, `evaluate`,
record (history, legs, checkpoints), decide whether to stop; then `write_metrics`
(metrics.json).

The training set stays in memory as uint8; each step slices a batch by index, augments it on
tensors (on the CPU, so a run draws the same augmentations on any device), and runs the model
in bf16 autocast with channels_last (both measured faster on CPU; `train.precision = "fp32"`
and `train.channels_last = false` turn them off) on the CPU or a CUDA GPU (`device`).

Choices (best.pt, `train.target`, `train.patience`, a caller's `epoch_callback`) are made on
the validation split when the recipe has one (`data.val_split`); the test set is then read once,
at the end (`train.test_eval`). Without a split the test set is evaluated every epoch as the
seeds did, and whatever is chosen on it is labelled so in metrics.json.
Several processes (train.processes, torchrun) are hidden behind `parallel.TrainingProcesses`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from . import parallel as par
from .augment import Pipeline, normalize
from .data import CIFAR10, Split, channel_stats, splits
from .device import autocast, device_name, environment, resolve_device
from .errors import CifarlabError
from .inference import fixed_test_inputs, infer, score_logits
from .layers import for_cpu_training
from .memory import keep_freed_memory
from .optim import EMA, Lookahead, build_optimizer, build_scheduler, loss_fn
from .recipe import low_res_epochs
from .rundir import LegRecorder, RunDir, load_checkpoint, model_meta, save_checkpoint, write_json

if TYPE_CHECKING:
    from .tblog import RunBoard

# ---------------------------------------------------------------------------------------------
# What a run holds fixed (RunSetup) and what it changes (TrainState)


@dataclass
class BuiltModel:
    """The recipe's model, built once per run (api.build), its facts (params, MACs, receptive
    field, ...: `analysis.assess`) and the torch random state right after its weights were
    drawn (training continues that stream)."""
    model: torch.nn.Module
    model_facts: dict
    rng: torch.Tensor


def test_mode(cfg: dict) -> str:
    """When the test set is read: every (evaluation), final (once) or never."""
    mode = cfg["train"]["test_eval"]
    if mode == "auto":
        return "final" if cfg["data"]["val_split"] else "every"
    return mode


@dataclass
class RunSetup:
    """Everything fixed for the whole run."""
    cfg: dict
    dev: torch.device
    procs: par.TrainingProcesses
    train: Split
    val: Split | None
    test: Split
    test_inputs: torch.Tensor
    mean: list[float]
    std: list[float]
    pipeline: Pipeline
    steps: int  # optimizer steps per epoch
    model_facts: dict
    meta: dict
    test_mode: str
    flip_bits: torch.Tensor | None  # augment.flip_mode = alternate: each image's first flip

    @property
    def selection(self) -> str | None:
        """The split choices are made on: val, else test (when read every epoch), else none."""
        if self.val is not None:
            return "val"
        return "test" if self.test_mode == "every" else None


def prepare(cfg: dict, data: CIFAR10, dev: torch.device, procs: par.TrainingProcesses,
            model_facts: dict) -> RunSetup:
    t = cfg["train"]
    train, val, test = splits(cfg, data)
    mean, std = channel_stats(train.images)
    pipeline = Pipeline(cfg["augment"], mean, std)
    meta = model_meta(cfg, data.classes, mean, std, model_facts)
    flip_bits = None
    if cfg["augment"]["flip_mode"] == "alternate":
        flip_bits = torch.rand(len(train), generator=torch.Generator().manual_seed(
            t["seed"] + 2)) < 0.5
    return RunSetup(cfg=cfg, dev=dev, procs=procs, train=train, val=val, test=test,
                    test_inputs=fixed_test_inputs(test.images, meta), mean=mean, std=std,
                    pipeline=pipeline, steps=max(1, len(train) // t["batch_size"]),
                    model_facts=model_facts, meta=meta, test_mode=test_mode(cfg),
                    flip_bits=flip_bits)


@dataclass
class TrainState:
    """What an epoch changes; `to_checkpoint` / `load` are the checkpoint's one format."""
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    ema: EMA | None
    lookahead: Lookahead | None
    gen: torch.Generator  # batch order and augmentation draws
    history: list[dict] = field(default_factory=list)
    epoch: int = 0
    best_acc: float = -1.0  # on the selection split (validation, else test)
    best_epoch: int = 0
    target_epoch: int | None = None
    stale: int = 0  # evaluations since the best one (train.patience)
    stopped_by: str | None = None  # target | patience | callback: the run is over
    final_test: dict | None = None  # the last test score of this call (not checkpointed)
    train_seconds: float = 0.0
    img_seconds: float = 0.0  # time spent in training steps only (images/s)
    images_seen: int = 0

    @staticmethod
    def start(s: RunSetup, built: BuiltModel, resume_from: dict | None) -> TrainState:
        cfg, t = s.cfg, s.cfg["train"]
        torch.manual_seed(t["seed"])  # (CUDA's stream; the CPU's continues from the build)
        torch.set_rng_state(built.rng)
        gen = torch.Generator().manual_seed(t["seed"])
        model = built.model
        init = getattr(model, "init_from_data", None)  # e.g. whitening filters (models/fast.py)
        if init is not None and resume_from is None:
            init(normalize(s.train.images[:5000], torch.tensor(s.mean), torch.tensor(s.std)))
        bf16_cpu = t["precision"] == "bf16" and s.dev.type == "cpu"
        sizes = (32, t["low_res"]) if low_res_epochs(t) else (32,)
        for_cpu_training(model, t["fast_dropout"], bf16_sizes=sizes if bf16_cpu else ())
        model = model.to(s.dev)
        if t["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        opt = build_optimizer(cfg, model)
        state = TrainState(
            model=model, opt=opt, sched=build_scheduler(cfg, opt, s.steps),
            ema=EMA(model, t["ema"]) if t["ema"] > 0 else None,
            lookahead=(Lookahead(model, t["lookahead"], t["lookahead_every"],
                                 t["epochs"] * s.steps) if t["lookahead"] > 0 else None),
            gen=gen)
        if resume_from is not None:
            state.load(resume_from, s.dev)
        return state

    def record(self, row: dict, chosen: dict | None, t: dict) -> tuple[bool, str | None]:
        """Add an epoch's row; (improved on the selection split?, stop reason or None)."""
        self.history.append(row)
        self.epoch = row["epoch"]
        if chosen is None:
            return False, None
        improved = chosen["acc"] > self.best_acc
        if improved:
            self.best_acc, self.best_epoch, self.stale = chosen["acc"], self.epoch, 0
        else:
            self.stale += 1
        if t["target"] and chosen["acc"] >= t["target"]:
            self.target_epoch = self.epoch
            return improved, "target"
        if t["patience"] and self.stale >= t["patience"]:
            return improved, "patience"
        return improved, None

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.model if self.ema is not None else self.model

    def to_checkpoint(self, meta: dict, dev: torch.device) -> dict:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema else None,
            "lookahead": self.lookahead.slow if self.lookahead else None,
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "gen": self.gen.get_state(),
                    "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None},
            "epoch": self.epoch, "best_acc": self.best_acc, "best_epoch": self.best_epoch,
            "target_epoch": self.target_epoch, "stale": self.stale,
            "stopped_by": self.stopped_by,
            "train_seconds": self.train_seconds, "img_seconds": self.img_seconds,
            "images_seen": self.images_seen, "history": self.history, "meta": meta,
        }

    def load(self, ckpt: dict, dev: torch.device) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.model.load_state_dict(ckpt["ema"])
        if self.lookahead is not None and ckpt.get("lookahead") is not None:
            self.lookahead.slow = {k: v.to(dev) for k, v in ckpt["lookahead"].items()}
        torch.set_rng_state(ckpt["rng"]["torch"])
        if dev.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], dev)
        self.gen.set_state(ckpt["rng"]["gen"])
        self.history = ckpt["history"]
        self.epoch, self.best_acc = ckpt["epoch"], ckpt["best_acc"]
        self.best_epoch = ckpt["best_epoch"]
        self.target_epoch, self.stale = ckpt.get("target_epoch"), ckpt.get("stale", 0)
        # checkpoints from before stopped_by existed: a reached target ended the run
        self.stopped_by = ckpt.get("stopped_by", "target" if self.target_epoch else None)
        self.train_seconds = ckpt["train_seconds"]
        self.img_seconds, self.images_seen = ckpt["img_seconds"], ckpt["images_seen"]


# ---------------------------------------------------------------------------------------------
# One epoch


class Progress:
    """On a terminal: a progress bar with its ETA. Otherwise (a log file, CI): a line at most
    every `every` seconds within a long epoch, and nothing else; the epoch line is the loop's."""

    def __init__(self, enabled: bool, total: int, desc: str, log: Callable[[str], None],
                 every: float = 30.0):
        self.tty = enabled and sys.stderr.isatty() and sys.stdout.isatty()
        self.enabled, self.total, self.desc, self.log, self.every = enabled, total, desc, log, every
        self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True,
                        file=sys.stderr) if self.tty else None
        self.last = time.perf_counter()

    def update(self, step: int, loss_sum: torch.Tensor, correct: torch.Tensor,
               seen: int) -> None:
        """After `step` (from 0); the running sums are read (a host sync) only when shown."""
        def stats() -> str:
            return f"loss {loss_sum.item() / seen:.4f} acc {correct.item() / seen:.4f}"

        if self.bar is not None:
            self.bar.update(1)
            if step % 10 == 0 or step == self.total - 1:
                self.bar.set_postfix_str(stats())
        elif self.enabled and time.perf_counter() - self.last >= self.every:
            self.last = time.perf_counter()
            self.log(f"{self.desc}: step {step + 1}/{self.total}  {stats()}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_epoch(s: RunSetup, state: TrainState, model: torch.nn.Module, epoch: int,
                progress: Progress) -> tuple[float, int, int, float]:
    """One pass over the training set: (loss sum, correct, images, seconds) of all ranks."""
    t = s.cfg["train"]
    bs, dev, cl = t["batch_size"], s.dev, t["channels_last"]
    criterion = loss_fn(s.cfg)
    clip_grads = grad_clipper(t, state.model)
    size = t["low_res"] if epoch <= low_res_epochs(t) else 0  # progressive resizing
    t0 = time.perf_counter()
    model.train()
    perm = torch.randperm(len(s.train), generator=state.gen)  # the same on every rank
    aug_gen = s.procs.epoch_generator(t["seed"], epoch, state.gen)
    # summed on the device: no host sync per step
    loss_acc, correct_acc, seen = torch.zeros((), device=dev), torch.zeros((), device=dev), 0
    for step in range(s.steps):
        idx = s.procs.share(perm[step * bs:(step + 1) * bs])
        flip = None if s.flip_bits is None else s.flip_bits[idx] ^ bool(epoch % 2)
        x = s.pipeline(s.train.images[idx], aug_gen, flip).to(dev, non_blocking=True)
        if size:
            x = resize(x, size)
        y = s.train.labels[idx].to(dev, non_blocking=True)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        out, loss = train_step(model, state.opt, criterion, x, y, t["precision"], dev.type,
                               clip=clip_grads)
        state.sched.step()
        if state.lookahead is not None:
            state.lookahead.step(state.model, (epoch - 1) * s.steps + step + 1)
        if state.ema is not None:
            state.ema.update(state.model)
        loss_acc += loss.detach() * len(y)
        correct_acc += (out.argmax(1) == y).sum()
        seen += len(y)
        progress.update(step, loss_acc, correct_acc, seen)
    progress.close()
    loss_sum, correct, seen = s.procs.sum(loss_acc.item(), int(correct_acc.item()), seen)
    return loss_sum, int(correct), int(seen), time.perf_counter() - t0


def grad_clipper(t: dict, model: torch.nn.Module) -> Callable[[], None] | None:
    """The recipe's gradient clipping of `model`'s parameters (train.grad_clip), or None."""
    if t["grad_clip"] <= 0:
        return None
    clip = (torch.nn.utils.clip_grad_norm_ if t["grad_clip_mode"] == "norm"
            else torch.nn.utils.clip_grad_value_)
    return lambda: clip(model.parameters(), t["grad_clip"])


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, criterion: Callable,
               x: torch.Tensor, y: torch.Tensor, precision: str, device_type: str,
               clip: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step as every epoch runs it (the search's step timer runs this one too):
    forward under the recipe's autocast, the loss in float32, backward, the optional gradient
    clip, the optimizer's step. Returns (outputs, loss)."""
    with autocast(precision, device_type):
        out = model(x)
        loss = criterion(out.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        clip()
    opt.step()
    return out, loss


def batch_split_error(batch_size: int, world: int) -> str | None:
    """Why a batch cannot be shared by `world` processes (None: it can)."""
    if batch_size % world:
        return (f"train.batch_size {batch_size} does not split evenly over {world} "
                "processes")
    return None


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """A batch resized to size x size (bilinear, antialiased: the whole image, smaller)."""
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                           antialias=True, align_corners=False)


def train_macs(model_facts: dict, train: dict, epochs: int) -> float:
    """Mean MACs per training image over `epochs` epochs of this schedule: the progressive-
    resizing epochs at their size (model_facts["low_res_macs"], api.build), the rest at 32 x 32."""
    n = min(low_res_epochs(train), epochs)
    if not n or not model_facts.get("low_res_macs") or not epochs:
        return float(model_facts["macs"])
    return (n * model_facts["low_res_macs"] + (epochs - n) * model_facts["macs"]) / epochs


def check_low_res(model: torch.nn.Module, size: int, dev: torch.device) -> None:
    """The model takes size x size images (a head sized for 32 x 32 does not): one eval-mode
    forward of two blank images, which changes no weight, statistic or random state."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, 3, size, size, device=dev))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CifarlabError(f"train.low_res {size}: this model does not take {size}x{size} "
                            f"images ({first}); use a model with global pooling or "
                            "train.low_res = 0") from None
    finally:
        model.train(was_training)


def score(s: RunSetup, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    with par.eval_threads():
        return score_logits(infer(model, images, s.meta,
                                  batch_size=s.cfg["train"]["eval_batch_size"]),
                            labels, s.meta["loss"])


# ---------------------------------------------------------------------------------------------
# The loop


def fit(cfg: dict, data: CIFAR10, run: RunDir, built: BuiltModel, *, resume: bool = False,
        progress: bool = True, log: Callable[[str], None] = print,
        max_seconds: float | None = None, device: str = "auto",
        on_epoch: Callable[[RunDir], None] | None = None,
        on_end: Callable[[RunDir, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
        epoch_callback: Callable[[dict], bool | None] | None = None,
        ) -> dict:
    """Train per `cfg` (a resolved recipe), writing everything into `run`; return metrics.

    `built` is the model made by `api.build` (built and traced once per run). `device` is
    where it trains (`resolve_device`); it is not part of the recipe, so a run may be resumed
    on another device. `max_seconds` stops after the epoch that crosses that much training
    time in this call; the run stays resumable (`--resume`) and metrics.json says how many
    epochs were done. `on_epoch(run)` is called after each epoch's files are written (e.g. to
    redraw plots), `on_end(run, test_images, test_labels, final_predictions)` once
    metrics.json is written. `epoch_callback(row)` sees each epoch's history row; if it
    returns True the run stops there (metrics.json: stopped_by "callback"); an exception it
    raises leaves the epoch's files written and propagates.
    """
    keep_freed_memory()  # no page faults on every step's large tensors (memory.py)
    procs = par.TrainingProcesses()
    if not procs.main:
        log, progress, on_epoch, on_end, epoch_callback = (lambda s: None), False, None, None, None
    t = cfg["train"]
    split_error = batch_split_error(t["batch_size"], procs.world)
    if split_error:
        raise CifarlabError(split_error)
    dev = resolve_device(device)
    if procs.world > 1 and dev.type == "cuda":
        raise CifarlabError("several processes (train.processes / torchrun) train on the CPU "
                            "only; on a GPU use one process (--device cpu for processes)")
    s = prepare(cfg, data, dev, procs, built.model_facts)
    state = TrainState.start(s, built, load_checkpoint(run.last) if resume else None)
    if state.epoch < low_res_epochs(t):
        check_low_res(state.model, t["low_res"], dev)
    model = procs.wrap(state.model)
    if t["compile"]:  # the training forward only: evaluation and checkpoints use state.model
        model = torch.compile(model)
    legs = LegRecorder(run, procs.main, resume, state.epoch, device_name(dev))
    if resume:
        log(f"resuming {run.path} after epoch {state.epoch}/{t['epochs']}")
    elif procs.main:
        write_json(run.config, {"recipe": cfg, "model_source": s.meta["model_source"],
                                "environment": environment(dev),
                                "data": str(data.root), "mean": s.mean, "std": s.std,
                                "val_images": len(s.val) if s.val else 0})
    log(describe_run(s, run))
    if t["target"] and s.val is None:
        log(f"note: no validation split: --target {t['target']} stops on test accuracy, so the "
            "stopping epoch is chosen on the test set (use --val-split N to choose on "
            "validation)")
    tb = None
    if t["tensorboard"] and procs.main:
        from .tblog import RunBoard  # tensorboard loads only when asked for

        tb = RunBoard(cfg, run.path, state.epoch, s.pipeline, s.train.images, s.mean, s.std)
    try:
        time_stop = run_epochs(s, state, run, model, legs, tb, log, progress, max_seconds,
                               on_epoch, epoch_callback)
        if not procs.main:
            return {}
        metrics = write_metrics(s, state, run, time_stop, legs, on_end)
        if tb is not None:
            tb.log_final(metrics)
        return metrics
    finally:
        if tb is not None:
            tb.close()


def run_epochs(s: RunSetup, state: TrainState, run: RunDir, model: torch.nn.Module,
               legs: LegRecorder, tb: RunBoard | None, log, progress: bool,
               max_seconds: float | None, on_epoch, epoch_callback) -> bool:
    """For each epoch: train, evaluate, record, decide. True if the time budget stopped it."""
    t, procs = s.cfg["train"], s.procs
    t_start = time.perf_counter()
    # a run that stopped on its target, patience or callback stays stopped when resumed
    for epoch in range(state.epoch + 1, (state.epoch if state.stopped_by else t["epochs"]) + 1):
        t0 = time.perf_counter()
        bar = Progress(progress, s.steps, f"epoch {epoch}/{t['epochs']}", log)
        loss_sum, correct, seen, train_time = train_epoch(s, state, model, epoch, bar)
        if not math.isfinite(loss_sum):
            raise CifarlabError(f"training diverged at epoch {epoch} (loss is {loss_sum}); "
                                "lower optim.lr or set train.grad_clip")
        out_of_time = procs.agree(max_seconds is not None
                                 and time.perf_counter() - t_start > max_seconds)
        val, test = evaluate_epoch(s, state, epoch, out_of_time)
        state.train_seconds += time.perf_counter() - t0
        state.img_seconds += train_time
        state.images_seen += seen
        row = {"epoch": epoch, "lr": state.opt.param_groups[0]["lr"],
               "train_loss": loss_sum / seen, "train_acc": correct / seen}
        if s.val is not None:
            row |= {"val_loss": val["loss"] if val else math.nan,
                    "val_acc": val["acc"] if val else math.nan}
        row |= {"test_loss": test["loss"] if test else math.nan,
                "test_acc": test["acc"] if test else math.nan,
                "seconds": time.perf_counter() - t0}
        improved, stop = state.record(row, val if s.selection == "val" else test, t)
        if procs.main:
            if tb is not None:  # before the checkpoint: a resumed run purges what follows it
                tb.log_epoch(row | {"images_per_second": seen / train_time})
            run.write_history(state.history)
            state.stopped_by = stop  # target or patience: the checkpoint says why the run ended
            checkpoint = state.to_checkpoint(s.meta, s.dev)
            if improved:
                save_checkpoint(run.best, checkpoint)
            save_checkpoint(run.last, checkpoint)
            legs.record(epoch)
            log(epoch_line(row, t["epochs"], stop, t["target"]))
            if on_epoch is not None:
                on_epoch(run)
            if epoch_callback is not None and epoch_callback(dict(row)) and stop is None:
                stop = "callback"
        if procs.agree(stop is not None):
            if procs.main and stop == "callback":  # decided after the checkpoint was written
                state.stopped_by = stop
                save_checkpoint(run.last, state.to_checkpoint(s.meta, s.dev))
            state.stopped_by = stop or "agreed"
            return False
        if out_of_time:
            if epoch < t["epochs"]:
                log(f"time budget of {max_seconds:.0f}s used: stopping after epoch {epoch}; "
                    f"continue with --resume {run.path}")
            return epoch < t["epochs"]
    return False


def evaluate_epoch(s: RunSetup, state: TrainState, epoch: int,
                   out_of_time: bool) -> tuple[dict | None, dict | None]:
    """(validation, test) scores of this epoch on rank 0, None where not evaluated: every
    `eval_every` epochs, after the last one and before a time-budget stop; the test set only
    when it is read every evaluation (`test_mode`)."""
    t, every = s.cfg["train"], s.cfg["train"]["eval_every"]
    if not s.procs.main or not (epoch == t["epochs"] or out_of_time
                               or (every > 0 and epoch % every == 0)):
        return None, None
    val = score(s, state.eval_model, s.val.images, s.val.labels) if s.val is not None else None
    test = (score(s, state.eval_model, s.test_inputs, s.test.labels)
            if s.test_mode == "every" else None)
    if test is not None:
        state.final_test = test
    return val, test


def describe_run(s: RunSetup, run: RunDir) -> str:
    t = s.cfg["train"]
    val = f"{len(s.val):,} validation / " if s.val is not None else ""
    low = (f" (the first {low_res_epochs(t)} at {t['low_res']}x{t['low_res']} px)"
           if low_res_epochs(t) else "")
    return (f"run {run.path}: model {s.cfg['model']} ({s.model_facts['params']:,} params, "
            f"RF {s.model_facts['receptive_field']}), {len(s.train):,} train / {val}"
            f"{len(s.test):,} test images, {t['epochs']} epochs x {s.steps} steps{low}, "
            f"{t['precision']}{', channels_last' if t['channels_last'] else ''}, "
            f"on {device_name(s.dev)}")


def epoch_line(row: dict, epochs: int, stop: str | None, target: float) -> str:
    def pair(name: str) -> str:
        if not math.isfinite(row.get(f"{name}_acc", math.nan)):
            return ""
        return f"{name} loss {row[f'{name}_loss']:.4f} acc {row[f'{name}_acc']:.4f}  "

    msg = (f"epoch {row['epoch']:3d}/{epochs}  lr {row['lr']:.5f}  "
           f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
           + pair("val") + pair("test") + f"{row['seconds']:5.1f}s")
    if stop == "target":
        msg += f"  target {target:.4f} reached"
    elif stop == "patience":
        msg += "  no better validation accuracy: early stop"
    return msg


def write_metrics(s: RunSetup, state: TrainState, run: RunDir, time_stop: bool,
                  legs: LegRecorder, on_end) -> dict:
    """The final figures, each with the split it comes from, into metrics.json."""
    cfg, t, final, selection = s.cfg, s.cfg["train"], state.final_test, s.selection
    partial = state.epoch < t["epochs"] and not state.stopped_by
    if final is None and not partial and s.test_mode in ("every", "final"):
        if s.test_mode == "every":  # resumed a finished run: score its last checkpoint
            last = load_checkpoint(run.last)
            state.eval_model.load_state_dict(last["ema"] or last["model"])
        final = score(s, state.eval_model, s.test_inputs, s.test.labels)  # the one test reading
    val = score(s, state.eval_model, s.val.images, s.val.labels) if s.val is not None else None
    shown = final or val  # per-class figures and predictions: the test set unless unread
    split_name = {"val": "validation", "test": "test"}
    metrics = {
        "recipe": cfg["name"], "model": cfg["model"],
        "test_acc": final["acc"] if final else None,
        "test_loss": final["loss"] if final else None,
        "val_acc": val["acc"] if val else None, "val_loss": val["loss"] if val else None,
        "selection": split_name.get(selection),
        "best_epoch": state.best_epoch,
        f"best_{selection or 'test'}_acc": state.best_acc if selection else None,
        "target": t["target"] or None, "target_epoch": state.target_epoch,
        "stopped_by": state.stopped_by or ("time" if time_stop else None),
        "figures": {
            "test_acc": (f"test set, {'final' if final else 'not read'} "
                         f"({s.test_mode})"),
            "val_acc": "validation split, final epoch" if val else "no validation split",
            "best_epoch": (f"chosen on the {split_name[selection]} "
                           f"{'split' if selection == 'val' else 'set'}"
                           if selection else "no selection"),
            "target_epoch": ("no target" if not t["target"] else
                             "first epoch whose validation accuracy reached the target"
                             if selection == "val" else
                             "first epoch whose test-set accuracy reached the target: chosen "
                             "on the test set (no validation split)"),
            "per_class_acc": "test set" if final else "validation split",
        },
        "per_class_acc": shown["per_class_acc"] if shown else None,
        "confusion": shown["confusion"] if shown else None,
        "classes": list(s.meta["classes"]), "params": s.model_facts["params"],
        "macs": s.model_facts["macs"], "receptive_field": s.model_facts["receptive_field"],
        "train_macs": train_macs(s.model_facts, t, len(state.history)),
        "train_seconds": state.train_seconds,
        "images_per_second": state.images_seen / state.img_seconds if state.img_seconds else 0.0,
        "epochs": len(state.history), "epochs_planned": t["epochs"],
        "train_images": len(s.train), "val_images": len(s.val) if s.val else 0,
        "test_images": len(s.test),
        "legs": legs.all(),
    }
    write_json(run.metrics, metrics)
    if on_end is not None and final is not None:
        on_end(run, s.test.images, s.test.labels, final["preds"])
    return metrics
