"""`cifarlab search report`: one self-contained HTML page about a study (the style of
`cifarlab report`, whose helpers it reuses).

  out/index.html     summary, best trial(s), figures (inlined), the table of every trial
  out/*.png          pareto.png, history.png, curves.png, importance.png
  out/trials.json    the same table as data

The page reads the study only (the storage), so it can be made on any machine that reaches
the database, while the search runs.
"""

from __future__ import annotations

import html
import json
import math
import os
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import optuna
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter
from optuna.trial import FrozenTrial, TrialState

from .. import plots
from ..report import CSS, count, duration, pct, png_uri
from ..rundir import atomic_write_text
from .storage import load_study, mask_url, resolve_study, spec_of
from .trials import best_trials, outcome, summary, trial_seconds

STATE_COLOR = {"complete": "#1f77b4", "pruned": "#9a9a9a", "rejected": "#d62728",
               "failed": "#000000", "running": "#2ca02c", "waiting": "#bcbd22"}
REF_COLOR = "#ff7f0e"


def _last_val(t: FrozenTrial) -> float | None:
    v = t.user_attrs.get("val_acc")
    if isinstance(v, int | float) and math.isfinite(v):
        return float(v)
    curve = t.user_attrs.get("curve") or {}
    if curve:
        return float(curve[max(curve, key=int)])
    return None


def trial_rows(study: optuna.Study, trials: list[FrozenTrial]) -> list[dict]:
    """One plain dict per trial (what the table and trials.json show)."""
    rows = []
    for t in trials:
        ua = t.user_attrs
        curve = ua.get("curve") or {}
        why = ua.get("rejected") or ua.get("pruned") or ua.get("failed") or ua.get("error")
        rows.append({
            "number": t.number, "state": outcome(t), "label": ua.get("label"),
            "design": ua.get("design"), "train": ua.get("train"),
            "params": ua.get("params"), "macs": ua.get("macs"),
            "receptive_field": ua.get("receptive_field"),
            "val_acc": _last_val(t), "epochs": (max(map(int, curve)) if curve else None),
            "epochs_planned": (ua.get("train") or {}).get("train.epochs"),
            "cost": ua.get("cost"), "corrupt_acc": ua.get("corrupt_acc"),
            "proxy_acc": ua.get("proxy_acc"),
            "seconds": trial_seconds(t), "train_seconds": ua.get("train_seconds"),
            "predicted_seconds": ua.get("predicted_seconds"),
            "why": why, "run_dir": ua.get("run_dir"),
            "retry_of": t.system_attrs.get("failed_trial"),
        })
    return rows


# --------------------------------------------------------------------------- figures

