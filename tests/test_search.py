"""`cifarlab search`: search files, rules before training, pruning (one objective and the
multi-objective dominance rule), resuming after a kill, the report and the winner as a recipe.
Every search here trains a handful of tiny networks for 1-2 epochs on the synthetic data set."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import cifarlab.models.family  # noqa: F401  (registers "family")
from cifarlab.errors import CifarlabError
from cifarlab.recipe import resolve
from cifarlab.search import pruning, rules, storage, timing, worker
from cifarlab.search import space as SP
from cifarlab.search.cli import build_parser, run_search_command
from cifarlab.search.run import run_search, status_line
from cifarlab.search.trials import best_trials, outcome, search_seconds, summary

TINY = """
name = "{name}"
base = "fast-50k"
[constraints]
max_params = {max_params}
{constraints}
[search]
objectives = {objectives}
minutes = 10
min_epochs = 1
reduction_factor = 2
val_split = 100
startup_trials = 2
pruner = "{pruner}"
[space]
stages = {{ low = 1, high = 2 }}
stem = {{ choices = [4, 8] }}
width = {{ low = 4, high = 16, step = 4 }}
depth = 1
block = {{ choices = ["plain", "dwsep"] }}
downsample = {{ choices = ["stride", "avgpool"] }}
lr = {{ low = 0.05, high = 0.2, log = true }}
epochs = {epochs}
batch_size = 64
"train.precision" = "fp32"
"train.channels_last" = false
{extra}
"""

REF = """
[[enqueue]]
label = "ref"
stages = 2
stem = 8
width = [8, 16]
block = "plain"
downsample = ["stride", "avgpool"]
lr = 0.1
"""


def write_search(tmp_path: Path, name: str = "t", max_params: int = 100_000,
                 objectives: str = '["val_acc"]', pruner: str = "hyperband",
                 epochs: str = "2", extra: str = REF, constraints: str = "") -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(TINY.format(name=name, max_params=max_params, objectives=objectives,
                             pruner=pruner, epochs=epochs, extra=extra,
                             constraints=constraints))
    return p


@pytest.fixture(scope="module")
def train_only_dir(tmp_path_factory) -> Path:
    """The synthetic data set without its test batch: a search must never need it."""
    from conftest import write_cifar

    folder = write_cifar(tmp_path_factory.mktemp("trainonly"))
    (folder / "test_batch").unlink()
    return folder


def _silent(_: str) -> None:
    pass


def _trials(study_dir: Path, name: str = "t") -> list:
    st = storage.load_study(name, storage.default_storage(study_dir))
    return st.get_trials(deepcopy=False)


# --------------------------------------------------------------------------- search files

# what a trial sets by design, whatever its base recipe: its name, the search's rules, the
# validation protocol (a split, no test set, one process, every epoch evaluated)
BY_DESIGN = {"name", "description", "model", "model_args", "constraints.max_params",
             "constraints.max_macs", "constraints.min_receptive_field", "constraints.require",
             "constraints.forbid", "data.val_split", "data.train_subset", "train.test_eval",
             "train.eval_every", "train.processes", "train.target", "train.seed"}


def _flat(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict) and k != "model_args":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _queued_trial(name: str) -> tuple[dict, dict, dict, SP.SearchSpec]:
    """A built-in search's first queued design: (family args, trial recipe and its
    overrides, spec)."""
    spec = SP.load_search(name)
    args, train = SP.sample(spec.space, optuna.trial.FixedTrial(spec.enqueue[0]["params"]))
    raw, over = worker.trial_recipe(spec, name, 0, args, train)
    return args, raw, over, spec


def _layers(net) -> list[dict]:
    from cifarlab.analysis import layer_table

    return [{k: v for k, v in row.items() if k != "name"} for row in layer_table(net)]


def test_under_50k_starts_from_the_shipped_fast_50k():
    from cifarlab.models import create_model

    args, raw, over, spec = _queued_trial("under-50k")
    trial0, recipe = resolve(raw, over), resolve("fast-50k")
    assert spec.enqueue[0]["label"] == "fast-50k"  # the base recipe itself (is_base_design)
    # the same network (layer by layer), within the rules
    model = create_model("family", **args)
    assert _layers(model) == _layers(create_model(recipe["model"], **recipe["model_args"]))
    _, broken, _ = rules.check_rules(model, spec.constraints)
    assert broken == [] and rules.untrainable(model, trial0) == []
    # a batch the base recipe's processes (the winner's) cannot share is found before training
    odd = resolve(raw, {**over, "train.batch_size": 255, "train.processes": 1})
    assert rules.untrainable(model, odd) == []
    assert rules.untrainable(model, odd, final_processes=2) == [
        "untrainable: train.batch_size 255 does not split evenly over 2 processes "
        "(the base recipe's, with which the winner trains)"]
    # and every other key of the recipe: the searched ones drawn at its values, the rest
    # from the base recipe (Muon, the epochs, low_res, pct_start, flips, test-time flip)
    a, b = _flat(trial0), _flat(recipe)
    assert {k: a[k] for k in a if k not in BY_DESIGN} == {k: b[k] for k in b
                                                          if k not in BY_DESIGN}
    assert trial0["optim"]["name"] == "muon" and trial0["train"]["low_res"] == 24
    assert trial0["train"]["epochs"] == 4


def test_seed001_rules_starts_from_the_shipped_fast_seed001():
    """fast-seed001 trains air-seed001 since issue 32: the family expresses it (style air,
    whitening stem) and the queued design is the shipped recipe itself, network and settings."""
    import torch

    from cifarlab.models import create_model

    args, raw, over, spec = _queued_trial("seed001-rules")
    trial0, recipe = resolve(raw, over), resolve("fast-seed001")
    assert spec.base == "fast-seed001" and recipe["model"] == "air-seed001"
    assert spec.enqueue[0]["label"] == "fast-seed001"  # the base recipe itself (is_base_design)
    torch.manual_seed(0)
    model = create_model("family", **args)
    torch.manual_seed(0)
    hand = create_model(recipe["model"], **recipe["model_args"])
    assert _layers(model) == _layers(hand)
    # the same modules in the same order: the same state_dict, initialisation included
    a, b = model.state_dict(), hand.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    _, broken, _ = rules.check_rules(model, spec.constraints)
    assert broken == [] and rules.untrainable(model, trial0) == []
    a, b = _flat(trial0), _flat(recipe)
    assert {k: a[k] for k in a if k not in BY_DESIGN} == {k: b[k] for k in b
                                                          if k not in BY_DESIGN}
    assert trial0["train"]["epochs"] == 8 and trial0["train"]["low_res"] == 24
    assert spec.constraints["forbid"] == ["maxpool"]


@pytest.mark.parametrize("text, words", [
    ("name = 'x'\nbase = 'fast-50k'\n[space]\nwidht = 8\n", "unknown dimension 'widht'"),
    ("name = 'x'\nbase = 'fast-50k'\n[space]\nwidht = 8\n", "did you mean 'width'"),
    ("name = 'x'\nbase = 'fast-50k'\n[spaces]\n", "unknown key 'spaces'"),
    ("name = 'x'\n[space]\n", "'base' must name the base recipe"),
    ("name = 'x'\nbase = 'no-such-recipe'\n", "unknown recipe 'no-such-recipe'"),
    ("name = 'x'\nbase = 'fast-50k'\n[space]\nblock = {choices = ['plain', 'conv7']}\n",
     "'conv7' is not one of"),
    ("name = 'x'\nbase = 'fast-50k'\n[space]\nlr = {low = -1, high = 1}\n", "optim.lr"),
    ("name = 'x'\nbase = 'fast-50k'\n[space]\nstyle = {choices = ['classic', 'jazz']}\n",
     "'jazz' is not one of classic, air"),
    ("name = 'x'\nbase = 'fast-50k'\n[space]\nstem = {choices = [16, 'whitten']}\n",
     "'whitten' is not an integer in [0, 2048] or 'whiten'"),
    ("name = 'x'\nbase = 'fast-50k'\n[space]\nwidth = {choices = [16, 'whiten']}\n",
     "choices must be plain values of one type"),
    ("name = 'x'\nbase = 'fast-50k'\n[space]\nlr = {low = 1, hi = 2}\n", "unknown field 'hi'"),
    ("name = 'x'\nbase = 'fast-50k'\n[search]\nobjectives = ['val_acc', 'speed']\n",
     "objectives"),
    ("name = 'x'\nbase = 'fast-50k'\n[search]\npruner = 'hyperbad'\n", "did you mean"),
    ("name = 'x'\nbase = 'fast-50k'\n[constraints]\nforbid = ['maxpooling']\n",
     "unknown rule 'maxpooling'"),
    ("name = 'x'\nbase = 'fast-50k'\n[search]\nmin_epochs = 99\n", "min_epochs 99"),
    ("name = 'x'\nbase = 'fast-50k'\n[space]\nstages = 2\nwidth = [8, 8, 8]\n",
     "3 values for 2 stages"),
    ("name = 'x'\nbase = 'fast-50k'\n[space]\nstages = {low = 1, high = 3}\n"
     "[[enqueue]]\nstages = 4\n", "stages = 4 is outside the space"),
    ("name = 'x'\nbase = 'fast-50k'\n[space]\nlr = {low = 0.1, high = 0.2}\n"
     "[[enqueue]]\nstages = 3\n", "missing 'lr'"),
    ("name = 'x'\nbase = 'fast-50k'\n[space\n", "invalid TOML"),
])
def test_bad_search_files_fail_in_one_line(tmp_path, text, words):
    p = tmp_path / "s.toml"
    p.write_text(text)
    with pytest.raises(CifarlabError) as e:
        SP.load_search(p)
    assert words in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_benchmark_search_files_load():
    """The search files run for a recipe's design (benchmarks/searches) stay valid: each loads,
    with its base recipe (a built-in or a file beside it)."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks" / "searches"
    files = [p for p in sorted(folder.glob("*.toml")) if "[search]" in p.read_text()]
    assert [p.stem for p in files] == ["fast-50k-54s", "fast-50k-quicker", "fast-seed001-quicker"]
    for p in files:
        spec = SP.load_search(p)
        assert spec.derived == ("epochs",) and spec.enqueue
    assert {SP.load_search(p).base_recipe["name"] for p in files[:2]} == {"fast-50k-issue17"}


def test_edge_8m_is_a_rule_set_no_hand_recipe_meets():
    """cifarlab's own rule set: no design queued, its base (fast-50k) only a time reference that
    breaks its rules, while designs of its space meet them all."""
    from cifarlab.models import create_model

    spec = SP.load_search("edge-8m")
    assert spec.enqueue == [] and spec.constraints["max_macs"] == 8_000_000
    base = resolve("fast-50k")
    _, broken, _ = rules.check_rules(create_model(base["model"], **base["model_args"]),
                                     spec.constraints)
    assert [rules.rule_key(b) for b in broken] == ["require strided_conv"]
    ok = create_model("family", stem=8, widths=[48, 8, 32, 40], depths=[1, 2, 2, 2],
                      blocks=["plain", "residual", "residual", "branch"],
                      downsample=["avgpool", "none", "stride", "none"],
                      dilation=[2, 1, 1, [1, 2]], head="gap")
    facts, broken, _ = rules.check_rules(ok, spec.constraints)
    assert broken == [] and facts["macs"] <= 8_000_000 and facts["receptive_field"] >= 32


