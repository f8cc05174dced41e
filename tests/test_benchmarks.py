"""The benchmark bookkeeping: speed.json's summary is computed from the recorded runs."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import common, update_readme
from benchmarks import search as bench_search
from benchmarks import seeds as bench_seeds

ROOT = Path(__file__).resolve().parent.parent


def test_throughput_kept_per_cpu_model_and_met_only_where_met_on_each(tmp_path):
    from benchmarks import speed as bench_speed
    from benchmarks import throughput as bench_throughput

    path = tmp_path / "throughput.json"
    amd = {"ratio": 2.88, "machine": "AMD EPYC, 2 cores, torch 2.13.0+cpu, 2 threads"}
    path.write_text(json.dumps(amd))  # a record from before `by_cpu`
    xeon = {"ratio": 2.4, "machine": "Xeon X, 2 cores", "cpu": {"model": "Xeon X"}}
    out = bench_throughput.with_other_cpus(xeon, path)
    assert out["ratio"] == 2.4 and out["by_cpu"] == {"AMD EPYC": amd, "Xeon X": xeon}
    path.write_text(json.dumps(out))
    again = bench_throughput.with_other_cpus({**xeon, "ratio": 3.1}, path)
    assert {m: r["ratio"] for m, r in again["by_cpu"].items()} == {"AMD EPYC": 2.88,
                                                                   "Xeon X": 3.1}
    assert all("by_cpu" not in r for r in again["by_cpu"].values())
    v = bench_speed.throughput_verdict(out)
    assert v["ratio"] == 2.4 and v["required_met"] is False  # 2.5x needed on each CPU model
    assert bench_speed.throughput_verdict(again)["required_met"] is True
    assert bench_speed.throughput_verdict(amd)["ratio"] == 2.88  # one record, no by_cpu


def test_throughput_merge_keeps_the_speed_record(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    speed = {"runs": [{"recipe": "fast-50k", "seed": 0}], "anchor": {"seconds": 800.0},
             "summary": {"fast-50k": {"ratio_to_anchor": 0.2}}, "throughput": {"ratio": 1.7}}
    (tmp_path / "speed.json").write_text(json.dumps(speed))
    common.merge_speed({"ratio": 2.6})
    out = json.loads((tmp_path / "speed.json").read_text())
    assert out == {**speed, "throughput": {"ratio": 2.6}}
    (tmp_path / "speed.json").unlink()
    common.merge_speed({"ratio": 3.0})  # no speed.json yet
    assert json.loads((tmp_path / "speed.json").read_text()) == {"throughput": {"ratio": 3.0}}


def test_commit_from_environment(monkeypatch):
    monkeypatch.setenv("CIFARLAB_COMMIT", "abc123")  # a copied checkout names its commit
    assert common.commit() == "abc123"
    monkeypatch.delenv("CIFARLAB_COMMIT")
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip()
    assert common.commit().removesuffix("-dirty") == (head or "unknown")


def test_readme_machine_column():
    gpu = "Intel(R) Xeon(R) Processor, 16 cores, NVIDIA H200, torch 2.11.0+cu130, 3 threads"
    cpu = "Intel(R) Xeon(R) Processor, 2 cores, torch 2.13.0+cpu, 2 threads"
    assert update_readme.where(gpu) == "NVIDIA H200"
    assert update_readme.where(cpu) == "CPU, 2 cores"


def test_seed_rows_one_per_run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_seeds, "RESULTS", tmp_path)
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    rows = [{"recipe": "seed002", "run_dir": d, "date": t, "test_acc": a}
            for d, t, a in (("/r/a", "2026-01-02", 0.8), ("/r/b", "2026-01-01", 0.7),
                            ("/r/a", "2026-01-03", 0.9))]
    for r in rows:
        bench_seeds.save(r)
    out = json.loads((tmp_path / "seeds.json").read_text())
    assert [(r["run_dir"], r["test_acc"]) for r in out] == [("/r/b", 0.7), ("/r/a", 0.9)]


def test_readme_results_are_what_the_json_generates():
    readme = (ROOT / "README.md").read_text()
    assert update_readme.summary_block() in readme
    assert update_readme.readme_results() in (ROOT / "docs" / "results.md").read_text()
    history = (ROOT / "docs" / "seed-history.md").read_text()
    assert update_readme.history_block() in history


def test_readme_synopsis_is_every_command_as_its_help_prints_it():
    readme = (ROOT / "README.md").read_text()
    block = update_readme.cli_block()
    assert block in readme
    for cmd in ("train", "eval", "predict", "export", "search", "search report", "check",
                "summary", "report", "data augment", "recipes", "models"):
        assert f"\ncifarlab {cmd} " in block or f"\ncifarlab {cmd}\n" in block, cmd
    assert "--model MODEL" in block and "--workers N" in block and "--top-k TOP_K" in block


def test_readme_python_example_runs(tmp_path):
    """The README's first Python block, as a user would paste it, on a small data set."""
    import re
    import subprocess
    import sys

    from conftest import write_cifar

    cifar_dir = write_cifar(tmp_path / "data", per_batch=1010, test=100)

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**__import__("os").environ, "CIFAR10_DATA": str(cifar_dir)}
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0].endswith("[]")  # the example's rules all hold
    assert "runs/default" in lines[-1]


