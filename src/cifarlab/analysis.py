"""Architecture analysis measured on the network itself: one traced forward pass of a 1x3x32x32
input gives a torchsummary-like layer table, parameter and MAC counts, a receptive-field table
and constraint checks (the seeds' "< 50k params", "RF > 44", "no max pooling", ...).

How the trace works: forward hooks on every leaf module record, in execution order, its output
shape, parameters and geometry. The receptive field (RF) and jump (product of strides) are
attached to each tensor as it is produced, so every layer starts from the RF of the tensor it
actually receives; a `TorchFunctionMode` carries them through the plain tensor code between
modules (`a * conv1(x) + b * conv2(x)`, `flatten`, indexing): the RF of an op's output is the
largest RF among its inputs, which is what a sum of parallel branches sees. Convolutions and
pools follow the usual recurrence, rf_out = rf_in + (k_eff - 1) * jump_in with
k_eff = dilation * (k - 1) + 1 and jump_out = jump_in * stride (the H dimension is used).
Global pooling (AdaptiveAvg/MaxPool2d to 1x1, an AvgPool2d as large as its input, a spatial
mean) and fully connected layers keep the RF of their input, as in the seeds' tables; an ordinary
MaxPool2d follows the recurrence even where its output is 1x1. Functional `F.conv2d`,
`F.max_pool2d`, `F.avg_pool2d`, `F.adaptive_avg_pool2d` and `x.mean((2, 3))` called in a model's
own `forward` (outside any leaf module) are traced too; they are not leaf modules, so they are
absent from `layer_table`, but count everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import CifarlabError
from .rules import RULES

# Layers that may sit between a depthwise conv and its pointwise 1x1 conv.
_PASSTHROUGH = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.Dropout,
                nn.Dropout2d, nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU,
                nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.Sigmoid, nn.Tanh)


def _first(v: Any) -> int:
    """The H component of an int-or-pair argument."""
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


@dataclass
class Event:
    """One executed layer: a leaf-module call or a traced functional conv/pool at model level."""

    name: str                    # "Conv2d-3" (type + running index) or "F.max_pool2d-1"
    module: str                  # qualified module name, or "functional"
    type: str                    # module class name or functional op name
    is_module: bool
    in_shape: tuple | None       # without the batch dimension
    out_shape: Any               # tuple, or a list of tuples for multi-output modules
    params: int = 0              # counted at a module's first call only
    macs: int = 0
    kind: str = "other"          # conv | maxpool | avgpool | gap | fc | other
    kernel: int | None = None
    stride: int | None = None
    padding: int | None = None
    dilation: int | None = None
    groups: int | None = None
    in_channels: int | None = None
    out_channels: int | None = None
    is_global: bool = False      # a global pool: keeps the RF of its input (seed convention)
    rf: int = 1
    jump: int = 1
    module_obj: nn.Module | None = field(default=None, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.name} ({self.module})" if self.is_module else self.name


@dataclass
class Trace:
    events: list[Event]
    rf: int          # receptive field of the model's output
    total_params: int
    trainable_params: int
    param_bytes: int
    outputs: int = 0  # values per image the network returns (10 logits for CIFAR-10)


def _shape(t: Any) -> Any:
    if isinstance(t, torch.Tensor):
        return tuple(t.shape[1:])
    if isinstance(t, (tuple, list)):
        return [_shape(x) for x in t if isinstance(x, torch.Tensor)]
    return None


def _tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for x in obj:
            yield from _tensors(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x)


class _Tracer(TorchFunctionMode):
    """Records leaf-module calls (via hooks) and model-level tensor ops (via the mode)."""

    def __init__(self):
        super().__init__()
        self.rf: dict[int, tuple[int, int]] = {}
        self.keep: list[torch.Tensor] = []   # keeps traced tensors alive so ids stay unique
        self.events: list[Event] = []
        self.depth = 0
        self.seen: set[int] = set()
        self.names: dict[int, str] = {}
        self.n_functional = 0
        self.n_modules = 0

    # --- receptive-field bookkeeping -------------------------------------------------------
    def get(self, obj: Any) -> tuple[int, int]:
        known = [self.rf[id(t)] for t in _tensors(obj) if id(t) in self.rf]
        if not known:
            return 1, 1
        return max(r for r, _ in known), max(j for _, j in known)

    def set(self, obj: Any, rf: int, jump: int) -> None:
        for t in _tensors(obj):
            self.rf[id(t)] = (rf, jump)
            self.keep.append(t)

    # --- the mode: model-level tensor code ---------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0:
            self._functional(func, args, kwargs, out)
        return out

    def _functional(self, func, args, kwargs, out) -> None:
        if not any(True for _ in _tensors(out)):
            return
        rf, jump = self.get((args, kwargs))
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        ev = None
        if x is not None and x.dim() == 4 and isinstance(out, torch.Tensor):
            ev = self._functional_event(func, args, kwargs, x, out, rf, jump)
        if ev is not None:
            self.events.append(ev)
            rf, jump = ev.rf, ev.jump
        self.set(out, rf, jump)

    def _functional_event(self, func, args, kwargs, x, out, rf, jump) -> Event | None:
        def arg(i, key, default):
            return args[i] if len(args) > i else kwargs.get(key, default)

        if func is F.conv2d:
            w = arg(1, "weight", None)
            k, s = _first(w.shape[2:]), _first(arg(3, "stride", 1))
            p, d = _first(arg(4, "padding", 0)), _first(arg(5, "dilation", 1))
            spec = dict(kind="conv", kernel=k, stride=s, padding=p, dilation=d,
                        groups=int(arg(6, "groups", 1)), macs=out.numel() * w[0].numel())
            name = "conv2d"
        elif func is F.max_pool2d or func is F.avg_pool2d:
            k = _first(arg(1, "kernel_size", 1))
            s = arg(2, "stride", None)
            s = k if s is None or s == [] or s == () else _first(s)
            d = _first(arg(4, "dilation", 1)) if func is F.max_pool2d else 1
            kind = "maxpool" if func is F.max_pool2d else "avgpool"
            glob = kind == "avgpool" and tuple(out.shape[-2:]) == (1, 1) and k >= x.shape[-2]
            if glob:
                kind = "gap"
            spec = dict(kind=kind, kernel=k, stride=s, padding=_first(arg(3, "padding", 0)),
                        dilation=d, is_global=glob)
            name = "max_pool2d" if kind == "maxpool" else "avg_pool2d"
        elif func is F.adaptive_avg_pool2d and tuple(out.shape[-2:]) == (1, 1):
            spec, name = dict(kind="gap", is_global=True), "adaptive_avg_pool2d"
        elif getattr(func, "__name__", "") == "mean" and out.dim() in (2, 4):
            dims = arg(1, "dim", None)
            dims = (dims,) if isinstance(dims, int) else dims
            if dims is None or {int(d) % 4 for d in dims} != {2, 3}:
                return None
            spec, name = dict(kind="gap", is_global=True), "mean"
        else:
            return None
        self.n_functional += 1
        return self._event(f"F.{name}-{self.n_functional}", "functional", name, False,
                           x, out, rf, jump, out_channels=out.shape[1] if out.dim() == 4 else None,
                           **spec)

    def _event(self, name, module, typ, is_module, x, out, rf_in, jump_in, **spec) -> Event:
        ev = Event(name=name, module=module, type=typ, is_module=is_module,
                   in_shape=_shape(x), out_shape=_shape(out), **spec)
        if x is not None and x.dim() == 4 and ev.in_channels is None:
            ev.in_channels = x.shape[1]
        if ev.kind in ("conv", "maxpool", "avgpool") and not ev.is_global:
            k_eff = (ev.dilation or 1) * (ev.kernel - 1) + 1
            ev.rf, ev.jump = rf_in + (k_eff - 1) * jump_in, jump_in * ev.stride
        else:
            ev.rf, ev.jump = rf_in, jump_in
        return ev

    # --- the hooks: leaf modules ---------------------------------------------------------------
    def pre_hook(self, module, args):
        self.depth += 1

    def hook(self, module, args, out):
        self.depth -= 1
        rf_in, jump_in = self.get(args)
        x = next(_tensors(args), None)
        spec = self._module_spec(module, x, out)
        first = id(module) not in self.seen
        self.seen.add(id(module))
        typ = type(module).__name__
        self.n_modules += 1
        ev = self._event(f"{typ}-{self.n_modules}", self.names[id(module)], typ,
                         True, x, out, rf_in, jump_in, **spec)
        ev.module_obj = module
        if first:
            ev.params = sum(p.numel() for p in module.parameters(recurse=False))
        self.events.append(ev)
        self.set(out, ev.rf, ev.jump)

    @staticmethod
    def _module_spec(m: nn.Module, x: torch.Tensor | None, out: Any) -> dict:
        y = out if isinstance(out, torch.Tensor) else next(_tensors(out), None)
        if isinstance(m, nn.Conv2d):
            macs = y.numel() // y.shape[0] * (m.in_channels // m.groups) * \
                m.kernel_size[0] * m.kernel_size[1] if y is not None else 0
            pad = m.padding if isinstance(m.padding, str) else _first(m.padding)
            return dict(kind="conv", kernel=m.kernel_size[0], stride=m.stride[0], padding=pad,
                        dilation=m.dilation[0], groups=m.groups, in_channels=m.in_channels,
                        out_channels=m.out_channels, macs=macs)
        if isinstance(m, nn.Linear):
            macs = y.numel() // y.shape[0] * m.in_features if y is not None else 0
            return dict(kind="fc", in_channels=m.in_features, out_channels=m.out_features,
                        macs=macs)
        if x is None or x.dim() != 4 or y is None:
            return {}
        c = y.shape[1]
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            kind = "maxpool" if isinstance(m, nn.MaxPool2d) else "avgpool"
            k = _first(m.kernel_size)
            s = _first(m.stride) if m.stride not in (None, [], ()) else k
            glob = kind == "avgpool" and tuple(y.shape[-2:]) == (1, 1) and k >= x.shape[-2]
            if glob:
                kind = "gap"
            d = _first(m.dilation) if kind == "maxpool" else 1
            return dict(kind=kind, kernel=k, stride=s, padding=_first(m.padding), dilation=d,
                        out_channels=c, is_global=glob)
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            avg = isinstance(m, nn.AdaptiveAvgPool2d)
            h_in, h_out = x.shape[-2], y.shape[-2]
            if tuple(y.shape[-2:]) == (1, 1):  # global: keeps the RF, as in the seeds' tables
                return dict(kind="gap" if avg else "maxpool", kernel=h_in, stride=1, padding=0,
                            dilation=1, out_channels=c, is_global=True)
            s = max(h_in // h_out, 1)
            return dict(kind="avgpool" if avg else "maxpool", kernel=h_in - (h_out - 1) * s,
                        stride=s, padding=0, dilation=1, out_channels=c)
        return {}


def trace(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> Trace:
    """Run one 1xCxHxW forward pass and record every layer (see the module docstring)."""
    params = list(model.parameters())
    dev = params[0].device if params else torch.device("cpu")
    dtype = params[0].dtype if params and params[0].is_floating_point() else torch.float32
    tr = _Tracer()
    tr.names = {id(m): (n or type(m).__name__) for n, m in model.named_modules()}
    handles = []
    for m in model.modules():
        if next(m.children(), None) is None:
            handles.append(m.register_forward_pre_hook(tr.pre_hook))
            handles.append(m.register_forward_hook(tr.hook))
    was_training = model.training
    model.eval()  # BatchNorm on one image (1x1 maps deep in a net) needs running stats
    try:
        # a private generator: tracing never moves the training run's random stream
        gen = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn((1, *input_size), device=dev, dtype=dtype, generator=gen)
        tr.set(x, 1, 1)
        try:
            with torch.no_grad(), tr:
                out = model(x)
        except Exception as e:  # a user's network that does not run: one line, not a trace
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise CifarlabError(f"the network fails on a 1x{'x'.join(map(str, input_size))} "
                                f"input: {type(e).__name__}: {first}") from None
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise CifarlabError(f"the network returns {got} for one image; expected "
                                "(1, classes) logits")
        rf = tr.get(out)[0] if any(id(t) in tr.rf for t in _tensors(out)) else \
            max((e.rf for e in tr.events), default=1)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    nbytes = sum(p.numel() * p.element_size() for p in params)
    return Trace(tr.events, rf, total, trainable, nbytes, int(out.shape[1]))


# --- public API -----------------------------------------------------------------------------

def layer_table(model: nn.Module) -> list[dict]:
    """torchsummary-like rows for the leaf modules in execution order (a module called twice
    gets two rows; its parameters are counted at the first)."""
    return [{"name": e.name, "module": e.module, "type": e.type, "output_shape": e.out_shape,
             "params": e.params, "macs": e.macs}
            for e in trace(model).events if e.is_module]


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    ps = list(model.parameters())
    return sum(p.numel() for p in ps), sum(p.numel() for p in ps if p.requires_grad)


def macs(model: nn.Module) -> int:
    """Multiply-accumulates of the Conv2d and Linear layers for one 32x32 image."""
    return sum(e.macs for e in trace(model).events)


def _rf_rows(t: Trace) -> list[dict]:
    rows = []
    for e in t.events:
        if e.kind == "other":
            continue
        rows.append({
            "name": e.name, "module": e.module, "type": e.type, "kind": e.kind,
            "input_size": tuple(e.in_shape[-2:]) if e.in_shape and len(e.in_shape) == 3 else None,
            "output_size": tuple(e.out_shape[-2:])
            if isinstance(e.out_shape, tuple) and len(e.out_shape) == 3 else None,
            "in_channels": e.in_channels, "out_channels": e.out_channels,
            "kernel": e.kernel, "stride": e.stride, "padding": e.padding,
            "dilation": e.dilation, "groups": e.groups, "rf": e.rf, "jump": e.jump,
        })
    return rows


def receptive_field_table(model: nn.Module) -> list[dict]:
    """One row per conv / pool / GAP / FC layer in execution order with its geometry, the RF
    of its output and the jump (input pixels between neighbouring outputs)."""
    return _rf_rows(trace(model))


def receptive_field(model: nn.Module) -> int:
    """Receptive field of the model's output (in input pixels)."""
    return trace(model).rf