@pytest.mark.parametrize("name", [n for n, _ in SP.list_searches()])
def test_shipped_searches_train_and_time_trials_as_their_finals(name):
    """Every shipped search file trains its trials in its base recipe's processes (as the
    winner's final trainings will: single-process workers side by side timed designs as
    another machine would) and compares designs at equal time, with room below the base
    recipe's epochs for a design dearer per epoch."""
    spec = SP.load_search(name)
    base = resolve(spec.base)
    assert spec.search["processes"] == base["train"]["processes"] == 2
    assert spec.search["fill_time"] and spec.constraints["max_train_time_vs_base"] == 1.0
    assert spec.space["epochs"].low < base["train"]["epochs"]


def test_missing_search_file_and_unknown_builtin(tmp_path):
    with pytest.raises(CifarlabError, match="no such file"):
        SP.load_search(tmp_path / "nope.toml")
    with pytest.raises(CifarlabError, match="built-in: edge-8m, seed001-rules, under-50k"):
        SP.load_search("nope")


# --------------------------------------------------------------------------- pure parts

def test_dominance_prune_keeps_the_cheap_end_and_stops_dominated_trials():
    # no cheaper peers: never stopped, however bad
    assert pruning.dominance_prune([(10.0, 0.9), (20.0, 0.95)], acc=0.1, cost=1.0) is None
    # too few cheaper-or-equal peers to decide
    assert pruning.dominance_prune([(1.0, 0.9), (2.0, 0.9)], acc=0.1, cost=5.0) is None
    # 3 cheaper peers + itself: keeps the top ceil(4/3) = 2; 2 beat it -> stopped
    why = pruning.dominance_prune([(1.0, 0.9), (2.0, 0.8), (3.0, 0.1)], acc=0.5, cost=5.0)
    assert why and "2 of 3 trials that cost no more" in why
    # only one beats it: it stays in the top 2
    assert pruning.dominance_prune([(1.0, 0.9), (2.0, 0.2), (3.0, 0.1)], acc=0.5, cost=5.0) is None
    # costlier peers do not count against it
    assert pruning.dominance_prune([(9.0, 0.9), (9.0, 0.9), (9.0, 0.9)], acc=0.5, cost=5.0) is None
    assert pruning.rungs(1, 3, 20) == [1, 3, 9] and pruning.rungs(2, 2, 9) == [2, 4, 8]