def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper-left staircase: (cost, acc) points no other point beats on both."""
    best, out = -math.inf, []
    for c, a in sorted(points, key=lambda p: (p[0], -p[1])):
        if a > best:
            out.append((c, a))
            best = a
    return out


def draw_pareto(rows: list[dict]) -> Figure:
    """Validation accuracy against MACs and against parameters: every trained trial, the
    front (no other trial is both cheaper and better), the hand-written designs starred."""
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "macs", "MACs per image"),
                           (axes[1], "params", "parameters")):
        for state in ("pruned", "complete"):
            pts = [(r[key], r["val_acc"]) for r in rows if r["state"] == state
                   and r[key] and r["val_acc"] is not None and not r["label"]]
            if pts:
                ax.scatter([p[0] for p in pts], [100 * p[1] for p in pts], s=22,
                           color=STATE_COLOR[state], alpha=0.85 if state == "complete" else 0.5,
                           label=f"{state} ({'final' if state == 'complete' else 'last'} "
                                 "val acc)", zorder=3)
        done = [(r[key], r["val_acc"]) for r in rows if r["state"] == "complete"
                and r[key] and r["val_acc"] is not None]
        if done:
            f = _front(done)
            ax.step([p[0] for p in f], [100 * p[1] for p in f], where="post", color="#d62728",
                    linewidth=1.5, label="Pareto front", zorder=2)
        for r in rows:
            if r["label"] and r[key] and r["val_acc"] is not None:
                ax.scatter([r[key]], [100 * r["val_acc"]], marker="*", s=220, color=REF_COLOR,
                           edgecolors="black", zorder=5, label=f"hand-written: {r['label']}")
                ax.annotate(r["label"], (r[key], 100 * r["val_acc"]), textcoords="offset points",
                            xytext=(6, -12), fontsize=9)
        ax.set_xscale("log")
        ax.set(xlabel=label + " (log scale)", ylabel="validation accuracy (%)",
               title=f"Validation accuracy vs {label}")
        ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
        ax.grid(True, alpha=0.3, which="both")
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles, strict=True))
        if uniq:
            ax.legend(uniq.values(), uniq.keys(), fontsize=8, loc="best")
    return fig


def draw_robust_pareto(rows: list[dict]) -> Figure:
    """Accuracy on corrupted validation images against clean validation accuracy: every
    complete trial scored on both, the front (no other trial better on both) and the
    hand-written designs starred."""
    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    ax = fig.subplots()
    pts = [(r["val_acc"], r["corrupt_acc"], r["label"]) for r in rows
           if r["state"] == "complete" and r["val_acc"] is not None
           and r["corrupt_acc"] is not None]
    ax.scatter([100 * p[0] for p in pts if not p[2]], [100 * p[1] for p in pts if not p[2]],
               s=22, color=STATE_COLOR["complete"], label="complete", zorder=3)
    if pts:  # the front: sorted by clean accuracy, best first, each better when corrupted
        best, front = -math.inf, []
        for v, c, _ in sorted(pts, key=lambda p: (-p[0], -p[1])):
            if c > best:
                front.append((v, c))
                best = c
        ax.step([100 * p[0] for p in front], [100 * p[1] for p in front], where="pre",
                color="#d62728", linewidth=1.5, label="Pareto front", zorder=2)
    for v, c, label in pts:
        if label:
            ax.scatter([100 * v], [100 * c], marker="*", s=220, color=REF_COLOR,
                       edgecolors="black", zorder=5, label=f"hand-written: {label}")
    ax.set(xlabel="validation accuracy (%)",
           ylabel="corrupted validation accuracy (%, mean of 15 corruptions)",
           title="Accuracy on corrupted vs clean validation images")
    ax.xaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def draw_history(rows: list[dict], multi: bool) -> Figure:
    """Validation accuracy of each trial in order, rejected trials as ticks at the bottom, and
    the best so far."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax = fig.subplots()
    for state in ("pruned", "complete"):
        pts = [(r["number"], r["val_acc"]) for r in rows if r["state"] == state
               and r["val_acc"] is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [100 * p[1] for p in pts], s=20,
                       color=STATE_COLOR[state], label=state, zorder=3,
                       alpha=0.9 if state == "complete" else 0.5)
    rej = [r["number"] for r in rows if r["state"] == "rejected"]
    if rej:
        ax.scatter(rej, [0] * len(rej), marker="|", s=60, color=STATE_COLOR["rejected"],
                   label=f"rejected by the rules ({len(rej)}, no training)", zorder=3,
                   transform=ax.get_xaxis_transform())
    best, xs, ys = -math.inf, [], []
    for r in sorted(rows, key=lambda r: r["number"]):
        if r["state"] == "complete" and r["val_acc"] is not None:
            best = max(best, r["val_acc"])
        if best > -math.inf:
            xs.append(r["number"])
            ys.append(100 * best)
    if xs:
        ax.step(xs, ys, where="post", color="#d62728", label="best so far")
    ax.set(xlabel="trial", ylabel="validation accuracy (%)",
           title="Optimization history" + (" (first objective)" if multi else ""))
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def draw_curves(trials: list[FrozenTrial]) -> Figure:
    """Validation accuracy per epoch of every trained trial: where pruning stopped them."""
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax = fig.subplots()
    for t in trials:
        curve = t.user_attrs.get("curve") or {}
        if not curve:
            continue
        ep = sorted(map(int, curve))
        o = outcome(t)
        ax.plot(ep, [100 * curve[str(e)] for e in ep], color=STATE_COLOR.get(o, "#444"),
                alpha=0.9 if o == "complete" else 0.45, linewidth=1.2,
                marker="o" if len(ep) < 25 else None, markersize=2.5)
    for o in ("complete", "pruned"):
        ax.plot([], [], color=STATE_COLOR[o], label=o)
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)",
           title="Validation accuracy per epoch (pruned trials stop early)")
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def importances(study: optuna.Study) -> dict[str, float]:
    """Parameter importances for validation accuracy (Optuna's default evaluator, PED-ANOVA,
    which handles the conditional per-stage parameters); {} when there are too few trials."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if len(done) < 3:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(
                study, target=lambda t: t.values[0]))
    except (RuntimeError, ValueError, ZeroDivisionError, IndexError):
        return {}


def draw_importance(imp: dict[str, float]) -> Figure:
    items = list(imp.items())[:20]
    fig = Figure(figsize=(8, 0.32 * len(items) + 1.5), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(items))
    ax.barh(y, [v for _, v in items], color=plots.run_color(0))
    ax.set_yticks(y, [k for k, _ in items])
    ax.invert_yaxis()
    ax.set(xlabel="importance (PED-ANOVA, sums to 1)",
           title="Which settings mattered for validation accuracy")
    ax.grid(True, axis="x", alpha=0.3)
    return fig


# --------------------------------------------------------------------------- page

def _cell(v, kind: str = "") -> str:
    if v is None:
        return "-"
    if kind == "pct":
        return pct(v)
    if kind == "count":
        return count(v)
    if kind == "int":
        return f"{int(v):,}"
    if kind == "dur":
        return duration(v)
    return str(v)


def _train_text(train: dict | None) -> str:
    if not train:
        return "-"
    short = {"optim.lr": "lr", "optim.weight_decay": "wd", "train.batch_size": "batch",
             "train.epochs": "epochs", "loss.label_smoothing": "smoothing",
             "augment.crop_pad": "crop pad", "augment.cutout": "cutout"}
    parts = []
    for k, v in train.items():
        if k == "augment.backend":
            continue
        parts.append(f"{short.get(k, k)} {v:.3g}" if isinstance(v, float) else
                     f"{short.get(k, k)} {v}")
    return ", ".join(parts)


def make_search_report(study: str, storage: str | None = None,
                       runs_dir: str | os.PathLike = "runs",
                       out: str | os.PathLike | None = None) -> Path:
    """Write the study's report; return the path of index.html (default: STUDY_DIR/report/)."""
    name, url, sdir = resolve_study(study, storage, runs_dir)
    optuna_study = load_study(name, url)
    spec = spec_of(optuna_study)
    trials = optuna_study.get_trials(deepcopy=False)
    rows = trial_rows(optuna_study, trials)
    summ = summary(optuna_study, trials)
    multi = len(optuna_study.directions) > 1
    out_dir = Path(out) if out is not None else sdir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(optuna_study, trials, rows, multi, out_dir)
    where = f"{optuna_study.study_name} --storage {mask_url(url)}" if storage else str(sdir)
    title = f"cifarlab search: {optuna_study.study_name}"
    h = _page_head(title, study_facts(spec, summ, url, multi))
    h += _best_section(spec, best_trials(optuna_study, trials), rows, multi, where)
    for png, ftitle, caption in figures:
        h += [f"<h2>{html.escape(ftitle)}</h2>", "<figure>",
              f'<img src="{png_uri(png)}" alt="{html.escape(ftitle)}">',
              f"<figcaption>{html.escape(caption)}</figcaption>", "</figure>"]
    h += _trials_table(spec, rows, multi)
    h += ["</body>", "</html>", ""]
    index = out_dir / "index.html"
    atomic_write_text(index, "\n".join(h))
    atomic_write_text(out_dir / "trials.json",
                      json.dumps({"summary": summ, "trials": rows}, indent=1, default=str)
                      + "\n")
    return index


