"""One training loop: a function of (recipe, data, run directory) with no global state.

The training set stays in memory as uint8; each step slices a batch by index, augments it on
tensors (on the CPU, so a run draws the same augmentations on any device), and runs the model
in bf16 autocast with channels_last (both measured faster on CPU; `train.precision = "fp32"`
and `train.channels_last = false` turn them off) on the CPU or a CUDA GPU (`device`).
"""

from __future__ import annotations

import copy
import math
import platform
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import __version__
from . import parallel as par
from .analysis import check_constraints, describe
from .augment import AugmentConfig, Pipeline, normalize
from .data import CIFAR10, channel_stats
from .errors import CifarlabError
from .evaluate import autocast, predict_logits, summarize
from .layers import use_fast_dropout
from .models import create_model
from .rundir import RunDir, load_checkpoint, save_checkpoint, write_json


def param_groups(cfg: dict, model: torch.nn.Module) -> list[dict]:
    """Trainable parameters; BatchNorm biases in a group of their own when their lr is scaled."""
    o, scale = cfg["optim"], cfg["optim"]["norm_bias_lr_scale"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    if scale == 1.0:
        return [{"params": trainable}]
    norm_bias = {id(m.bias) for m in model.modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.bias is not None}
    groups = [{"params": [p for p in trainable if id(p) not in norm_bias]},
              {"params": [p for p in trainable if id(p) in norm_bias],
               "lr": o["lr"] * scale, "weight_decay": o["weight_decay"] / scale}]
    return [g for g in groups if g["params"]]


def build_optimizer(cfg: dict, model: torch.nn.Module) -> torch.optim.Optimizer:
    o, params = cfg["optim"], param_groups(cfg, model)
    if o["name"] == "sgd":
        return torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"],
                               nesterov=o["nesterov"] and o["momentum"] > 0,
                               weight_decay=o["weight_decay"])
    cls = torch.optim.Adam if o["name"] == "adam" else torch.optim.AdamW
    return cls(params, lr=o["lr"], betas=(o["beta1"], o["beta2"]),
               weight_decay=o["weight_decay"])


def build_scheduler(cfg: dict, opt: torch.optim.Optimizer, steps_per_epoch: int):
    """Every schedule is stepped once per batch."""
    s, total = cfg["schedule"], cfg["train"]["epochs"] * steps_per_epoch
    name = s["name"]
    if name == "onecycle":
        steps = total + 1  # +1: the last step must not overshoot
        # a run of a handful of steps (a tiny subset) still needs both phases to be non-empty
        pct = min(max(s["pct_start"], 1.5 / steps), 1 - 1.5 / steps)
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=steps, pct_start=pct,
            anneal_strategy=s["anneal"], div_factor=s["div_factor"],
            final_div_factor=s["final_div_factor"],
            # torch's default momentum cycling, which SGD without momentum cannot do
            cycle_momentum=s["cycle_momentum"] and not (
                cfg["optim"]["name"] == "sgd" and cfg["optim"]["momentum"] == 0))
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(
            opt, step_size=s["step_size"] * steps_per_epoch, gamma=s["gamma"])
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=s["min_lr"])
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


def loss_fn(cfg: dict) -> Callable:
    if cfg["loss"]["name"] == "nll":  # the model itself ends in log_softmax
        return lambda out, y: F.nll_loss(out, y)
    ls = cfg["loss"]["label_smoothing"]
    return lambda out, y: F.cross_entropy(out, y, label_smoothing=ls)


