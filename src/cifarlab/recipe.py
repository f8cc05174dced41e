"""Recipes: every experiment as data (TOML), validated before any training starts.

A recipe is a nested dict with the sections of `DEFAULTS`. Files name only what differs from
the defaults; `resolve` merges file + overrides onto the defaults and validates every key and
value, so a typo or a negative learning rate fails at once, naming the key.
"""

from __future__ import annotations

import copy
import difflib
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from .analysis import RULES
from .errors import CifarlabError


class RecipeError(CifarlabError):
    pass


DEFAULTS: dict[str, Any] = {
    "name": "",
    "description": "",
    "model": "seed001",
    "model_args": {},  # passed to the model builder; checked against its signature
    "data": {
        "train_subset": 0,  # 0 = all 50,000 images
        "test_subset": 0,  # 0 = all 10,000 images
    },
    "augment": {
        "backend": "tensor",  # tensor | albumentations | none
        "crop_pad": 4,
        "crop_mode": "reflect",  # reflect | constant | replicate
        "flip": True,  # horizontal flip ...
        "flip_p": 0.5,  # ... with this probability
        "flip_mode": "random",  # random | alternate: a random first flip, then every other epoch
        "vflip_p": 0.0,  # vertical flip probability
        "rotate": 0.0,  # random rotation in [-rotate, rotate] degrees
        "cutout": 0,  # side of the square hole, px; 0 = off
        "brightness": 0.0,
        "contrast": 0.0,
        "saturation": 0.0,
        "hue": 0.0,  # hue shift in [-hue, hue] turns of the colour circle (at most 0.5)
        "shift_limit": 0.0625,  # albumentations ShiftScaleRotate
        "scale_limit": 0.1,
        "rotate_limit": 45.0,
        "border": "constant",  # ShiftScaleRotate's uncovered pixels: constant (dataset mean)
                               # | reflect (albumentations 1.x's default, BORDER_REFLECT_101)
        "coarse_dropout": 16,  # albumentations CoarseDropout hole side, px; 0 = off
        "test": False,  # also augment the test set (only to reproduce seed 003's tutorial)
    },
    "optim": {
        "name": "sgd",  # sgd | adam | adamw
        "lr": 0.05,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "beta1": 0.9,
        "beta2": 0.999,
        # lr multiplier for BatchNorm biases (airbench: 64); their weight decay is divided by
        # it, so the decay per step stays that of the other parameters
        "norm_bias_lr_scale": 1.0,
    },
    "loss": {
        "name": "ce",  # ce | nll
        "label_smoothing": 0.0,
    },
    "schedule": {
        # onecycle (torch's OneCycleLR: also cycles momentum / Adam beta1 between 0.85 and
        # 0.95) | step | cosine | constant; every schedule is stepped once per batch
        "name": "onecycle",
        "pct_start": 0.25,  # onecycle: fraction of steps spent warming up
        "div_factor": 25.0,  # onecycle: initial lr = lr / div_factor
        "final_div_factor": 1e4,  # onecycle: final lr = initial lr / final_div_factor
        "anneal": "linear",  # onecycle: linear | cos
        "cycle_momentum": True,  # onecycle: cycle momentum / Adam beta1 (false: keep it fixed)
        "step_size": 10,  # step: epochs between drops
        "gamma": 0.1,  # step: multiplier at each drop
        "min_lr": 0.0,  # cosine: final lr
    },
    "constraints": {  # architecture rules checked before training (0 / [] = none)
        "max_params": 0,  # most parameters allowed
        "min_receptive_field": 0,  # smallest receptive field allowed
        "require": [],  # depthwise_separable | dilated | gap | maxpool | avgpool | strided_conv
        "forbid": [],
    },
    "train": {
        "epochs": 30,
        "batch_size": 256,
        "grad_clip": 0.0,  # gradient clipping threshold; 0 = off
        "grad_clip_mode": "norm",  # norm (clip_grad_norm_) | value (clip_grad_value_)
        "seed": 0,
        "precision": "bf16",  # bf16 (autocast) | fp32
        "channels_last": True,
        "fast_dropout": True,  # same Bernoulli dropout, cheaper mask (layers.FastDropout)
        "ema": 0.0,  # decay of an exponential moving average of weights; 0 = off
        "lookahead": 0.0,  # per-step decay of airbench's lookahead (engine.Lookahead); 0 = off
        "lookahead_every": 5,  # optimizer steps between lookahead pulls
        "tta": False,  # test-time horizontal flip
        "tta_shift": 0,  # also test on copies moved by this many pixels (0 = off)
        "target": 0.0,  # stop once test accuracy reaches this (fraction); 0 = off
        "processes": 1,  # data-parallel processes on this machine (threads split between them)
        "eval_every": 1,  # test every N epochs (and after the last); 0 = after the last only
        "eval_batch_size": 1000,
    },
}

