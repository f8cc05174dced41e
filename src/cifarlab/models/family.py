"""`family`: one parametric network that `cifarlab search` explores (and any recipe can name).

The network is a stem, a list of stages and a head, all given as plain JSON-able keyword
arguments so that a design lives in a recipe's `model_args`:

    stem          width of a 3x3 conv at 32 px (0 = none: the first stage sees the image), or
                  "whiten": airbench's frozen 2x2 whitening conv 3 -> 24 (31 px), then ReLU
    style         classic | air (below)
    widths        output channels of each stage
    depths        blocks per stage (0 = the stage only downsamples)
    blocks        block type: plain | dwsep | residual | branch | pointwise
    downsample    how a stage starts: none | stride | maxpool | avgpool | dilation
    dilation      dilation of the stage's 3x3 convs
    head          gap (global average pool + linear) | fc (flatten + linear)
    dropout       dropout after every block (0 = none)
    head_dropout  dropout before the final linear layer

`widths`, `blocks` and `dilation` take one value per stage, and a stage's entry may itself be
a list with one value per block; `blocks`, `downsample` and `dilation` may also be one value
for every stage. Block types (every conv without bias, followed by BatchNorm and ReLU):

    plain      3x3 conv
    dwsep      depthwise 3x3 conv, then pointwise 1x1 conv (a depthwise-separable conv)
    residual   3x3 conv, 3x3 conv, plus a shortcut (identity, or 1x1 conv when the shape
               changes), ReLU after the sum
    branch     two parallel 3x3 convs with dilation d and 2d, each making half the channels,
               concatenated (multi-branch, two scales)
    pointwise  1x1 conv (channel mixing / reduction, as seed 001's "1x1" layers)

Downsampling at the start of a stage: `stride` (its first block's 3x3 or depthwise conv has
stride 2), `maxpool` / `avgpool` (a 2x2 pool before the first block), `dilation` (the
resolution is kept and every conv after the stage's first block gets twice the dilation: the
strided network evaluated densely, as seed 001's dilated variant does - same receptive field,
4x the MACs of what follows) or `none`.

Style `air` builds the blocks as airbench does (models/fast.py FastTop, AirSeed001): BatchNorm
trains only its bias (momentum 0.4), 3x3 convs start as identities (dirac), a depthwise-separable
conv has one BatchNorm + ReLU after its pointwise conv (none between), a stage's 2x2 pool comes
after its first conv and before that conv's BatchNorm (plain, dwsep and pointwise blocks; before
a residual or branch block, as in classic), and the final linear layer has no bias and its
output is divided by 9. Pooling before BatchNorm leaves it a quarter of the work.

The shipped designs expressed exactly (same layers, parameters, MACs and receptive field):

    fast-50k      stem 16, widths [32, 32, 48, 48], depths [1, 1, 1, 1],
                  downsample [none, maxpool, none, maxpool]
    fast-seed001  (FastSeed001; the fast-seed001 recipe trains air-seed001 since issue 32,
                  which pools before BatchNorm: not a family design)
                  stem 32, widths [64, 128, 128], depths [2, 1, 3],
                  blocks [plain, plain, dwsep], downsample [stride, stride, none],
                  dilation [1, 1, [1, 2, 1]]
    air-seed001   (the fast-seed001 recipe's network since issue 32) stem "whiten", style air,
                  widths [48, 96, 128, 128], depths [2, 2, 1, 1],
                  blocks [plain, plain, dwsep, dwsep],
                  downsample [avgpool, avgpool, avgpool, none], dilation [1, 1, 2, 1]
    seed000-m3    stem 16, widths [32, 48, 64, 64], depths [1, 1, 1, 0],
                  downsample [none, avgpool, avgpool, maxpool], head_dropout 0.1
    seed000-m1    stem 32, widths [48, 48], depths [1, 0], downsample [maxpool, maxpool],
                  head fc, head_dropout 0.1
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import CifarlabError
from .fast import bias_only_bn, dirac_conv, init_whitening, whitening_conv
from .registry import register_model

BLOCKS = ("plain", "dwsep", "residual", "branch", "pointwise")
DOWNSAMPLES = ("none", "stride", "maxpool", "avgpool", "dilation")
HEADS = ("gap", "fc")
STYLES = ("classic", "air")
WHITEN = "whiten"  # the stem value for airbench's whitening conv
# the largest network the family builds: a search should never build a monster by accident
MAX_WIDTH, MAX_DEPTH, MAX_STAGES, MAX_DILATION = 2048, 32, 8, 16


class FamilyError(CifarlabError):
    """Invalid `family` model arguments."""


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1,
          groups: int = 1, air: bool = False) -> nn.Conv2d:
    """Conv without bias, 'same' padding; in style air a 3x3 conv (not grouped) starts as an
    identity. Under CPU bf16 training, a dilated conv whose bf16 weight gradient is wrong on
    this CPU runs in fp32 (`layers.use_fp32_where_bf16_fails`)."""
    if air and k == 3 and groups == 1:
        return dirac_conv(cin, cout, stride, dilation)
    return nn.Conv2d(cin, cout, k, stride=stride, padding=(k // 2) * dilation,
                     dilation=dilation, groups=groups, bias=False)


def _norm(c: int, air: bool) -> nn.BatchNorm2d:
    return bias_only_bn(c) if air else nn.BatchNorm2d(c)


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1,
         groups: int = 1, air: bool = False, pool: nn.Module | None = None) -> list[nn.Module]:
    """Conv (no bias, 'same' padding) -> [pool] -> BatchNorm -> ReLU."""
    return [_conv(cin, cout, k, stride, dilation, groups, air), *([pool] if pool else []),
            _norm(cout, air), nn.ReLU(inplace=True)]


class Residual(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, plus a shortcut; ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1,
                 air: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            *_cbr(cin, cout, stride=stride, dilation=dilation, air=air),
            _conv(cout, cout, 3, dilation=dilation, air=air),
            _norm(cout, air))
        self.shortcut = (nn.Identity() if cin == cout and stride == 1 else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _norm(cout, air)))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class Branch(nn.Module):
    """Two parallel 3x3 convs (dilation d and 2d), concatenated, then BatchNorm and ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1,
                 air: bool = False):
        super().__init__()
        c1 = cout // 2
        self.near = _conv(cin, c1, 3, stride, dilation, air=air)
        self.far = _conv(cin, cout - c1, 3, stride, 2 * dilation, air=air)
        self.bn = _norm(cout, air)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(torch.cat([self.near(x), self.far(x)], 1)))