def _is_depthwise(e: Event) -> bool:
    return e.kind == "conv" and e.groups is not None and e.in_channels is not None \
        and e.in_channels > 1 and e.groups == e.in_channels


def _pointwise_after(events: list[Event], i: int) -> Event | None:
    for e in events[i + 1:]:
        if e.kind == "conv":
            return e if e.kernel == 1 and e.groups == 1 else None
        if e.kind != "other":
            return None
        if e.is_module and not isinstance(e.module_obj, _PASSTHROUGH):
            return None
    return None


def _offenders(t: Trace, rule: str) -> list[tuple[Event, str]]:
    """(layer, description) for every layer that has the feature `rule`."""
    ev = t.events
    found: list[tuple[Event, str]] = []
    if rule == "depthwise_separable":
        for i, e in enumerate(ev):
            if _is_depthwise(e) and (pw := _pointwise_after(ev, i)) is not None:
                found.append((e, f"{e.ref} + {pw.ref} is a depthwise-separable conv"))
    elif rule == "dilated":
        found = [(e, f"{e.ref} has dilation {e.dilation}") for e in ev
                 if e.kind == "conv" and (e.dilation or 1) > 1]
    elif rule == "gap":
        found = [(e, f"{e.ref} is a global average pool") for e in ev if e.kind == "gap"]
    elif rule == "maxpool":
        found = [(e, f"{e.ref} is a max pool") for e in ev if e.kind == "maxpool"]
    elif rule == "avgpool":
        found = [(e, f"{e.ref} is an average pool") for e in ev if e.kind == "avgpool"]
    elif rule == "strided_conv":
        found = [(e, f"{e.ref} has stride {e.stride}") for e in ev
                 if e.kind == "conv" and (e.stride or 1) > 1]
    unique, seen = [], set()
    for e, msg in found:  # a module called twice is one fault
        key = e.module if e.is_module else e.name
        if key not in seen:
            seen.add(key)
            unique.append((e, msg))
    return unique