CHOICES = {
    ("augment", "backend"): {"tensor", "albumentations", "none"},
    ("augment", "crop_mode"): {"reflect", "constant", "replicate"},
    ("augment", "flip_mode"): {"random", "alternate"},
    ("augment", "border"): {"constant", "reflect"},
    ("optim", "name"): {"sgd", "adam", "adamw"},
    ("loss", "name"): {"ce", "nll"},
    ("schedule", "name"): {"onecycle", "step", "cosine", "constant"},
    ("schedule", "anneal"): {"linear", "cos"},
    ("train", "precision"): {"bf16", "fp32"},
    ("train", "grad_clip_mode"): {"norm", "value"},
}

# (low, high, low_inclusive, high_inclusive); None = unbounded
RANGES = {
    ("constraints", "max_params"): (0, None, True, True),
    ("constraints", "min_receptive_field"): (0, None, True, True),
    ("data", "train_subset"): (0, None, True, True),
    ("data", "test_subset"): (0, None, True, True),
    ("augment", "crop_pad"): (0, 16, True, True),
    ("augment", "cutout"): (0, 32, True, True),
    ("augment", "flip_p"): (0, 1, True, True),
    ("augment", "vflip_p"): (0, 1, True, True),
    ("augment", "rotate"): (0, 180, True, True),
    ("augment", "brightness"): (0, 1, True, True),
    ("augment", "contrast"): (0, 1, True, True),
    ("augment", "saturation"): (0, 1, True, True),
    ("augment", "hue"): (0, 0.5, True, True),
    ("augment", "shift_limit"): (0, 1, True, True),
    ("augment", "scale_limit"): (0, 1, True, False),
    ("augment", "rotate_limit"): (0, 180, True, True),
    ("augment", "coarse_dropout"): (0, 32, True, True),
    ("optim", "lr"): (0, None, False, True),
    ("optim", "momentum"): (0, 1, True, False),
    ("optim", "weight_decay"): (0, None, True, True),
    ("optim", "beta1"): (0, 1, True, False),
    ("optim", "beta2"): (0, 1, True, False),
    ("optim", "norm_bias_lr_scale"): (0, None, False, True),
    ("loss", "label_smoothing"): (0, 1, True, False),
    ("schedule", "pct_start"): (0, 1, False, False),
    ("schedule", "div_factor"): (0, None, False, True),
    ("schedule", "final_div_factor"): (0, None, False, True),
    ("schedule", "step_size"): (1, None, True, True),
    ("schedule", "gamma"): (0, None, False, True),
    ("schedule", "min_lr"): (0, None, True, True),
    ("train", "epochs"): (1, None, True, True),
    ("train", "batch_size"): (1, None, True, True),
    ("train", "grad_clip"): (0, None, True, True),
    ("train", "ema"): (0, 1, True, False),
    ("train", "lookahead"): (0, 1, True, False),
    ("train", "lookahead_every"): (1, None, True, True),
    ("train", "target"): (0, 1, True, True),
    ("train", "eval_every"): (0, None, True, True),
    ("train", "tta_shift"): (0, 8, True, True),
    ("train", "processes"): (1, 64, True, True),
    ("train", "eval_batch_size"): (1, None, True, True),
}


def recipes_dir():
    return resources.files("cifarlab") / "recipes"


def list_recipes() -> list[tuple[str, str]]:
    """(name, description) of every built-in recipe."""
    out = []
    for f in sorted(recipes_dir().iterdir(), key=lambda p: p.name):
        if f.name.endswith(".toml"):
            out.append((f.name[:-5], _parse(f.read_text(), f.name).get("description", "")))
    return out