def test_every_recorded_row_names_its_provenance():
    results = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    rows = []
    for p in sorted(results.glob("*.json")):
        data = json.loads(p.read_text())
        if isinstance(data, list):
            rows += [(p.name, r) for r in data]
        elif "rows" in data:  # inference.json: one row per model, backend, batch size
            rows += [(p.name, r) for r in data["rows"]]
        elif isinstance(data.get("variants"), list):  # levers-RECIPE.json
            rows += [(p.name, r) for r in data["variants"]]
        elif isinstance(data.get("runs"), list):  # speed.json
            rows += [(p.name, r) for r in data["runs"]]
            if data.get("anchor"):
                rows.append((p.name, data["anchor"]))
        elif isinstance(data.get("by_cpu"), dict):  # kernels.json: one entry per CPU model
            rows += [(p.name, r) for r in data["by_cpu"].values()]
        else:
            rows.append((p.name, data))
    assert rows
    for name, r in rows:
        missing = [k for k in ("commit", "date", "machine", "command") if not r.get(k)]
        assert not missing, f"{name}: a row lacks {missing}"
    for r in json.loads((results / "seeds.json").read_text()):
        assert r["legs"] and all("commit" in g and "first_epoch" in g for g in r["legs"])
        assert "verifiable" in r or r["legs"][0].get("cifarlab")


def test_search_section_of_a_running_search_and_discarded_measurements(tmp_path, monkeypatch):
    """Before any rule set finishes: the search under way, the measurements thrown away and
    why, and the provenance (a finished rule set's rows: the benchmark test below)."""
    prov = {"commit": "a" * 40, "date": "2026-11-28T15:00:00+00:00", "machine": "M",
            "command": "python -m benchmarks.search"}
    rec = {**prov, "legs": [prov], "rule_sets": {},
           "in_progress": {"seed001-rules": {
               "search": {"minutes_used": 90.2, "budget_minutes": 90.0, "complete": 3,
                          "pruned": 4, "rejected": 5, "finished": True,
                          "best": [{"number": 0, "val_acc": 0.8588, "design": "stem 32"}]},
               "random_search": {"minutes_used": 12.0, "budget_minutes": 90.0,
                                 "complete": 0, "pruned": 0, "rejected": 9, "best": []}}},
           "discarded": [{"what": "a random search", "why": "its workers drew alike",
                          "record": None}],
           "workers": None}
    (tmp_path / "search.json").write_text(json.dumps(rec))
    monkeypatch.setattr(update_readme, "RESULTS", tmp_path)
    out = update_readme.search_section()
    assert out[0] == ("- `seed001-rules`, under way: search finished (90 of 90 min, 3 complete, "
                      "4 pruned, 5 rejected; best so far trial 0, validation 85.88%: stem 32); "
                      "random search under way (12 of 90 min, 0 complete, 0 pruned, 9 rejected);"
                      " no test accuracy yet.")
    assert out[1] == "- Discarded and redone: a random search (its workers drew alike)."
    assert out[-1].startswith("Measured on M, commits `aaaaaaaaaaaa` (`python -m benchmarks.")


def test_bench_search_write_only_publishes_the_state_without_running(tmp_path):
    """--write-only: a search stopped mid-way is published as far as it got (its study's
    summary, not finished), with what was discarded; nothing runs, the state is unchanged."""
    from cifarlab.search import space as SP
    from cifarlab.search import storage

    runs = tmp_path / "runs"
    (runs / "under-50k").mkdir(parents=True)
    spec = SP.load_search("under-50k")
    storage.create_or_load(spec, "under-50k", storage.default_storage(runs / "under-50k"), None,
                           lambda s: None)  # a study with its queued design, nothing trained
    state = {"legs": [{"commit": "b" * 40}], "discarded": [{"what": "w", "why": "y",
                                                             "record": None}]}
    (runs / "bench-search.json").write_text(json.dumps(state))
    out = tmp_path / "search.json"
    bench_search.main(["--runs-dir", str(runs), "--write-only", "--out", str(out),
                       "--rule-sets", "under-50k", "seed001-rules"])
    r = json.loads(out.read_text())
    assert r["rule_sets"] == {} and list(r["in_progress"]) == ["under-50k"]
    s = r["in_progress"]["under-50k"]["search"]
    assert s["finished"] is False and s["trials"] == 1 and s["waiting"] == 1
    assert "random_search" not in r["in_progress"]["under-50k"]  # not started: no study
    assert r["discarded"] == state["discarded"] and r["legs"] == state["legs"]
    assert json.loads((runs / "bench-search.json").read_text()) == state