def test_rule_keys_and_url_masking():
    assert rules.rule_key("max_params 49999: model has 60,000 parameters") == "max_params"
    assert rules.rule_key("require dilated: no conv with dilation > 1") == "require dilated"
    assert rules.rule_key("time budget: predicted 2.0x") == "time budget"
    assert storage.mask_url("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"


def test_search_time_is_the_union_of_trial_spans():
    from datetime import datetime, timedelta
    from types import SimpleNamespace

    t0 = datetime(2026, 1, 1, 12, 0, 0)

    def trial(start_s, secs, state=TrialState.COMPLETE):
        start = t0 + timedelta(seconds=start_s)
        return SimpleNamespace(state=state, datetime_start=start,
                               datetime_complete=start + timedelta(seconds=secs),
                               user_attrs={"seconds_used": secs})

    # two workers side by side (0-100 and 50-150), a pause, then a killed trial of 30 s whose
    # failure was only recorded an hour later (its own seconds_used counts, not the hour)
    killed = trial(1000, 3600, TrialState.FAIL)
    killed.user_attrs["seconds_used"] = 30.0
    assert search_seconds([trial(0, 100), trial(50, 100), killed]) == pytest.approx(180)
    assert search_seconds([]) == 0


def test_time_prediction_orders_models():
    from cifarlab.models import create_model

    small = create_model("family", stem=4, widths=[4], depths=[1], downsample="stride")
    big = create_model("family", stem=32, widths=[64, 64], depths=[2, 2], downsample="none")
    cfg = resolve("fast-50k", {"train.batch_size": 32})
    ts, tb = timing.time_steps([(small, cfg), (big, cfg)], rounds=2)
    assert 0 < ts < tb
    seen: list[list[float]] = []  # `enough` is asked after each round, and stops the timing
    timing.time_steps([(small, cfg), (big, cfg)], rounds=3,
                      enough=lambda best: seen.append(list(best)) or len(seen) == 2)
    assert len(seen) == 2 and all(0 < v < math.inf for v in seen[1])
    p = timing.predict_seconds(tb, 1000, 32, 3, 100, True)
    assert p > 3 * (1000 // 32) * tb
    # two processes share each batch, side by side: half the time
    assert timing.predict_seconds(tb, 1000, 32, 3, 100, True, processes=2) == pytest.approx(p / 2)


def test_steps_are_timed_with_each_process_share_of_the_threads(monkeypatch):
    """Trainings of several data-parallel processes give each process its share of the
    threads: their steps are timed with that share, and the threads are given back."""
    seen: list[int] = []

    def timer(model, cfg):
        return lambda: seen.append(torch.get_num_threads()) or 0.1

    monkeypatch.setattr(timing, "step_timer", timer)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert timing.time_steps([(None, {}), (None, {})], rounds=1, processes=2) == [0.1, 0.1]
        assert seen and set(seen) == {1} and torch.get_num_threads() == 2
        seen.clear()
        timing.time_steps([(None, {})], rounds=1)
        assert set(seen) == {2}
    finally:
        torch.set_num_threads(before)


def test_search_trainings_take_the_search_files_processes(tmp_path, train_only_dir):
    """`[search] processes = 2`: each trial trains in two data-parallel processes, as a base
    recipe of two processes (the final trainings) does; 0 is refused."""
    f = write_search(tmp_path)
    f.write_text(f.read_text().replace("pruner =", "processes = 2\npruner ="))
    runs = tmp_path / "runs"
    s = run_search(f, trials=1, runs_dir=runs, data_dir=train_only_dir, log=_silent)
    assert s["complete"] == 1 and s["failed"] == 0
    t = _trials(runs / "t")[0]
    cfg = json.loads((Path(t.user_attrs["run_dir"]) / "config.json").read_text())["recipe"]
    assert cfg["train"]["processes"] == 2
    # a batch the trial's processes cannot share is rejected with its reason, untrained
    f.write_text(f.read_text().replace("batch_size = 64", "batch_size = 63")
                 .replace('name = "t"', 'name = "odd"').replace('lr = 0.1', 'lr = 0.1\n'
                                                                  'batch_size = 63')
                 .replace("pruner =", "max_rejected_in_row = 1\npruner ="))
    with pytest.raises(CifarlabError, match="rejected 1 candidates in a row"):
        run_search(f, trials=1, runs_dir=runs, data_dir=train_only_dir, log=_silent)
    t = _trials(runs / "odd", "odd")[0]
    assert t.state == TrialState.PRUNED and t.user_attrs["rejected"] == (
        "untrainable: train.batch_size 63 does not split evenly over 2 processes "
        "(train.processes)")
    bad = f.read_text().replace("processes = 2", "processes = 0")
    with pytest.raises(SP.SearchError, match=r"\[search\] processes must be an integer >= 1"):
        SP.parse_search(bad, "bad.toml")


def test_winner_toml_round_trips():
    raw = {"name": "w", "model": "family", "model_args": {"widths": [8, [16, 16]],
                                                           "blocks": ["plain", "dwsep"]},
           "optim": {"lr": 0.1234, "weight_decay": 5e-05}, "train": {"tta": True}}
    import tomllib

    assert tomllib.loads(SP.to_toml(raw, "a header\nline two")) == raw


# --------------------------------------------------------------------------- searches

def test_search_trains_on_a_validation_split_without_the_test_set(tmp_path, train_only_dir):
    f = write_search(tmp_path)
    runs = tmp_path / "runs"
    lines: list[str] = []
    s = run_search(f, trials=2, runs_dir=runs, data_dir=train_only_dir, log=lines.append)
    assert s["complete"] + s["pruned"] >= 2 and s["failed"] == 0
    sdir = runs / "t"
    assert (sdir / "study.db").is_file() and (sdir / "search.toml").read_text() == f.read_text()
    trials = _trials(sdir)
    ref = trials[0]
    assert ref.user_attrs["label"] == "ref" and ref.state == TrialState.COMPLETE
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED) or outcome(t) == "rejected":
            continue
        run = Path(t.user_attrs["run_dir"])
        assert {"config.json", "history.csv", "metrics.json"} <= {p.name for p in run.iterdir()}
        m = json.loads((run / "metrics.json").read_text())
        assert m["test_acc"] is None and m["test_images"] == 0  # the test set is never read
        assert m["val_images"] == 100 and m["train_images"] == 400
        cfg = json.loads((run / "config.json").read_text())["recipe"]
        assert cfg["model"] == "family" and cfg["data"]["val_split"] == 100
        assert cfg["train"]["test_eval"] == "never" and cfg["train"]["processes"] == 1
        if t.state == TrialState.COMPLETE:
            assert t.values[0] == pytest.approx(m["val_acc"])
        assert t.user_attrs["params"] == m["params"] and t.user_attrs["macs"] == m["macs"]
    assert any("trial 0 training:" in x and "[ref]" in x for x in lines)
    assert any("trial 0 complete: val acc" in x and "budget" in x and "min left" in x
               for x in lines)
    # running it again resumes the same study: one more trial, nothing lost
    s2 = run_search(f, trials=3, runs_dir=runs, data_dir=train_only_dir, log=_silent)
    assert s2["complete"] + s2["pruned"] >= 3
    assert [t.number for t in _trials(sdir)][:len(trials)] == [t.number for t in trials]


def test_rules_reject_before_training_and_teach_the_sampler(tmp_path, train_only_dir):
    big = REF.replace('label = "ref"\n', "").replace("[8, 16]", "[16, 16]")  # 3,842 params
    f = write_search(tmp_path, max_params=900, extra=big)  # many designs are too big
    runs = tmp_path / "runs"
    s = run_search(f, trials=2, runs_dir=runs, data_dir=train_only_dir, log=_silent)
    assert s["rejected"] >= 1 and s["rejected_by_rule"].get("max_params", 0) == s["rejected"]
    for t in _trials(runs / "t"):
        if outcome(t) == "rejected":
            assert t.state == TrialState.PRUNED
            assert t.user_attrs["rejected"].startswith("max_params 900: model has")
            assert t.user_attrs["params"] > 900 and "run_dir" not in t.user_attrs
            assert t.constraints["max_params"] > 0  # what TPE uses to learn the region
        elif outcome(t) == "complete":
            assert t.user_attrs["params"] <= 900 and t.constraints["max_params"] <= 0
    assert not [d for d in (runs / "t" / "trials").iterdir()
                if d.name not in {Path(t.user_attrs.get("run_dir", "")).name
                                  for t in _trials(runs / "t")}]


def test_time_budget_rule_rejects_slow_candidates(tmp_path, train_only_dir, monkeypatch):
    extra = REF.replace('label = "ref"\n', "")  # not a labelled reference: the rule applies
    f = write_search(tmp_path, extra=extra, constraints="max_train_time_vs_base = 0.01")
    f.write_text(f.read_text().replace("startup_trials = 2", "startup_trials = 2\n"
                                       "max_rejected_in_row = 1"))
    asked: list[bool] = []  # what the worker's `enough` said after each round of timing
    real = worker.time_steps

    def spy(models, rounds=3, enough=None, processes=1):
        return real(models, rounds, lambda best: asked.append(enough(best)) or asked[-1],
                    processes)

    monkeypatch.setattr(worker, "time_steps", spy)
    with pytest.raises(CifarlabError, match="rejected 1 candidates in a row"):
        run_search(f, trials=1, runs_dir=tmp_path / "runs", data_dir=train_only_dir,
                     log=_silent)
    t = _trials(tmp_path / "runs" / "t")[0]
    assert t.user_attrs["rejected_rules"] == ["time budget"]
    assert "max_train_time_vs_base 0.01" in t.user_attrs["rejected"]
    assert t.user_attrs["time_vs_base"] > 0.01 and t.user_attrs["predicted_seconds"] > 0
    assert asked == [True]  # far over the limit after one round: not timed three times


def test_a_trial_another_worker_ended_is_dropped_in_one_line(tmp_path, train_only_dir,
                                                              monkeypatch):
    """Another process fails this worker's running trial (a stale heartbeat seen elsewhere):
    Optuna then refuses the trial's result ("Cannot tell a FAIL trial"), which stopped the
    worker with a traceback; now one line says so and the worker goes on."""
    f = write_search(tmp_path)
    runs = tmp_path / "runs"
    real = worker.Worker.objective
    ended: list[int] = []

    def ended_elsewhere_first(self, trial):
        if not ended:  # as another worker would: its own connection to the study
            ended.append(trial.number)
            other = storage.open_storage(storage.default_storage(runs / "t"))
            other.set_trial_state_values(storage.trial_id(other, trial.study, trial.number),
                                         TrialState.FAIL)
        return real(self, trial)

    monkeypatch.setattr(worker.Worker, "objective", ended_elsewhere_first)
    lines: list[str] = []
    s = run_search(f, trials=1, runs_dir=runs, data_dir=train_only_dir, log=lines.append)
    assert s["complete"] + s["pruned"] >= 1
    assert any(x == f"trial {ended[0]}: another worker ended it (failed) while this one ran "
               "it; this run's result is dropped" for x in lines), lines


def test_single_objective_pruning_stops_trials_early(tmp_path, train_only_dir, monkeypatch):
    monkeypatch.setattr(pruning, "make_pruner",
                        lambda spec: optuna.pruners.ThresholdPruner(lower=2.0))
    f = write_search(tmp_path, epochs="3")
    runs = tmp_path / "runs"
    s = run_search(f, trials=2, runs_dir=runs, data_dir=train_only_dir, log=_silent)
    assert s["complete"] == 1 and s["pruned"] >= 1  # only the labelled reference runs on
    for t in _trials(runs / "t"):
        if outcome(t) != "pruned":
            continue
        assert "pruner at epoch 1" in t.user_attrs["pruned"]
        assert t.intermediate_values == {1: pytest.approx(t.user_attrs["curve"]["1"])}
        run = Path(t.user_attrs["run_dir"])
        m = json.loads((run / "metrics.json").read_text())
        assert m["stopped_by"] == "callback" and m["epochs"] == 1 and m["epochs_planned"] == 3


def test_multi_objective_front_and_dominance_rule(tmp_path, train_only_dir, monkeypatch):
    f = write_search(tmp_path, objectives='["val_acc", "params"]')
    runs = tmp_path / "runs"
    s = run_search(f, trials=3, runs_dir=runs, data_dir=train_only_dir, log=_silent)
    st = storage.load_study("t", storage.default_storage(runs / "t"))
    assert len(st.directions) == 2
    done = [t for t in st.get_trials() if t.state == TrialState.COMPLETE]
    assert all(len(t.values) == 2 and t.values[1] == t.user_attrs["params"] for t in done)
    front = best_trials(st)
    assert s["best"] and [b["number"] for b in s["best"]] == [t.number for t in front]
    for t in front:  # nothing on the front is dominated by another complete trial
        assert not any(u.values[0] >= t.values[0] and u.values[1] <= t.values[1]
                       and u.values != t.values for u in done)
    # the dominance rule stops a trial at a rung (forced here: Optuna cannot, for 2 objectives)
    monkeypatch.setattr(pruning, "dominance_prune", lambda *a, **k: "beaten by cheaper trials")
    s = run_search(f, trials=4, runs_dir=runs, data_dir=train_only_dir, log=_silent)
    pruned = [t for t in st.get_trials() if outcome(t) == "pruned"]
    assert pruned and all("dominance rule at epoch 1" in t.user_attrs["pruned"]
                          for t in pruned)
    m = json.loads((Path(pruned[0].user_attrs["run_dir"]) / "metrics.json").read_text())
    assert m["stopped_by"] == "callback" and m["epochs"] == 1


RULES_SEARCH = """
name = "r"
base = "fast-50k"
[constraints]
{constraints}
[search]
minutes = 10
min_epochs = 1
val_split = 100
startup_trials = 2
[space]
stages = {{ low = 1, high = 2 }}
stem = {{ choices = [4, 8] }}
width = {{ low = 4, high = 16, step = 4 }}
depth = 1
block = {{ choices = ["plain", "dwsep"] }}
downsample = {{ choices = ["none", "stride", "maxpool", "avgpool"] }}
dilation = {{ choices = [1, 2] }}
head = {{ choices = ["gap", "fc"] }}
lr = {{ low = 0.05, high = 0.2, log = true }}
epochs = {epochs}
batch_size = 64
"train.precision" = "fp32"
"train.channels_last" = false
{extra}
"""


def _design(stem=8, width=(8, 8), block="plain", down=("stride", "stride"), dil=(1, 2),
            head="gap") -> str:
    def toml(v):
        return json.dumps(list(v) if isinstance(v, tuple) else v)

    return (f"\n[[enqueue]]\nstages = {len(width)}\nstem = {stem}\nwidth = {toml(width)}\n"
            f"block = {toml(block)}\ndownsample = {toml(down)}\ndilation = {toml(dil)}\n"
            f"head = {toml(head)}\nlr = 0.1\n")


def test_a_candidate_the_base_recipe_cannot_train_is_rejected_with_its_reason(
        tmp_path, train_only_dir):
    """The user's rule set of issue 29: base fast-50k (its first epochs at 24 px) and an FC
    head that meets every rule: rejected before training, not a crash of the worker."""
    f = tmp_path / "r.toml"
    f.write_text(RULES_SEARCH.format(
        constraints='max_params = 20000\nmax_macs = 2000000\nmin_receptive_field = 9\n'
                    'require = ["dilated", "strided_conv"]\n'
                    'forbid = ["maxpool", "depthwise_separable"]',
        extra=_design(head="fc") + _design(head="gap"), epochs=2))  # epoch 1 at 24 px
    lines: list[str] = []
    s = run_search(f, trials=1, runs_dir=tmp_path / "runs", data_dir=train_only_dir,
                     log=lines.append)
    assert s["complete"] == 1 and s["rejected_by_rule"] == {"untrainable": 1}
    fc, gap = _trials(tmp_path / "runs" / "r", "r")[:2]
    assert outcome(fc) == "rejected" and fc.user_attrs["rejected_rules"] == ["untrainable"]
    why = fc.user_attrs["rejected"]
    assert why.startswith("untrainable: train.low_res 24: this model does not take 24x24")
    assert "run_dir" not in fc.user_attrs and fc.constraints["trainable"] > 0
    assert gap.state == TrialState.COMPLETE and gap.constraints["trainable"] <= 0
    assert any(x.startswith("trial 0 rejected: untrainable: train.low_res 24") for x in lines)


def test_every_rule_of_the_vocabulary_rejects_with_its_reason(tmp_path, train_only_dir):
    from cifarlab.rules import RULES

    require, forbid = ["dilated", "strided_conv", "gap"], ["maxpool", "avgpool",
                                                             "depthwise_separable"]
    assert sorted(require + forbid) == sorted(RULES)  # the whole vocabulary
    breaking = {  # one enqueued design per rule (the last one meets them all)
        "forbid maxpool": _design(down=("stride", "maxpool")),
        "forbid avgpool": _design(down=("stride", "avgpool")),
        "forbid depthwise_separable": _design(block="dwsep"),
        "require dilated": _design(dil=(1, 1)),
        "require strided_conv": _design(down=("none", "none")),
        "require gap": _design(head="fc"),
        "max_params": _design(width=(16, 16)),
        "max_macs": _design(width=(16, 16), down=("none", "stride")),
        "min_receptive_field": _design(stem=4, width=(4,), down=("stride",), dil=(2,)),
    }
    f = tmp_path / "r.toml"
    f.write_text(RULES_SEARCH.format(
        constraints=f"max_params = 3000\nmax_macs = 1000000\nmin_receptive_field = 11\n"
                    f"require = {json.dumps(require)}\nforbid = {json.dumps(forbid)}",
        extra='"train.low_res" = 0\n"train.low_res_epochs" = 0\n'
              + "".join(breaking.values()) + _design(), epochs=1))
    s = run_search(f, trials=1, runs_dir=tmp_path / "runs", data_dir=train_only_dir,
                     log=_silent)
    assert s["complete"] == 1 and s["failed"] == 0 and s["rejected"] == len(breaking)
    assert set(s["rejected_by_rule"]) == set(breaking)
    trials = _trials(tmp_path / "runs" / "r", "r")
    for t, rule in zip(trials, breaking, strict=False):
        assert outcome(t) == "rejected" and rule in t.user_attrs["rejected_rules"], rule
        assert rule in t.user_attrs["rejected"] and t.user_attrs["params"] > 0
    assert trials[len(breaking)].state == TrialState.COMPLETE


@pytest.mark.parametrize("error", [RuntimeError("boom"),
                                   CifarlabError("train.low_res 24: does not take it")])
def test_a_trial_whose_training_raises_fails_alone(tmp_path, train_only_dir, monkeypatch,
                                                   error):
    import cifarlab.training

    real, calls = cifarlab.training.train, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise error
        return real(*a, **k)

    monkeypatch.setattr(cifarlab.training, "train", flaky)
    f = write_search(tmp_path, epochs="1")
    lines: list[str] = []
    s = run_search(f, trials=1, runs_dir=tmp_path / "runs", data_dir=train_only_dir,
                     log=lines.append)
    assert s["failed"] == 1 and s["complete"] == 1  # the worker went on
    first, second = _trials(tmp_path / "runs" / "t")[:2]
    assert first.state == TrialState.FAIL and str(error).split(":")[-1].strip() in \
        first.user_attrs["error"]
    assert second.state == TrialState.COMPLETE
    assert any(x.startswith("trial 0 failed") for x in lines)


KILLER = """
import os, signal, sys
from cifarlab.search.run import run_search
def log(s):
    print(s, flush=True)
    if "epoch 1/2" in s:  # the first epoch's files are written: die like a power cut
        os.kill(os.getpid(), signal.SIGKILL)
run_search(sys.argv[1], runs_dir=sys.argv[2], data_dir=sys.argv[3], trials=2, log=log)
"""


def test_killed_search_resumes_the_running_trial(tmp_path, train_only_dir):
    f = write_search(tmp_path)
    runs = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-c", KILLER, str(f), str(runs), str(train_only_dir)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr[-2000:]
    (dead,) = _trials(runs / "t")
    assert dead.state == TrialState.RUNNING  # what a kill leaves in the storage
    lines: list[str] = []
    run_search(f, trials=2, runs_dir=runs, data_dir=train_only_dir, log=lines.append)
    trials = _trials(runs / "t")
    assert trials[0].state == TrialState.FAIL and "died" in trials[0].user_attrs["failed"]
    retry = trials[1]
    assert retry.state == TrialState.COMPLETE and retry.system_attrs["failed_trial"] == 0
    assert retry.params == dead.params and retry.user_attrs["label"] == "ref"
    assert retry.user_attrs["run_dir"] == dead.user_attrs["run_dir"], lines  # resumed
    run = Path(retry.user_attrs["run_dir"])
    hist = (run / "history.csv").read_text().strip().splitlines()
    assert len(hist) == 3  # header + epochs 1 (before the kill) and 2 (after)
    assert any("re-queued" in x for x in lines) and any("resuming" in x for x in lines)
    assert sum(1 for t in trials if t.state == TrialState.COMPLETE) >= 2


DRAW = """
import sys
from cifarlab.search import space as SP, storage
spec = SP.load_search(sys.argv[1])
study, _ = storage.create_or_load(spec, spec.name, sys.argv[2], None, lambda s: None)
print(SP.sample(spec.space, study.ask())[1]["optim.lr"])
"""


def test_tpe_is_drawn_to_trained_designs_not_to_the_least_infeasible_rejected_ones(tmp_path):
    """With few designs trained and many rejected (tight rules), Optuna's default split filled
    TPE's "good" group with the least infeasible rejected designs, and TPE kept proposing
    designs that break the same rule. TPE's split now counts trained trials only."""
    spec = SP.load_search(write_search(tmp_path))
    (tmp_path / "runs" / "t").mkdir(parents=True)
    study, _ = storage.create_or_load(spec, "t", storage.default_storage(tmp_path / "runs" / "t"),
                                      None, _silent)
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    for x, v in ((0.9, 0.8), (0.85, 0.7)):  # trained: one good region
        study.add_trial(optuna.trial.create_trial(params={"x": x}, distributions=dist,
                                                  value=v))
    for i in range(60):  # rejected untrained, all in another region, just outside a rule
        study.add_trial(optuna.trial.create_trial(
            params={"x": 0.05 + 0.001 * i}, distributions=dist, state=TrialState.PRUNED,
            user_attrs={"rejected": "min_receptive_field 45: receptive field is 40"},
            constraints={"min_receptive_field": 5.0}))
    assert pruning.trained_gamma(study)(62) == 1  # the best of 2 trained, not 7 of 62
    xs = []
    for _ in range(20):
        t = study.ask(dist)
        xs.append(t.params["x"])
        study.tell(t, state=TrialState.FAIL)  # no running trial to lie about (constant liar)
    # near the trained designs; Optuna's default split drew 1 of 40 there, 15 among the rejected
    assert sum(x > 0.5 for x in xs) >= 18 and not any(x < 0.15 for x in xs), xs


def test_each_worker_and_each_sitting_draws_designs_of_its_own(tmp_path):
    """With the file's seed in every process, two workers on one study drew the same designs
    (a random search trained a few designs again and again), and so did a resumed sitting."""
    f = write_search(tmp_path, extra="")
    f.write_text(f.read_text().replace('pruner = "hyperband"',
                                       'pruner = "hyperband"\nsampler = "random"'))
    spec = SP.load_search(f)
    (tmp_path / "runs" / "t").mkdir(parents=True)
    url = storage.default_storage(tmp_path / "runs" / "t")
    study, _ = storage.create_or_load(spec, "t", url, None, _silent)  # creates: the file's seed
    first = SP.sample(spec.space, study.ask())[1]["optim.lr"]
    again, _ = storage.create_or_load(spec, "t", url, None, _silent)  # a second sitting
    assert SP.sample(spec.space, again.ask())[1]["optim.lr"] != first
    workers = [subprocess.Popen([sys.executable, "-c", DRAW, str(f), url], text=True,
                                stdout=subprocess.PIPE) for _ in range(2)]
    lrs = [float(p.communicate(timeout=120)[0].split()[-1]) for p in workers]
    assert len({first, *lrs}) == 3 and all(0.05 <= x <= 0.2 for x in lrs)


def _pop_five(url: str, barrier, out) -> None:
    study = optuna.load_study(study_name="q", storage=storage.open_storage(url))
    barrier.wait()  # all together: the race is in the first moments
    out.put([study.ask().number for _ in range(5)])


def test_workers_never_take_the_same_queued_trial_from_an_sqlite_file(tmp_path):
    """Queued trials ([[enqueue]], retries of killed ones) are taken by one worker each. On an
    SQLite file, Python's driver began the transaction only at the write, so two workers read
    the same waiting trial and both trained it (seen: trial 0 of a search trained twice, and
    one worker then died on "Cannot tell a FAIL trial"); now the read takes the write lock."""
    import multiprocessing

    url = storage.default_storage(tmp_path)
    study = optuna.create_study(study_name="q", storage=storage.open_storage(url))
    for i in range(20):
        study.enqueue_trial({"x": i})
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_pop_five, args=(url, barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    taken = [n for _ in procs for n in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
    assert sorted(taken) == list(range(20))  # each queued trial once, none twice


def test_a_killed_worker_is_replaced_and_its_trial_resumes(tmp_path, train_only_dir):
    f = write_search(tmp_path, epochs="3")
    runs = tmp_path / "runs"
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "cifarlab.search.cli", str(f), "--workers", "2",
                          "--trials", "3", "--runs-dir", str(runs), "--data-dir",
                          str(train_only_dir), "--threads", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines, pid, killed = [], None, False
    try:
        for line in p.stdout:
            lines.append(line)
            if line.startswith("[w1] worker pid ") and line.split()[-1].isdigit():
                pid = int(line.split()[-1])
            if not killed and line.startswith("[w1]") and "epoch 1/3" in line:
                os.kill(pid, 9)  # mid-trial, like the out-of-memory killer
                killed = True
        assert p.wait(timeout=240) == 0, "".join(lines)[-3000:]
    finally:
        if p.poll() is None:
            p.kill()
    out = "".join(lines)
    assert killed and f"[w1] worker pid {pid} was killed (SIGKILL): replaced by pid" in out
    assert "Traceback" not in out
    trials = _trials(runs / "t")
    assert sum(1 for t in trials if outcome(t) in ("complete", "pruned")) >= 3
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    dead = [t for t in trials if t.state == TrialState.FAIL]
    for t in dead:  # the killed trial went on in a retry, from its run directory
        (retry,) = [u for u in trials if u.system_attrs.get("failed_trial") == t.number]
        assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert retry.user_attrs["run_dir"] == t.user_attrs["run_dir"]


def test_the_study_is_an_ordinary_optuna_study(finished):
    """What optuna-dashboard (or any Optuna tool) reads: optuna.load_study on the storage
    URL, readable study and trial attributes."""
    url = f"sqlite:///{finished / 't' / 'study.db'}"
    study = optuna.load_study(study_name="t", storage=url)
    assert study.metric_names == ["val_acc"] and study.user_attrs["budget_minutes"] == 10
    assert study.user_attrs["spec"]["base"] == "fast-50k"
    best = study.best_trial
    assert best.user_attrs["design"].startswith("stem ") and best.user_attrs["params"] > 0
    assert Path(best.user_attrs["run_dir"]).is_dir() and best.user_attrs["curve"]
    rejected = [t for t in study.trials if t.user_attrs.get("rejected")]
    assert rejected and rejected[0].user_attrs["rejected_rules"] == ["max_params"]
    json.dumps([t.user_attrs for t in study.trials])  # plain JSON, nothing pickled


# --------------------------------------------------------------------------- results

@pytest.fixture(scope="module")
def finished(tmp_path_factory, train_only_dir) -> Path:
    """A small finished study (runs dir) shared by the tests that only read it."""
    tmp = tmp_path_factory.mktemp("finished")
    big = REF.replace('label = "ref"\n', "").replace("[8, 16]", "[16, 16]")  # rejected
    f = write_search(tmp, max_params=900, extra=REF + big, epochs="1")
    runs = tmp / "runs"
    run_search(f, trials=2, runs_dir=runs, data_dir=train_only_dir, log=_silent)
    return runs


def test_report_and_best_recipe(finished, tmp_path):
    from cifarlab.search.report import make_search_report

    index = make_search_report(str(finished / "t"))
    text = index.read_text()
    assert index == finished / "t" / "report" / "index.html"
    for words in ("Trials", "max_params 900: model has", "Pareto front", "Optimization history",
                  "data:image/png;base64,", "[ref]", "rejected by rule"):
        assert words in text, words
    data = json.loads((index.parent / "trials.json").read_text())
    assert len(data["trials"]) == data["summary"]["trials"]
    assert {r["state"] for r in data["trials"]} <= {"complete", "pruned", "rejected"}

    out = tmp_path / "my.toml"
    args = build_parser().parse_args(["best", "t", "--runs-dir", str(finished),
                                      "--out", str(out)])
    assert run_search_command(args) == 0
    cfg = resolve(out)
    st = storage.load_study("t", storage.default_storage(finished / "t"))
    win = best_trials(st)[0]
    assert cfg["model"] == "family" and cfg["model_args"] == win.user_attrs["model_args"]
    assert cfg["data"]["val_split"] == 0 and cfg["constraints"]["max_params"] == 900
    assert cfg["optim"]["lr"] == win.params["lr"] and cfg["name"] == "my"
    from conftest import write_cifar

    from cifarlab.api import train

    full = write_cifar(tmp_path / "full")
    m = train(out, data_dir=full, runs_dir=tmp_path / "final", plots=False,
              progress=False, log=_silent, procs=1, epochs=1)
    assert m["test_acc"] is not None and m["train_images"] == 500  # full set, test read once


@pytest.mark.parametrize("argv, words", [
    (["report"], "name the study"),
    (["report", "nope"], "unknown study 'nope'"),
    (["best", "t"], "--out FILE.toml is required"),
    (["best", "t", "--out", "x.txt"], "must end in .toml"),
    (["best", "t", "--out", "x.toml", "--trial", "999"], "has no trial 999"),
    (["report", "t", "--max-minutes", "3"], "--max-minutes is an option of a search run"),
    (["some.toml", "extra"], "unexpected argument"),
    (["some.toml", "--out", "x"], "--out is an option of search report / best / proxy"),
    (["report", "t", "--fill-budget"], "--fill-budget is not an option of search report"),
    (["proxy", "t"], "study 't' has no proxy rung ([search] fidelity)"),
    (["best", "t", "--out", "x.toml", "--fill-budget"], "--fill-budget needs the search's time"),
    (["report", "t", "--data-dir", "d"], "--data-dir is not an option of search report"),
])
def test_cli_errors_are_one_line(finished, argv, words, monkeypatch):
    monkeypatch.chdir(finished.parent)
    args = build_parser().parse_args(argv + ["--runs-dir", str(finished)])
    with pytest.raises(CifarlabError) as e:
        run_search_command(args)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_unknown_study_in_a_storage_and_unreachable_storage(finished, tmp_path,
                                                            train_only_dir):
    with pytest.raises(CifarlabError, match=r"unknown study 'other' .*known: t"):
        storage.load_study("other", storage.default_storage(finished / "t"))
    f = write_search(tmp_path)
    with pytest.raises(CifarlabError) as e:
        run_search(f, storage="postgresql://me:s3cret@127.0.0.1:9/none", runs_dir=tmp_path,
                     data_dir=train_only_dir, log=_silent)
    assert "cannot open" in str(e.value) and "s3cret" not in str(e.value)
    with pytest.raises(CifarlabError, match="cannot open"):
        run_search(f, storage="nosuchdb://x", runs_dir=tmp_path, data_dir=train_only_dir,
                     log=_silent)


def test_a_study_from_another_search_file_is_refused(finished, tmp_path, train_only_dir):
    f = write_search(tmp_path, name="t", max_params=800, epochs="1")
    with pytest.raises(CifarlabError, match="created from a different search file"):
        run_search(f, runs_dir=finished, data_dir=train_only_dir, log=_silent)


def test_cli_module_is_light_and_runs_a_search(tmp_path, train_only_dir):
    code = "import sys, cifarlab.search.cli; print('torch' in sys.modules, 'optuna' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.split() == ["False", "False"]
    f = write_search(tmp_path, epochs="1")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-m", "cifarlab.search.cli", str(f), "--trials", "1",
                        "--runs-dir", str(tmp_path / "runs"), "--data-dir",
                        str(train_only_dir), "--threads", "1"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "study 't':" in r.stdout and "report: cifarlab search report" in r.stdout
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "cifarlab.search.cli", str(tmp_path / "no.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: search file")
    assert len(r.stderr.strip().splitlines()) == 1


def test_summary_text_mentions_the_budget(finished):
    st = storage.load_study("t", storage.default_storage(finished / "t"))
    s = summary(st)
    assert s["budget_minutes"] == 10 and s["minutes_used"] > 0
    assert status_line(st, None, 600, 3).startswith("budget")


# --------------------------------------------------------------------------- your own network

MYNET = """
from torch import nn

class Net(nn.Module):
    def __init__(self, width=8, depth=1, num_classes=10):
        super().__init__()
        layers = [nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        for _ in range(depth):
            layers += [nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.BatchNorm2d(width),
                       nn.ReLU()]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)
"""

USER_SEARCH = """
name = "u"
base = "base.toml"
[constraints]
max_params = 1500
[search]
minutes = 10
min_epochs = 1
val_split = 100
startup_trials = 1
[space]
model_args.width = {{ choices = [4, 8, 32] }}
model_args.depth = {{ choices = [1, 2] }}
lr = {{ low = 0.05, high = 0.2, log = true }}
epochs = 1
batch_size = 64
"train.precision" = "fp32"
"train.channels_last" = false
{extra}
"""


def write_user_search(tmp_path: Path, extra: str = "", space: str = "") -> Path:
    (tmp_path / "mynet.py").write_text(MYNET)
    (tmp_path / "base.toml").write_text('base = "fast-50k"\nmodel = "mynet.py:Net"\n'
                                        "[model_args]\nwidth = 16\n")
    f = tmp_path / "u.toml"
    f.write_text(USER_SEARCH.format(extra=extra).replace("[space]\n", f"[space]\n{space}"))
    return f


def test_a_search_around_the_users_own_network(tmp_path, train_only_dir):
    big = "[[enqueue]]\nmodel_args.width = 32\nmodel_args.depth = 2\nlr = 0.1\n"  # 19k params
    small = '[[enqueue]]\nlabel = "mine"\nmodel_args = { width = 4, depth = 1 }\nlr = 0.1\n'
    f = write_user_search(tmp_path, extra=big + small)
    spec = SP.load_search(f)
    net = f"{(tmp_path / 'mynet.py').resolve()}:Net"
    assert spec.model == net and not spec.family and spec.model_args == {"width": 16}
    assert set(spec.space) == {"model_args.width", "model_args.depth", "lr", "epochs",
                               "batch_size", "train.precision", "train.channels_last"}
    runs = tmp_path / "runs"
    s = run_search(f, trials=2, runs_dir=runs, data_dir=train_only_dir, log=_silent)
    assert s["failed"] == 0 and s["complete"] + s["pruned"] >= 2
    trials = _trials(runs / "u", "u")
    rejected = [t for t in trials if outcome(t) == "rejected"]
    assert rejected and trials[0] in rejected  # the rules apply to every candidate
    for t in rejected:
        assert t.user_attrs["rejected"].startswith("max_params 1500: model has")
        assert t.user_attrs["model_args"]["width"] == 32 and "run_dir" not in t.user_attrs
    for t in trials:
        if outcome(t) in ("complete", "pruned"):
            ma = t.user_attrs["model_args"]
            assert ma["width"] in (4, 8) and ma["depth"] in (1, 2)
            assert t.user_attrs["params"] <= 1500
            assert t.user_attrs["design"] == f"mynet.py:Net width={ma['width']} depth={ma['depth']}"
            cfg = json.loads((Path(t.user_attrs["run_dir"]) / "config.json").read_text())
            assert cfg["recipe"]["model"] == net and cfg["recipe"]["model_args"] == ma
    assert trials[1].user_attrs["label"] == "mine"
    assert trials[1].user_attrs["model_args"] == {"width": 4, "depth": 1}

    out = tmp_path / "elsewhere" / "winner.toml"
    out.parent.mkdir()
    args = build_parser().parse_args(["best", "u", "--runs-dir", str(runs), "--out", str(out)])
    assert run_search_command(args) == 0
    cfg = resolve(out)
    win = best_trials(storage.load_study("u", storage.default_storage(runs / "u")))[0]
    assert cfg["model"] == net and cfg["model_args"] == win.user_attrs["model_args"]
    assert cfg["constraints"]["max_params"] == 1500 and cfg["data"]["val_split"] == 0
    from conftest import write_cifar

    from cifarlab.api import train

    m = train(out, data_dir=write_cifar(tmp_path / "full"), runs_dir=tmp_path / "final",
              plots=False, progress=False, log=_silent, procs=1, epochs=1)
    assert m["test_acc"] is not None and m["params"] == win.user_attrs["params"]


@pytest.mark.parametrize("space, words", [
    ("model_args.widht = { choices = [4, 8] }\n",
     "model_args.widht: the network '"),
    ("model_args.widht = { choices = [4, 8] }\n", "did you mean 'width'"),
    ("width = { low = 4, high = 8 }\n", "'width' is an architecture dimension of the family "
     "network, but the base recipe's network is"),
])
def test_user_network_dimensions_are_checked_when_the_file_is_read(tmp_path, space, words):
    f = write_user_search(tmp_path, space=space)
    with pytest.raises(CifarlabError) as e:
        SP.load_search(f)
    assert words in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_model_args_dimensions_need_a_network_of_your_own(tmp_path):
    f = write_search(tmp_path, extra="model_args.width = { choices = [4, 8] }\n")
    with pytest.raises(CifarlabError, match="the base recipe's network is the built-in family"):
        SP.load_search(f)


# --------------------------------------------------------------------------- robustness

def test_corrupt_acc_objective_scores_corrupted_validation_images(tmp_path, train_only_dir):
    """objectives val_acc + corrupt_acc: both values on every complete trial, scored on the
    trial's own validation split corrupted (the data set here has no test batch at all), the
    Pareto front over the two accuracies, and the report's figure and columns."""
    from cifarlab.corruptions import CORRUPTIONS
    from cifarlab.search.report import make_search_report

    f = write_search(tmp_path, objectives='["val_acc", "corrupt_acc"]', epochs="1",
                     extra=REF)
    f.write_text(f.read_text().replace('pruner = "hyperband"', 'pruner = "hyperband"\n'
                                       "corrupt_images = 30\ncorrupt_severities = [1, 5]"))
    runs = tmp_path / "runs"
    lines: list[str] = []
    s = run_search(f, trials=2, runs_dir=runs, data_dir=train_only_dir, log=lines.append)
    assert s["complete"] >= 2 and s["failed"] == 0
    st = storage.load_study("t", storage.default_storage(runs / "t"))
    assert st.metric_names == ["val_acc", "corrupt_acc"]
    assert [d.name for d in st.directions] == ["MAXIMIZE", "MAXIMIZE"]
    done = [t for t in st.get_trials() if t.state == TrialState.COMPLETE]
    for t in done:
        v, c = t.values
        assert v == pytest.approx(t.user_attrs["val_acc"]) and 0 <= c <= 1
        assert c == pytest.approx(t.user_attrs["corrupt_acc"])
        assert sorted(t.user_attrs["corrupt_by"]) == sorted(CORRUPTIONS)
        m = json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert m["test_images"] == 0 and m["test_acc"] is None
    assert any("corrupted validation images: 900 (30 x 15 corruptions x severities [1, 5])"
               in x for x in lines)
    front = best_trials(st)
    assert front and all(not any(u.values[0] >= t.values[0] and u.values[1] >= t.values[1]
                                 and u.values != t.values for u in done) for t in front)
    index = make_search_report(str(runs / "t"))
    text = index.read_text()
    for words in ("<th>corrupt acc</th>", "Corrupted against clean validation accuracy",
                  "corrupt_acc on 30 of them x 15 corruptions at severities 1, 5"):
        assert words in text, words
    assert (index.parent / "robust.png").is_file()
    rows = json.loads((index.parent / "trials.json").read_text())["trials"]
    assert all(r["corrupt_acc"] is not None for r in rows if r["state"] == "complete")


def test_corrupted_validation_images_are_the_validation_split_and_fixed():
    import torch
    from conftest import make_images

    from cifarlab.data import Split
    from cifarlab.search.corrupt import CorruptedVal

    data, labels = make_images(200, seed=3)
    split = Split(torch.from_numpy(data.reshape(200, 3, 32, 32)), torch.tensor(labels))
    a = CorruptedVal(split, 50, 0, 20, [3])
    b = CorruptedVal(split, 50, 0, 20, [3])
    _, held = split.hold_out(50, seed=0)
    assert len(a.labels) == 20 and a.images == 20 * 15
    assert set(a.labels.tolist()) <= set(held.labels.tolist())
    assert all((a.sets[k] == b.sets[k]).all() for k in a.sets)  # the same images every time


# --------------------------------------------------------------------------- multi-fidelity

FIDELITY = 'fidelity = { train_subset = 100, epochs = 1, low_res = 24 }'


def _with_fidelity(f: Path, fidelity: str = FIDELITY) -> Path:
    f.write_text(f.read_text().replace('pruner = "hyperband"',
                                       f'pruner = "hyperband"\n{fidelity}'))
    return f


def test_the_proxy_rung_comes_first_and_promotes_through_the_pruner(tmp_path, train_only_dir,
                                                                    monkeypatch):
    f = _with_fidelity(write_search(tmp_path, epochs="2"))
    spec = SP.load_search(f)
    assert spec.search["fidelity"] == {"train_subset": 100, "epochs": 1, "low_res": 24}
    # a pruner that never prunes: the proxy is step 1, full-fidelity epoch e is step 1 + e
    monkeypatch.setattr(pruning, "make_pruner", lambda spec: optuna.pruners.NopPruner())
    runs = tmp_path / "runs"
    lines: list[str] = []
    run_search(f, trials=2, runs_dir=runs, data_dir=train_only_dir, log=lines.append)
    trials = [t for t in _trials(runs / "t") if outcome(t) == "complete"]
    assert len(trials) == 2 and any("proxy (1 epochs on 100 images, 24 px)" in x for x in lines)
    for t in trials:
        proxy = Path(t.user_attrs["proxy_run_dir"])
        m = json.loads((proxy / "metrics.json").read_text())
        assert m["train_images"] == 100 and m["val_images"] == 100 and m["test_images"] == 0
        assert m["epochs"] == 1 and t.user_attrs["proxy_acc"] == pytest.approx(m["val_acc"])
        if t.user_attrs.get("label") is None:  # (the last epoch is the value, not a step)
            assert set(t.intermediate_values) == {1, 2}
            assert t.intermediate_values[1] == pytest.approx(t.user_attrs["proxy_acc"])
            assert t.intermediate_values[2] == pytest.approx(t.user_attrs["curve"]["1"])
    # a pruner that stops everything: only the queued design goes past its proxy; it is
    # asked too (Optuna's pruners record a rung's value when asked: the hand design's proxy
    # is a competitor of the first designs drawn), but not stopped
    asked: list[int] = []

    class Spy(optuna.pruners.ThresholdPruner):
        def prune(self, study, trial):
            asked.append(trial.number)
            return super().prune(study, trial)

    monkeypatch.setattr(pruning, "make_pruner", lambda spec: Spy(lower=2.0))
    runs = tmp_path / "runs2"
    s = run_search(f, trials=2, runs_dir=runs, data_dir=train_only_dir, log=_silent)
    (t,) = [t for t in _trials(runs / "t") if outcome(t) == "pruned"]
    (hand,) = [t for t in _trials(runs / "t") if outcome(t) == "complete"]
    assert hand.user_attrs["label"] == "ref" and asked[:2] == [0, 1]
    assert hand.intermediate_values[1] == pytest.approx(hand.user_attrs["proxy_acc"])
    assert s["pruned"] == 1 and "not promoted from the proxy rung" in t.user_attrs["pruned"]
    assert t.intermediate_values == {1: pytest.approx(t.user_attrs["proxy_acc"])}
    assert "run_dir" not in t.user_attrs and "curve" not in t.user_attrs


def test_the_proxy_pruner_decides_at_the_proxy_rung_only():
    """`pruner = "proxy"`: successive halving on the proxy accuracies (step 1); a promoted
    design is never stopped at a later epoch, however poor its early epochs look."""
    study = optuna.create_study(direction="maximize",
                                pruner=pruning.ProxyRungPruner(reduction_factor=3))
    verdicts = {}
    for proxy in (0.50, 0.60, 0.70, 0.40, 0.65, 0.68):
        t = study.ask()
        t.report(proxy, 1)
        verdicts[proxy] = t.should_prune()
        if verdicts[proxy]:
            study.tell(t, state=TrialState.PRUNED)
            continue
        for e in range(1, 6):  # full-fidelity epochs, far below every proxy
            t.report(0.01 * e, 1 + e)
            assert not t.should_prune()
        study.tell(t, 0.8)
    # each goes on when among the best n // 3 of the n proxies so far (at least the best)
    assert verdicts == {0.50: False, 0.60: False, 0.70: False, 0.40: True, 0.65: True,
                        0.68: False}


def test_fidelity_settings_are_checked(tmp_path):
    f = write_search(tmp_path)
    f.write_text(f.read_text().replace('pruner = "hyperband"', 'pruner = "proxy"'))
    with pytest.raises(CifarlabError, match="pruner 'proxy' decides at the proxy rung only"):
        SP.load_search(f)
    for bad, words in (("fidelity = { epochs = 0 }", "fidelity.epochs must be an integer"),
                       ("fidelity = { subset = 10 }", "unknown key 'subset'"),
                       ("fidelity = { low_res = 40 }", "fidelity.low_res must be 0")):
        f = _with_fidelity(write_search(tmp_path), bad)
        with pytest.raises(CifarlabError, match=words):
            SP.load_search(f)


def test_proxy_worth_is_a_rank_correlation_over_the_whole_ranking(tmp_path):
    from types import SimpleNamespace

    from cifarlab.search import fidelity

    def trial(n, proxy, full=None):
        return SimpleNamespace(number=n, state=TrialState.COMPLETE if full else
                               TrialState.PRUNED, user_attrs={"proxy_acc": proxy,
                                                              "val_acc": full, "design": "d"})

    # 20 designs; the 4 promoted ones already have a full value; the full accuracy is the
    # proxy's order except for two swapped designs
    trials = [trial(i, 0.3 + 0.01 * i, 0.5 + 0.01 * i if i >= 16 else None) for i in range(20)]
    trained: list[int] = []

    def train_full(t):
        trained.append(t.number)
        return 0.5 + 0.01 * {3: 5, 5: 3}.get(t.number, t.number)

    record = tmp_path / "proxy.json"
    r = fidelity.measure_proxy(trials, 12, train_full, record, log=_silent)
    picked = [d["trial"] for d in r["designs"]]
    assert r["n"] == 12 and picked[0] == 19 and picked[-1] == 0  # best and worst proxies
    assert not set(trained) & {16, 17, 18, 19}  # full values already known are not retrained
    from scipy.stats import spearmanr

    expect = spearmanr([d["proxy_acc"] for d in r["designs"]],
                       [d["full_acc"] for d in r["designs"]]).statistic
    assert r["spearman"] == pytest.approx(expect) and 0.9 < r["spearman"] < 1.0
    trained.clear()  # the record resumes: nothing trained twice
    assert fidelity.measure_proxy(trials, 12, train_full, record, log=_silent) == r
    assert trained == []
    assert fidelity.proxy_spearman([(0.1, 0.2), (0.2, 0.1)]) is None


# --------------------------------------------------------------------------- filling the budget

def test_fill_schedules_around_the_measured_room():
    from types import SimpleNamespace

    from cifarlab.search import final

    cfg = {"train": {"epochs": 8, "low_res": 24, "low_res_epochs": 4}}
    assert final.schedule(cfg, 8) == {}  # the trial's own
    assert final.schedule(cfg, 11) == {"train.epochs": 11, "train.low_res_epochs": 6}
    assert final.schedule(cfg, 6) == {"train.epochs": 6, "train.low_res_epochs": 3}
    # room for 8 / 0.74 = 10.8 epochs: 9, 10, 11
    assert final.epochs_around(8, 1 / 0.74) == [9, 10, 11]
    # no room for a 9th epoch: measured all the same (timings err)
    assert final.epochs_around(8, 1.05) == [9]
    # its own schedule over the budget: 8 x 0.9 = 7.2 epochs: 7 and 6 (shorter ones only)
    assert final.epochs_around(8, 0.9) == [7, 6]
    assert final.epochs_around(2, 0.4) == [1]
    # a trial too short for its low-res epochs trained none: its other schedules neither
    # (an FC head that does not take 24 px trained at 32 px only)
    short = {"train": {"epochs": 1, "low_res": 24, "low_res_epochs": 4}}
    assert final.schedule(short, 3) == {"train.epochs": 3, "train.low_res": 0,
                                        "train.low_res_epochs": 0}
    spec = SimpleNamespace(constraints={"max_train_time_vs_base": 1.0, "max_train_seconds": 0})
    assert final.headroom(spec, SimpleNamespace(user_attrs={"time_vs_base": 0.5})) == 2.0
    with pytest.raises(CifarlabError, match="--fill-budget needs the search's time rule"):
        final.headroom(spec, SimpleNamespace(user_attrs={}))


def test_best_fill_budget_times_the_base_and_each_schedule(tmp_path, train_only_dir,
                                                           monkeypatch):
    import tomllib

    from cifarlab.search import final

    f = write_search(tmp_path, epochs="1", constraints="max_train_time_vs_base = 100.0")
    runs = tmp_path / "runs"
    run_search(f, trials=1, runs_dir=runs, data_dir=train_only_dir, log=_silent)
    monkeypatch.setattr(final, "epochs_around", lambda e0, room: [2, 3])  # room: 100x base
    out = tmp_path / "w.toml"
    args = build_parser().parse_args(["best", "t", "--runs-dir", str(runs), "--out", str(out),
                                      "--fill-budget", "--data-dir", str(train_only_dir)])
    assert run_search_command(args) == 0
    fill = json.loads(out.with_suffix(".fill.json").read_text())
    assert [c["epochs"] for c in fill["candidates"]] == [1, 2, 3]
    assert fill["candidates"][0]["overrides"] == {}  # the trial's own schedule, timed alike
    assert fill["budget_seconds"] == pytest.approx(100 * fill["base_seconds"])
    assert fill["processes"] == 2  # fast-50k's, as the winner will train
    # the base recipe timed before and after the schedules; the budget from the mean
    before, after = (json.loads((runs / "t" / "fill-budget" / n / "metrics.json").read_text())
                     for n in ("fill-base", "fill-base-after"))
    assert fill["base_runs"] == [before["train_seconds"], after["train_seconds"]]
    assert fill["base_seconds"] == pytest.approx((before["train_seconds"]
                                                  + after["train_seconds"]) / 2)
    assert fill["drift"] == pytest.approx(after["train_seconds"] / before["train_seconds"] - 1)
    for base in (before, after):
        assert base["val_images"] == 100 and base["test_images"] == 0
    for c in fill["candidates"]:
        m = json.loads((Path(c["run_dir"]) / "metrics.json").read_text())
        assert m["val_images"] == 100 and m["test_images"] == 0 and m["epochs"] == c["epochs"]
        assert c["fits"] is (c["train_seconds"] <= fill["budget_seconds"])
    best = max(fill["candidates"], key=lambda c: (c["val_acc"], -c["epochs"]))
    assert fill["chosen"] == best["overrides"]
    text = out.read_text()
    assert f"--fill-budget: budget {fill['budget_seconds']:.0f} s of training" in text
    assert tomllib.loads(text)["train"]["epochs"] == best["epochs"]


def _fake_fill(monkeypatch, epochs: int, run: dict, bases=(100.0, 100.0), log=_silent,
               label: str | None = None, constraints: dict | None = None,
               base_val: float | None = None):
    """final.fill_budget with trainings faked: `run` maps planned epochs to (val acc, train
    seconds, epochs trained); the base recipe timed at `bases` (before, after: the budget, x
    1.0), validating at `base_val`; the trial's own schedule `epochs` long."""
    from types import SimpleNamespace

    from cifarlab.search import final

    spec = SimpleNamespace(constraints=constraints or {"max_train_time_vs_base": 1.0,
                                                       "max_train_seconds": 0},
                           base="hand", base_recipe={"name": "hand"},
                           search={"val_split": 100})
    trial = SimpleNamespace(number=7, user_attrs={"model_args": {}, "train": {},
                                                  **({"label": label} if label else {})})

    def fake_train(spec, study, t, runs_dir, name, data, extra, max_seconds):
        planned = extra.get("train.epochs", epochs)
        acc, secs, done = run[planned]
        return {"val_acc": acc, "train_seconds": secs, "epochs": done, "run_dir": name,
                "stopped_by": None if done == planned else "time"}

    monkeypatch.setattr(final, "spec_of", lambda study: spec)
    monkeypatch.setattr(final, "headroom", lambda spec, t: 3.0)  # the search's: not used
    monkeypatch.setattr(final, "trial_recipe", lambda *a: ({}, {}))
    monkeypatch.setattr(final, "resolve", lambda raw, over=None: {
        "train": {"epochs": epochs, "low_res": 0, "low_res_epochs": 0, "processes": 2}})
    timings = iter(bases)
    monkeypatch.setattr(final, "time_base", lambda *a: {"train_seconds": next(timings),
                                                        "val_acc": base_val})
    monkeypatch.setattr(final, "_train_trial", fake_train)
    return final.fill_budget(SimpleNamespace(study_name="s"), trial, Path("."), data=object(),
                             log=log)


def test_fill_budget_picks_on_validation_among_schedules_within_the_budget(monkeypatch):
    """Room for 98 / 33 = 2.97 epochs: 2 and 3 measured. The longest schedule validates best
    but was stopped by time before its last epoch: not chosen; one within 98% is."""
    run = {1: (0.60, 33.0, 1), 2: (0.62, 97.0, 2), 3: (0.70, 110.0, 2)}
    r = _fake_fill(monkeypatch, 1, run)
    assert [c["planned_epochs"] for c in r["candidates"]] == [1, 2, 3]
    assert [c["epochs"] for c in r["candidates"]] == [1, 2, 2]
    assert [c["fits"] for c in r["candidates"]] == [True, True, False]
    assert r["chosen"] == {"train.epochs": 2, "train.low_res": 0, "train.low_res_epochs": 0}
    assert r["budget_seconds"] == 100.0 and r["processes"] == 2 and r["fit"] == 0.98
    assert r["base_runs"] == [100.0, 100.0] and r["drift"] == 0.0
    assert r["measured_headroom"] == pytest.approx(98 / 33)


def test_fill_budget_shortens_a_schedule_that_overruns_the_budget(monkeypatch):
    """The search predicted room, but the trial's own 4 epochs take 120 s of a 100 s budget:
    shorter schedules are measured (98 / 120 x 4 = 3.3: 3 and 2), and while none fits,
    shorter still; the best that fits is chosen."""
    from cifarlab.search.winner import _fill_lines

    run = {4: (0.80, 120.0, 4), 3: (0.78, 110.0, 3), 2: (0.75, 99.0, 2), 1: (0.70, 60.0, 1)}
    r = _fake_fill(monkeypatch, 4, run)
    assert [c["planned_epochs"] for c in r["candidates"]] == [4, 3, 2, 1]
    assert [c["fits"] for c in r["candidates"]] == [False, False, False, True]
    assert r["chosen"] == {"train.epochs": 1, "train.low_res": 0, "train.low_res_epochs": 0}
    # nothing fits at all: the shortest measured is written, and the header says so
    r = _fake_fill(monkeypatch, 2, {2: (0.8, 300.0, 2), 1: (0.7, 150.0, 1)})
    assert [c["planned_epochs"] for c in r["candidates"]] == [2, 1]
    assert r["chosen"] == {"train.epochs": 1, "train.low_res": 0, "train.low_res_epochs": 0}
    lines = _fill_lines(r)
    assert lines[-1] == "  none fits the budget: the shortest schedule measured is written"
    assert lines[2].startswith("  1 epochs: val acc 0.7000, 150 s (over the budget)")
    assert lines[2].endswith("<- chosen")


def test_fill_budget_keeps_the_base_recipes_own_design_untimed(monkeypatch):
    """The winner is the hand recipe queued as trial 0 (labelled with the base recipe's name):
    its time is the budget by definition, so nothing is trained and its schedule is kept (timed
    against a 98% margin it would only be shortened by noise). Any other label, or a budget
    below the base recipe's time, is filled as usual."""
    from cifarlab.search.winner import _fill_lines

    lines = []
    r = _fake_fill(monkeypatch, 4, {}, label="hand", log=lines.append)
    assert r["base_design"] is True and r["candidates"] == [] and r["chosen"] == {}
    assert lines == ["fill budget: trial 7 is the base recipe's own design and schedule "
                     "(enqueued as 'hand'): it is the budget, nothing to fill"]
    assert "its time is the budget, so the schedule is kept" in _fill_lines(r)[0]
    run = {2: (0.7, 45.0, 2), 3: (0.75, 67.0, 3), 4: (0.80, 90.0, 4), 5: (0.81, 97.0, 5)}
    r = _fake_fill(monkeypatch, 4, run, label="another design")
    assert "base_design" not in r and len(r["candidates"]) >= 2
    r = _fake_fill(monkeypatch, 4, run, label="hand",
                   constraints={"max_train_time_vs_base": 0.9, "max_train_seconds": 0})
    assert "base_design" not in r and r["budget_seconds"] == pytest.approx(90.0)


def test_fill_budget_times_the_base_again_when_the_machine_drifts(monkeypatch):
    """The base recipe trains in 100 s before the schedules and 120 s after (the machine got
    slower): the budget is their mean, 110 s, and what fits is judged against it."""
    run = {1: (0.60, 33.0, 1), 2: (0.62, 97.0, 2), 3: (0.70, 105.0, 3)}
    lines = []
    r = _fake_fill(monkeypatch, 1, run, bases=(100.0, 120.0), log=lines.append)
    assert r["base_runs"] == [100.0, 120.0] and r["drift"] == pytest.approx(0.2)
    assert r["budget_seconds"] == pytest.approx(110.0)
    assert [c["fits"] for c in r["candidates"]] == [True, True, True]
    assert r["chosen"] == {"train.epochs": 3, "train.low_res": 0, "train.low_res_epochs": 0}
    assert any("the base recipe trained 20% slower after the schedules than before" in x
               for x in lines)


def test_fill_budget_says_when_the_base_recipe_validates_better(monkeypatch):
    """The base recipe, trained alike with the budget's whole time, validates at least as well
    as the trial's best schedule within the budget (or none fits): `base_wins`, and the header
    says that the base design is written. Below it, or under a budget smaller than the base
    recipe's time (the base is no answer there), the trial's schedule stands."""
    from cifarlab.search.winner import _fill_lines

    run = {1: (0.60, 33.0, 1), 2: (0.62, 97.0, 2), 3: (0.70, 110.0, 2)}
    lines: list[str] = []
    r = _fake_fill(monkeypatch, 1, run, base_val=0.62, log=lines.append)
    assert r["base_wins"] is True and r["base_val_accs"] == [0.62, 0.62]
    assert r["chosen"] == {"train.epochs": 2, "train.low_res": 0, "train.low_res_epochs": 0}
    assert lines[-1] == ("fill budget: the base recipe 'hand' validated at 0.6200, above trial "
                         "7's best schedule within the budget (0.6200)")
    text = _fill_lines({**r, "winner_trial": 7})
    assert text[-2] == "  the base recipe itself, trained alike: val acc 0.6200 and 0.6200"
    assert "schedules of trial 7, the search's best" in text[-1]
    assert not any(x.endswith("<- chosen") for x in text)
    assert _fake_fill(monkeypatch, 1, run, base_val=0.61)["base_wins"] is False
    none_fit = {2: (0.8, 300.0, 2), 1: (0.7, 150.0, 1)}
    assert _fake_fill(monkeypatch, 2, none_fit, base_val=0.5)["base_wins"] is True
    r = _fake_fill(monkeypatch, 1, run, base_val=0.9,
                   constraints={"max_train_time_vs_base": 0.9, "max_train_seconds": 0})
    assert r["base_wins"] is False


def test_best_writes_the_base_design_when_it_validates_better(tmp_path, train_only_dir,
                                                              monkeypatch):
    """`search best --fill-budget`: when the fill stage finds the base recipe better on
    validation, the study's own base trial (queued under the base recipe's name) is written,
    with its own schedule, and the header says why."""
    from cifarlab.search import winner

    extra = REF.replace('label = "ref"', 'label = "fast-50k"')
    f = write_search(tmp_path, extra=extra, constraints="max_train_time_vs_base = 1.0",
                     epochs="1")
    runs = tmp_path / "runs"
    run_search(f, trials=2, runs_dir=runs, data_dir=train_only_dir, log=_silent)
    st = storage.load_study("t", storage.default_storage(runs / "t"))
    done = [t for t in st.get_trials() if t.state == TrialState.COMPLETE]
    other = next(t for t in done if t.user_attrs.get("label") != "fast-50k")
    monkeypatch.setattr(winner, "pick", lambda study, number=None: other)
    filled = {"base_wins": True, "base_val_accs": [0.5, 0.5], "budget_seconds": 100.0,
              "base_runs": [100.0, 100.0], "processes": 2, "fit": 0.98,
              "chosen": {"train.epochs": 3}, "candidates": [
                  {"overrides": {"train.epochs": 3}, "planned_epochs": 3, "epochs": 3,
                   "val_acc": 0.4, "train_seconds": 90.0, "fits": True}]}
    w = winner.write_best(st, tmp_path / "w.toml", fill=lambda t: filled)
    base = next(t for t in done if t.user_attrs.get("label") == "fast-50k")
    assert w["trial"] == base.number and w["fill"]["winner_trial"] == other.number
    text = (tmp_path / "w.toml").read_text()
    assert f"from study 't', trial {base.number}" in text
    assert f"(schedules of trial {other.number}, the search's best)" in text
    assert w["recipe"]["train"]["epochs"] == 1  # the base trial's own schedule
    # a trial asked for by number is written as asked
    w = winner.write_best(st, tmp_path / "n.toml", number=other.number, fill=lambda t: filled)
    assert w["trial"] == other.number and "winner_trial" not in w["fill"]


# ------------------------------------------------------------------------ local steps

def test_mutate_moves_two_values_one_step_within_their_ranges():
    import numpy as np
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    dists = {"width": IntDistribution(4, 16, step=4), "batch": IntDistribution(16, 256, log=True),
             "lr": FloatDistribution(0.05, 0.2, log=True), "ls": FloatDistribution(0.0, 0.2),
             "block": CategoricalDistribution(["a", "b", "c"]),
             "fixed": CategoricalDistribution(["only"])}
    params = {"width": 16, "batch": 100, "lr": 0.1, "ls": 0.1, "block": "a", "fixed": "only"}
    steps = {"width": {12}, "batch": {80, 125}, "lr": {0.08, 0.125}, "ls": {0.08, 0.12},
             "block": {"b", "c"}}  # width is at its top: it can only go down
    seen = set()
    for seed in range(40):
        out = pruning.mutate(params, dists, np.random.default_rng(seed))
        changed = {k for k in params if out[k] != params[k]}
        assert len(changed) == 2 and "fixed" not in changed
        for k in changed:
            assert any(out[k] == pytest.approx(v) for v in steps[k]), (k, out[k])
            assert dists[k]._contains(dists[k].to_internal_repr(out[k]))
        seen |= changed
    assert seen == set(steps)  # every searched value gets moved sometimes
    same = [pruning.mutate(params, dists, np.random.default_rng(7)) for _ in range(2)]
    assert same[0] == same[1]  # the worker's generator decides


def _study_with(values: list[float]):
    from optuna.distributions import IntDistribution

    st = optuna.create_study(direction="maximize")
    for i, v in enumerate(values):
        st.add_trial(optuna.trial.create_trial(
            params={"width": 8 + 8 * i}, distributions={"width": IntDistribution(4, 64, step=4)},
            value=v))
    return st


def test_queue_neighbour_queues_a_neighbour_of_one_of_the_best_designs():
    from types import SimpleNamespace

    import numpy as np
    from optuna.distributions import IntDistribution

    def spec(p=0.99, sampler="tpe", startup=2):
        return SimpleNamespace(search={"mutate": p, "sampler": sampler,
                                       "startup_trials": startup}, derived=())

    st = _study_with([0.5, 0.9, 0.7, 0.8, 0.6])
    rng = np.random.default_rng(0)
    parent = pruning.queue_neighbour(st, spec(), rng)
    assert parent.number in (1, 3, 2)  # the best three
    waiting = [t for t in st.get_trials(deepcopy=False) if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].user_attrs["neighbour_of"] == parent.number
    assert abs(waiting[0].system_attrs["fixed_params"]["width"] - parent.params["width"]) == 4
    # nothing more while a queued trial waits (a retry, the hand design, this neighbour)
    assert pruning.queue_neighbour(st, spec(), rng) is None
    for s in (spec(p=0.0), spec(sampler="random"), spec(startup=6)):  # off; the random
        assert pruning.queue_neighbour(_study_with([0.5] * 5), s, rng) is None  # baseline;
    assert pruning.queue_neighbour(_study_with([]), spec(startup=0), rng) is None  # too early
    st = _study_with([0.5, 0.9, 0.7, 0.8, 0.6])  # widths 8, 16, ..., 40
    st.add_trial(optuna.trial.create_trial(  # 12 and 20 (the neighbours of 16) tried already
        params={"width": 12}, distributions={"width": IntDistribution(4, 64, step=4)},
        value=0.1))
    st.add_trial(optuna.trial.create_trial(
        params={"width": 20}, distributions={"width": IntDistribution(4, 64, step=4)},
        value=0.1))
    queued = skipped = 0
    for _ in range(30):
        parent = pruning.queue_neighbour(st, spec(), rng)
        waiting = [t for t in st.get_trials() if t.state == TrialState.WAITING]
        if parent is not None and parent.number == 1:
            assert not waiting  # both neighbours of trial 1 were tried: nothing queued
            skipped += 1
        queued += len(waiting)
        for _ in waiting:  # train what was queued (badly), so the next call may queue again
            st.tell(st.ask(), 0.0)
    assert queued and skipped


def _fill_time_search(tmp_path: Path, limit: float, extra: str = "") -> Path:
    """No pruning: these tests are about the epochs each trial trains, which a pruner could cut
    short on the synthetic data's noise."""
    f = write_search(tmp_path, extra=extra, epochs="{ low = 1, high = 3 }", pruner="none",
                     constraints=f"max_train_time_vs_base = {limit}")
    f.write_text(f.read_text().replace("startup_trials = 2", "startup_trials = 2\n"
                                       "fill_time = true\nmax_rejected_in_row = 1"))
    return f


def test_search_file_fill_time_needs_a_time_rule_and_an_epochs_range(tmp_path):
    assert SP.load_search(_fill_time_search(tmp_path, 1.0)).derived == ("epochs",)
    assert SP.load_search(write_search(tmp_path)).derived == ()
    f = _fill_time_search(tmp_path, 1.0)
    f.write_text(f.read_text().replace("max_train_time_vs_base = 1.0", ""))
    with pytest.raises(SP.SearchError, match="fill_time fills a time rule"):
        SP.load_search(f)
    f = _fill_time_search(tmp_path, 1.0)
    f.write_text(f.read_text().replace("epochs = { low = 1, high = 3 }", "epochs = 2"))
    with pytest.raises(SP.SearchError, match=r"within \[space\] epochs: give it a range"):
        SP.load_search(f)
    f = _fill_time_search(tmp_path, 1.0)
    f.write_text(f.read_text().replace("fill_time = true", 'fill_time = "yes"'))
    with pytest.raises(SP.SearchError, match="fill_time must be true or false"):
        SP.load_search(f)


def test_fill_time_trains_each_design_for_the_most_epochs_its_time_allows(
        tmp_path, train_only_dir, monkeypatch):
    """Every candidate is predicted at 100 s an epoch against a base recipe of 1000 s (the
    time cap, 1.5x the budget, is then far above what the tiny trainings take): under
    max_train_time_vs_base 0.25 it trains 2 epochs (2.5 fit), its low-resolution epochs in
    proportion to the base recipe's (fast-50k: 1 of 4 -> 1 of 2); epochs are not drawn. Under
    0.05 not even the fewest epochs (1) fit: rejected by the time rule."""
    from cifarlab.search import fidelity

    monkeypatch.setattr(worker.Worker, "predict_train_seconds",
                        lambda self, model, cfg, hopeless=None:
                        (100.0 * cfg["train"]["epochs"], 1000.0))
    runs = tmp_path / "runs"
    run_search(_fill_time_search(tmp_path, 0.25), trials=2, runs_dir=runs,
               data_dir=train_only_dir, log=_silent)
    done = [t for t in _trials(runs / "t") if outcome(t) == "complete"]
    assert len(done) == 2
    for t in done:
        assert "epochs" not in t.params
        assert t.user_attrs["train"]["train.epochs"] == 2
        assert t.user_attrs["train"]["train.low_res_epochs"] == 1
        assert t.user_attrs["epochs_done"] == 2
        assert t.user_attrs["predicted_seconds"] == pytest.approx(200.0)
        assert t.user_attrs["time_vs_base"] == pytest.approx(0.2)
    # a retried trial (Optuna copies the failed attempt's user attributes) keeps the epochs
    # of its first attempt, whose run directory it resumes: not filled again, and not judged
    # again by the time rules (met in its first attempt; timing noise must not reject it)
    st = storage.load_study("t", storage.default_storage(runs / "t"))
    st.enqueue_trial(done[0].params, user_attrs={"train": {"train.epochs": 3},
                                                 "met_rules": True})
    run_search(_fill_time_search(tmp_path, 0.25), trials=3, runs_dir=runs,
               data_dir=train_only_dir, log=_silent)
    retry = _trials(runs / "t")[-1]
    assert retry.number == 2 and outcome(retry) == "complete"
    assert retry.user_attrs["train"]["train.epochs"] == 3
    assert retry.user_attrs["epochs_done"] == 3
    # a retry of an attempt stopped before the rules were checked (`train` is recorded at the
    # draw, before them) is filled and judged afresh: 2 epochs, as the time rule allows
    st.enqueue_trial(done[0].params, user_attrs={"train": {"train.epochs": 3}})
    run_search(_fill_time_search(tmp_path, 0.25), trials=4, runs_dir=runs,
               data_dir=train_only_dir, log=_silent)
    unchecked = _trials(runs / "t")[3]
    assert outcome(unchecked) == "complete"
    assert unchecked.user_attrs["train"]["train.epochs"] == 2
    assert unchecked.user_attrs["time_vs_base"] == pytest.approx(0.2)
    with pytest.raises(CifarlabError, match="rejected 1 candidates in a row"):
        run_search(_fill_time_search(tmp_path, 0.05), trials=1, runs_dir=tmp_path / "r2",
                   data_dir=train_only_dir, log=_silent)
    t = _trials(tmp_path / "r2" / "t")[0]
    assert t.user_attrs["rejected_rules"] == ["time budget"]
    assert t.user_attrs["train"]["train.epochs"] == 1
    # the proxy rung's epochs scale with the trial's (every proxy costs about the same)
    assert fidelity.proxy_epochs({"epochs": 3}, 20 / 8) == 8
    assert fidelity.proxy_epochs({"epochs": 3}, 0.1) == 1
    assert fidelity.proxy_overrides({"epochs": 3, "train_subset": 10, "low_res": 0},
                                    2.0)["train.epochs"] == 6


def test_local_steps_pick_the_best_parent_most_often():
    import numpy as np

    st = _study_with([0.5, 0.9, 0.7, 0.8, 0.6])
    ps = pruning.parents(st, st.get_trials())
    assert [t.number for t in ps] == [1, 3, 2]
    rng = np.random.default_rng(0)
    picks = [pruning.pick_parent(ps, rng).number for _ in range(2000)]
    share = {n: picks.count(n) / len(picks) for n in (1, 3, 2)}
    # weights 1, 1/2, 1/3 -> 6/11, 3/11, 2/11
    assert share[1] == pytest.approx(6 / 11, abs=0.04)
    assert share[3] == pytest.approx(3 / 11, abs=0.04)
    assert share[2] == pytest.approx(2 / 11, abs=0.04)


def test_search_file_mutate_must_be_a_share(tmp_path):
    for bad in ("1", "-0.1", '"half"', "true"):
        f = write_search(tmp_path)
        f.write_text(f.read_text().replace("startup_trials = 2", f"startup_trials = 2\n"
                                           f"mutate = {bad}"))
        with pytest.raises(SP.SearchError, match=r"\[search\] mutate .* must be >= 0 and < 1"):
            SP.load_search(f)
    assert SP.load_search(write_search(tmp_path)).search["mutate"] == 0.0


def test_a_search_with_local_steps_trains_neighbours_of_its_best(tmp_path, train_only_dir):
    f = write_search(tmp_path)
    f.write_text(f.read_text().replace("startup_trials = 2", "startup_trials = 1\nmutate = 0.9"))
    runs = tmp_path / "runs"
    lines: list[str] = []
    run_search(f, trials=4, runs_dir=runs, data_dir=train_only_dir, log=lines.append)
    ts = _trials(runs / "t")
    nb = [t for t in ts if "neighbour_of" in t.user_attrs]
    assert nb, [t.user_attrs.get("design") for t in ts]
    for t in nb:
        parent = ts[t.user_attrs["neighbour_of"]]
        assert parent.state == TrialState.COMPLETE
        changed = {k for k, v in parent.params.items() if k in t.params and t.params[k] != v}
        assert len(changed) <= 2 and (changed or set(t.params) != set(parent.params))
    assert any(f"[neighbour of trial {nb[0].user_attrs['neighbour_of']}]" in x for x in lines
               if f"trial {nb[0].number} training:" in x) or outcome(nb[0]) == "rejected"


def test_a_long_run_of_rejections_stops_only_a_search_that_never_met_the_rules(monkeypatch):
    """300 rejections in a row stopped a random search under seed001-rules whose sampler had
    drawn feasible designs before (random draws meet those rules rarely), and later one TPE
    worker of a search whose queued hand design was still training (the sampler had drawn no
    feasible design in its first 300). The limit (now 1000 by default) stops a search only
    while no design has met the rules: a queued design that meets them, trained or training,
    shows the space has such designs; then one line, and the search goes on."""
    from types import SimpleNamespace

    from optuna.distributions import IntDistribution

    from cifarlab.search import run as run_mod

    assert SP.SEARCH_KEYS["max_rejected_in_row"] == 1000
    monkeypatch.setattr(run_mod, "reap_local", lambda *a: 0)
    st = optuna.create_study(direction="maximize")
    st.set_user_attr("budget_minutes", 10)
    dist = {"w": IntDistribution(4, 64)}
    st.add_trial(optuna.trial.create_trial(  # rejected by the rules: not a design that met them
        params={"w": 8}, distributions=dist, state=TrialState.PRUNED,
        user_attrs={"rejected": "max_params"}))
    running = st.ask({"w": IntDistribution(4, 64)})  # the queued design, its checks not done
    running.set_user_attr("label", "hand")
    lines: list[str] = []
    w = SimpleNamespace(spec=SimpleNamespace(search={"max_rejected_in_row": 3, "minutes": 10,
                                                     "seed": 0}),
                        log=lines.append, rejected_in_row=3, host="h", last_error=None)
    loop = run_mod._Loop(st, None, "sqlite://", w, None, False, 0)
    with pytest.raises(SP.SearchError, match="rejected 3 candidates in a row and no design has "
                       "met them"):
        loop.stop_reason()
    running.set_user_attr("met_rules", True)  # the queued design passed its checks: training
    assert loop.stop_reason() is None
    assert lines == ["the rules rejected 3 candidates in a row; 1 design(s) met them so "
                     "far: the feasible part of the space is small for this sampler; going on "
                     "(rejections cost search time)"]
    w.rejected_in_row = 4
    assert loop.stop_reason() is None and len(lines) == 1  # said once per 3 in a row