def draw_figures(study: optuna.Study, trials: list[FrozenTrial], rows: list[dict],
                 multi: bool, out_dir: Path) -> list[tuple[Path, str, str]]:
    """The report's figures, saved in `out_dir`: (png, title, caption) of each one drawn."""
    figures: list[tuple[Path, str, str]] = []
    if any(r["val_acc"] is not None and r["params"] for r in rows):
        figures.append((plots.save_figure(draw_pareto(rows), out_dir / "pareto.png"),
                        "Validation accuracy against cost",
                        "Each dot a trained trial (pruned ones at their last validation "
                        "accuracy); the red staircase is the Pareto front of the complete "
                        "ones; stars are the hand-written designs queued as reference "
                        "points (trained by the search under the same protocol)."))
    if any(r["corrupt_acc"] is not None for r in rows):
        figures.append((plots.save_figure(draw_robust_pareto(rows), out_dir / "robust.png"),
                        "Corrupted against clean validation accuracy",
                        "Each dot a complete trial: x its validation accuracy, y its mean "
                        "accuracy on the same validation split's images corrupted by the 15 "
                        "CIFAR-10-C-style corruptions (objective corrupt_acc); the red "
                        "staircase is their Pareto front. The test set is never read."))
    if rows:
        figures.append((plots.save_figure(draw_history(rows, multi), out_dir / "history.png"),
                        "Optimization history",
                        "Validation accuracy of each trial in the order they started; ticks "
                        "at the bottom are candidates the rules rejected before training."))
    if any(t.user_attrs.get("curve") for t in trials):
        figures.append((plots.save_figure(draw_curves(trials), out_dir / "curves.png"),
                        "Learning curves", "Validation accuracy after each epoch; pruning "
                        "stops hopeless trials at the rungs, so most of the time goes to "
                        "promising designs."))
    imp = importances(study)
    if imp:
        figures.append((plots.save_figure(draw_importance(imp), out_dir / "importance.png"),
                        "Parameter importances", "PED-ANOVA importances of the sampled "
                        "parameters for validation accuracy (s1_width: stage 1's width, ...)."))
    return figures