_MISSING = {
    "dilated": "no conv with dilation > 1",
    "gap": "no global average pooling",
    "maxpool": "no max pooling layer",
    "avgpool": "no (non-global) average pooling layer",
    "strided_conv": "no conv with stride > 1",
}


def _as_rules(rules: Any) -> tuple[str, ...]:
    rules = (rules,) if isinstance(rules, str) else tuple(rules or ())
    for r in rules:
        if r not in RULES:
            raise CifarlabError(f"unknown constraint rule '{r}' (known: {', '.join(RULES)})")
    return rules


def check_constraints(model: nn.Module, max_params: int | None = None,
                      min_receptive_field: int | None = None, require=(), forbid=(),
                      max_macs: int | None = None) -> list[str]:
    """Violation messages (empty = all constraints hold).

    Bounds are inclusive: `max_params` is the most parameters allowed (total count),
    `max_macs` the most multiply-accumulates per image, and `min_receptive_field` the smallest
    RF allowed. `require` / `forbid` take rule names from RULES: depthwise_separable (a conv
    with groups == in_channels > 1 followed, directly or after BN/activation/dropout, by a 1x1
    conv), dilated (a conv with dilation > 1), gap (global average pooling), maxpool, avgpool
    (average pooling that is not global), strided_conv (a conv with stride > 1).
    """
    return assess(model, max_params=max_params, min_receptive_field=min_receptive_field,
                  require=require, forbid=forbid, max_macs=max_macs)[1]


