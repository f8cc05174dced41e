"""The rules a candidate must meet before it trains, and what the sampler learns from them.

`check_rules`: the network rules (params, MACs, receptive field, required / forbidden layers)
from one trace, worded by `analysis.assess` (the same messages as `cifarlab check`), plus the
constraint values Optuna's sampler learns the feasible region from. `untrainable`: what would
stop a candidate that meets them from training under its recipe. `rule_key`: a message's rule,
for counting rejections.
"""

from __future__ import annotations

import copy

import torch

from ..analysis import assess
from ..errors import CifarlabError
from .timing import step_timer


def check_rules(model: torch.nn.Module, cons: dict) -> tuple[dict, list[str], dict]:
    """(model facts, broken rules as messages, constraint values for the sampler: > 0 = broken by
    that relative amount, <= 0 = met), from one trace (`analysis.assess`, which words every
    rule's message)."""
    model_facts, broken = assess(model, max_params=cons["max_params"] or None,
                                 max_macs=cons["max_macs"] or None,
                                 min_receptive_field=cons["min_receptive_field"] or None,
                                 require=cons["require"], forbid=cons["forbid"])
    values: dict[str, float] = {}
    for key, fact in (("max_params", "params"), ("max_macs", "macs")):
        if cons[key]:
            values[key] = (model_facts[fact] - cons[key]) / cons[key]
    if cons["min_receptive_field"]:
        mrf = cons["min_receptive_field"]
        values["min_receptive_field"] = (mrf - model_facts["receptive_field"]) / mrf
    for kind in ("require", "forbid"):
        for rule in cons[kind]:
            hit = any(m.startswith(f"{kind} {rule}:") for m in broken)
            values[f"{kind}_{rule}"] = 1.0 if hit else 0.0
    return model_facts, broken, values


def rule_key(message: str) -> str:
    """'max_params 199999: model has ...' -> 'max_params'; 'require dilated: ...' ->
    'require dilated' (for counting rejections by rule)."""
    head = message.split(":", 1)[0].strip()
    words = head.split()
    if words and words[0] in ("require", "forbid") and len(words) > 1:
        return f"{words[0]} {words[1]}"
    for key in ("time budget", "invalid design", "untrainable"):
        if head.startswith(key):
            return key
    return words[0] if words else head


def untrainable(model: torch.nn.Module, cfg: dict, final_processes: int = 1) -> list[str]:
    """Why a candidate that meets the rules still could not train under its recipe `cfg`
    (empty: it can), found before training: a batch the processes cannot share (the trial's,
    or the `final_processes` the winner trains with: the base recipe's), an image size
    of progressive resizing (`train.low_res`) the network does not take, a training step that
    raises (a shape error, a loss the outputs do not fit). One step of two random images at
    each size it trains at, on a copy (`step_timer`)."""
    from ..engine import batch_split_error, check_low_res
    from ..recipe import low_res_epochs

    t = cfg["train"]
    split = batch_split_error(t["batch_size"], t["processes"])
    if split:
        return [f"untrainable: {split}"]
    split = batch_split_error(t["batch_size"], final_processes)
    if split:
        return [f"untrainable: {split} (the base recipe's, with which the winner trains)"]
    sizes = [32] + ([t["low_res"]] if low_res_epochs(t) else [])
    for size in sizes:
        try:
            if size != 32:
                check_low_res(copy.deepcopy(model), size, torch.device("cpu"))
            step_timer(model, cfg, batch_size=2, size=size)()
        except CifarlabError as e:
            return [f"untrainable: {e}"]
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return [f"untrainable: a training step on {size}x{size} images fails "
                    f"({type(e).__name__}: {first[:200]})"]
    return []


def rules_table(cons: dict) -> dict:
    """The search's network rules as a recipe's [constraints] table."""
    return {"max_params": cons["max_params"], "max_macs": cons["max_macs"],
            "min_receptive_field": cons["min_receptive_field"],
            "require": list(cons["require"]), "forbid": list(cons["forbid"])}