def rules_text(cons: dict) -> str:
    """The search's rules in a line."""
    rules = [f"max_params {cons['max_params']:,}" if cons["max_params"] else None,
             f"max_macs {cons['max_macs']:,}" if cons["max_macs"] else None,
             f"min_receptive_field {cons['min_receptive_field']}"
             if cons["min_receptive_field"] else None,
             ("require " + ", ".join(cons["require"])) if cons["require"] else None,
             ("forbid " + ", ".join(cons["forbid"])) if cons["forbid"] else None,
             f"training time <= {cons['max_train_time_vs_base']:g}x the base recipe's"
             if cons["max_train_time_vs_base"] else None,
             f"training time <= {cons['max_train_seconds']:.0f} s"
             if cons["max_train_seconds"] else None]
    return "; ".join(r for r in rules if r) or "none"


def study_facts(spec, summ: dict, url: str, multi: bool) -> list[tuple[str, str]]:
    """The table at the top of the page: the search, storage, objectives, rules, method,
    budget and trials."""
    s, budget = spec.search, summ["budget_minutes"]
    return [
        ("search", f"{spec.description or spec.name} (base recipe {spec.base})"),
        ("storage", mask_url(url)),
        ("objectives", ", ".join(spec.objectives)
         + (" (Pareto front)" if multi else "") + f"; validation split "
         f"{s['val_split']:,} training images, test set never read"
         + (f"; corrupt_acc on {s['corrupt_images']:,} of them x 15 corruptions at "
            f"severities {', '.join(map(str, s['corrupt_severities']))}"
            if "corrupt_acc" in spec.objectives else "")),
        ("rules", rules_text(spec.constraints)),
        ("method", f"{s['sampler']} sampler, "
         + ("dominance rule (multi-objective early stop on val acc)" if multi else
            f"{s['pruner']} pruner" + (" on val acc" if spec.objectives[0] != "val_acc"
                                       else ""))
         + (", rungs from the proxy rung" if s["fidelity"] and not multi else
            f", rungs from epoch {s['min_epochs']}")
         + f", reduction factor {s['reduction_factor']}"
         + ("; proxy rung first: {epochs} epochs on {train_subset:,} images".format(
             **s["fidelity"]) + (f" at {s['fidelity']['low_res']} px"
                                 if s["fidelity"]["low_res"] else "")
            if s["fidelity"] else "")),
        ("budget", f"{summ['minutes_used']:.1f} of {budget:g} min used"
         if isinstance(budget, int | float) else f"{summ['minutes_used']:.1f} min used"),
        ("trials", f"{summ['trials']}: {summ['complete']} complete, {summ['pruned']} pruned, "
         f"{summ['rejected']} rejected, {summ['failed']} failed"
         + (f", {summ['running']} running" if summ["running"] else "")
         + (f", {summ['waiting']} waiting" if summ["waiting"] else "")),
        ("rejected by rule", ", ".join(f"{k}: {v}" for k, v in
                                       summ["rejected_by_rule"].items()) or "none"),
    ]


def _page_head(title: str, facts: list[tuple[str, str]]) -> list[str]:
    e = html.escape
    when = datetime.now().strftime("%Y-%m-%d %H:%M")
    h = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         f"<title>{e(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
         f"<h1>{e(title)}</h1>", f'<p class="meta">generated {e(when)}</p>',
         '<table id="facts"><tbody>']
    h += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts]
    return h + ["</tbody></table>"]