# the blocks that take a stage's pool after their first conv in style air
POOL_INSIDE = ("plain", "dwsep", "pointwise")


def make_block(kind: str, cin: int, cout: int, stride: int = 1, dilation: int = 1,
               air: bool = False, pool: nn.Module | None = None) -> list[nn.Module]:
    """One block's layers; `pool` (style air, POOL_INSIDE kinds only) goes before the
    block's (first) BatchNorm."""
    if pool is not None and kind not in POOL_INSIDE:
        raise FamilyError(f"family: a {kind} block takes no pool inside")
    if kind == "plain":
        return _cbr(cin, cout, stride=stride, dilation=dilation, air=air, pool=pool)
    if kind == "dwsep":
        if air:  # depthwise -> pointwise -> [pool] -> BN -> ReLU
            return [_conv(cin, cin, 3, stride, dilation, groups=cin),
                    *_cbr(cin, cout, 1, air=air, pool=pool)]
        return _cbr(cin, cin, stride=stride, dilation=dilation, groups=cin) + _cbr(cin, cout, 1)
    if kind == "residual":
        return [Residual(cin, cout, stride, dilation, air)]
    if kind == "branch":
        return [Branch(cin, cout, stride, dilation, air)]
    if kind == "pointwise":
        return _cbr(cin, cout, 1, stride=stride, air=air, pool=pool)
    raise FamilyError(f"family: unknown block '{kind}' (known: {', '.join(BLOCKS)})")


def _per_stage(name: str, value: Any, n: int, scalar_ok: bool = True) -> list:
    """One entry per stage: a scalar is repeated (where allowed), a list must have n entries."""
    if isinstance(value, list | tuple):
        if len(value) != n:
            raise FamilyError(f"family: {name} has {len(value)} entries for {n} stages")
        return list(value)
    if not scalar_ok:
        raise FamilyError(f"family: {name} must be a list with one entry per stage")
    return [value] * n