def test_bench_search_continue_results_keeps_finished_rule_sets_in_a_new_runs_dir(tmp_path):
    """--continue-results: a new runs directory (the old one went with its machine) starts
    from the results file: finished rule sets (verdicts recomputed), legs and discarded
    measurements are kept; a search that was under way is discarded with its record."""
    published = json.loads((common.RESULTS / "search.json").read_text())
    old = {**published, "rule_sets": {"under-50k": published["rule_sets"]["under-50k"]},
           "in_progress": {"seed001-rules": {"search": {"finished": True, "complete": 3}}}}
    out = tmp_path / "search.json"
    out.write_text(json.dumps(old))
    bench_search.main(["--runs-dir", str(tmp_path / "new"), "--continue-results",
                       "--write-only", "--out", str(out),
                       "--rule-sets", "under-50k", "seed001-rules"])
    r = json.loads(out.read_text())
    assert r["rule_sets"] == old["rule_sets"] and r["in_progress"] == {}
    assert r["legs"] == old["legs"] and r["workers"] == old["workers"]
    assert r["discarded"][:-1] == old["discarded"]
    gone = r["discarded"][-1]
    assert gone["what"].startswith("seed001-rules: the searches under way (search)")
    assert "a machine that is gone" in gone["why"] and str(tmp_path / "new") in gone["why"]
    assert gone["record"] == old["in_progress"]["seed001-rules"]


def test_bench_search_redo_discards_a_rule_set_once_and_needs_a_new_runs_dir(tmp_path):
    """--redo NAME WHY: a finished rule set is measured again; its record goes to `discarded`
    with WHY and its test accuracies, once (a resumed redo keeps its new progress); its old
    study in the runs directory is refused (it would resume)."""
    published = json.loads((common.RESULTS / "search.json").read_text())
    published["in_progress"] = {}  # a finished seed001-rules record, whatever is published
    published["rule_sets"]["seed001-rules"] = {
        who: {"test_accs": [0.85, 0.86], "train_seconds": [180.0, 181.0]}
        for who in ("hand", "searched", "random")}
    out = tmp_path / "search.json"
    out.write_text(json.dumps(published))
    bench_search.main(["--runs-dir", str(tmp_path / "new"), "--continue-results",
                       "--write-only", "--out", str(out), "--rule-sets", *published["rule_sets"],
                       "--redo", "seed001-rules", "its timing was wrong"])
    r = json.loads(out.read_text())
    assert "seed001-rules" not in r["rule_sets"] and "seed001-rules" not in r["in_progress"]
    assert r["discarded"][:-1] == published["discarded"]
    gone, old = r["discarded"][-1], published["rule_sets"]["seed001-rules"]
    assert gone["why"] == "its timing was wrong" and gone["record"]["hand"] == old["hand"]
    hand = 100 * sum(old["hand"]["test_accs"]) / len(old["hand"]["test_accs"])
    assert gone["what"].startswith("seed001-rules: its searches") and f"hand {hand:.2f}%" in (
        gone["what"])
    state = {"results": {"seed001-rules": {"hand": {"test_accs": [0.5]}}},
             "seed001-rules": {"search": {"finished": False}}}
    bench_search.redo(state, "seed001-rules", "why", tmp_path / "runs", False)
    state["seed001-rules"] = {"search": {"finished": True}}  # the redo's own progress
    bench_search.redo(state, "seed001-rules", "why", tmp_path / "runs", False)
    assert len(state["discarded"]) == 1 and state["seed001-rules"]["search"]["finished"]
    (tmp_path / "old" / "seed001-rules").mkdir(parents=True)
    with pytest.raises(SystemExit, match="holds its study from before"):
        bench_search.redo({}, "seed001-rules", "why", tmp_path / "old", False)


