"""Training time before training: a few steps of a candidate and of the base recipe's network,
timed side by side, and the run's time predicted from them (the time-budget rules).

The step is the engine's own (`engine.train_step`), on a copy made as `fit` makes it (layer
swaps for CPU training, the recipe's optimizer, loss, precision and memory format).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import torch

from ..recipe import low_res_epochs


def step_timer(model: torch.nn.Module, cfg: dict, batch_size: int | None = None,
               size: int = 32) -> Callable[[], float]:
    """A function running one training step of a copy of `model` as `fit` would train it
    under the resolved recipe `cfg` (its layer swaps, optimizer, loss, precision, memory
    format and gradient clip, through `engine.train_step`) on random images of `size` px;
    it returns the step's seconds."""
    from ..engine import grad_clipper, train_step
    from ..layers import for_cpu_training
    from ..optim import build_optimizer, loss_fn
    t = cfg["train"]
    bs = batch_size or t["batch_size"]
    sizes = (32, t["low_res"]) if low_res_epochs(t) else (32,)
    net = for_cpu_training(copy.deepcopy(model), t["fast_dropout"],
                           bf16_sizes=sizes if t["precision"] == "bf16" else ()).train()
    x = torch.randn(bs, 3, size, size)
    if t["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,))
    opt, criterion, clip = build_optimizer(cfg, net), loss_fn(cfg), grad_clipper(t, net)

    def step() -> float:
        t0 = time.perf_counter()
        train_step(net, opt, criterion, x, y, t["precision"], "cpu", clip=clip)
        return time.perf_counter() - t0

    return step


def time_steps(models: list[tuple[torch.nn.Module, dict]], rounds: int = 3,
               enough: Callable[[list[float]], bool] | None = None,
               processes: int = 1) -> list[float]:
    """Seconds per training step of each (model, resolved recipe), measured interleaved (one
    step of each per round, after a warm-up step) and taking each one's fastest round, so
    that a busy machine slows them alike. `enough(best so far)`: stop after a round when it
    says more rounds cannot change the answer (a design far over a time rule). `processes`:
    the trainings' data-parallel processes; each gets its share of this process's threads, and
    the steps are timed with that share (the ranking of narrow and wide networks depends on
    the threads a step has)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // processes))
    try:
        timers = [step_timer(m, cfg) for m, cfg in models]
        for t in timers:
            t()
        best = [math.inf] * len(timers)
        for _ in range(rounds):
            for i, t in enumerate(timers):
                best[i] = min(best[i], t())
            if enough is not None and enough(best):
                break
        return best
    finally:
        torch.set_num_threads(threads)


def predict_seconds(step_s: float, n_train: int, batch_size: int, epochs: int, n_val: int,
                    tta: bool, processes: int = 1) -> float:
    """Training time from the time of one step: steps per epoch (the last partial batch is
    dropped), 10% for augmentation and bookkeeping, and a validation pass per epoch (a forward
    pass costs about a third of a training step; twice with test-time flip). `processes`:
    data-parallel processes sharing each batch side by side (the step was timed on the whole
    batch with one process's share of the threads, `time_steps`)."""
    step_s /= processes
    steps = max(1, n_train // batch_size)
    per_image = step_s / batch_size
    return epochs * (steps * step_s * 1.1 + n_val * (2 if tta else 1) * per_image / 3)


def time_room(constraints: dict, seconds: float | None, vs_base: float | None) -> float | None:
    """How many times a training of `seconds` (`vs_base` x the base recipe's) fits in the
    search's time rules (`max_train_seconds`, `max_train_time_vs_base`): the smaller of
    limit / value over the rules set and the values known; None when none applies."""
    ratios = [constraints[k] / v for k, v in (("max_train_seconds", seconds),
                                              ("max_train_time_vs_base", vs_base))
              if constraints[k] and isinstance(v, int | float) and v > 0]
    return min(ratios) if ratios else None


def schedule(cfg: dict, e: int) -> dict:
    """Overrides that train the trial's recipe `cfg` for `e` epochs ({} for its own), its
    low-resolution epochs in proportion; none when the trial had none (its network may not
    take low_res px)."""
    t = cfg["train"]
    e0, low0 = t["epochs"], low_res_epochs(t)  # the low-res epochs the trial trained
    if e == e0:
        return {}
    if low0:
        return {"train.epochs": e, "train.low_res_epochs": max(1, round(low0 * e / e0))}
    return {"train.epochs": e, "train.low_res": 0, "train.low_res_epochs": 0}
