"""What an optimizer step is made of, as a recipe names it: optimizer (SGD, Adam, AdamW,
Muon), learning-rate schedule (stepped once per batch), loss, and the weight averages the
engine evaluates (EMA, airbench's lookahead).

Muon, the optimizer cifarlab implements itself, comes first: momentum SGD whose update of
each filter bank is orthogonalised (Newton-Schulz).

For a parameter with two or more dimensions (a conv filter bank out×in×k×k is read as the
out×(in·k·k) matrix), Muon keeps an ordinary (Nesterov) momentum buffer, and instead of the
buffer itself it applies the nearest semi-orthogonal matrix to it: the same singular vectors,
every singular value replaced by about 1. That matrix is approximated by a few iterations of
the quintic Newton-Schulz map x -> a·x + b·x³ + c·x⁵ applied to the singular values, run on
small matrix products in bf16 (cheap on CPUs with bf16 units). The coefficients are chosen for
a steep slope at zero rather than exact convergence, so after five steps the singular values
land in about [0.68, 1.2] rather than at 1 — enough for an update direction, and fast.
Keller Jordan's description: https://kellerjordan.github.io/posts/muon/ (this is our own
implementation of it).

One `Muon` object trains a whole model: each param group says whether it takes the
orthogonalised update (`use_muon=True`) or plain SGD (`use_muon=False`: biases, BatchNorm,
the classifier head — exactly torch.optim.SGD's update, coupled weight decay included).
`muon_param_groups` makes that split. Every hyperparameter lives in the param groups, so
`state_dict()`/`load_state_dict()` and torch's lr schedulers (which set `lr` and, for
one-cycle, `momentum`) work as for any torch optimizer.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------- Muon

# The quintic iteration's coefficients (Keller Jordan's: the largest slope at zero for which
# the singular values still settle in a band around 1).
NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def newton_schulz(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16,
                  eps: float = 1e-7) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with g's singular vectors (g: ...×m×n).

    g is scaled to Frobenius norm 1 (so every singular value is at most 1), then `steps`
    quintic Newton-Schulz iterations push each singular value towards 1. Computed in `dtype`
    on the smaller Gram matrix (a wide matrix; a tall one is transposed and back). Returns a
    tensor of g's shape in `dtype`.
    """
    if g.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix, got shape {tuple(g.shape)}")
    a, b, c = NS_COEFFS
    shape = g.shape
    x = g.reshape(-1, *shape[-2:]).float()
    x = x / (torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True) + eps)
    x = x.to(dtype)
    tall = shape[-2] > shape[-1]
    if tall:
        x = x.mT
    for _ in range(steps):
        gram = torch.bmm(x, x.mT)  # m×m with m = min(rows, cols)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b·A + c·A²
        x = torch.baddbmm(x, poly, x, beta=a)  # a·X + (b·A + c·A²)·X
    if tall:
        x = x.mT
    return x.reshape(shape)


def muon_scale(rows: int, cols: int) -> float:
    """Update multiplier: an orthogonal out×in update has RMS 1/sqrt(max(rows, cols)); a tall
    matrix is scaled up so its RMS matches a square one's, 1/sqrt(cols)."""
    return max(1.0, rows / cols) ** 0.5


