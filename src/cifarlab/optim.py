"""What an optimizer step is made of, as a recipe names it: optimizer (SGD, Adam, AdamW,
Muon), learning-rate schedule (stepped once per batch), loss, and the weight averages the
engine evaluates (EMA, airbench's lookahead)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .muon import Muon, muon_param_groups


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
    o = cfg["optim"]
    if o["name"] == "muon":
        return Muon(muon_param_groups(
            model, lr=o["lr"], muon_lr=o["muon_lr"], momentum=o["momentum"],
            weight_decay=o["weight_decay"], nesterov=o["nesterov"],
            muon_momentum=o["muon_momentum"] or None, muon_weight_decay=o["muon_weight_decay"],
            ns_steps=o["ns_steps"], normalize=o["muon_normalize"],
            norm_bias_lr_scale=o["norm_bias_lr_scale"]))
    params = param_groups(cfg, model)
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