def assess(model: nn.Module, max_params: int | None = None,
           min_receptive_field: int | None = None, require=(), forbid=(),
           max_macs: int | None = None) -> tuple[dict, list[str]]:
    """`describe(model)` and `check_constraints(model, ...)` from one trace."""
    require, forbid = _as_rules(require), _as_rules(forbid)
    t = trace(model)
    model_facts = _model_facts(t)
    out: list[str] = []
    if max_params is not None and t.total_params > max_params:
        out.append(f"max_params {max_params}: model has {t.total_params:,} parameters")
    if max_macs is not None and model_facts["macs"] > max_macs:
        out.append(f"max_macs {max_macs}: model has {model_facts['macs']:,} MACs")
    if min_receptive_field is not None and t.rf < min_receptive_field:
        out.append(f"min_receptive_field {min_receptive_field}: receptive field is {t.rf}")
    for rule in require:
        if _offenders(t, rule):
            continue
        if rule == "depthwise_separable":
            dw = [e for e in t.events if _is_depthwise(e)]
            if dw:
                out.extend(f"require depthwise_separable: {e.ref} is depthwise but not "
                           "followed by a 1x1 conv" for e in dw)
            else:
                out.append("require depthwise_separable: no depthwise conv "
                           "(groups == in_channels > 1) followed by a 1x1 conv")
        else:
            out.append(f"require {rule}: {_MISSING[rule]}")
    for rule in forbid:
        out.extend(f"forbid {rule}: {msg}" for _, msg in _offenders(t, rule))
    return model_facts, out