def test_bench_search_trains_a_recipe_both_searches_returned_once(tmp_path, monkeypatch):
    """When random search returned the very recipe the search did (e.g. both kept the queued
    hand design), its final trainings are the searched ones, marked, not trained twice; the
    verdict says so and does not count the tie as a win."""
    body = 'model = "family"\n\n[model_args]\nstem = 16\n'
    searched, rnd = tmp_path / "x-searched.toml", tmp_path / "x-random.toml"
    searched.write_text('name = "x-searched"\ndescription = "trial 4"\n' + body)
    rnd.write_text('name = "x-random"\ndescription = "trial 0"\n' + body)
    trained = []

    def fake_train(recipe, data, runs_dir, name, overrides, max_seconds=None):
        trained.append(name)
        m = {"test_acc": 0.8 + 0.01 * overrides["seed"], "train_seconds": 10.0, "epochs": 2,
             "run_dir": name, "params": 100, "macs": 1e6, "receptive_field": 5,
             "stopped_by": None}
        return m, 11.0

    monkeypatch.setattr(bench_search, "timed_train", fake_train)
    recipes = {"searched": searched, "random": rnd}
    st: dict = {}
    bench_search.final_trainings("x", "fast-50k", recipes, tmp_path, {}, st, lambda: None,
                                 lambda: "FULL")
    assert trained == [f"x-{who}-{s}" for s in (0, 1, 2) for who in ("hand", "searched")]
    for s in (0, 1, 2):
        assert st["final"][f"random-{s}"] == {**st["final"][f"searched-{s}"],
                                              "same_recipe_as": "searched"}
    runs = {who: {"test_accs": [st["final"][f"{who}-{s}"]["test_acc"] for s in (0, 1, 2)],
                  "seconds": [11.0] * 3} for who in ("hand", "searched", "random")}
    runs["random"]["same_recipe_as"] = "searched"
    v = bench_search.verdict(runs)
    assert v["same_recipe_as_random"] and not v["beats_random"]
    assert v["searched_minus_random_points"] == 0
    # another recipe: trained on its own
    rnd.write_text('name = "x-random"\n' + body.replace("stem = 16", "stem = 24"))
    trained.clear()
    bench_search.final_trainings("x", "fast-50k", recipes, tmp_path, {}, {}, lambda: None,
                                 lambda: "FULL")
    assert len(trained) == 9 and "x-random-2" in trained
    # both winners the hand recipe itself (the fill stage kept the base's queued design):
    # only the hand recipe trains, both winners have its trainings
    spec = SimpleNamespace(base="fast-50k")
    kept, wrote = {"fill": {"base_design": True}}, {"fill": {"base_wins": True, "winner_trial": 7}}
    assert bench_search.is_hand_design(spec, "fast-50k", kept)
    assert bench_search.is_hand_design(spec, "fast-50k", wrote)
    assert not bench_search.is_hand_design(spec, "fast-50k", {"fill": {"base_wins": False}})
    assert not bench_search.is_hand_design(spec, "other", kept)  # the base is not the hand one
    trained.clear()
    st = {}
    bench_search.final_trainings("x", "fast-50k", recipes, tmp_path, {}, st, lambda: None,
                                 lambda: "FULL", frozenset({"searched", "random"}))
    assert trained == [f"x-hand-{s}" for s in (0, 1, 2)]
    for who in ("searched", "random"):
        assert st["final"][f"{who}-1"] == {**st["final"]["hand-1"], "same_recipe_as": "hand"}
    runs = {who: {"test_accs": [st["final"][f"{who}-{s}"]["test_acc"] for s in (0, 1, 2)],
                  "seconds": [11.0] * 3, "same_recipe_as": "hand"} for who in bench_search.WHO}
    v = bench_search.verdict(runs)
    assert v["same_recipe_as_random"] and not v["beats_random"]
    assert v["searched_minus_hand_points"] == 0


