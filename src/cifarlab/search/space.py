"""A search file: the design space as data, read and checked, and sampled into trials.

A search file (TOML) names a base recipe (the training settings every trial starts from), the
rules (`[constraints]`), the budget and method (`[search]`), the dimensions to explore
(`[space]`: the `family` network's architecture, or `model_args.NAME` constructor arguments of
the base recipe's own network, and the training settings) and designs to try first
(`[[enqueue]]`, e.g. the hand-written recipe's own design). `load_search` reads one into a
`SearchSpec`; `sample` turns an Optuna trial into `family` model arguments and recipe keys;
`to_toml` writes recipes and search files back. Running a search is `cifarlab.search`.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CifarlabError
from ..models import family as fam
from ..recipe import (
    BY_KEY,
    check_value,
    list_builtin,
    load_recipe_file,
    resolve,
    split_model_file,
)
from .fidelity import check_fidelity

if TYPE_CHECKING:
    import optuna

SEARCH_VERSION = 1
COSTS = ("macs", "params", "seconds")
ACCURACIES = ("val_acc", "corrupt_acc")  # corrupt_acc: accuracy on corrupted validation images
SAMPLERS = ("tpe", "nsga2", "random")
PRUNERS = ("hyperband", "halving", "median", "proxy", "none")

# architecture dimensions: default (used when [space] does not name it), per stage or not
ARCH_DIMS: dict[str, tuple[Any, bool]] = {
    "stages": (3, False), "stem": (32, False),
    "width": (64, True), "depth": (1, True), "block": ("plain", True),
    "downsample": ("stride", True), "dilation": (1, True),
    "head": ("gap", False), "dropout": (0.0, False), "head_dropout": (0.0, False),
    "style": ("classic", False),
}
PER_STAGE = tuple(k for k, (_, ps) in ARCH_DIMS.items() if ps)
# training dimensions: short name -> recipe key ("augment" is a strength level, see AUGMENT)
TRAIN_DIMS = {"lr": "optim.lr", "weight_decay": "optim.weight_decay",
              "batch_size": "train.batch_size", "epochs": "train.epochs",
              "label_smoothing": "loss.label_smoothing", "augment": None,
              "optimizer": "optim.name", "muon_lr": "optim.muon_lr"}
# augmentation strength levels (tensor backend): crop padding and cutout size
AUGMENT = {0: {"crop_pad": 0, "cutout": 0}, 1: {"crop_pad": 2, "cutout": 0},
           2: {"crop_pad": 4, "cutout": 0}, 3: {"crop_pad": 4, "cutout": 8},
           4: {"crop_pad": 4, "cutout": 12}}
CONSTRAINT_KEYS = {"max_params": 0, "max_macs": 0, "min_receptive_field": 0, "require": [],
                   "forbid": [], "max_train_seconds": 0.0, "max_train_time_vs_base": 0.0}
SEARCH_KEYS = {"objectives": ["val_acc"], "minutes": 60.0, "sampler": "tpe",
               "pruner": "hyperband", "min_epochs": 2, "reduction_factor": 3,
               "val_split": 5000, "train_subset": 0, "seed": 0, "startup_trials": 10,
               "max_rejected_in_row": 1000, "heartbeat": 30, "storage_wait_minutes": 5.0,
               "corrupt_images": 1000, "corrupt_severities": [1, 3, 5], "fidelity": {},
               "mutate": 0.0, "fill_time": False, "processes": 1}
TOP_KEYS = ("name", "description", "base", "constraints", "search", "space", "enqueue")
MODEL_ARG = "model_args."  # [space] model_args.NAME: an argument of the base's own network


class SearchError(CifarlabError):
    pass


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ------------------------------------------------------------------------------ search file

@dataclass
class Dim:
    """One dimension: fixed (`value`), categorical (`choices`) or a range (int or float)."""

    name: str
    kind: str  # fixed | cat | int | float
    value: Any = None
    choices: list = field(default_factory=list)
    low: float = 0
    high: float = 0
    log: bool = False
    step: float | None = None

    def values(self) -> list:
        """Every value this dimension can take that matters for validation (ends of ranges)."""
        if self.kind == "fixed":
            return list(self.value) if isinstance(self.value, list) else [self.value]
        if self.kind == "cat":
            return list(self.choices)
        return [self.low, self.high]

    def contains(self, v: Any) -> bool:
        if self.kind == "fixed":
            return v == self.value
        if self.kind == "cat":
            return v in self.choices
        if isinstance(v, bool) or not isinstance(v, int | float):
            return False
        if self.kind == "int" and not isinstance(v, int):
            return False
        return self.low <= v <= self.high

    def suggest(self, trial: optuna.Trial, pname: str) -> Any:
        if self.kind == "fixed":
            return self.value
        if self.kind == "cat":
            return trial.suggest_categorical(pname, self.choices)
        if self.kind == "int":
            return trial.suggest_int(pname, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return trial.suggest_float(pname, self.low, self.high, log=self.log, step=self.step)


def _dim(name: str, raw: Any, where: str) -> Dim:
    if not isinstance(raw, dict):
        return Dim(name, "fixed", value=raw)
    unknown = set(raw) - {"choices", "low", "high", "log", "step"}
    if unknown:
        k = sorted(unknown)[0]
        raise SearchError(f"{where}: dimension '{name}' has an unknown field '{k}' (fields: "
                          "choices, or low/high with log, step)"
                          + _suggest(k, ["choices", "low", "high", "log", "step"]))
    if "choices" in raw:
        ch = raw["choices"]
        if set(raw) != {"choices"} or not isinstance(ch, list) or not ch:
            raise SearchError(f"{where}: dimension '{name}': choices must be a non-empty list "
                              "(and nothing else)")
        # one type (the stem's widths may come with "whiten")
        types = {type(c) for c in ch if not (name == "stem" and isinstance(c, str))}
        if len(types) > 1 or any(isinstance(c, list | dict) for c in ch):
            raise SearchError(f"{where}: dimension '{name}': choices must be plain values of "
                              "one type")
        return Dim(name, "cat", choices=list(ch))
    if "low" not in raw or "high" not in raw:
        raise SearchError(f"{where}: dimension '{name}' needs choices = [...] or low and high")
    lo, hi, log, step = raw["low"], raw["high"], raw.get("log", False), raw.get("step")
    nums = [lo, hi] + ([step] if step is not None else [])
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in nums):
        raise SearchError(f"{where}: dimension '{name}': low, high and step must be numbers")
    if not isinstance(log, bool):
        raise SearchError(f"{where}: dimension '{name}': log must be true or false")
    if lo > hi:
        raise SearchError(f"{where}: dimension '{name}': low {lo} is above high {hi}")
    if log and (lo <= 0 or step is not None):
        raise SearchError(f"{where}: dimension '{name}': a log range needs low > 0 and no step")
    if step is not None and step <= 0:
        raise SearchError(f"{where}: dimension '{name}': step must be positive")
    kind = "int" if all(isinstance(v, int) for v in nums) else "float"
    return Dim(name, kind, low=lo, high=hi, log=log, step=step)


def _check_arch_value(name: str, v: Any, where: str) -> None:
    """One value an architecture dimension may take, or SearchError."""
    def bad(what: str):
        raise SearchError(f"{where}: dimension '{name}': {v!r} is not {what}")

    if name == "stem" and v == fam.WHITEN:
        return
    ints = {"stages": (1, fam.MAX_STAGES), "stem": (0, fam.MAX_WIDTH),
            "width": (1, fam.MAX_WIDTH), "depth": (0, fam.MAX_DEPTH),
            "dilation": (1, fam.MAX_DILATION)}
    if name in ints:
        lo, hi = ints[name]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            bad(f"an integer in [{lo}, {hi}]"
                + (f" or '{fam.WHITEN}'" if name == "stem" else ""))
    elif name in ("dropout", "head_dropout"):
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
            bad("a number in [0, 1)")
    else:
        options = {"block": fam.BLOCKS, "downsample": fam.DOWNSAMPLES, "head": fam.HEADS,
                   "style": fam.STYLES}[name]
        if v not in options:
            bad("one of " + ", ".join(options) + _suggest(str(v), options))


def _check_dim(d: Dim, where: str) -> None:
    if d.name.startswith(MODEL_ARG):
        return  # the builder's own argument: checked against its signature, then by building
    if d.name in ARCH_DIMS:
        if d.kind == "fixed" and isinstance(d.value, list):
            if not ARCH_DIMS[d.name][1]:
                raise SearchError(f"{where}: dimension '{d.name}' takes one value, not a list")
        elif d.kind in ("int", "float") and d.name in ("block", "downsample", "head", "style"):
            raise SearchError(f"{where}: dimension '{d.name}' needs choices = [...]")
        if d.kind == "float" and d.name not in ("dropout", "head_dropout"):
            raise SearchError(f"{where}: dimension '{d.name}' takes integers")
        for v in d.values():
            _check_arch_value(d.name, v, where)
    elif d.name == "augment":
        for v in d.values():
            if v not in AUGMENT or isinstance(v, bool):
                raise SearchError(f"{where}: dimension 'augment': {v!r} is not a strength "
                                  f"level 0-{max(AUGMENT)}")
        if d.kind == "float":
            raise SearchError(f"{where}: dimension 'augment' takes integer levels")
    else:
        key = TRAIN_DIMS.get(d.name) or d.name
        for v in d.values():
            try:
                check_value(key, v)
            except CifarlabError as e:
                raise SearchError(f"{where}: dimension '{d.name}': {e}") from None


@dataclass
class SearchSpec:
    """A parsed, validated search file."""

    name: str
    description: str
    base: str
    base_recipe: dict  # the base recipe file's raw contents (self-contained in the study)
    constraints: dict
    search: dict
    space: dict[str, Dim]
    enqueue: list[dict]
    source: str = ""
    text: str = ""
    model: str = "family"  # the searched network: family, or the base recipe's own
    model_args: dict = field(default_factory=dict)  # the base's arguments for its own network

    @property
    def family(self) -> bool:
        """Whether the searched network is the built-in `family` (else the base's own)."""
        return self.model == "family"

    @property
    def objectives(self) -> list[str]:
        return list(self.search["objectives"])

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    @property
    def cost(self) -> str | None:
        """The cost objective (macs, params, seconds), if the search has one."""
        return next((o for o in self.objectives if o in COSTS), None)

    @property
    def derived(self) -> tuple[str, ...]:
        """Dimensions a trial does not draw but derives (`[search] fill_time`: its epochs,
        the most its predicted time allows within the space's range)."""
        return ("epochs",) if self.search["fill_time"] else ()

    @property
    def directions(self) -> list[str]:
        return ["minimize" if o in COSTS else "maximize" for o in self.objectives]

    def to_json(self) -> dict:
        """What the study stores (enough to rebuild the spec on any machine)."""
        return {"version": SEARCH_VERSION, "name": self.name, "description": self.description,
                "base": self.base, "base_recipe": self.base_recipe, "text": self.text,
                "source": self.source}


def searches_dir():
    return resources.files("cifarlab") / "searches"


def list_searches() -> list[tuple[str, str]]:
    """(name, description) of the built-in search files."""
    return list_builtin("searches")


def _read_search_text(path_or_name: str | os.PathLike) -> tuple[str, str, Path | None]:
    """(text, source label, file path or None for a built-in)."""
    p = Path(path_or_name)
    if p.suffix == ".toml" or p.exists() or os.sep in str(path_or_name):
        if p.is_dir():
            raise SearchError(f"search file {p}: is a directory")
        try:
            return p.read_text(), str(p), p
        except FileNotFoundError:
            raise SearchError(f"search file {p}: no such file") from None
        except OSError as e:
            raise SearchError(f"search file {p}: cannot read ({e.strerror})") from None
        except UnicodeDecodeError:
            raise SearchError(f"search file {p}: not a text (TOML) file") from None
    f = searches_dir() / f"{path_or_name}.toml"
    if not f.is_file():
        known = ", ".join(n for n, _ in list_searches())
        raise SearchError(f"no search file '{path_or_name}' (and no built-in search of that "
                          f"name; built-in: {known})")
    return f.read_text(), f"built-in {path_or_name}", None


def parse_search(text: str, source: str = "search file", path: Path | None = None,
                 base_recipe: dict | None = None) -> SearchSpec:
    """Validate a search file's text (see the module docstring); SearchError on any problem.
    `base_recipe` (the stored raw base recipe) replaces reading the `base` file again."""
    raw = _parse_toml(text, source)
    name = _search_name(raw, source, path)
    base = raw.get("base")
    if not isinstance(base, str) or not base:
        raise SearchError(f"{source}: 'base' must name the base recipe (e.g. base = "
                          "\"fast-seed001\")")
    if base_recipe is None:
        base_recipe = _load_base_recipe(base, path, source)
    try:
        base_cfg = resolve(copy.deepcopy(base_recipe))
    except CifarlabError as e:
        raise SearchError(f"{source}: base recipe '{base}': {e}") from None
    cons = _constraints(raw, source)
    s = _search_settings(raw, source)
    space, net = _parse_space(raw.get("space", {}), source, base_cfg["model"])
    if s["min_epochs"] > max_epochs(space, base_recipe):
        raise SearchError(f"{source}: [search] min_epochs {s['min_epochs']} is above the "
                          "largest epochs the space allows")
    _check_fill_time(s, cons, space, source)

    enq = raw.get("enqueue", [])
    if not isinstance(enq, list) or not all(isinstance(e, dict) for e in enq):
        raise SearchError(f"{source}: [[enqueue]] entries must be tables")
    spec = SearchSpec(name=name, description=str(raw.get("description", "")), base=base,
                      base_recipe=base_recipe, constraints=cons, search=s, space=space,
                      enqueue=[], source=source, text=text, model=net,
                      model_args=copy.deepcopy(base_cfg["model_args"]) if net != "family" else {})
    for i, e in enumerate(enq):
        spec.enqueue.append(_enqueue_entry(spec, e, f"{source}: [[enqueue]] #{i + 1}"))
    return spec


def _parse_toml(text: str, source: str) -> dict:
    """The file's TOML, its top-level keys checked."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SearchError(f"{source}: invalid TOML ({e})") from None
    for k in raw:
        if k not in TOP_KEYS:
            raise SearchError(f"{source}: unknown key '{k}' (known: {', '.join(TOP_KEYS)})"
                              + _suggest(k, TOP_KEYS))
    return raw


def _search_name(raw: dict, source: str, path: Path | None) -> str:
    name = raw.get("name") or (path.stem if path else "search")
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise SearchError(f"{source}: name must be letters, digits, '-' or '_', got {name!r}")
    return name


def _load_base_recipe(base: str, path: Path | None, source: str) -> dict:
    """The raw base recipe: a built-in name, or a .toml path (relative to the search file)."""
    bp = Path(base)
    if path is not None and bp.suffix == ".toml" and not bp.is_absolute():
        bp = path.parent / bp
    try:
        return load_recipe_file(bp if bp.suffix == ".toml" else base)
    except CifarlabError as e:
        raise SearchError(f"{source}: base recipe: {e}") from None


def _table(raw: dict, key: str, defaults: dict, source: str) -> dict:
    """[key] over its defaults; unknown keys refused."""
    t = raw.get(key, {})
    if not isinstance(t, dict):
        raise SearchError(f"{source}: [{key}] must be a table")
    for k in t:
        if k not in defaults:
            raise SearchError(f"{source}: unknown key '{k}' in [{key}] (known: "
                              f"{', '.join(defaults)})" + _suggest(k, defaults))
    out = copy.deepcopy(defaults)
    out.update(t)
    return out


def _constraints(raw: dict, source: str) -> dict:
    """[constraints], checked as a recipe's, plus the training-time limits."""
    cons = _table(raw, "constraints", CONSTRAINT_KEYS, source)
    for k in ("max_params", "max_macs", "min_receptive_field"):
        try:
            cons[k] = check_value(f"constraints.{k}", cons[k])
        except CifarlabError as e:
            raise SearchError(f"{source}: [constraints] {e}") from None
    for k in ("require", "forbid"):
        try:
            cons[k] = check_value(f"constraints.{k}", cons[k])
        except CifarlabError as e:
            raise SearchError(f"{source}: [constraints] {e}") from None
    for k in ("max_train_seconds", "max_train_time_vs_base"):
        v = cons[k]
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise SearchError(f"{source}: [constraints] {k} must be a number >= 0, got {v!r}")
        cons[k] = float(v)
    return cons


def _search_settings(raw: dict, source: str) -> dict:
    """[search], checked key by key."""
    s = _table(raw, "search", SEARCH_KEYS, source)
    s["objectives"] = _objectives(s["objectives"], source)
    try:
        s["fidelity"] = check_fidelity(s["fidelity"], f"{source}: [search]")
    except ValueError as e:
        raise SearchError(str(e)) from None
    sev = s["corrupt_severities"]
    if (not isinstance(sev, list) or not sev or len(set(sev)) != len(sev)
            or any(isinstance(v, bool) or v not in (1, 2, 3, 4, 5) for v in sev)):
        raise SearchError(f"{source}: [search] corrupt_severities must be distinct severities "
                          f"1-5, e.g. [1, 3, 5]; got {sev!r}")
    for k, choices in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        if s[k] not in choices:
            raise SearchError(f"{source}: [search] {k} '{s[k]}' is not one of "
                              + ", ".join(choices) + _suggest(str(s[k]), choices))
    if s["pruner"] == "proxy" and not s["fidelity"]:
        raise SearchError(f"{source}: [search] pruner 'proxy' decides at the proxy rung only: "
                          "set [search] fidelity too, e.g. fidelity = { train_subset = 10000, "
                          "epochs = 3 }")
    _check_search_numbers(s, source)
    return s


def _check_fill_time(s: dict, cons: dict, space: dict[str, Dim], source: str) -> None:
    """`[search] fill_time = true`: every trial trains the most epochs its predicted time
    allows under the time rule (a design cheap per epoch trains longer), so designs are
    compared at equal training time. Needs a time rule and an epochs range to fill."""
    f = s["fill_time"]
    if not isinstance(f, bool):
        raise SearchError(f"{source}: [search] fill_time must be true or false, got {f!r}")
    if not f:
        return
    if not (cons["max_train_time_vs_base"] or cons["max_train_seconds"]):
        raise SearchError(f"{source}: [search] fill_time fills a time rule: set [constraints] "
                          "max_train_time_vs_base or max_train_seconds too")
    d = space.get("epochs")
    if d is None or d.kind != "int":
        raise SearchError(f"{source}: [search] fill_time picks each trial's epochs within "
                          "[space] epochs: give it a range, e.g. epochs = { low = 8, high = 20 }")


def _objectives(obj: Any, source: str) -> list[str]:
    """[search] objectives as a list: one of the allowed combinations."""
    if isinstance(obj, str):
        obj = [obj]
    if (not isinstance(obj, list) or obj not in (
            [["val_acc"], ["corrupt_acc"], ["val_acc", "corrupt_acc"]]
            + [["val_acc", c] for c in COSTS])):
        raise SearchError(f"{source}: [search] objectives must be [\"val_acc\"], "
                          f"[\"corrupt_acc\"], [\"val_acc\", \"corrupt_acc\"] or "
                          f"[\"val_acc\", COST] with COST one of {', '.join(COSTS)}; got {obj!r}")
    return obj


def _check_search_numbers(s: dict, source: str) -> None:
    """[search]'s integers and minutes (the minutes made floats in place)."""
    ints = {"min_epochs": 1, "reduction_factor": 2, "val_split": 1, "train_subset": 0,
            "seed": 0, "startup_trials": 0, "max_rejected_in_row": 1, "heartbeat": 1,
            "corrupt_images": 10, "processes": 1}
    for k, lo in ints.items():
        v = s[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise SearchError(f"{source}: [search] {k} must be an integer >= {lo}, got {v!r}")
    m = s["minutes"]
    if isinstance(m, bool) or not isinstance(m, int | float) or m <= 0:
        raise SearchError(f"{source}: [search] minutes must be a positive number, got {m!r}")
    s["minutes"] = float(m)
    w = s["storage_wait_minutes"]
    if isinstance(w, bool) or not isinstance(w, int | float) or w < 0:
        raise SearchError(f"{source}: [search] storage_wait_minutes must be a number >= 0, "
                          f"got {w!r}")
    s["storage_wait_minutes"] = float(w)
    m = s["mutate"]
    if isinstance(m, bool) or not isinstance(m, int | float) or not 0 <= m < 1:
        raise SearchError(f"{source}: [search] mutate (the share of trials proposed as a small "
                          f"change to one of the best designs) must be >= 0 and < 1, got {m!r}")
    s["mutate"] = float(m)


def _parse_space(space_raw: Any, source: str, model: str) -> tuple[dict[str, Dim], str]:
    """([space] as dimensions, the searched network). The network is the built-in `family`
    when the base recipe's network is `family` or [space] names an architecture dimension
    (stages, width, ...: the family replaces a built-in base network, as the shipped search
    files do); otherwise it is the base recipe's own network, whose constructor arguments
    [space] may name as `model_args.NAME` (checked against its builder's signature). Training
    dimensions either way."""
    if not isinstance(space_raw, dict):
        raise SearchError(f"{source}: [space] must be a table")
    space_raw = _flat_model_args(space_raw, f"{source} [space]")
    arch = [k for k in space_raw if k in ARCH_DIMS]
    margs = [k for k in space_raw if k.startswith(MODEL_ARG)]
    if margs and model == "family":
        raise SearchError(f"{source}: [space] '{margs[0]}': the base recipe's network is the "
                          "built-in family: search it with its architecture dimensions "
                          "(stages, width, depth, block, ...), or give the base recipe your "
                          "own network (model = \"mynet.py:Net\") to search its arguments")
    if arch and (margs or split_model_file(model) is not None):
        raise SearchError(f"{source}: [space] '{arch[0]}' is an architecture dimension of the "
                          f"family network, but the base recipe's network is '{model}': "
                          "search its constructor arguments as model_args.NAME (e.g. "
                          f"model_args.{arch[0]} if it takes '{arch[0]}')")
    family = model == "family" or bool(arch)
    known = (list(ARCH_DIMS) if family else ["model_args.NAME"]) + list(TRAIN_DIMS)
    space: dict[str, Dim] = {}
    for k, v in space_raw.items():
        if k not in ARCH_DIMS and k not in TRAIN_DIMS and k not in BY_KEY \
                and not k.startswith(MODEL_ARG):
            raise SearchError(f"{source}: unknown dimension '{k}' in [space] (known: "
                              f"{', '.join(known)}, or a recipe key such as "
                              "'schedule.pct_start')" + _suggest(k, known + list(BY_KEY)))
        if k in BY_KEY and (k.startswith("constraints.") or k in ("model", "model_args",
                                                                  "name", "description")):
            raise SearchError(f"{source}: '{k}' cannot be a dimension (rules go in "
                              "[constraints], the network is the family's dimensions or "
                              "model_args.NAME)")
        d = _dim(k, v, f"{source} [space]")
        _check_dim(d, f"{source} [space]")
        space[k] = d
    if not family:
        _check_model_args(model, [k[len(MODEL_ARG):] for k in margs], source)
        return space, model
    for k, (default, _) in ARCH_DIMS.items():
        space.setdefault(k, Dim(k, "fixed", value=default))
    stages = space["stages"]
    if stages.kind == "fixed":
        for k in PER_STAGE:
            d = space[k]
            if d.kind == "fixed" and isinstance(d.value, list) and len(d.value) != stages.value:
                raise SearchError(f"{source} [space]: '{k}' has {len(d.value)} values for "
                                  f"{stages.value} stages")
    elif any(isinstance(space[k].value, list) for k in PER_STAGE if space[k].kind == "fixed"):
        raise SearchError(f"{source} [space]: a per-stage list needs a fixed number of stages")
    return space, "family"


def _flat_model_args(table: dict, where: str) -> dict:
    """TOML reads `model_args.width = ...` as a table `model_args = {width = ...}`: back to
    one key per argument, `model_args.width` (a quoted "model_args.width" stays as it is)."""
    if "model_args" not in table:
        return table
    sub = table["model_args"]
    if not isinstance(sub, dict) or not sub:
        raise SearchError(f"{where}: model_args must name arguments, e.g. model_args.width = "
                          "{ low = 16, high = 64 }")
    out = {k: v for k, v in table.items() if k != "model_args"}
    out.update({f"{MODEL_ARG}{k}": v for k, v in sub.items()})
    return out


def _check_model_args(model: str, names: list[str], source: str) -> None:
    """Each `model_args.NAME` of [space] must be an argument of the network's builder (its
    signature, as `create_model` checks it; a builder taking **kwargs takes any)."""
    import inspect

    from ..models.registry import builder_of
    from ..recipe import split_model_file

    if not names:
        return
    try:
        builder = builder_of(model, split_model_file(model))
    except CifarlabError as e:
        raise SearchError(f"{source}: base recipe's network: {e}") from None
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return  # a C callable: building it checks
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    takes = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
             and n != "self"]
    for n in names:
        if n not in takes:
            raise SearchError(f"{source}: [space] model_args.{n}: the network '{model}' has no "
                              f"argument '{n}' (it takes: {', '.join(takes) or 'none'})"
                              + _suggest(n, takes))


def load_search(path_or_name: str | os.PathLike) -> SearchSpec:
    """A search file by path, or a built-in one by name (`seed001-rules`, `under-50k`,
    `edge-8m`)."""
    text, source, path = _read_search_text(path_or_name)
    return parse_search(text, source, path)


def max_epochs(space: dict[str, Dim], base_recipe: dict) -> int:
    d = space.get("epochs") or space.get("train.epochs")
    if d is None:
        return int(resolve(copy.deepcopy(base_recipe))["train"]["epochs"])
    return int(max(d.values()))


# ------------------------------------------------------------------------------ sampling

def _pname(stage: int, key: str) -> str:
    return f"s{stage}_{key}"


def _middle(depth: int, d: int) -> int | list[int]:
    """The stage's dilation as model_args: d on its middle block (seed 001's one dilated
    conv), 1 elsewhere."""
    if d == 1 or depth <= 1:
        return d if depth == 1 else 1
    return [d if j == depth // 2 else 1 for j in range(depth)]


def sample(space: dict[str, Dim], trial: Any, base_args: dict | None = None,
           derived: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """(model_args, searched training settings as dotted recipe keys) for a trial (anything
    with Optuna's suggest_* methods): the `family` network's arguments, or, for a space of
    `model_args.NAME` dimensions (the base recipe's own network), the base's arguments
    `base_args` with the searched ones drawn. The `derived` training dimensions are not
    drawn (the worker sets them: `SearchSpec.derived`)."""
    if "stages" in space:
        args = _family_args(space, trial)
    else:
        args = copy.deepcopy(base_args or {})
        for name, d in space.items():
            if name.startswith(MODEL_ARG):
                args[name[len(MODEL_ARG):]] = d.suggest(trial, name)
    train: dict[str, Any] = {}
    for name, d in space.items():
        if name in ARCH_DIMS or name.startswith(MODEL_ARG) or name in derived:
            continue
        v = d.suggest(trial, name)
        if name == "augment":
            train["augment.backend"] = "tensor"
            train.update({f"augment.{k}": x for k, x in AUGMENT[int(v)].items()})
        else:
            key = TRAIN_DIMS.get(name) or name
            train[key] = check_value(key, v)
    return args, train


def _family_args(space: dict[str, Dim], trial: Any) -> dict:
    """The `family` network's model_args drawn for a trial."""
    n = space["stages"].suggest(trial, "stages")
    stem = space["stem"].suggest(trial, "stem")
    per: dict[str, list] = {k: [] for k in PER_STAGE}
    for i in range(1, n + 1):
        for k in ("depth", "width", "block", "downsample", "dilation"):
            d = space[k]
            if d.kind == "fixed" and isinstance(d.value, list):
                per[k].append(d.value[i - 1])
            else:
                per[k].append(d.suggest(trial, _pname(i, k)))
    args = {"stem": stem, "widths": per["width"], "depths": per["depth"],
            "blocks": per["block"], "downsample": per["downsample"],
            "dilation": [_middle(dp, dl) for dp, dl in zip(per["depth"], per["dilation"],
                                                            strict=True)],
            "head": space["head"].suggest(trial, "head"),
            "dropout": float(space["dropout"].suggest(trial, "dropout")),
            "head_dropout": float(space["head_dropout"].suggest(trial, "head_dropout"))}
    style = space["style"].suggest(trial, "style")
    if style != "classic":  # (keeps the model_args of classic designs as they were)
        args["style"] = style
    return args


def _enqueue_entry(spec: SearchSpec, entry: dict, where: str) -> dict:
    """An [[enqueue]] table -> {'label', 'params'} with Optuna parameter names, checked
    against the space."""
    e = _flat_model_args(dict(entry), where)
    label = e.pop("label", None)
    if label is not None and not isinstance(label, str):
        raise SearchError(f"{where}: label must be a string")
    params: dict[str, Any] = {}
    space = spec.space
    for k in e:
        if k not in space and k not in TRAIN_DIMS and k not in BY_KEY:
            raise SearchError(f"{where}: unknown dimension '{k}'"
                              + _suggest(k, list(space) + list(TRAIN_DIMS)))
        if k not in space:
            raise SearchError(f"{where}: '{k}' is not a dimension of [space]")

    def put(pname: str, d: Dim, v: Any) -> None:
        if d.kind == "fixed":
            if v != d.value:
                raise SearchError(f"{where}: '{d.name}' is fixed at {d.value!r} in [space], "
                                  f"not {v!r}")
            return
        if not d.contains(v):
            rng = d.choices if d.kind == "cat" else f"[{d.low}, {d.high}]"
            raise SearchError(f"{where}: {pname} = {v!r} is outside the space ({rng})")
        params[pname] = v

    n = 0
    if spec.family:
        n = e.get("stages", space["stages"].value if space["stages"].kind == "fixed" else None)
        if n is None:
            raise SearchError(f"{where}: give 'stages' (the number of stages is searched)")
        put("stages", space["stages"], n)
    for name, d in space.items():
        if name == "stages":
            continue
        if name in PER_STAGE:
            if d.kind == "fixed" and isinstance(d.value, list):
                if name in e and e[name] != d.value:
                    raise SearchError(f"{where}: '{name}' is fixed at {d.value!r} in [space]")
                continue
            v = e.get(name, d.value if d.kind == "fixed" else None)
            if v is None:
                raise SearchError(f"{where}: missing '{name}' (one value per stage)")
            vs = v if isinstance(v, list) else [v] * n
            if len(vs) != n:
                raise SearchError(f"{where}: '{name}' has {len(vs)} values for {n} stages")
            for i, x in enumerate(vs, start=1):
                put(_pname(i, name), d, x)
        else:
            if name not in e:
                if d.kind == "fixed":
                    continue
                raise SearchError(f"{where}: missing '{name}' (a searched dimension)")
            put(name, d, e[name])
    return {"label": label, "params": params}


# ------------------------------------------------------------------------------ TOML

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise SearchError(f"cannot write {v} in TOML")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise SearchError(f"cannot write {type(v).__name__} in TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def to_toml(raw: dict, header: str = "") -> str:
    """A recipe dict as TOML (top-level values, then one table per section)."""
    lines = [f"# {x}" if x else "#" for x in header.splitlines()]
    for k, v in raw.items():
        if not isinstance(v, dict):
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, v in raw.items():
        if isinstance(v, dict):
            lines += ["", f"[{_toml_key(k)}]"]
            lines += [f"{_toml_key(kk)} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"