def _per_block(name: str, stage: int, value: Any, depth: int) -> list:
    if isinstance(value, list | tuple):
        if len(value) != depth:
            raise FamilyError(f"family: {name}[{stage}] has {len(value)} entries for "
                              f"{depth} blocks")
        return list(value)
    return [value] * depth


def _int(name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise FamilyError(f"family: {name} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _choice(name: str, v: Any, options: Sequence[str]) -> str:
    if v not in options:
        raise FamilyError(f"family: {name} '{v}' is not one of {', '.join(options)}")
    return v


def _rate(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
        raise FamilyError(f"family: {name} must be a number in [0, 1), got {v!r}")
    return float(v)


def plan(stem: int | str = 32, widths: Sequence = (64, 128, 128),
         depths: Sequence[int] = (2, 1, 3), blocks: Any = "plain", downsample: Any = "stride",
         dilation: Any = 1, head: str = "gap", dropout: float = 0.0, head_dropout: float = 0.0,
         style: str = "classic") -> dict:
    """Validate the arguments and expand them into one explicit entry per stage and block:
    {'stem', 'style', 'stages': [{'downsample', 'blocks': [(kind, width, dilation), ...]}],
    'head', 'dropout', 'head_dropout', 'resolution'} (the final feature-map side). Raises
    FamilyError with a one-line message naming the bad argument."""
    if not isinstance(depths, list | tuple) or not depths:
        raise FamilyError("family: depths must be a non-empty list (one entry per stage)")
    n = len(depths)
    if n > MAX_STAGES:
        raise FamilyError(f"family: at most {MAX_STAGES} stages, got {n}")
    if stem != WHITEN:
        try:
            stem = _int("stem", stem, 0, MAX_WIDTH)
        except FamilyError:
            raise FamilyError(f"family: stem must be an integer in [0, {MAX_WIDTH}] or "
                              f"'{WHITEN}', got {stem!r}") from None
    style = _choice("style", style, STYLES)
    depths = [_int(f"depths[{i}]", d, 0, MAX_DEPTH) for i, d in enumerate(depths)]
    widths = _per_stage("widths", widths, n, scalar_ok=False)
    blocks = _per_stage("blocks", blocks, n)
    downs = [_choice(f"downsample[{i}]", d, DOWNSAMPLES)
             for i, d in enumerate(_per_stage("downsample", downsample, n))]
    dils = _per_stage("dilation", dilation, n)
    head = _choice("head", head, HEADS)
    dropout, head_dropout = _rate("dropout", dropout), _rate("head_dropout", head_dropout)
    side, stages = (31 if stem == WHITEN else 32), []
    for i in range(n):
        ws = [_int(f"widths[{i}]", w, 1, MAX_WIDTH)
              for w in _per_block("widths", i, widths[i], depths[i])]
        ks = [_choice(f"blocks[{i}]", b, BLOCKS)
              for b in _per_block("blocks", i, blocks[i], depths[i])]
        ds = [_int(f"dilation[{i}]", d, 1, MAX_DILATION)
              for d in _per_block("dilation", i, dils[i], depths[i])]
        if downs[i] in ("stride", "maxpool", "avgpool"):
            if downs[i] == "stride" and depths[i] == 0:
                raise FamilyError(f"family: stage {i} downsamples by stride but has no block")
            if side < 2:
                raise FamilyError(f"family: stage {i} downsamples a {side}x{side} map")
            side = (side + 1) // 2 if downs[i] == "stride" else side // 2
        stages.append({"downsample": downs[i], "blocks": list(zip(ks, ws, ds, strict=True))})
    return {"stem": stem, "style": style, "stages": stages, "head": head, "dropout": dropout,
            "head_dropout": head_dropout, "resolution": side}


@register_model("family", provenance="cifarlab: parametric family for `cifarlab search` "
                "(stages of plain / depthwise-separable / residual / multi-branch blocks, "
                "stride / pool / dilation downsampling, GAP or FC head, classic or airbench "
                "style)")
class FamilyNet(nn.Module):
    """The parametric network of `cifarlab search` (arguments: see the module docstring)."""

    def __init__(self, num_classes: int = 10, stem: int | str = 32,
                 widths: Sequence = (64, 128, 128), depths: Sequence[int] = (2, 1, 3),
                 blocks: Any = "plain", downsample: Any = "stride", dilation: Any = 1,
                 head: str = "gap", dropout: float = 0.0, head_dropout: float = 0.0,
                 style: str = "classic"):
        super().__init__()
        p = plan(stem, widths, depths, blocks, downsample, dilation, head, dropout,
                 head_dropout, style)
        air = self.air = p["style"] == "air"
        layers: list[nn.Module] = []
        c = 3
        self.whiten = None
        if p["stem"] == WHITEN:
            self.whiten = whitening_conv(train_bias=True)
            layers += [self.whiten, nn.ReLU(inplace=True)]
            c = 24
        elif p["stem"]:
            layers += _cbr(3, p["stem"], air=air)
            c = p["stem"]
        base = 1  # dilation multiplier from `dilation` downsampling
        for stage in p["stages"]:
            down, bl = stage["downsample"], stage["blocks"]
            pool = {"maxpool": nn.MaxPool2d, "avgpool": nn.AvgPool2d}.get(down)
            inside = pool is not None and air and bool(bl) and bl[0][0] in POOL_INSIDE
            if pool is not None and not inside:
                layers.append(pool(2))
            elif down == "dilation" and not bl:
                base *= 2
            for j, (kind, w, d) in enumerate(bl):
                stride = 2 if down == "stride" and j == 0 else 1
                layers += make_block(kind, c, w, stride, d * base, air,
                                     pool(2) if inside and j == 0 else None)
                if p["dropout"] > 0:
                    layers.append(nn.Dropout(p["dropout"]))
                c = w
                if down == "dilation" and j == 0:  # where a stride would have been
                    base *= 2
        self.features = nn.Sequential(*layers)
        side = p["resolution"]
        head: list[nn.Module] = ([nn.AdaptiveAvgPool2d(1), nn.Flatten()] if p["head"] == "gap"
                                 else [nn.Flatten()])
        if p["head_dropout"] > 0:
            head.append(nn.Dropout(p["head_dropout"]))
        head.append(nn.Linear(c if p["head"] == "gap" else c * side * side, num_classes,
                              bias=not air))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x))
        return out / 9 if self.air else out

    def init_from_data(self, images: torch.Tensor) -> None:
        """The whitening stem's filters from normalised training images (the engine calls it
        before the first step); nothing without one."""
        if self.whiten is not None:
            init_whitening(self.whiten, images)


def describe_design(args: dict) -> str:
    """A few words for a design: 'stem 32 | /s 2x plain 64 | /s 1x plain 128 | 3x dwsep 128 d2
    | gap' ('air | ' first in style air; per stage: how it downsamples - /s stride, /m max
    pool, /a avg pool, /d dilation -, blocks, kinds, widths and the largest dilation)."""
    try:
        p = plan(**{k: v for k, v in args.items() if k != "num_classes"})
    except (CifarlabError, TypeError) as e:
        return f"invalid design ({e})"
    mark = {"none": "", "stride": "/s ", "maxpool": "/m ", "avgpool": "/a ", "dilation": "/d "}
    parts = ["air"] if p["style"] == "air" else []
    parts += [f"stem {p['stem']}"] if p["stem"] else []
    for stage in p["stages"]:
        bl = stage["blocks"]
        if not bl:
            parts.append(mark[stage["downsample"]].strip() or "-")
            continue
        kinds = sorted({k for k, _, _ in bl}, key=[k for k, _, _ in bl].index)
        widths = sorted({w for _, w, _ in bl}, key=[w for _, w, _ in bl].index)
        dmax = max(d for _, _, d in bl)
        parts.append(f"{mark[stage['downsample']]}{len(bl)}x {'/'.join(kinds)} "
                     f"{'/'.join(map(str, widths))}" + (f" d{dmax}" if dmax > 1 else ""))
    parts.append(p["head"])
    return " | ".join(parts)