class Muon(torch.optim.Optimizer):
    """Orthogonalised momentum for `use_muon` groups, torch.optim.SGD for the others.

    Group options (defaults from the constructor):
      lr, momentum, nesterov: as torch.optim.SGD (the buffer is momentum·buf + grad; Nesterov
        uses grad + momentum·buf). A one-cycle scheduler may cycle `momentum`.
      weight_decay: SGD groups: added to the gradient (coupled, as torch.optim.SGD);
        Muon groups: decoupled, p <- p·(1 − lr·weight_decay) before the update.
      use_muon: orthogonalise this group's updates (every parameter must have ndim >= 2).
      ns_steps: Newton-Schulz iterations (3 is airbench94_muon's choice, 5 the usual one).
      ns_dtype: "bf16" or "fp32", the precision of the iteration.
      normalize: before each update, rescale the weight to Frobenius norm sqrt(rows), i.e. RMS
        1 per output filter (as airbench94_muon does). Only for layers followed by a
        normalisation (BatchNorm), whose output does not depend on the weight's scale: it keeps
        the effective step size constant and replaces weight decay.
    """

    def __init__(self, params: Iterable, lr: float = 0.02, momentum: float = 0.9,
                 nesterov: bool = True, weight_decay: float = 0.0, *, use_muon: bool = True,
                 ns_steps: int = 5, ns_dtype: str = "bf16", normalize: bool = False):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        use_muon=use_muon, ns_steps=ns_steps, ns_dtype=ns_dtype,
                        normalize=normalize)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        if not g["lr"] >= 0:
            raise ValueError(f"Muon: invalid lr {g['lr']}")
        if not 0 <= g["momentum"] < 1:
            raise ValueError(f"Muon: momentum must be in [0, 1), got {g['momentum']}")
        if not g["weight_decay"] >= 0:
            raise ValueError(f"Muon: invalid weight_decay {g['weight_decay']}")
        if g["ns_dtype"] not in NS_DTYPES:
            raise ValueError(f"Muon: ns_dtype must be one of {sorted(NS_DTYPES)}, "
                             f"got {g['ns_dtype']!r}")
        if not (isinstance(g["ns_steps"], int) and g["ns_steps"] >= 1):
            raise ValueError(f"Muon: ns_steps must be an integer >= 1, got {g['ns_steps']!r}")
        if g["use_muon"]:
            flat = [tuple(p.shape) for p in g["params"] if p.ndim < 2]
            if flat:
                raise ValueError(f"Muon: a use_muon group needs matrices or filter banks "
                                 f"(ndim >= 2); got shapes {flat}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_group(group)
            else:
                self._sgd_group(group)
        return loss

    def _momentum(self, p: torch.Tensor, d_p: torch.Tensor, group: dict) -> torch.Tensor:
        """torch.optim.SGD's momentum (dampening 0) on the (decayed) gradient d_p."""
        m = group["momentum"]
        if m == 0:
            return d_p
        state = self.state[p]
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = d_p.detach().clone()
        else:
            buf.mul_(m).add_(d_p)
        return d_p.add(buf, alpha=m) if group["nesterov"] else buf

    def _sgd_group(self, group: dict) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            d_p = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
            p.add_(self._momentum(p, d_p, group), alpha=-lr)

    def _muon_group(self, group: dict) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        dtype = NS_DTYPES[group["ns_dtype"]]
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("Muon does not support sparse gradients")
            u = self._momentum(p, p.grad, group)
            rows = p.shape[0]
            cols = p.numel() // rows
            if group["normalize"]:
                p.mul_(math.sqrt(rows) / (torch.linalg.vector_norm(p) + 1e-12))
            elif wd:
                p.mul_(1 - lr * wd)
            o = newton_schulz(u.reshape(rows, cols), group["ns_steps"], dtype)
            p.add_(o.view(p.shape).to(p.dtype), alpha=-lr * muon_scale(rows, cols))


def muon_param_groups(model: nn.Module, *, lr: float, muon_lr: float, momentum: float,
                      weight_decay: float, nesterov: bool = True,
                      muon_momentum: float | None = None, muon_weight_decay: float = 0.0,
                      ns_steps: int = 5, ns_dtype: str = "bf16", normalize: bool = False,
                      norm_bias_lr_scale: float = 1.0) -> list[dict]:
    """Param groups for `Muon`: trainable conv filter banks (ndim 4) orthogonalised, the rest
    (biases, BatchNorm, the linear head, ...) plain SGD.

    Non-trainable parameters (e.g. a frozen whitening conv) are left out. The Muon group gets
    `muon_lr`, `muon_momentum` (default: `momentum`), `muon_weight_decay` (decoupled) and the
    Newton-Schulz options; the SGD group `lr`, `momentum` and `weight_decay` (coupled, as
    torch.optim.SGD). With `norm_bias_lr_scale` != 1, BatchNorm biases get a third group at
    that multiple of `lr` with `weight_decay` divided by it (the engine's `param_groups`).
    Each group carries a `name`: "sgd", "norm_bias", "muon", in that order (the engine logs
    the first group's lr: optim.lr's schedule); empty groups are dropped.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    norm_bias = set()
    if norm_bias_lr_scale != 1.0:
        norm_bias = {id(m.bias) for m in model.modules()
                     if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None}
    muon = [p for p in trainable if p.ndim == 4]
    rest = [p for p in trainable if p.ndim != 4]
    common = dict(momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, ns_dtype=ns_dtype,
                  normalize=False)
    groups = [  # the `lr` group first: param_groups[0]["lr"] is what the engine logs
        dict(common, name="sgd", params=[p for p in rest if id(p) not in norm_bias],
             use_muon=False, lr=lr, weight_decay=weight_decay),
        dict(common, name="norm_bias", params=[p for p in rest if id(p) in norm_bias],
             use_muon=False, lr=lr * norm_bias_lr_scale,
             weight_decay=weight_decay / norm_bias_lr_scale),
        dict(common, name="muon", params=muon, use_muon=True, lr=muon_lr,
             momentum=momentum if muon_momentum is None else muon_momentum,
             weight_decay=muon_weight_decay, normalize=normalize),
    ]
    return [g for g in groups if g["params"]]


# ---------------------------------------------------------- a recipe's optimizer step

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