def _parse(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{source}: invalid TOML ({e})") from None


def load_recipe_file(name_or_path: str | Path) -> dict:
    """A built-in recipe by name, or a TOML file by path."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        try:
            text = p.read_text()
        except OSError as e:
            raise RecipeError(f"recipe file {p}: cannot read ({e.strerror})") from None
        raw = _parse(text, str(p))
        raw.setdefault("name", p.stem)
        return raw
    f = recipes_dir() / f"{name_or_path}.toml"
    if not f.is_file():
        known = ", ".join(n for n, _ in list_recipes())
        raise RecipeError(f"unknown recipe '{name_or_path}' (built-in: {known})")
    raw = _parse(f.read_text(), f.name)
    raw.setdefault("name", str(name_or_path))
    return raw


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_value(path: tuple[str, ...], value: Any, default: Any) -> Any:
    key = ".".join(path)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise RecipeError(f"{key}: expected true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{key}: expected an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecipeError(f"{key}: expected a number, got {value!r}")
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise RecipeError(f"{key}: expected a string, got {value!r}")
    elif isinstance(default, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise RecipeError(f"{key}: expected a list of strings, got {value!r}")
        bad = [v for v in value if v not in RULES]
        if bad:
            raise RecipeError(f"{key}: unknown rule '{bad[0]}' (known: {', '.join(RULES)})"
                              + _suggest(bad[0], RULES))
    choices = CHOICES.get(path)
    if choices is not None and value not in choices:
        raise RecipeError(
            f"{key}: '{value}' is not one of {', '.join(sorted(choices))}"
            + _suggest(str(value), choices)
        )
    bounds = RANGES.get(path)
    if bounds is not None:
        lo, hi, lo_in, hi_in = bounds
        bad_lo = lo is not None and (value < lo if lo_in else value <= lo)
        bad_hi = hi is not None and (value > hi if hi_in else value >= hi)
        if bad_lo or bad_hi:
            lo_s = "(-inf" if lo is None else ("[" if lo_in else "(") + str(lo)
            hi_s = "inf)" if hi is None else str(hi) + ("]" if hi_in else ")")
            raise RecipeError(f"{key}: {value!r} is outside {lo_s}, {hi_s}")
    return value


def _merge(base: dict, extra: dict, schema: dict, prefix: tuple[str, ...] = ()) -> None:
    for k, v in extra.items():
        path = prefix + (k,)
        if k not in schema:
            where = ".".join(prefix) or "top level"
            raise RecipeError(
                f"unknown recipe key '{'.'.join(path)}' in {where}" + _suggest(k, schema)
            )
        default = schema[k]
        if isinstance(default, dict) and default:  # a section
            if not isinstance(v, dict):
                raise RecipeError(f"{'.'.join(path)}: expected a table of settings")
            _merge(base[k], v, default, path)
        elif isinstance(default, dict):  # free-form table (model_args)
            if not isinstance(v, dict):
                raise RecipeError(f"{'.'.join(path)}: expected a table")
            base[k].update(v)
        else:
            base[k] = _check_value(path, v, default)


def parse_override(text: str) -> tuple[str, Any]:
    """'train.epochs=3' -> ('train.epochs', 3), the value read as TOML (bare words as strings)."""
    if "=" not in text:
        raise RecipeError(f"--set {text}: expected KEY=VALUE, e.g. --set optim.lr=0.01")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def nest(dotted: dict[str, Any]) -> dict:
    """{'optim.lr': 0.1} -> {'optim': {'lr': 0.1}}."""
    out: dict = {}
    for key, value in dotted.items():
        parts = key.split(".")
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise RecipeError(f"override {key}: '{p}' is not a section")
        d[parts[-1]] = value
    return out


def resolve(recipe: str | Path | dict = "default", overrides: dict | None = None) -> dict:
    """Defaults <- recipe file (or dict) <- overrides (nested or dotted keys), validated."""
    raw = recipe if isinstance(recipe, dict) else load_recipe_file(recipe)
    out = copy.deepcopy(DEFAULTS)
    _merge(out, raw, DEFAULTS)
    if overrides:
        dotted = {k: v for k, v in overrides.items() if "." in k}
        plain = {k: v for k, v in overrides.items() if "." not in k}
        _merge(out, plain, DEFAULTS)
        _merge(out, nest(dotted), DEFAULTS)
    if not out["name"]:
        out["name"] = "custom"
    return out
