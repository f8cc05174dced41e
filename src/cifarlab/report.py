"""Compare runs: one self-contained HTML page (figures inlined) plus a Markdown twin.

`make_report(run_dirs, out_dir)` reads run directories through `rundir.py` (and, for a run whose
metrics.json lacks params, MACs or RF, builds its model to measure them) and never fails
on a damaged or unfinished run: a run still in progress, a missing or torn history.csv, a corrupt
metrics.json or a path that is not a run directory each get a row whose "notes" column says
what is wrong, and the rest of the report renders as usual.

  out_dir/index.html   one file: table + figures as base64 data: URIs (mail it, open it offline)
  out_dir/report.md    the same table, linking the PNGs written beside it
  out_dir/*.png        curves.png, per_class.png, robustness.png, confusion-<run>.png

A run with robustness.json (`cifarlab robustness`) adds the column "mCA (relative)" and a line
to the figure of accuracy by corruption severity.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .rundir import RunDir, RunDirError, atomic_write_text, read_json, tested

MISSING = "?"


@dataclass
class RunInfo:
    """What the report knows about one run directory (everything optional)."""

    path: Path
    name: str
    rows: list[dict] = field(default_factory=list)
    config: dict | None = None
    metrics: dict | None = None
    robustness: dict | None = None
    problems: list[str] = field(default_factory=list)
    is_run: bool = True

    @property
    def recipe(self) -> dict:
        r = (self.config or {}).get("recipe")
        return r if isinstance(r, dict) else {}

    @property
    def finished(self) -> bool:
        return self.metrics is not None


def _read_json_file(path: Path, problems: list[str]) -> dict | None:
    """A JSON object, or None with a problem noted (missing files are the caller's business)."""
    try:
        obj = read_json(path)
    except RunDirError:
        problems.append(f"{path.name} is corrupt (not valid JSON)")
        return None
    if not isinstance(obj, dict):
        problems.append(f"{path.name} is not a JSON object")
        return None
    return obj


def load_run(path: str | os.PathLike) -> RunInfo:
    """Read a run directory; never raises: problems go into `RunInfo.problems`."""
    run = RunDir(path)
    info = RunInfo(path=run.path, name=run.path.resolve().name or str(run.path))
    if not run.path.exists():
        info.is_run = False
        info.problems.append("no such directory")
        return info
    if not run.path.is_dir():
        info.is_run = False
        info.problems.append("not a directory")
        return info
    if not any(p.exists() for p in (run.config, run.history, run.metrics)):
        info.is_run = False
        info.problems.append("not a run directory (no config.json, history.csv or metrics.json)")
        return info
    if run.config.exists():
        info.config = _read_json_file(run.config, info.problems)
    else:
        info.problems.append("config.json missing")
    try:
        info.rows, problems = run.read_history()
    except (OSError, UnicodeDecodeError) as e:
        info.rows, problems = [], [f"history.csv unreadable ({type(e).__name__})"]
    info.problems += problems
    if run.robustness.exists():
        r = _read_json_file(run.robustness, info.problems)
        if r is not None and not all(_num(r, k) is not None for k in ("clean_acc", "mca")):
            info.problems.append("robustness.json lacks clean_acc or mca")
            r = None
        info.robustness = r
    if run.metrics.exists():
        info.metrics = _read_json_file(run.metrics, info.problems)
        if info.metrics is None:
            info.problems.append("best/final accuracy and time taken from history.csv")
        else:
            done, planned = info.metrics.get("epochs"), info.metrics.get("epochs_planned")
            if (isinstance(done, int) and isinstance(planned, int) and done < planned
                    and not info.metrics.get("target_epoch")):
                info.problems.append(f"stopped early: {done} of {planned} epochs "
                                     "(resumable with --resume)")
    elif info.rows:
        planned = info.recipe.get("train", {}).get("epochs")
        of = f" of {planned}" if isinstance(planned, int) else ""
        info.problems.append(f"in progress or stopped: no metrics.json yet "
                             f"(epoch {info.rows[-1]['epoch']}{of} done)")
    else:
        info.problems.append("no metrics.json")
    return info


# --------------------------------------------------------------------------- table values

def _num(d: dict | None, key: str) -> float | None:
    v = (d or {}).get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def pct(x: float | None) -> str:
    return MISSING if x is None else f"{100 * x:.2f}%"


def count(x: float | None) -> str:
    if x is None:
        return MISSING
    x = float(x)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= size:
            return f"{x / size:.2f}{unit}"
    return f"{x:.0f}"


def duration(s: float | None) -> str:
    if s is None:
        return MISSING
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {sec:02d}s"


_ARCH_CACHE: dict[str, dict] = {}


def architecture(model: str | None, model_args: dict | None) -> dict:
    """params / macs / receptive_field of a registered model, measured by `analysis`
    ({} where it cannot be built: unknown model, bad args, ...). Cached per (model, args)."""
    if not isinstance(model, str):
        return {}
    key = json.dumps([model, model_args or {}], sort_keys=True, default=str)
    if key not in _ARCH_CACHE:
        try:
            import torch

            from .analysis import count_params, macs, receptive_field
            from .models import create_model

            with torch.no_grad():
                net = create_model(model, **(model_args or {})).eval()
                _ARCH_CACHE[key] = {"params": count_params(net)[0], "macs": macs(net),
                                    "receptive_field": receptive_field(net)}
        except Exception:  # any failure to build or trace: the table shows "?"
            _ARCH_CACHE[key] = {}
    return _ARCH_CACHE[key]


def _first_epoch_at(rows: list[dict], target: float) -> int | None:
    return next((epoch for epoch, acc in tested(rows) if acc >= target), None)


def table_row(info: RunInfo, target: float | None = None) -> dict[str, str]:
    """The table row of one run, as display strings (column name -> text)."""
    m, rec, rows = info.metrics or {}, info.recipe, info.rows
    model = m.get("model") if isinstance(m.get("model"), str) else rec.get("model")
    recipe = m.get("recipe") if isinstance(m.get("recipe"), str) else rec.get("name")
    arch: dict = {}
    params, macs_, rf = _num(m, "params"), _num(m, "macs"), _num(m, "receptive_field")
    if info.is_run and (params is None or macs_ is None or rf is None):
        arch = architecture(model, rec.get("model_args") if rec else None)
        if not arch and model:
            info.problems.append(f"MACs/RF: could not build model '{model}'")
    params = params if params is not None else arch.get("params")
    macs_ = macs_ if macs_ is not None else arch.get("macs")
    rf = rf if rf is not None else arch.get("receptive_field")

    tests = tested(rows)
    has_val = bool(rows) and "val_acc" in rows[0]
    best, best_ep = _num(m, "best_test_acc"), m.get("best_epoch")
    if best is None and tests:
        best_ep, best = max(tests, key=lambda t: t[1])
    best_s = pct(best) + (f" (epoch {best_ep})" if best is not None
                           and isinstance(best_ep, int) else "")
    if has_val:  # chosen on validation: the test set has no best epoch to show
        best_v = _num(m, "best_val_acc")
        best_s = ("–" if best_v is None else
                  f"{pct(best_v)} validation (epoch {m.get('best_epoch')})")
    final = _num(m, "test_acc")
    final_s = pct(final)
    if final is None and tests:
        final_s = f"{pct(tests[-1][1])} (latest)"
    epochs = m.get("epochs") if isinstance(m.get("epochs"), int) else (
        rows[-1]["epoch"] if rows else None)
    planned = rec.get("train", {}).get("epochs") if rec else None
    epochs_s = MISSING if epochs is None else str(epochs)
    if not info.finished and epochs is not None and isinstance(planned, int):
        epochs_s = f"{epochs} of {planned}"
    secs = _num(m, "train_seconds")
    if secs is None and rows:
        secs = sum(r["seconds"] for r in rows if math.isfinite(r["seconds"]))
    row = {
        "run": info.name,
        "recipe": recipe if isinstance(recipe, str) else MISSING,
        "model": model if isinstance(model, str) else MISSING,
        "params": MISSING if params is None else f"{int(params):,}",
        "MACs": count(macs_),
        "RF": MISSING if rf is None else str(int(rf)),
        "epochs": epochs_s,
        "best test acc": best_s,
        "final test acc": final_s,
    }
    if target is not None:
        ep = _first_epoch_at(rows, target)
        reached = str(ep) if ep is not None else ("not reached" if rows else MISSING)
        if has_val:  # the test set was read once: validation per epoch, test at the end
            ep = next((e for e, acc in tested(rows, "val_acc") if acc >= target), None)
            reached = (f"{ep} (validation)" if ep is not None else
                       f"{epochs} (final test)" if final is not None and final >= target
                       else "not reached")
        row[f"epoch reaching {100 * target:g}%"] = reached
    row["train time"] = duration(secs)
    ips = _num(m, "images_per_second")
    row["images/s"] = MISSING if ips is None else f"{ips:,.0f}"
    row["notes"] = "; ".join(info.problems)
    return row


def robustness_cell(r: dict | None) -> str:
    """'71.23% (0.812)': mean corruption accuracy and mCA / clean, with the subset size when
    it is not the whole test set."""
    if r is None:
        return MISSING
    rel = _num(r, "relative")
    images = r.get("images")
    subset = f", {images:,} images" if isinstance(images, int) and images < 10_000 else ""
    return pct(_num(r, "mca")) + (f" ({rel:.3f}{subset})" if rel is not None else "")


def _with_column(row: dict[str, str], after: str, key: str, value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in row.items():
        out[k] = v
        if k == after:
            out[key] = value
    return out


# --------------------------------------------------------------------------- output

def _unique_names(infos: list[RunInfo]) -> None:
    """Two runs called 'default' in different folders become 'a/default' and 'b/default'."""
    seen: dict[str, int] = {}
    for i in infos:
        seen[i.name] = seen.get(i.name, 0) + 1
    for i in infos:
        if seen[i.name] > 1:
            parent = i.path.resolve().parent.name
            i.name = f"{parent}/{i.name}" if parent else str(i.path)
    counts: dict[str, int] = {}
    for i in infos:  # still equal (same folder given twice): number them
        counts[i.name] = counts.get(i.name, 0) + 1
        if counts[i.name] > 1:
            i.name = f"{i.name} ({counts[i.name]})"


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "run"


def _md_cell(s: str) -> str:
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1500px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.35em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.problem td.notes { color: #a00000; } td.swatch { width: 0.4em; padding: 0; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
details { margin: 0.5em 0; } summary { cursor: pointer; }
"""

ROBUSTNESS_COLUMN = "mCA (relative)"
_NUMERIC = {"params", "MACs", "RF", "epochs", "best test acc", "final test acc", "train time",
            "images/s", ROBUSTNESS_COLUMN}


def png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def make_report(run_dirs: list[str | os.PathLike], out_dir: str | os.PathLike,
                target: float | None = None) -> Path:
    """Write out_dir/index.html (self-contained), out_dir/report.md and the PNGs; return the
    path of index.html. `target` (a fraction) adds the column "epoch reaching target"."""
    from . import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    infos = [load_run(p) for p in run_dirs]
    _unique_names(infos)
    table = _table(infos, target)
    colors = {id(i): plots.run_color(k) for k, i in enumerate(infos)}
    figures = _draw_figures(infos, target, out)
    confusions = _draw_confusions(infos, out)
    for k, i in enumerate(infos):  # problems found while drawing
        table[k]["notes"] = "; ".join(i.problems)

    title = "cifarlab report"
    sub = _subtitle(infos, target)
    cols = list(table[0]) if table else ["run", "notes"]
    index = out / "index.html"
    atomic_write_text(index, _html_page(title, sub, cols, infos, table, colors, figures,
                                        confusions))
    atomic_write_text(out / "report.md", _markdown(title, sub, cols, table, figures,
                                                   confusions))
    return index


def _table(infos: list[RunInfo], target: float | None) -> list[dict[str, str]]:
    """One row per run; the robustness column when any run has robustness.json."""
    table = [table_row(i, target) for i in infos]
    if any(i.robustness for i in infos):
        table = [_with_column(row, "final test acc", ROBUSTNESS_COLUMN,
                              robustness_cell(i.robustness)) for row, i in zip(table, infos,
                                                                                strict=True)]
    return table


def _draw_figures(infos: list[RunInfo], target: float | None,
                  out: Path) -> list[tuple[Path, str, str]]:
    """The comparison figures the runs have data for: (png, title, caption) each."""
    from . import plots

    figures: list[tuple[Path, str, str]] = []  # (png, title, caption)
    if any(i.rows for i in infos):
        # every run keeps its index (and so its colour), even one with nothing to draw
        fig = plots.draw_compare_curves([(i.name, i.rows) for i in infos], target)
        figures.append((plots.save_figure(fig, out / "curves.png"), "Training curves",
                        "Train accuracy, test accuracy and loss per epoch; one colour per run."))
    classes, per_class = _per_class_rows(infos)
    if per_class and classes:
        fig = plots.draw_compare_per_class(per_class, classes)
        figures.append((plots.save_figure(fig, out / "per_class.png"), "Per-class accuracy",
                        "Final test accuracy per class; one bar per finished run."))
    robust = [(i.name, k, i.robustness) for k, i in enumerate(infos)
              if i.robustness and isinstance(i.robustness.get("by_severity"), list)]
    if robust:
        fig = plots.draw_compare_robustness(robust)
        figures.append((plots.save_figure(fig, out / "robustness.png"), "Robustness",
                        "Mean accuracy over the 15 CIFAR-10-C-style corruptions (regenerated) "
                        "by severity, clean accuracy at the left; one line per run with "
                        "robustness.json (cifarlab robustness)."))
    return figures


def _per_class_rows(infos: list[RunInfo]) -> tuple[list[str] | None, list]:
    """(class names, [(run name, run index, per-class accuracies)]) of the runs whose classes
    are the first such run's; the others get a problem noted."""
    from . import plots

    classes: list[str] | None = None
    per_class = []
    for k, i in enumerate(infos):
        pc = (i.metrics or {}).get("per_class_acc")
        if not (isinstance(pc, list) and pc and all(isinstance(v, int | float) for v in pc)):
            continue
        names = plots.class_names(i.metrics, len(pc))
        if classes is None:
            classes = names
        if names != classes:
            i.problems.append("classes differ from the first run: left out of per-class figure")
            continue
        per_class.append((i.name, k, pc))
    return classes, per_class


def _draw_confusions(infos: list[RunInfo], out: Path) -> list[tuple[str, Path]]:
    """A confusion-matrix PNG per run with one: (run name, png) each."""
    from . import plots

    confusions: list[tuple[str, Path]] = []
    for i in infos:
        m = i.metrics or {}
        cm = m.get("confusion")
        if isinstance(cm, list) and cm and all(isinstance(r, list) for r in cm):
            try:
                fig = plots.draw_confusion(cm, plots.class_names(m, len(cm)),
                                           f"{i.name}: confusion matrix (test set)")
                png = plots.save_figure(fig, out / f"confusion-{_slug(i.name)}.png")
            except (ValueError, TypeError):
                i.problems.append("confusion matrix in metrics.json is malformed")
                continue
            confusions.append((i.name, png))
    return confusions


def _subtitle(infos: list[RunInfo], target: float | None) -> str:
    when = datetime.now().strftime("%Y-%m-%d %H:%M")
    sub = f"{len(infos)} run{'s' if len(infos) != 1 else ''}, generated {when}"
    if target is not None:
        sub += f", target test accuracy {100 * target:g}%"
    return sub


def _html_page(title: str, sub: str, cols: list[str], infos: list[RunInfo],
               table: list[dict[str, str]], colors: dict[int, str],
               figures: list[tuple[Path, str, str]], confusions: list[tuple[str, Path]]) -> str:
    """index.html: the table, then every figure inlined."""
    e = html.escape
    h = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         f"<title>{e(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
         f"<h1>{e(title)}</h1>", f'<p class="meta">{e(sub)}</p>']
    h += _html_table(cols, infos, table, colors)
    if not figures:
        h.append("<p>No run has a readable history or final metrics yet: nothing to plot.</p>")
    for png, ftitle, caption in figures:
        h += [f"<h2>{e(ftitle)}</h2>", "<figure>",
              f'<img src="{png_uri(png)}" alt="{e(ftitle)}">',
              f"<figcaption>{e(caption)}</figcaption>", "</figure>"]
    if confusions:
        h.append("<h2>Confusion matrices</h2>")
        for name, png in confusions:
            h += ["<details>", f"<summary>{e(name)}</summary>", "<figure>",
                  f'<img src="{png_uri(png)}" alt="{e(name + " confusion matrix")}">',
                  "</figure>", "</details>"]
    h += ["</body>", "</html>", ""]
    return "\n".join(h)


def _html_table(cols: list[str], infos: list[RunInfo], table: list[dict[str, str]],
                colors: dict[int, str]) -> list[str]:
    """The runs table's lines: a colour swatch per run, numbers right-aligned."""
    e = html.escape
    h = ['<table id="runs">', "<thead><tr><th></th>"
         + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr></thead>", "<tbody>"]
    for i, row in zip(infos, table, strict=True):
        cls = ' class="problem"' if row.get("notes") else ""
        sw = f'<td class="swatch" style="background:{colors[id(i)]}"></td>'
        cells = []
        for c in cols:
            kind = "num" if c in _NUMERIC or c.startswith("epoch reaching") else c
            td_cls = {"num": ' class="num"', "notes": ' class="notes"'}.get(kind, "")
            val = row[c]
            if c == "run":
                val_html = f'<span title="{e(str(i.path))}">{e(val)}</span>'
            else:
                val_html = e(val)
            cells.append(f"<td{td_cls}>{val_html}</td>")
        h.append(f"<tr{cls}>{sw}{''.join(cells)}</tr>")
    return h + ["</tbody>", "</table>"]


def _markdown(title: str, sub: str, cols: list[str], table: list[dict[str, str]],
              figures: list[tuple[Path, str, str]], confusions: list[tuple[str, Path]]) -> str:
    """report.md: the same table, linking the PNGs beside it."""
    md = [f"# {title}", "", sub, "",
          "| " + " | ".join(_md_cell(c) for c in cols) + " |",
          "|" + "|".join("---" for _ in cols) + "|"]
    md += ["| " + " | ".join(_md_cell(row[c]) for c in cols) + " |" for row in table]
    for png, ftitle, caption in figures:
        md += ["", f"## {ftitle}", "", caption, "", f"![{ftitle}]({png.name})"]
    if confusions:
        md += ["", "## Confusion matrices"]
        for name, png in confusions:
            md += ["", f"### {_md_cell(name)}", "", f"![{_md_cell(name)}]({png.name})"]
    return "\n".join(md) + "\n"
