"""Recipes: every experiment as data (TOML), validated before any training starts.

`SETTINGS` declares every recipe key once: its default, type (from the default), allowed
choices or range, help text, and optionally a CLI flag and an API keyword shortcut. Everything
else is derived from it: `DEFAULTS` (the nested recipe), the `train` command's flags
(cli.py), the API's shortcuts (`train(epochs=3)`), `AugmentConfig`, and validation.

Files name only what differs from the defaults; `resolve` merges file + overrides onto the
defaults and validates every key and value (cross-field rules included), so a typo or a
negative learning rate fails at once, naming the key, before anything is created.
This module imports no torch: `cifarlab --help` and `cifarlab recipes` stay fast.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import CifarlabError
from .rules import RULES


class RecipeError(CifarlabError):
    pass


@dataclass(frozen=True)
class Setting:
    key: str  # dotted: "optim.lr"
    default: Any  # also gives the type: bool, int, float, str, list of rule names, dict
    help: str = ""
    choices: tuple[str, ...] = ()
    range: tuple | None = None  # (low, high, low_inclusive, high_inclusive); None = open
    flag: str | None = None  # a `cifarlab train` flag of its own (every key also has --set)
    const: Any = None  # the flag stores this value (a switch such as --fp32)
    short: str | None = None  # keyword shortcut of api.train (e.g. epochs=3)


def _s(key, default, help="", **kw) -> Setting:
    return Setting(key, default, help, **kw)


POS = (0, None, False, True)  # > 0
NONNEG = (0, None, True, True)  # >= 0
UNIT = (0, 1, True, True)  # [0, 1]

SETTINGS: tuple[Setting, ...] = (
    _s("name", "", "recipe name (default: the file name)"),
    _s("description", "", "one line shown by `cifarlab recipes`"),
    _s("model", "seed001", "the network: a built-in name (`cifarlab models`) or FILE.py:NAME "
       "(a class or function in your own file)", flag="--model"),
    _s("model_args", {}, "keyword arguments of the model's builder, checked against it"),
    # data
    _s("data.train_subset", 0, "use N training images (0 = all)", range=NONNEG,
       flag="--train-subset", short="train_subset"),
    _s("data.test_subset", 0, "use N test images (0 = all)", range=NONNEG,
       flag="--test-subset", short="test_subset"),
    _s("data.val_split", 0, "hold out N training images for validation (stratified, never "
       "trained on or augmented); choices (best.pt, --target, early stop) then use them",
       range=NONNEG, flag="--val-split", short="val_split"),
    _s("data.val_seed", 0, "seed that picks the validation images (the same on every machine)",
       range=NONNEG),
    # augmentation
    _s("augment.backend", "tensor", "tensor (batched) | albumentations (per image, seed 001) "
       "| none", choices=("tensor", "albumentations", "none")),
    _s("augment.crop_pad", 4, "random crop after padding by this many pixels",
       range=(0, 16, True, True)),
    _s("augment.crop_mode", "reflect", "padding of the random crop",
       choices=("reflect", "constant", "replicate")),
    _s("augment.flip", True, "horizontal flip"),
    _s("augment.flip_p", 0.5, "probability of the horizontal flip", range=UNIT),
    _s("augment.flip_mode", "random", "random | alternate: a random first flip, then every "
       "other epoch (tensor backend only)", choices=("random", "alternate")),
    _s("augment.vflip_p", 0.0, "vertical flip probability", range=UNIT),
    _s("augment.rotate", 0.0, "random rotation in [-rotate, rotate] degrees",
       range=(0, 180, True, True)),
    _s("augment.cutout", 0, "side of the square hole, px; 0 = off", range=(0, 32, True, True)),
    _s("augment.brightness", 0.0, "brightness jitter factor in [1-s, 1+s]", range=UNIT),
    _s("augment.contrast", 0.0, "contrast jitter", range=UNIT),
    _s("augment.saturation", 0.0, "saturation jitter", range=UNIT),
    _s("augment.hue", 0.0, "hue shift in [-hue, hue] turns of the colour circle",
       range=(0, 0.5, True, True)),
    _s("augment.shift_limit", 0.0625, "albumentations ShiftScaleRotate shift", range=UNIT),
    _s("augment.scale_limit", 0.1, "albumentations ShiftScaleRotate scale",
       range=(0, 1, True, False)),
    _s("augment.rotate_limit", 45.0, "albumentations ShiftScaleRotate rotation, degrees",
       range=(0, 180, True, True)),
    _s("augment.border", "constant", "ShiftScaleRotate's uncovered pixels: constant (dataset "
       "mean) | reflect (albumentations 1.x's default)", choices=("constant", "reflect")),
    _s("augment.coarse_dropout", 16, "albumentations CoarseDropout hole side, px; 0 = off",
       range=(0, 32, True, True)),
    _s("augment.augmix", 0, "AugMix (Hendrycks et al., ICLR 2020) for robustness to "
       "corruptions: mix this many chains of 1-3 random operations into each image "
       "(0 = off; the paper's width is 3)", range=(0, 8, True, True)),
    _s("augment.augmix_severity", 3, "AugMix: strength of each operation (the paper's 3)",
       range=(1, 10, True, True)),
    _s("augment.test", False, "also augment the test set once, with a fixed seed (only to "
       "reproduce seed 003's tutorial)"),
    # optimizer
    _s("optim.name", "sgd", "optimizer (muon: orthogonalised updates for conv filters, "
       "SGD for the rest)", choices=("sgd", "adam", "adamw", "muon"),
       flag="--optimizer", short="optimizer"),
    _s("optim.lr", 0.05, "(max) learning rate", range=POS, flag="--lr", short="lr"),
    _s("optim.momentum", 0.9, "SGD momentum", range=(0, 1, True, False), short="momentum"),
    _s("optim.nesterov", True, "Nesterov momentum (SGD)"),
    _s("optim.weight_decay", 5e-4, "weight decay", range=NONNEG, flag="--weight-decay",
       short="weight_decay"),
    _s("optim.beta1", 0.9, "Adam beta1", range=(0, 1, True, False)),
    _s("optim.beta2", 0.999, "Adam beta2", range=(0, 1, True, False)),
    _s("optim.norm_bias_lr_scale", 1.0, "lr multiplier for BatchNorm biases (airbench: 64); "
       "their weight decay is divided by it", range=POS),
    _s("optim.muon_lr", 0.02, "muon: lr of the conv filters (optim.lr: the other parameters)",
       range=POS),
    _s("optim.muon_momentum", 0.0, "muon: conv-filter momentum (0 = optim.momentum)",
       range=(0, 1, True, False)),
    _s("optim.muon_weight_decay", 0.0, "muon: decoupled weight decay of the conv filters",
       range=NONNEG),
    _s("optim.muon_normalize", False, "muon: rescale each filter bank to RMS 1 per filter "
       "before each update (only where BatchNorm follows)"),
    _s("optim.ns_steps", 5, "muon: Newton-Schulz iterations", range=(1, 10, True, True)),
    # loss
    _s("loss.name", "ce", "ce (cross-entropy) | nll (the model ends in log_softmax)",
       choices=("ce", "nll"), short="loss"),
    _s("loss.label_smoothing", 0.0, "label smoothing (ce)", range=(0, 1, True, False),
       short="label_smoothing"),
    # schedule
    _s("schedule.name", "onecycle", "onecycle (torch's OneCycleLR, cycling momentum) | step | "
       "cosine | constant; stepped once per batch",
       choices=("onecycle", "step", "cosine", "constant"), flag="--schedule", short="schedule"),
    _s("schedule.pct_start", 0.25, "onecycle: fraction of steps spent warming up",
       range=(0, 1, False, False)),
    _s("schedule.div_factor", 25.0, "onecycle: initial lr = lr / div_factor", range=POS),
    _s("schedule.final_div_factor", 1e4, "onecycle: final lr = initial lr / final_div_factor",
       range=POS),
    _s("schedule.anneal", "linear", "onecycle: annealing", choices=("linear", "cos")),
    _s("schedule.cycle_momentum", True, "onecycle: cycle momentum / Adam beta1"),
    _s("schedule.step_size", 10, "step: epochs between drops", range=(1, None, True, True)),
    _s("schedule.gamma", 0.1, "step: multiplier at each drop", range=POS),
    _s("schedule.min_lr", 0.0, "cosine: final lr", range=NONNEG),
    # architecture rules
    _s("constraints.max_params", 0, "most parameters allowed (0 = no limit)", range=NONNEG),
    _s("constraints.max_macs", 0, "most multiply-accumulates per image (0 = no limit)",
       range=NONNEG),
    _s("constraints.min_receptive_field", 0, "smallest receptive field allowed", range=NONNEG),
    _s("constraints.require", [], "layers the network must have: " + ", ".join(RULES)),
    _s("constraints.forbid", [], "layers the network must not have"),
    # training
    _s("train.epochs", 30, "epochs", range=(1, None, True, True), flag="--epochs",
       short="epochs"),
    _s("train.batch_size", 256, "batch size", range=(1, None, True, True), flag="--batch-size",
       short="batch_size"),
    _s("train.grad_clip", 0.0, "gradient clipping threshold; 0 = off", range=NONNEG,
       short="grad_clip"),
    _s("train.grad_clip_mode", "norm", "norm (clip_grad_norm_) | value (clip_grad_value_)",
       choices=("norm", "value")),
    _s("train.seed", 0, "random seed", flag="--seed", short="seed"),
    _s("train.precision", "bf16", "bf16 (autocast) | fp32", choices=("bf16", "fp32"),
       flag="--fp32", const="fp32", short="precision"),
    _s("train.channels_last", True, "channels_last memory format", short="channels_last"),
    _s("train.compile", False, "compile the training step's model with torch.compile "
       "(inductor; the first steps pay the compilation)", flag="--compile", const=True,
       short="compile"),
    _s("train.fast_dropout", True, "same Bernoulli dropout, cheaper mask (layers.FastDropout)"),
    _s("train.ema", 0.0, "decay of an exponential moving average of weights; 0 = off",
       range=(0, 1, True, False), short="ema"),
    _s("train.lookahead", 0.0, "per-step decay of airbench's lookahead; 0 = off",
       range=(0, 1, True, False)),
    _s("train.lookahead_every", 5, "optimizer steps between lookahead pulls",
       range=(1, None, True, True)),
    _s("train.low_res", 0, "progressive resizing: the first train.low_res_epochs epochs "
       "train on images resized to this many pixels a side (0 = off)",
       range=(0, 31, True, True), short="low_res"),
    _s("train.low_res_epochs", 0, "how many first epochs train at train.low_res (the last "
       "epoch always at full size)",
       range=NONNEG, short="low_res_epochs"),
    _s("train.tta", False, "test-time horizontal flip", short="tta"),
    _s("train.tta_shift", 0, "also test on copies moved by this many pixels (0 = off)",
       range=(0, 8, True, True)),
    _s("train.target", 0.0, "stop once accuracy reaches this fraction (validation accuracy "
       "with a split; else test accuracy, and the run says so); 0 = off", range=UNIT,
       flag="--target", short="target"),
    _s("train.patience", 0, "early stop after N evaluations without a better validation "
       "accuracy (needs data.val_split); 0 = off", range=NONNEG, flag="--patience",
       short="patience"),
    _s("train.test_eval", "auto", "when the test set is read: every (each evaluation) | final "
       "(once, at the end) | never | auto (final with a validation split, else every)",
       choices=("auto", "every", "final", "never")),
    _s("train.tensorboard", False, "write TensorBoard event files into RUN_DIR/tensorboard "
       "(`tensorboard --logdir runs`)", flag="--tensorboard", const=True, short="tensorboard"),
    _s("train.processes", 1, "data-parallel processes on this machine (threads split "
       "between them)", range=(1, 64, True, True), flag="--procs", short="procs"),
    _s("train.eval_every", 1, "evaluate every N epochs (and after the last); 0 = the last only",
       range=NONNEG),
    _s("train.eval_batch_size", 1000, "evaluation batch size", range=(1, None, True, True)),
)

BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
SHORTCUTS: dict[str, str] = {s.short: s.key for s in SETTINGS if s.short}


def _nested_defaults() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in SETTINGS:
        *sections, leaf = s.key.split(".")
        d = out
        for p in sections:
            d = d.setdefault(p, {})
        d[leaf] = copy.deepcopy(s.default)
    return out


DEFAULTS: dict[str, Any] = _nested_defaults()

# The augmentation settings as a dataclass (augment.Pipeline takes one), made from SETTINGS.
AugmentConfig = dataclasses.make_dataclass(
    "AugmentConfig",
    [(s.key.split(".")[1], type(s.default), dataclasses.field(default=s.default))
     for s in SETTINGS if s.key.startswith("augment.")],
)
AugmentConfig.__module__ = __name__
AugmentConfig.__doc__ = "The recipe's [augment] section (fields and defaults from SETTINGS)."


def recipes_dir():
    return resources.files("cifarlab") / "recipes"


def list_builtin(folder: str) -> list[tuple[str, str]]:
    """(name, description) of every TOML file the package ships in `folder` (recipes,
    searches)."""
    out = []
    for f in sorted((resources.files("cifarlab") / folder).iterdir(), key=lambda p: p.name):
        if f.name.endswith(".toml"):
            out.append((f.name[:-5], _parse(f.read_text(), f.name).get("description", "")))
    return out


def list_recipes() -> list[tuple[str, str]]:
    """(name, description) of every built-in recipe."""
    return list_builtin("recipes")


def _parse(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{source}: invalid TOML ({e})") from None


def split_model_file(name: str) -> tuple[str, str] | None:
    """'nets/mine.py:Net' -> ('nets/mine.py', 'Net'); None for a built-in or entry-point
    name."""
    if not isinstance(name, str) or ":" not in name:
        return None
    path, attr = name.rsplit(":", 1)
    return (path, attr) if path.endswith(".py") else None


def absolute_model_file(name: str, folder: Path | None = None) -> str:
    """A `FILE.py:NAME` model with its file made absolute (relative to `folder`, a recipe
    file's folder, when the file is there; else to the current directory)."""
    spec = split_model_file(name)
    if spec is None or Path(spec[0]).is_absolute():
        return name
    path = Path(spec[0])
    if folder is not None and (folder / path).is_file():
        path = folder / path
    return f"{path.resolve()}:{spec[1]}"


def load_recipe_file(name_or_path: str | Path) -> dict:
    """A built-in recipe by name, or a TOML file by path (a `FILE.py:NAME` model in it is
    relative to the recipe file's folder)."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        try:
            text = p.read_text()
        except OSError as e:
            raise RecipeError(f"recipe file {p}: cannot read ({e.strerror})") from None
        except UnicodeDecodeError:
            raise RecipeError(f"recipe file {p}: not a text (TOML) file") from None
        raw = _parse(text, str(p))
        raw.setdefault("name", p.stem)
        if isinstance(raw.get("model"), str):
            raw["model"] = absolute_model_file(raw["model"], p.parent)
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


def check_value(key: str, value: Any) -> Any:
    """`value` for the setting `key`, converted (int -> float, "a,b" -> list), or RecipeError."""
    s = BY_KEY[key]
    default = s.default
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
    elif isinstance(default, dict):
        if not isinstance(value, dict):
            raise RecipeError(f"{key}: expected a table")
        return dict(value)
    if s.choices and value not in s.choices:
        raise RecipeError(f"{key}: '{value}' is not one of {', '.join(sorted(s.choices))}"
                          + _suggest(str(value), s.choices))
    if s.range is not None:
        lo, hi, lo_in, hi_in = s.range
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
            base[k].update(check_value(".".join(path), v))
        else:
            base[k] = check_value(".".join(path), v)


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


def low_res_epochs(train: dict) -> int:
    """How many first epochs train at train.low_res: train.low_res_epochs, but always leaving
    the last epoch at full size (a schedule shortened with --epochs keeps working)."""
    n = train["low_res_epochs"] if train["low_res"] else 0
    return min(n, train["epochs"] - 1) if train["epochs"] > 0 else n


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


def expand_shortcuts(overrides: dict) -> dict:
    """API keywords -> dotted recipe keys (`epochs=3` -> `train.epochs`); None = not given."""
    return {SHORTCUTS.get(k, k): v for k, v in overrides.items() if v is not None}


def check_augment(a: dict) -> None:
    """Rules across the [augment] keys (augment.Pipeline applies them too)."""
    if a["flip_mode"] == "alternate" and a["backend"] != "tensor":
        raise RecipeError("augment.flip_mode = 'alternate' needs augment.backend = 'tensor'")


def validate(cfg: dict) -> None:
    """Rules across keys, checked before anything is created."""
    check_augment(cfg["augment"])
    t = cfg["train"]
    if t["batch_size"] % t["processes"]:
        raise RecipeError(f"train.batch_size {t['batch_size']} does not split evenly over "
                          f"{t['processes']} processes (train.processes)")
    if t["target"] and not cfg["data"]["val_split"] and t["test_eval"] in ("final", "never"):
        raise RecipeError(f"train.target needs accuracy every epoch: a validation split "
                          f"(data.val_split) or train.test_eval = 'every', not "
                          f"'{t['test_eval']}'")
    if bool(t["low_res"]) != bool(t["low_res_epochs"]):
        raise RecipeError("train.low_res and train.low_res_epochs go together: a size and "
                          "how many first epochs use it (or both 0)")
    if t["patience"] and not cfg["data"]["val_split"]:
        raise RecipeError("train.patience needs a validation split (data.val_split > 0): "
                          "early stopping on the test set would choose on it")


def _deep_update(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "model_args":
            out[k] = _deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def inherit(raw: dict, depth: int = 0) -> dict:
    """A recipe with `base = "other"` is that recipe with this one's keys on top (the name
    and, if given, the description are this one's; model_args are replaced, not merged)."""
    if "base" not in raw:
        return raw
    if depth > 8:
        raise RecipeError(f"recipe '{raw.get('name', '?')}': base recipes nest too deep "
                          "(a cycle?)")
    raw = dict(raw)
    base_name = raw.pop("base")
    if not isinstance(base_name, str):
        raise RecipeError(f"base: expected a recipe name or path, got {base_name!r}")
    base = inherit(load_recipe_file(base_name), depth + 1)
    if "model" in raw and raw["model"] != base.get("model") and "model_args" not in raw:
        base.pop("model_args", None)  # another network: the base's arguments were its own
    return _deep_update(base, raw)


def resolve(recipe: str | Path | dict = "default", overrides: dict | None = None) -> dict:
    """Defaults <- recipe file (or dict; `base` recipes first) <- overrides (nested, dotted
    or shortcut keys), validated key by key and across keys."""
    raw = inherit(recipe if isinstance(recipe, dict) else load_recipe_file(recipe))
    out = copy.deepcopy(DEFAULTS)
    _merge(out, raw, DEFAULTS)
    if overrides:
        overrides = expand_shortcuts(overrides)
        dotted = {k: v for k, v in overrides.items() if "." in k}
        plain = {k: v for k, v in overrides.items() if "." not in k}
        if "model" in plain and plain["model"] != out["model"]:
            out["model_args"] = {}  # another network: the recipe's arguments were its own
        _merge(out, plain, DEFAULTS)
        _merge(out, nest(dotted), DEFAULTS)
    if not out["name"]:
        out["name"] = "custom"
    out["model"] = absolute_model_file(out["model"])  # run records work from any folder
    validate(out)
    return out