def test_bench_search_sigterm_stops_the_parent_and_quietly_ends_forked_children():
    code = r"""
import os, signal, sys, time
from benchmarks import search as bench_search
bench_search.stop_on_sigterm()
r, w = os.pipe()
pid = os.fork()
if pid == 0:  # ready only once the fork is done (a signal during it is dropped by Python)
    os.write(w, b"x")
    time.sleep(30)
    os._exit(0)
os.read(r, 1)
os.kill(pid, signal.SIGTERM)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status), flush=True)
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
except KeyboardInterrupt:
    print("parent stopped")
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["child 143", "parent stopped"]
    assert "Traceback" not in r.stderr


def test_bench_throughput_records_both_engine_modes(shared_cifar_dir, tmp_path):
    """A tiny real run: baseline, the engine in one process and in two, the faster one as the
    headline ratio, and the roof fraction of it."""
    out = tmp_path / "tp.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--data-dir",
                        str(shared_cifar_dir), "--steps", "4", "--warmup", "1",
                        "--batch-size", "16", "--reps", "1", "--rounds", "2",
                        "--out-name", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    t = json.loads(out.read_text())
    assert len(t["rounds"]) == 2  # each row: the median of its rounds
    for key in ("baseline_img_s", "engine_img_s", "engine_processes_img_s"):
        assert t[key] == sum(r[key] for r in t["rounds"]) / 2
    assert t["ratio_single_process"] == t["engine_img_s"] / t["baseline_img_s"]
    assert t["ratio_processes"] == t["engine_processes_img_s"] / t["baseline_img_s"]
    assert t["ratio"] == max(t["ratio_single_process"], t["ratio_processes"])
    assert t["engine_mode"] == ("2 processes, 1 thread each"
                                if t["ratio_processes"] > t["ratio_single_process"]
                                else "1 process, 2 threads")
    assert 0 < t["engine_roof_fraction"] == t["engine_gflops"] / t["roof_gflops"]
    assert t["commit"] and t["machine"]
    assert list(t["by_cpu"]) == [t["cpu"]["model"]]  # one record per CPU model
    assert t["by_cpu"][t["cpu"]["model"]]["ratio"] == t["ratio"]
    assert t["command"].startswith("python") and " -m benchmarks.throughput --data-dir " in \
        t["command"]


BENCH_SEARCH = """
name = "b"
base = "fast-50k"
[constraints]
max_params = 100000
[search]
minutes = 10
min_epochs = 1
val_split = 100
startup_trials = 1
fidelity = { train_subset = 100, epochs = 1 }
[space]
stages = 1
stem = { choices = [4, 8] }
width = { low = 4, high = 8, step = 4 }
lr = { low = 0.05, high = 0.2, log = true }
epochs = 1
batch_size = 64
"train.precision" = "fp32"
"train.channels_last" = false
"train.low_res" = 0
"train.low_res_epochs" = 0
[[enqueue]]
label = "hand"
stem = 8
width = [8]
lr = 0.1
"""


def test_bench_search_compares_search_random_search_and_hand_with_seeds(tmp_path, monkeypatch):
    """A tiny real search and random search (same budget, space, rules, pruning), the proxy's
    Spearman, a fake final stage (`--fill-budget`, the same for both winners), then fake final
    trainings: 3 seeds each, the winners at the hand recipe's time, the only ones given the
    test set; a second sitting redoes nothing; the README table."""
    from types import SimpleNamespace

    from conftest import write_cifar

    from cifarlab.search import space as SP
    from cifarlab.search import storage
    from cifarlab.search.worker import load_train_data

    folder = write_cifar(tmp_path / "data")
    (folder / "test_batch").unlink()  # the searches must not need it
    monkeypatch.setattr(bench_search, "spec_for",
                        lambda name, quick, runs: SP.parse_search(BENCH_SEARCH, "tiny"))
    searches, finals = [], []
    real_search = bench_search.run_search

    def counting_search(spec, **kw):
        searches.append(spec.name)
        kw["log"] = lambda s: None
        return real_search(spec, **kw)

    def fake_train(recipe, data, runs_dir, name, overrides, max_seconds=None):
        assert data == "FULL"  # the full data set, test included: final trainings only
        finals.append((name, overrides["seed"], max_seconds))
        m = {"test_acc": 0.5 + 0.01 * overrides["seed"] + (0.1 if "searched" in name else 0),
             "train_seconds": 10.0 + overrides["seed"], "epochs": 2, "run_dir": str(runs_dir),
             "params": 100, "macs": 1e6, "receptive_field": 5, "stopped_by": None}
        return m, 11.0 + overrides["seed"]

    fills = []

    def fake_fill(study, t, runs_dir, data=None):  # the tiny file has no time rule to fill
        assert data is not None and runs_dir.parent.name == study.study_name
        fills.append(study.study_name)
        own = {"overrides": {}, "epochs": 1, "val_acc": t.values[0], "train_seconds": 9.0,
               "fits": True, "stopped_by": None, "run_dir": str(runs_dir)}
        # another schedule for the random winner: the two recipes differ even when both
        # searches kept the same design (that case: the next test)
        chosen = {"train.epochs": 3} if study.study_name.endswith("-random") else {}
        return {"headroom": 1.0, "budget_seconds": 10.0, "base_seconds": 10.0, "processes": 1,
                "candidates": [own], "chosen": chosen, "val_split": 100}

    monkeypatch.setattr(bench_search, "run_search", counting_search)
    monkeypatch.setattr(bench_search, "fill_budget", fake_fill)
    monkeypatch.setattr(bench_search, "timed_train", fake_train)
    runs = tmp_path / "runs"
    runs.mkdir()
    args = SimpleNamespace(runs_dir=str(runs), quick=True, minutes=None, workers=1,
                           data_dir=None, proxy_designs=3)
    state: dict = {}
    r = bench_search.rule_set("under-50k", "fast-50k", args, state, lambda: None,
                              load_train_data(folder), lambda: "FULL")
    assert searches == ["b", "b-random"] and fills == ["b", "b-random"]
    rnd = storage.load_study("b-random", storage.default_storage(runs / "b-random"))
    assert storage.spec_of(rnd).search["sampler"] == "random"
    assert storage.spec_of(rnd).search["pruner"] == "hyperband"  # the same pruning
    assert rnd.get_trials()[0].user_attrs["label"] == "hand"  # the same queued designs
    assert len(finals) == 9
    for name, seed, cap in finals:  # each winner: the hand recipe's time with its seed
        assert cap is None if "-hand-" in name else cap == 11.0 + seed
    for who in ("hand", "searched", "random"):
        assert r[who]["test_accs"] == pytest.approx(
            [0.5 + 0.01 * s + (0.1 if who == "searched" else 0) for s in (0, 1, 2)])
        assert r[who]["train_seconds"] == [10.0, 11.0, 12.0]
    assert r["budget_minutes"] == 1.5 and "proxy_spearman" in r
    assert r["proxy_spearman"] is None or -1 <= r["proxy_spearman"] <= 1
    assert r["searched"]["rules_broken"] == [] and r["random"]["design"].startswith("stem")
    assert all(r[k] for k in ("commit", "date", "machine", "command"))
    # a second sitting: every finished part kept
    r2 = bench_search.rule_set("under-50k", "fast-50k", args, state, lambda: None,
                               load_train_data(folder), lambda: "FULL")
    assert len(searches) == 2 and len(fills) == 2 and len(finals) == 9
    assert r2["searched"]["test_accs"] == r["searched"]["test_accs"]

    old = json.loads((ROOT / "benchmarks" / "results" / "search.json").read_text())
    assert r["hand_rules_broken"] == []  # fast-50k meets under-50k's rules
    v = bench_search.verdict(r)
    assert v["searched_minus_hand_points"] == pytest.approx(10.0)
    assert v["searched_minus_random_points"] == pytest.approx(10.0)
    assert v["time_vs_hand"] == pytest.approx(1.0) and v["worst_searched_above_best_hand"]
    assert v["beats_hand_by_0_5_at_equal_time"] and v["beats_random"]
    old["rule_sets"]["new-rules"] = {**r, "verdict": v}
    # a rule set whose hand recipe breaks its rules: a time reference, no verdict against it
    ref = {**r, "hand_rules_broken": ["max_macs 8000000: model has 10,739,952 MACs"]}
    ref["searched"] = {**r["searched"], "seconds": [13.0, 14.0, 15.0]}  # 1.18x: too slow
    vr = bench_search.verdict(ref)
    assert vr["beats_hand_by_0_5_at_equal_time"] is None and vr["time_vs_hand"] > 1.0
    old["rule_sets"]["own-rules"] = {**ref, "verdict": vr}
    (tmp_path / "search.json").write_text(json.dumps(old, default=str))
    monkeypatch.setattr(update_readme, "RESULTS", tmp_path)
    out = update_readme.search_section()
    row = next(line for line in out if line.startswith("| `new-rules`"))
    assert row.startswith("| `new-rules` | `fast-50k` | 51.00% ± 1.00 | 11 s | 51.00% ± 1.00 | "
                          "11 s | **61.00% ± 1.00** | 11 s | 1.5 min each |")
    for name in set(old["rule_sets"]) - {"new-rules", "own-rules"}:  # the recorded ones
        assert any(line.startswith(f"| `{name}` | ") for line in out)
    assert any(line.startswith("- `new-rules` verdict: searched − hand +10.00 points at 1.00×")
               and "≥ 0.5 points at ≤ 1.0×: **yes**" in line for line in out)
    assert any(line.startswith("| `own-rules` | `fast-50k` (time reference: breaks max_macs "
                               "8000000) |") for line in out)
    assert any(line.startswith("- `own-rules` verdict:") and "≥ 0.5 points at ≤ 1.0×: n/a" in
               line for line in out)
    assert any("random search winner, trial" in line for line in out)


def test_search_rule_set_names_every_sitting_that_added_to_it():
    cmd = "python -m benchmarks.search --runs-dir {} --max-minutes 90 --rule-sets {} --workers 2"
    legs = [{"commit": "a" * 40, "date": "2026-12-01T00:00", "command": cmd.format("/r1", "x y")},
            {"commit": "b" * 40, "date": "2026-12-02T00:00", "command": cmd.format("/r2", "x")},
            {"commit": "c" * 40, "date": "2026-12-03T00:00", "command": cmd.format("/r2", "y")},
            {"commit": "d" * 40, "date": "2026-12-04T00:00",
             "command": "python -m benchmarks.search --runs-dir /r2"},  # every rule set
            {"commit": "e" * 40, "date": "2026-12-09T00:00", "command": cmd.format("/r2", "x")}]
    x = {"commit": "d" * 40, "date": "2026-12-04T00:00", "command": cmd.format("/r2", "x")}
    assert [g["commit"][0] for g in update_readme.sittings_of("x", x, legs)] == ["b", "d"]
    y = {**x, "command": cmd.format("/r1", "x y"), "date": "2026-12-01T00:00"}
    assert [g["commit"][0] for g in update_readme.sittings_of("y", y, legs)] == ["a"]
    assert update_readme.sittings_of("x", x, []) == [x]  # no legs recorded: the record's own


ONEDNN_LOG = """\
onednn_verbose,v1,info,oneDNN v3.7.1 (commit 8d263e693366ef8db40acc569cc7d8edf644556d)
onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,brg_conv_fwd:avx512_core_amx,\
forward_training,src:bf16::blocked:acdb::f0,,alg:convolution_direct,mb256_ic32oc32_ih32oh32kh3,0.5
onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_amx,forward_training,\
src:bf16::blocked:acdb::f0 dst:bf16::blocked:acdb::f0,,alg:convolution_direct,mb256_ic32oc32,3
onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_amx,forward_training,\
src:bf16::blocked:acdb::f0 dst:bf16::blocked:acdb::f0,,alg:convolution_direct,mb256_ic32oc32,1
onednn_verbose,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:abcd::f0,,,4x3x3x3,0.5
onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx512_core_bf16,backward_weights,\
src:bf16::blocked:acdb::f0,,alg:convolution_direct,g128mb256_ic128oc128,not-a-number
a line the program printed itself
"""


def test_kernels_parses_onednn_exec_lines_and_shares_them_by_isa():
    from benchmarks import kernels

    execs = kernels.parse_verbose(ONEDNN_LOG.splitlines())
    assert [(e["primitive"], e["ms"]) for e in execs] == [
        ("convolution", 3.0), ("convolution", 1.0), ("reorder", 0.5)]  # no create, no junk
    assert execs[0]["impl"] == "brg_conv_fwd:avx512_core_amx"
    assert execs[0]["prop"] == "forward_training" and execs[0]["problem"] == "mb256_ic32oc32"
    assert [e["dtype"] for e in execs] == ["bf16", "bf16", "f32"]
    rows, isa = kernels.summarize_onednn(execs, wall_ms=10.0)
    assert rows[0] == {"primitive": "convolution", "impl": "brg_conv_fwd:avx512_core_amx",
                       "prop": "forward_training", "dtype": "bf16", "ms": 4.0, "calls": 2,
                       "share": 0.4}
    assert isa == {"amx": 0.4, "avx512": 0.0, "other": 0.05}
    assert kernels.isa_of("jit:avx512_core_bf16") == "avx512"


def test_kernels_keeps_the_other_recipes_of_a_cpu_model(tmp_path, monkeypatch):
    """Profiling one recipe replaces that recipe's entry only: the CPU model's other recipes
    stay, each with the commit and date it was measured with."""
    from benchmarks import kernels

    def fake_measure(recipe, steps, data_dir):
        return {"images_per_second": 100.0, "batch_per_worker": 8, "onednn_share": 0.5,
                "isa": {"amx": 0.5, "avx512": 0.0, "other": 0.0}, "ops": [], "onednn": [],
                "tiles": {"amx_fill": 1.0, "depthwise_mac_share": 0.0}}

    monkeypatch.setattr(kernels, "measure", fake_measure)
    out = tmp_path / "kernels.json"
    prov = kernels.provenance()
    monkeypatch.setattr(kernels, "provenance", lambda: {**prov, "commit": "a" * 40})
    kernels.main(["fast-50k", "fast-seed001", "--out", str(out)])
    monkeypatch.setattr(kernels, "provenance", lambda: {**prov, "commit": "b" * 40})
    kernels.main(["fast-seed001", "fast-top", "--out", str(out)])
    (entry,) = json.loads(out.read_text())["by_cpu"].values()
    assert {n: r["commit"][0] for n, r in entry["recipes"].items()} == {
        "fast-50k": "a", "fast-seed001": "b", "fast-top": "b"}
    assert entry["commit"][0] == "b"


def test_kernels_tile_fill_of_a_network():
    from torch import nn

    from benchmarks import kernels

    assert kernels.tile_fill(32, 16, 1) == 1.0
    assert kernels.tile_fill(24, 24, 1) == pytest.approx(0.75 * 0.75)
    assert kernels.tile_fill(3, 32, 1) == pytest.approx(3 / 32)
    assert kernels.tile_fill(64, 64, 64) == 0.0  # depthwise: never on AMX
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1, groups=32),
                        nn.Conv2d(32, 64, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(64, 10))
    t = kernels.conv_tiles(net)
    assert [(c["in"], c["out"], c["groups"]) for c in t["convs"]] == [
        (3, 32, 1), (32, 32, 32), (32, 64, 1)]
    macs = [3 * 32 * 9 * 1024, 32 * 9 * 1024, 32 * 64 * 1024]
    total = sum(macs) + 64 * 10
    assert [c["mac_share"] for c in t["convs"]] == pytest.approx([m / total for m in macs])
    assert t["depthwise_mac_share"] == pytest.approx(macs[1] / total)
    assert t["amx_fill"] == pytest.approx((macs[0] * 3 / 32 + macs[2]) / total)
    assert t["fp32_mac_share"] == 0 and not any(c["fp32"] for c in t["convs"])
    t = kernels.conv_tiles(net, fp32={"2"})  # a conv that trains in fp32 uses no bf16 tiles
    assert [c["fp32"] for c in t["convs"]] == [False, False, True]
    assert t["amx_fill"] == pytest.approx(macs[0] * 3 / 32 / total)
    assert t["fp32_mac_share"] == pytest.approx(macs[2] / total)


def test_bench_kernels_profiles_a_recipe_in_a_child(shared_cifar_dir, tmp_path):
    """A tiny real run: one worker's steps profiled, oneDNN's log parsed, kept per CPU model."""
    out = tmp_path / "kernels.json"
    out.write_text(json.dumps({"by_cpu": {"another CPU": {"recipes": {}}}}))
    r = subprocess.run([sys.executable, "-m", "benchmarks.kernels", "fast-50k", "--steps", "2",
                        "--data-dir", str(shared_cifar_dir), "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    by_cpu = json.loads(out.read_text())["by_cpu"]
    from torch import nn

    from cifarlab.api import network
    from cifarlab.provenance import cpu

    assert set(by_cpu) == {"another CPU", cpu()["model"]}
    e = by_cpu[cpu()["model"]]
    assert e["commit"] and e["cpu"]["model"] and " -m benchmarks.kernels " in e["command"]
    k = e["recipes"]["fast-50k"]
    from cifarlab.recipe import resolve

    t = resolve("fast-50k")["train"]  # one of its processes' share of each batch
    assert k["batch_per_worker"] == t["batch_size"] // t["processes"] == 128
    assert k["steps"] == 2 and k["images_per_second"] > 0
    assert k["ops"] and all(0 <= o["share"] <= 1 for o in k["ops"])
    assert any(o["primitive"] == "convolution" for o in k["onednn"])  # bf16 convs go to oneDNN
    assert k["onednn_share"] == pytest.approx(sum(k["isa"].values()))
    assert 0 < k["onednn_share"] <= 1
    convs = [m for m in network(recipe="fast-50k").modules() if isinstance(m, nn.Conv2d)]
    assert len(k["tiles"]["convs"]) == len(convs) and 0 < k["tiles"]["amx_fill"] < 1
    rows = k["tiles"]["convs"]
    assert all(c["tile_fill"] == 0 for c in rows if c["fp32"])  # fp32 convs use no bf16 tiles
    assert all(c["fp32"] for c in rows if c["groups"] > 1 and c["groups"] == c["in"])
    assert "fast-50k:" in r.stdout


def test_search_record_says_when_its_hand_recipe_trains_another_network():
    from cifarlab.analysis import macs, receptive_field
    from cifarlab.models import create_model

    now = create_model("air-seed001")  # fast-seed001's network since issue 32
    same = {"hand_recipe": "fast-seed001",
            "hand": {"params": 188_888, "macs": macs(now), "receptive_field": receptive_field(now)}}
    assert update_readme.hand_network_changed(same) == ""
    old = {"hand_recipe": "fast-seed001",
           "hand": {"params": 185_898, "macs": 23_127_296, "receptive_field": 45}}
    assert update_readme.hand_network_changed(old) == (
        "then 185,898 params, 23.1M MACs, RF 45; now `air-seed001`, 188,888 params, 29.1M MACs, "
        "RF 59")
    assert update_readme.hand_network_changed({"hand_recipe": "fast-seed001", "hand": {}}) == ""
