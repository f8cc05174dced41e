"""Multi-fidelity trials: a cheap proxy rung before the full schedule, and what it is worth.

`[search] fidelity = { train_subset = 10000, epochs = 3, low_res = 24 }` (default `{}`: off).
Every trial that meets the rules first trains the *proxy*: its own design and settings on a
training subset, for fewer epochs, at a lower resolution (all its epochs but the last at
`low_res` px; 0 keeps 32), evaluated once on the full validation split. Its validation accuracy
is the trial's first intermediate value (step 1); the study's Optuna pruner decides there,
as at any rung, whether the design is promoted to the full schedule, whose epoch e is then
reported at step 1 + e. So with Hyperband the proxy is rung 0 of the brackets that start there
(the others trust it less and start later: Hyperband across budgets, BOHB-style with TPE),
with successive halving the top 1/reduction_factor of proxies are promoted, and the
multi-objective dominance rule is applied to the proxy accuracies the same way. TPE learns
from the pruned trials' proxy values too. Queued designs ([[enqueue]]) are always promoted.

What the proxy is worth: `proxy_spearman` is the Spearman rank correlation between proxy and
full-fidelity validation accuracy over designs of a study; `measure_proxy` picks >= 12 designs
spread over the proxy ranking (not only the promoted ones, whose range is cut short), trains
those without a full-fidelity result on the full schedule (no pruning), and records the pairs
in STUDY_DIR/proxy.json (resumable). `cifarlab search proxy STUDY` runs it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

FIDELITY_KEYS = {"train_subset": 10000, "epochs": 3, "low_res": 0}
PROXY_STEP = 1  # the proxy's intermediate value; full-fidelity epoch e is step PROXY_STEP + e


def check_fidelity(raw, where: str) -> dict:
    """`[search] fidelity` as {} (off) or {'train_subset', 'epochs', 'low_res'}; ValueError
    with the reason otherwise."""
    if raw in ({}, None):
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: fidelity must be a table, e.g. fidelity = "
                         "{ train_subset = 10000, epochs = 3, low_res = 24 }")
    unknown = sorted(set(raw) - set(FIDELITY_KEYS))
    if unknown:
        raise ValueError(f"{where}: fidelity has an unknown key '{unknown[0]}' (keys: "
                         + ", ".join(FIDELITY_KEYS) + ")")
    out = {**FIDELITY_KEYS, **raw}
    for k, lo in (("train_subset", 1), ("epochs", 1), ("low_res", 0)):
        v = out[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{where}: fidelity.{k} must be an integer >= {lo}, got {v!r}")
    if out["low_res"] and not 8 <= out["low_res"] <= 31:
        raise ValueError(f"{where}: fidelity.low_res must be 0 (32 px) or 8-31, got "
                         f"{out['low_res']}")
    return out


def proxy_epochs(fidelity: dict, scale: float = 1.0) -> int:
    """The proxy's epochs: fidelity.epochs times `scale` (at least 1). With `[search]
    fill_time` the scale is the trial's epochs over the base recipe's, so that every proxy
    costs about the same time, as every full trial does."""
    return max(1, round(fidelity["epochs"] * scale))


def proxy_overrides(fidelity: dict, scale: float = 1.0) -> dict:
    """Recipe overrides that turn a trial's recipe into its proxy (`proxy_epochs`)."""
    lr, e = fidelity["low_res"], proxy_epochs(fidelity, scale)
    return {"data.train_subset": fidelity["train_subset"], "train.epochs": e,
            "train.low_res": lr, "train.low_res_epochs": e if lr else 0,
            "train.eval_every": 0}


# ------------------------------------------------------------------------ what it is worth

def proxy_spearman(pairs: list[tuple[float, float]]) -> float | None:
    """Spearman's rank correlation of (proxy, full) validation accuracies; None when fewer than
    3 pairs or a constant side."""
    from scipy.stats import spearmanr

    if len(pairs) < 3 or len({p for p, _ in pairs}) < 2 or len({f for _, f in pairs}) < 2:
        return None  # a constant side: no ranking to correlate
    rho = spearmanr([p for p, _ in pairs], [f for _, f in pairs]).statistic
    return None if rho is None or math.isnan(rho) else float(rho)


def pick_designs(trials: list, n: int) -> list:
    """n trials spread evenly over the ranking by proxy accuracy (best, worst and between),
    among those with a proxy value: the correlation is measured over the whole range."""
    have = sorted((t for t in trials if isinstance(t.user_attrs.get("proxy_acc"), int | float)),
                  key=lambda t: (-t.user_attrs["proxy_acc"], t.number))
    if len(have) <= n:
        return have
    picks = sorted({round(i * (len(have) - 1) / (n - 1)) for i in range(n)})
    return [have[i] for i in picks]


def full_value(t) -> float | None:
    """A trial's full-fidelity validation accuracy, when it trained the whole schedule."""
    from optuna.trial import TrialState

    v = t.user_attrs.get("val_acc")
    if t.state == TrialState.COMPLETE and isinstance(v, int | float):
        return float(v)
    return None


def measure_proxy(trials: list, n: int, train_full: Callable[[object], float],
                  record: Path | None = None, log: Callable[[str], None] = print) -> dict:
    """The proxy's worth over n designs (`pick_designs`): those without a full-fidelity value
    are trained by `train_full(trial) -> val acc`; each result is kept in `record` (JSON) as it
    comes, so an interrupted measurement resumes. Returns {'spearman', 'designs': [...]}."""
    if n < 3:
        raise ValueError("the proxy's worth needs at least 3 designs (12 or more to mean much)")
    done = json.loads(record.read_text()).get("full", {}) if record and record.exists() else {}
    designs = []
    for t in pick_designs(trials, n):
        full = full_value(t)
        if full is None:
            full = done.get(str(t.number))
        if full is None:
            log(f"proxy check: trial {t.number} (proxy val acc "
                f"{t.user_attrs['proxy_acc']:.4f}) on the full schedule")
            full = float(train_full(t))
            done[str(t.number)] = full
            if record:
                record.write_text(json.dumps({"full": done}, indent=1) + "\n")
        designs.append({"trial": t.number, "proxy_acc": t.user_attrs["proxy_acc"],
                        "full_acc": full, "design": t.user_attrs.get("design")})
    rho = proxy_spearman([(d["proxy_acc"], d["full_acc"]) for d in designs])
    out = {"spearman": rho, "designs": designs, "n": len(designs)}
    if record:
        record.write_text(json.dumps({"full": done, **out}, indent=1) + "\n")
    return out