class EMA:
    """Exponential moving average of parameters and buffers (evaluated instead of the raw net)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        ema_sd, sd = self.model.state_dict(), model.state_dict()
        for k, v in sd.items():
            if v.dtype.is_floating_point:
                ema_sd[k].lerp_(v, 1 - self.decay)
            else:
                ema_sd[k].copy_(v)


class Lookahead:
    """airbench's lookahead: every `every` optimizer steps the weights (and BatchNorm running
    statistics) are pulled back to a slow copy that moves toward them,
    slow <- lerp(slow, weights, 1 - d), weights <- slow, with d = decay**every * (t / T)**3
    at step t of T (no pull early on, the strongest at the end); after step T the weights are
    the slow copy. The optimizer state is left alone."""

    def __init__(self, model: torch.nn.Module, decay: float, every: int, total_steps: int):
        self.decay, self.every, self.total = decay, every, total_steps
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items()
                     if v.dtype.is_floating_point}

    @torch.no_grad()
    def step(self, model: torch.nn.Module, t: int) -> None:
        """Call after optimizer step t (counting from 1)."""
        if t % self.every and t != self.total:
            return
        # off the pull schedule, the last step only copies the slow weights back (d = 1)
        d = self.decay ** self.every * (t / self.total) ** 3 if t % self.every == 0 else 1.0
        for k, v in model.state_dict().items():
            if k in self.slow:
                self.slow[k].lerp_(v, 1 - d)
                v.copy_(self.slow[k])


def build_model(cfg: dict) -> tuple[torch.nn.Module, dict]:
    """The recipe's model and its facts; refuses one that breaks the recipe's constraints."""
    model = create_model(cfg["model"], **cfg["model_args"])
    c = cfg["constraints"]
    broken = check_constraints(model, max_params=c["max_params"] or None,
                               min_receptive_field=c["min_receptive_field"] or None,
                               require=c["require"], forbid=c["forbid"])
    if broken:
        raise CifarlabError(f"model '{cfg['model']}' breaks recipe '{cfg['name']}': "
                            + "; ".join(broken))
    return model, describe(model)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' (a CUDA GPU when torch sees one, else the CPU), 'cpu', 'cuda' or 'cuda:N'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise CifarlabError(f"device '{name}': expected auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CifarlabError(f"device '{name}': no CUDA GPU is available to this torch "
                                f"({torch.__version__})")
        if (dev.index or 0) >= torch.cuda.device_count():
            raise CifarlabError(f"device '{name}': this machine has "
                                f"{torch.cuda.device_count()} CUDA GPU(s)")
    return dev


def device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def environment(dev: torch.device) -> dict:
    return {
        "cifarlab": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": torch.get_num_threads(),
        "device": device_name(dev),
    }


def model_meta(cfg: dict, classes, mean, std) -> dict:
    """What inference needs, stored in every checkpoint (plain types: weights_only-safe)."""
    return {
        "model": cfg["model"], "model_args": dict(cfg["model_args"]),
        "classes": list(classes), "mean": list(mean), "std": list(std),
        "loss": cfg["loss"]["name"], "precision": cfg["train"]["precision"],
        "channels_last": cfg["train"]["channels_last"], "tta": cfg["train"]["tta"],
        "tta_shift": cfg["train"]["tta_shift"],
        "recipe": cfg["name"],
    }


def fit(cfg: dict, data: CIFAR10, run: RunDir, *, resume: bool = False,
        progress: bool = True, log: Callable[[str], None] = print,
        max_seconds: float | None = None, device: str = "auto",
        on_epoch: Callable[[RunDir], None] | None = None,
        on_end: Callable[[RunDir, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
        ) -> dict:
    """Train per `cfg` (a resolved recipe), writing everything into `run`; return metrics.

    `device` is where the model trains (`resolve_device`); it is not part of the recipe, so a
    run may be resumed on another device. `max_seconds` stops after the epoch that crosses
    that much training time in this call; the run stays resumable (`--resume`) and
    metrics.json says how many epochs were done.
    `on_epoch(run)` is called after each epoch's files are written (e.g. to redraw plots),
    `on_end(run, test_images, test_labels, final_predictions)` once metrics.json is written.
    """
    t_cfg = cfg["train"]
    rank, world = par.rank_world()  # several processes: each trains on its share of a batch
    main = rank == 0
    if not main:
        log, progress, on_epoch, on_end = (lambda s: None), False, None, None
    train = data.train.subset(cfg["data"]["train_subset"], seed=t_cfg["seed"])
    test = data.test.subset(cfg["data"]["test_subset"], seed=t_cfg["seed"])
    bs = t_cfg["batch_size"]
    if len(train) < 2:
        raise CifarlabError("training set has fewer than 2 images")
    steps_per_epoch = max(1, len(train) // bs)  # drop the last partial batch
    par.check_split(bs, world)
    dev = resolve_device(device)
    if world > 1 and dev.type == "cuda":
        raise CifarlabError("several processes (train.processes / torchrun) train on the CPU "
                            "only; on a GPU use one process (--device cpu for processes)")

    torch.manual_seed(t_cfg["seed"])
    gen = torch.Generator().manual_seed(t_cfg["seed"])
    mean, std = channel_stats(train.images)
    pipeline = Pipeline(AugmentConfig(**cfg["augment"]), mean, std)
    model, facts = build_model(cfg)
    init = getattr(model, "init_from_data", None)  # e.g. whitening filters (models/fast.py)
    if init is not None and not resume:
        init(normalize(train.images[:5000], torch.tensor(mean), torch.tensor(std)))
    if t_cfg["fast_dropout"]:
        use_fast_dropout(model)
    model = model.to(dev)
    cl = t_cfg["channels_last"]
    if cl:
        model = model.to(memory_format=torch.channels_last)
    train_model = par.wrap(model) if world > 1 else model
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, steps_per_epoch)
    criterion = loss_fn(cfg)
    ema = EMA(model, t_cfg["ema"]) if t_cfg["ema"] > 0 else None
    lookahead = (Lookahead(model, t_cfg["lookahead"], t_cfg["lookahead_every"],
                           t_cfg["epochs"] * steps_per_epoch)
                 if t_cfg["lookahead"] > 0 else None)
    meta = model_meta(cfg, data.classes, mean, std)

    history: list[dict] = []
    start_epoch, best_acc, best_epoch, target_epoch, elapsed = 0, -1.0, 0, None, 0.0
    img_seconds, images_seen = 0.0, 0
    if resume:
        st = load_checkpoint(run.last)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        if ema is not None and st.get("ema") is not None:
            ema.model.load_state_dict(st["ema"])
        if lookahead is not None and st.get("lookahead") is not None:
            lookahead.slow = {k: v.to(dev) for k, v in st["lookahead"].items()}
        torch.set_rng_state(st["rng"]["torch"])
        if dev.type == "cuda" and st["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(st["rng"]["cuda"], dev)
        gen.set_state(st["rng"]["gen"])
        history = st["history"]
        start_epoch, best_acc, best_epoch = st["epoch"], st["best_acc"], st["best_epoch"]
        target_epoch, elapsed = st.get("target_epoch"), st["train_seconds"]
        img_seconds, images_seen = st["img_seconds"], st["images_seen"]
        log(f"resuming {run.path} after epoch {start_epoch}/{t_cfg['epochs']}")
    elif main:
        write_json(run.config, {"recipe": cfg, "environment": environment(dev),
                                "data": str(data.root), "mean": mean, "std": std})

    params = facts["params"]
    log(f"run {run.path}: model {cfg['model']} ({params:,} params, "
        f"RF {facts['receptive_field']}), {len(train):,} train / {len(test):,} test images, "
        f"{t_cfg['epochs']} epochs x {steps_per_epoch} steps, "
        f"{t_cfg['precision']}{', channels_last' if cl else ''}, on {device_name(dev)}")
    eval_kw = dict(batch_size=t_cfg["eval_batch_size"], precision=t_cfg["precision"],
                   channels_last=cl, tta=t_cfg["tta"], tta_shift=t_cfg["tta_shift"])
    test_inputs = test.images
    if cfg["augment"]["test"]:  # one fixed random transform of the test set, as seed 003 did
        test_inputs = pipeline(test.images, torch.Generator().manual_seed(t_cfg["seed"] + 1))
    target = t_cfg["target"]
    clip = (torch.nn.utils.clip_grad_norm_ if t_cfg["grad_clip_mode"] == "norm"
            else torch.nn.utils.clip_grad_value_)
    final, every, out_of_time = None, t_cfg["eval_every"], False
    flip_bits = None
    if cfg["augment"]["flip_mode"] == "alternate":  # each image's first flip, then alternate
        flip_bits = torch.rand(len(train), generator=torch.Generator().manual_seed(
            t_cfg["seed"] + 2)) < 0.5
    t_start = time.perf_counter()
    for epoch in range(start_epoch + 1, t_cfg["epochs"] + 1):
        if target and target_epoch is not None:
            break
        if out_of_time:  # decided (and tested) at the end of the previous epoch
            log(f"time budget of {max_seconds:.0f}s used: stopping after epoch {epoch - 1}; "
                f"continue with --resume {run.path}")
            break
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(train), generator=gen)  # the same on every rank
        aug_gen = gen
        if world > 1:  # each rank its own augmentation and dropout draws, resumable per epoch
            aug_gen = torch.Generator().manual_seed(t_cfg["seed"] * 100_003 + epoch * 1009
                                                    + rank)
            torch.manual_seed(t_cfg["seed"] * 100_019 + epoch * 1013 + rank)
        # summed on the device: no host sync per step
        loss_acc, correct_acc, seen = torch.zeros((), device=dev), torch.zeros((), device=dev), 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{t_cfg['epochs']}",
                   disable=not progress, leave=False, dynamic_ncols=True, file=sys.stderr)
        for step in bar:
            idx = perm[step * bs:(step + 1) * bs][rank::world]
            flip = None if flip_bits is None else flip_bits[idx] ^ bool(epoch % 2)
            x = pipeline(train.images[idx], aug_gen, flip).to(dev, non_blocking=True)
            y = train.labels[idx].to(dev, non_blocking=True)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(t_cfg["precision"], dev.type):
                out = train_model(x)
                loss = criterion(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t_cfg["grad_clip"] > 0:
                clip(model.parameters(), t_cfg["grad_clip"])
            opt.step()
            sched.step()
            if lookahead is not None:
                lookahead.step(model, (epoch - 1) * steps_per_epoch + step + 1)
            if ema is not None:
                ema.update(model)
            loss_acc += loss.detach() * len(y)
            correct_acc += (out.argmax(1) == y).sum()
            seen += len(y)
            if progress and (step % 10 == 0 or step == steps_per_epoch - 1):
                bar.set_postfix(loss=f"{loss_acc.item() / seen:.4f}",
                                acc=f"{correct_acc.item() / seen:.4f}")
        bar.close()
        loss_sum, correct = loss_acc.item(), int(correct_acc.item())
        train_time = time.perf_counter() - t0
        if world > 1:
            loss_sum, correct, seen = par.all_sum(loss_sum, correct, seen)
            seen = int(seen)
        if not math.isfinite(loss_sum):
            raise CifarlabError(f"training diverged at epoch {epoch} (loss is {loss_sum}); "
                                "lower optim.lr or set train.grad_clip")
        # evaluate every `eval_every` epochs, after the last one, and before a time-budget stop
        out_of_time = max_seconds is not None and time.perf_counter() - t_start > max_seconds
        if world > 1:
            out_of_time = bool(par.from_rank0(out_of_time)[0])
        evaluate = (epoch == t_cfg["epochs"] or out_of_time
                    or (every > 0 and epoch % every == 0))
        if evaluate and main:  # rank 0 tests; the others wait for its decision below
            eval_model = ema.model if ema is not None else model
            with par.eval_threads():
                final = summarize(predict_logits(eval_model, test_inputs, mean, std,
                                                 **eval_kw), test.labels, cfg["loss"]["name"])
        elif evaluate:
            final = {"acc": math.nan, "loss": math.nan}
        seconds = time.perf_counter() - t0
        elapsed += seconds
        img_seconds += train_time
        images_seen += seen
        row = {"epoch": epoch, "lr": opt.param_groups[0]["lr"],
               "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "test_loss": final["loss"] if evaluate else math.nan,
               "test_acc": final["acc"] if evaluate else math.nan, "seconds": seconds}
        history.append(row)
        improved = evaluate and final["acc"] > best_acc
        if improved:
            best_acc, best_epoch = final["acc"], epoch
        if evaluate and target and target_epoch is None and final["acc"] >= target:
            target_epoch = epoch
        if world > 1 and target and bool(par.from_rank0(target_epoch == epoch)[0]):
            target_epoch = epoch
        if not main:
            continue
        state = {
            "model": model.state_dict(), "ema": ema.model.state_dict() if ema else None,
            "lookahead": lookahead.slow if lookahead else None,
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "gen": gen.get_state(),
                    "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None},
            "epoch": epoch, "best_acc": best_acc, "best_epoch": best_epoch,
            "target_epoch": target_epoch, "train_seconds": elapsed,
            "img_seconds": img_seconds, "images_seen": images_seen,
            "history": history, "meta": meta,
        }
        run.write_history(history)
        if improved:
            save_checkpoint(run.best, state)
        save_checkpoint(run.last, state)
        msg = (f"epoch {epoch:3d}/{t_cfg['epochs']}  lr {row['lr']:.5f}  "
               f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
               + (f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}  "
                  if evaluate else "") + f"{seconds:5.1f}s")
        if target_epoch == epoch:
            msg += f"  target {target:.4f} reached"
        log(msg)
        if on_epoch is not None:
            on_epoch(run)

    if not main:
        return {}
    if final is None:  # resumed a finished run: report what the last checkpoint evaluates to
        st = load_checkpoint(run.last)
        (ema.model if ema else model).load_state_dict(st["ema"] or st["model"])
        final = summarize(predict_logits(ema.model if ema else model, test_inputs, mean, std,
                                         **eval_kw), test.labels, cfg["loss"]["name"])
    metrics = {
        "recipe": cfg["name"], "model": cfg["model"],
        "test_acc": final["acc"], "test_loss": final["loss"],
        "best_test_acc": best_acc, "best_epoch": best_epoch,
        "target": target or None, "target_epoch": target_epoch,
        "per_class_acc": final["per_class_acc"], "confusion": final["confusion"],
        "classes": list(data.classes), "params": params, "macs": facts["macs"],
        "receptive_field": facts["receptive_field"],
        "train_seconds": elapsed,
        "images_per_second": images_seen / img_seconds if img_seconds else 0.0,
        "epochs": len(history), "epochs_planned": t_cfg["epochs"],
        "train_images": len(train), "test_images": len(test),
    }
    write_json(run.metrics, metrics)
    if on_end is not None:
        on_end(run, test.images, test.labels, final["preds"])
    return metrics