def _fmt_shape(s: Any) -> str:
    if isinstance(s, tuple):
        return str([-1, *s])
    if isinstance(s, list):
        return ", ".join(_fmt_shape(x) for x in s)
    return "-"


def format_summary(model: nn.Module) -> str:
    """A torchsummary-style text: layer table, parameter totals, parameter size and MACs."""
    t = trace(model)
    line, heavy = "-" * 64, "=" * 64
    lines = [line, f"{'Layer (type)':>20}  {'Output Shape':>25} {'Param #':>15}", heavy]
    for e in t.events:
        if e.is_module:
            lines.append(f"{e.name:>20}  {_fmt_shape(e.out_shape):>25} {e.params:>15,}")
    total_macs = sum(e.macs for e in t.events)
    lines += [
        heavy,
        f"Total params: {t.total_params:,}",
        f"Trainable params: {t.trainable_params:,}",
        f"Non-trainable params: {t.total_params - t.trainable_params:,}",
        line,
        f"Params size (MB): {t.param_bytes / 1024 ** 2:.2f}",
        f"MACs: {total_macs:,} ({total_macs / 1e6:.2f} M)",
        f"Receptive field: {t.rf}",
        line,
    ]
    return "\n".join(lines)


def format_rf_table(model: nn.Module) -> str:
    """The receptive-field table as aligned text (one row per conv/pool/GAP/FC layer)."""
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, tuple):
            return "x".join(str(x) for x in v)
        return str(v)

    cols = [("Layer", "name"), ("Module", "module"), ("In", "input_size"),
            ("Out", "output_size"), ("Cin", "in_channels"), ("Cout", "out_channels"),
            ("k", "kernel"), ("s", "stride"), ("p", "padding"), ("d", "dilation"),
            ("g", "groups"), ("RF", "rf"), ("Jump", "jump")]
    rows = [[cell(r[key]) for _, key in cols] for r in receptive_field_table(model)]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, (h, _) in enumerate(cols)]
    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    out = [fmt([h for h, _ in cols]), "  ".join("-" * w for w in widths)]
    out += [fmt(r) for r in rows]
    return "\n".join(out)


def describe(model: nn.Module) -> dict:
    """Params, MACs and receptive field from one trace."""
    return _model_facts(trace(model))


def macs_at(model: nn.Module, size: int) -> int | None:
    """MACs of one size x size image (None if the network does not take that size)."""
    try:
        return sum(e.macs for e in trace(model, (3, size, size)).events)
    except CifarlabError:  # the trace's one line: the network fails at this size
        return None


def _model_facts(t: Trace) -> dict:
    return {"params": t.total_params, "trainable_params": t.trainable_params,
            "macs": sum(e.macs for e in t.events), "receptive_field": t.rf,
            "outputs": t.outputs}