def _best_section(spec, best: list[FrozenTrial], rows: list[dict], multi: bool,
                  where: str) -> list[str]:
    """The best trial (or the Pareto front) and how to get it as a recipe."""
    if not best:
        return []
    e = html.escape
    extra = _extra_columns(spec)
    h = [f"<h2>{'Pareto front' if multi else 'Best trial'}</h2>",
         '<table id="best"><thead><tr><th>trial</th><th>val acc</th>'
         + "".join(f"<th>{e(name)}</th>" for name, _, _ in extra)
         + "<th>design</th><th>training</th><th>params</th><th>MACs</th><th>RF</th>"
           "<th>run dir</th></tr></thead><tbody>"]
    for t in best:
        r = next(x for x in rows if x["number"] == t.number)
        h.append(f"<tr><td class=\"num\">{t.number}</td><td class=\"num\">"
                 f"{e(_cell(r['val_acc'], 'pct'))}</td>"
                 + "".join(f"<td class=\"num\">{e(_cell(r[key], kind))}</td>"
                           for _, key, kind in extra)
                 + f"<td>{e(r['design'] or '-')}</td><td>{e(_train_text(r['train']))}</td>"
                 f"<td class=\"num\">{e(_cell(r['params'], 'int'))}</td>"
                 f"<td class=\"num\">{e(_cell(r['macs'], 'count'))}</td>"
                 f"<td class=\"num\">{e(_cell(r['receptive_field']))}</td>"
                 f"<td>{e(r['run_dir'] or '-')}</td></tr>")
    h.append("</tbody></table>")
    h.append(f"<p>As a recipe: <code>cifarlab search best {e(where)} --out "
             "best.toml</code>, then <code>cifarlab train --recipe best.toml</code> "
             "(full training set, test set read once).</p>")
    return h


def _extra_columns(spec) -> list[tuple[str, str, str]]:
    """(header, row key, cell kind) of the objectives beside val acc: corrupt acc, a cost."""
    out = []
    if spec.search["fidelity"]:
        out.append(("proxy val acc", "proxy_acc", "pct"))
    if "corrupt_acc" in spec.objectives:
        out.append(("corrupt acc", "corrupt_acc", "pct"))
    if spec.cost:
        out.append((spec.cost, "cost", "count"))
    return out


def _trials_table(spec, rows: list[dict], multi: bool) -> list[str]:
    """Every trial: state, design, training, facts, accuracy, time and why it stopped."""
    e = html.escape
    extra = _extra_columns(spec)
    cols = ["#", "state", "design", "training", "params", "MACs", "RF", "val acc", "epochs",
            "time", "why (rejected / pruned / failed)", "run dir"]
    cols[8:8] = [name for name, _, _ in extra]
    h = ["<h2>Trials</h2>", '<table id="trials">', "<thead><tr>"
         + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr></thead>", "<tbody>"]
    for r in rows:
        ep = "-" if r["epochs"] is None else (
            f"{r['epochs']}" + (f" of {r['epochs_planned']}" if r["epochs_planned"] else ""))
        design = (r["design"] or "-") + (f" [{r['label']}]" if r["label"] else "")
        retry = f" (retry of trial {r['retry_of']})" if r["retry_of"] is not None else ""
        cells = [(str(r["number"]), "num"), (r["state"] + retry, ""), (design, ""),
                 (_train_text(r["train"]), ""), (_cell(r["params"], "int"), "num"),
                 (_cell(r["macs"], "count"), "num"), (_cell(r["receptive_field"]), "num"),
                 (_cell(r["val_acc"], "pct"), "num"), (ep, "num"),
                 (duration(r["seconds"]) if r["seconds"] else "-", "num"),
                 (r["why"] or "", "notes"), (r["run_dir"] or "-", "")]
        cells[8:8] = [(_cell(r[key], kind), "num") for _, key, kind in extra]
        style = f' style="color:{STATE_COLOR.get(r["state"], "#222")}"'
        h.append("<tr>" + "".join(
            f'<td{" class=" + chr(34) + k + chr(34) if k else ""}'
            f'{style if i == 1 else ""}>{e(v)}</td>' for i, (v, k) in enumerate(cells))
            + "</tr>")
    return h + ["</tbody>", "</table>"]
