"""benchmarks.speed: the anchor run in the same invocation, ratios, verdicts, resuming.

Training is faked (monkeypatched) except in one tiny real run; the anchor is a fake script.
"""

import json
from datetime import datetime, timedelta

import pytest

import cifarlab.api
from benchmarks import anchor as anchor_mod
from benchmarks import speed as bench_speed
from benchmarks import update_readme
from cifarlab.analysis import macs_at
from cifarlab.models import create_model
from cifarlab.recipe import resolve

REAL_TIMED_TRAIN = bench_speed.timed_train

FAKE_ANCHOR = """\
import pathlib, sys
log = pathlib.Path(sys.argv[0]).with_suffix(".log")
with log.open("a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
print("epoch 1 3s")
print("plain 0.8800")
print("0.9000 12.3")
"""

# (recipe, seed) -> (test accuracy, seconds)
RESULTS = {
    ("fast-top", 0): (0.905, 8.0), ("fast-top", 1): (0.91, 9.0), ("fast-top", 2): (0.902, 7.0),
    ("fast-50k", 0): (0.81, 2.0), ("fast-50k", 1): (0.79, 1.0), ("fast-50k", 2): (0.82, 1.5),
}


@pytest.fixture
def env(tmp_path, monkeypatch, cifar_dir):
    """A fake anchor, fake training, and a results folder with a throughput measurement."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "throughput.json").write_text(json.dumps({"ratio": 2.6, "machine": "m1"}))
    monkeypatch.setattr(bench_speed, "RESULTS", results)
    script = tmp_path / "fake_anchor.py"
    script.write_text(FAKE_ANCHOR)
    calls = []

    def fake_train(recipe, data, runs_dir, name, overrides, seed, device):
        assert name == f"{recipe}-seed{seed}"
        calls.append((recipe, seed))
        acc, seconds = RESULTS[recipe, seed]
        return {"test_acc": acc, "epochs": 3, "params": 1234, "train_seconds": seconds - 0.5,
                "macs": 1_000_000, "train_macs": 1_000_000, "receptive_field": 5,
                "images_per_second": 100.0}, seconds

    monkeypatch.setattr(bench_speed, "timed_train", fake_train)
    monkeypatch.setattr(bench_speed, "matmul_gflops", lambda dtype: 300.0)
    out = tmp_path / "speed.json"
    args = ["--data-dir", str(cifar_dir), "--anchor", str(script), "--out", str(out),
            "--anchor-runs", "1"]  # a CPU model's first leg still runs its 3 seeds
    return {"out": out, "args": args, "calls": calls, "script": script, "data": cifar_dir}


def anchor_calls(env) -> list[str]:
    log = env["script"].with_suffix(".log")
    return log.read_text().splitlines() if log.exists() else []


def test_anchor_ratios_and_verdicts(env, capsys):
    bench_speed.main(["fast-top", "fast-50k", *env["args"]])
    out = json.loads(env["out"].read_text())
    an = out["anchor"]
    assert {"name", "test_acc", "seconds", "machine", "date", "command"} <= set(an)
    assert an["name"] == "fake_anchor.py" and an["test_acc"] == 0.9 and an["seconds"] == 12.3
    assert an["machine"] == out["invocation"]["machine"]
    # the anchor was given the folder that holds cifar-10-batches-py and every core; a new
    # CPU model: three seeds (accuracy their mean), time their median, threads recorded
    cores = __import__("os").cpu_count()
    assert anchor_calls(env) == [f"{env['data'].parent} {cores}"] * 3
    assert [r["seed"] for r in an["runs"]] == [0, 1, 2] and an["threads"] == cores
    assert "python -m benchmarks.anchor_seeded 1 " in an["runs"][1]["command"]
    assert an["cpu"]["model"] in an["machine"] and "amx_bf16" in an["cpu"]
    cpu = out["by_cpu"][an["cpu"]["model"]]
    assert cpu["anchor_mean_acc"] == 0.9 and cpu["anchor_threads"] == [cores]
    assert cpu["recipes"]["fast-top"]["required_met"] is True
    assert env["calls"] == [("fast-top", 0), ("fast-top", 1), ("fast-top", 2),
                            ("fast-50k", 0), ("fast-50k", 1), ("fast-50k", 2)]
    assert len(out["runs"]) == 6
    assert out["runs"][0]["ratio_to_anchor"] == pytest.approx(8.0 / 12.3)
    assert all(r["machine"] == an["machine"] for r in out["runs"])

    top, small = out["summary"]["fast-top"], out["summary"]["fast-50k"]
    assert top["worst_acc"] == 0.902 and top["median_seconds"] == 8.0
    assert top["ratio_to_anchor"] == pytest.approx(8.0 / 12.3)  # 0.65
    assert top["target_acc"] == 0.9 and top["target_is_anchor"]  # the anchor's own accuracy
    assert top["required_met"] is True and top["goal_met"] is False  # <= 0.75x, not <= 0.5x
    assert small["ratio_to_anchor"] == pytest.approx(1.5 / 12.3)  # 0.122
    assert small["worst_acc"] == 0.79  # below 80%: neither verdict, whatever the time
    assert small["required_met"] is False and small["goal_met"] is False
    # model compute: 1 MMAC x 2 FLOPs x 3 (forward + backward) x 100 images/s = 0.6 GFLOP/s
    assert out["roof"]["bf16_gflops"] == 300.0
    assert top["gflops"] == pytest.approx(0.6) and top["roof_fraction"] == pytest.approx(0.002)
    assert out["throughput"]["ratio"] == 2.6
    assert out["throughput_verdict"]["required_met"] is True
    assert out["invocation"]["complete"] is True
    text = capsys.readouterr().out
    assert "anchor | 0.9000 12.3" in text  # the anchor's output is shown as it runs
    assert "fast-top: worst 90.20%, median 8 s, 0.650x the anchor" in text


def test_readme_speed_table_from_ratios(env, monkeypatch):
    bench_speed.main(["fast-top", "fast-50k", *env["args"]])
    monkeypatch.setattr(update_readme, "RESULTS", env["out"].parent)
    text = "\n".join(update_readme.time_to_accuracy_section())
    an = json.loads(env["out"].read_text())["anchor"]
    assert "`fake_anchor.py`" in text and "**90.00%** in **12 s**" in text
    assert an["machine"] in text  # where the figures were measured
    assert "| × anchor |" in text
    assert "| ≥ 90.00% (anchor) | `fast-top` | 1,234 | 8 s | **0.650×** |" in text
    assert "| 1 (0.2%) | met" in text  # GFLOP/s and the share of the bf16 roof
    assert "met (≥ 90.00%, ≤ 0.75×) | not met (≥ 90.00%, ≤ 0.5×) |" in text
    assert "**not met** (≥ 80.00%, ≤ 0.16×)" in text
    assert "**2.60×**, measured on m1; required ≥ 2.5× on every CPU model measured: met" in text
    assert "Not timed in this invocation: `fast-seed001`, `best-seed001`" in text


def test_missing_anchor_is_one_line_error(env):
    args = [a if a != str(env["script"]) else str(env["script"].with_name("nope.py"))
            for a in env["args"]]
    with pytest.raises(SystemExit) as e:
        bench_speed.main(["fast-top", *args])
    msg = str(e.value)
    assert msg.startswith("anchor not found:") and "nope.py" in msg and "\n" not in msg
    assert env["calls"] == []  # nothing was trained


@pytest.mark.parametrize("body, expected", [
    ("import sys\nprint('epoch 1 3s')\nsys.exit('out of memory')",
     "failed (exit 1): out of memory"),
    ("print('epoch 1 3s')\nprint('done')", "no final 'ACC SECONDS' line"),
])
def test_failing_anchor_is_one_line_error(env, body, expected):
    env["script"].write_text(body)
    with pytest.raises(SystemExit) as e:
        bench_speed.main(["fast-top", *env["args"]])
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert env["calls"] == []


@pytest.mark.parametrize("lines, result", [
    (["epoch 9 80s", "plain 0.8961", "0.9054 819"], (0.9054, 819.0)),
    (["90.54 819.5"], (0.9054, 819.5)),  # a percentage
    (["90.54% 819s", "", "bye"], (0.9054, 819.0)),  # trailing lines after the result
    (["0.5 1", "0.9 12.3"], (0.9, 12.3)),  # the last one counts
])
def test_parse_result(lines, result):
    acc, seconds = anchor_mod.parse_result(lines)
    assert acc == pytest.approx(result[0]) and seconds == result[1]


def test_interrupted_invocation_resumes_with_its_anchor(env, monkeypatch, capsys):
    real = bench_speed.timed_train

    def dies_on_third(*a, **kw):
        if len(env["calls"]) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(bench_speed, "timed_train", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        bench_speed.main(["fast-top", "fast-50k", *env["args"]])
    first = json.loads(env["out"].read_text())
    assert len(first["runs"]) == 2 and first["invocation"]["complete"] is False
    assert first["summary"]["fast-top"]["required_met"] is None  # 2 of 3 seeds: undecided

    with pytest.raises(SystemExit, match="unfinished invocation.*--resume"):
        bench_speed.main(["fast-top", *env["args"]])  # not silently thrown away

    monkeypatch.setattr(bench_speed, "timed_train", real)
    env["calls"].clear()
    no_data = [a for a in env["args"] if a not in ("--data-dir", str(env["data"]))]
    bench_speed.main(["--resume", *no_data])  # recipes, seeds and data from the file
    out = json.loads(env["out"].read_text())
    assert len(anchor_calls(env)) == 3  # the anchor of the first session is kept
    assert out["anchor"] == first["anchor"]
    assert env["calls"] == [("fast-top", 2), ("fast-50k", 0), ("fast-50k", 1), ("fast-50k", 2)]
    assert [(r["recipe"], r["seed"]) for r in out["runs"]][:2] == [("fast-top", 0),
                                                                    ("fast-top", 1)]
    assert len(out["runs"]) == 6 and out["invocation"]["complete"] is True
    assert len(out["invocation"]["resumed"]) == 1
    assert out["summary"]["fast-top"]["required_met"] is True

    # a finished invocation can be extended with another seed, still against its anchor
    env["calls"].clear()
    monkeypatch.setitem(RESULTS, ("fast-top", 3), (0.91, 10.0))
    monkeypatch.setitem(RESULTS, ("fast-50k", 3), (0.83, 1.2))
    bench_speed.main(["--resume", "--seeds", "3", *env["args"]])
    out = json.loads(env["out"].read_text())
    assert env["calls"] == [("fast-top", 3), ("fast-50k", 3)]
    assert out["summary"]["fast-top"]["n_runs"] == 4 and len(anchor_calls(env)) == 3


def test_resume_times_a_changed_recipe_again(env, monkeypatch):
    """A resumed invocation keeps a run only while its recipe resolves the same."""
    assert bench_speed.recipe_sha("fast-50k", {}) == bench_speed.recipe_sha("fast-50k", {})
    assert (bench_speed.recipe_sha("fast-50k", {})
            != bench_speed.recipe_sha("fast-50k", {"train.epochs": 3}))
    bench_speed.main(["fast-top", "fast-50k", *env["args"]])
    first = json.loads(env["out"].read_text())
    del first["runs"][0]["recipe_sha"]  # as recorded before fingerprints: cannot be trusted
    env["out"].write_text(json.dumps(first))
    env["calls"].clear()
    real = bench_speed.recipe_sha
    monkeypatch.setattr(bench_speed, "recipe_sha",
                        lambda r, o: real(r, o) + ("-edited" if r == "fast-50k" else ""))
    bench_speed.main(["--resume", *env["args"]])
    out = json.loads(env["out"].read_text())
    assert env["calls"] == [("fast-top", 0), ("fast-50k", 0), ("fast-50k", 1), ("fast-50k", 2)]
    assert len(anchor_calls(env)) == 3  # the anchor still holds
    assert [(r["recipe"], r["seed"]) for r in out["superseded_runs"]] == [
        ("fast-top", 0), ("fast-50k", 0), ("fast-50k", 1), ("fast-50k", 2)]
    assert len(out["runs"]) == 6 and out["summary"]["fast-50k"]["n_runs"] == 3
    assert {r["recipe_sha"] for r in out["runs"] if r["recipe"] == "fast-50k"} == {
        real("fast-50k", {}) + "-edited"}
    monkeypatch.setattr(update_readme, "RESULTS", env["out"].parent)
    text = "\n".join(update_readme.time_to_accuracy_section())
    assert "4 earlier runs of `fast-50k`, `fast-top`, not shown to have trained" in text


def test_retime_times_an_unchanged_recipe_again(env, monkeypatch):
    bench_speed.main(["fast-top", "fast-50k", *env["args"]])
    env["calls"].clear()
    with pytest.raises(SystemExit, match="--retime goes with --resume"):
        bench_speed.main(["fast-top", "--retime", "fast-50k", *env["args"], "--restart"])
    with pytest.raises(SystemExit, match="--retime: fast-seed001 not in this invocation"):
        bench_speed.main(["--resume", "--retime", "fast-seed001", *env["args"]])
    bench_speed.main(["--resume", "--retime", "fast-50k", *env["args"]])
    out = json.loads(env["out"].read_text())
    assert env["calls"] == [("fast-50k", 0), ("fast-50k", 1), ("fast-50k", 2)]
    assert [(r["recipe"], r["seed"]) for r in out["superseded_runs"]] == [
        ("fast-50k", 0), ("fast-50k", 1), ("fast-50k", 2)]
    assert all(r["retimed_at"] == out["runs"][-1]["commit"] for r in out["superseded_runs"])
    assert len(out["runs"]) == 6 and out["summary"]["fast-50k"]["n_runs"] == 3
    env["calls"].clear()
    bench_speed.main(["--resume", *env["args"]])  # without --retime: nothing left to time
    assert env["calls"] == [] and len(json.loads(env["out"].read_text())["runs"]) == 6
    monkeypatch.setattr(update_readme, "RESULTS", env["out"].parent)
    text = "\n".join(update_readme.time_to_accuracy_section())
    assert "3 earlier runs of `fast-50k`, timed again with the code of a later commit" in text
    assert "not shown to have trained" not in text


def test_unknown_recipe_refused_before_the_anchor(env):
    with pytest.raises(SystemExit, match="no-such-recipe"):
        bench_speed.main(["no-such-recipe", *env["args"]])
    assert anchor_calls(env) == []


def test_resume_elsewhere_or_later_runs_the_anchor_again(env, monkeypatch):
    """A leg on another machine (or a day later) gets its own anchor; each run's ratio is to
    the anchor of its own leg, and the summary takes the median of those ratios."""
    bench_speed.main(["fast-top", "--seeds", "0", *env["args"]])
    assert len(anchor_calls(env)) == 3
    prov = bench_speed.provenance()
    monkeypatch.setattr(bench_speed, "provenance", lambda: {**prov, "machine": "other CPU"})
    env["script"].write_text(FAKE_ANCHOR.replace("0.9000 12.3", "0.9000 24.6"))  # 2x slower
    monkeypatch.setitem(RESULTS, ("fast-top", 1), (0.91, 18.0))
    bench_speed.main(["--resume", "--seeds", "1", *env["args"]])
    out = json.loads(env["out"].read_text())
    assert len(anchor_calls(env)) == 4 and len(out["anchors"]) == 2  # seeds known: one run
    assert out["anchors"][1]["machine"] == "other CPU" and out["anchor"]["seconds"] == 24.6
    r0, r1 = out["runs"]
    assert (r0["anchor"], r1["anchor"]) == (0, 1)
    assert r1["ratio_to_anchor"] == pytest.approx(18.0 / 24.6)
    s = out["summary"]["fast-top"]
    assert s["ratio_to_anchor"] == pytest.approx((8.0 / 12.3 + 18.0 / 24.6) / 2)
    assert s["anchors"] == 2 and len(s["machines"]) == 2
    monkeypatch.setattr(update_readme, "RESULTS", env["out"].parent)
    text = "\n".join(update_readme.time_to_accuracy_section())
    assert "- Anchor 1:" in text and "| `fast-top` | 1,234 | – |" in text  # no mixed seconds

    # a machine of the same model in another session (another boot) runs it again
    monkeypatch.setattr(bench_speed, "boot_id", lambda: "another boot")
    monkeypatch.setitem(RESULTS, ("fast-top", 4), (0.91, 18.0))
    bench_speed.main(["--resume", "--seeds", "4", *env["args"]])
    assert len(anchor_calls(env)) == 5
    # the same machine and boot within ANCHOR_HOURS keeps the anchor; older runs it again
    monkeypatch.setitem(RESULTS, ("fast-top", 2), (0.91, 18.0))
    bench_speed.main(["--resume", "--seeds", "2", *env["args"]])
    assert len(anchor_calls(env)) == 5
    later = datetime.fromisoformat(prov["date"]) + timedelta(hours=bench_speed.ANCHOR_HOURS + 1)
    monkeypatch.setattr(bench_speed, "provenance",
                        lambda: {**prov, "machine": "other CPU", "date": later.isoformat()})
    monkeypatch.setitem(RESULTS, ("fast-top", 3), (0.91, 18.0))
    bench_speed.main(["--resume", "--seeds", "3", *env["args"]])
    assert len(anchor_calls(env)) == 6


def test_tiny_real_runs_through_overrides(env, monkeypatch, tmp_path):
    """The real training call, shrunk by --set: such runs are recorded but get no verdict."""
    monkeypatch.setattr(bench_speed, "timed_train", REAL_TIMED_TRAIN)
    bench_speed.main(["fast-50k", "--seeds", "0", "--runs-dir", str(tmp_path / "runs"),
                      "--set", "train.epochs=1", "--set", "train.processes=1",
                      "--set", "train.batch_size=100", *env["args"]])
    out = json.loads(env["out"].read_text())
    (run,) = out["runs"]
    assert run["overrides"] == {"train.epochs": 1, "train.processes": 1,
                                "train.batch_size": 100}
    assert run["epochs"] == 1 and 0 <= run["test_acc"] <= 1
    assert run["ratio_to_anchor"] == pytest.approx(run["seconds"] / 12.3)
    s = out["summary"]["fast-50k"]
    assert s["required_met"] is None and s["overrides"]


def test_runs_recorded_before_train_macs_get_them_from_their_recipe():
    """GFLOP/s counts progressive-resizing epochs at their size (fast-top: 6 of 9 at 26 px)."""
    runs = [{"recipe": "fast-top", "epochs": 9, "macs": 1, "images_per_second": 500.0,
             "gflops": 999.0}, {"recipe": "fast-top", "epochs": 9, "train_macs": 7.0,
                                "images_per_second": 500.0, "gflops": 1.0}]
    bench_speed.fill_train_macs(runs, {})
    full = cifarlab.api.build(resolve("fast-top")).model_facts["macs"]
    low = macs_at(create_model("fast-top"), 26)
    assert 0 < low < full
    assert runs[0]["train_macs"] == pytest.approx((6 * low + 3 * full) / 9)
    assert runs[0]["gflops"] == pytest.approx(runs[0]["train_macs"] * 6 * 500 / 1e9)
    assert runs[1]["gflops"] == 1.0  # measured with train_macs: left alone


def test_quick_mode_runs_the_anchor_once_and_each_fast_recipe_once(env, monkeypatch, capsys):
    monkeypatch.setitem(RESULTS, ("fast-seed001", 0), (0.86, 3.0))
    out = env["out"].parent / "quick.json"
    args = [a if a != str(env["out"]) else str(out) for a in env["args"]]
    bench_speed.main(["--quick", *args])
    q = json.loads(out.read_text())
    assert len(anchor_calls(env)) == 1 and [r["seed"] for r in q["anchor"]["runs"]] == [0]
    assert env["calls"] == [("fast-50k", 0), ("fast-seed001", 0), ("fast-top", 0)]
    printed = capsys.readouterr().out
    assert "no AMX" in printed or "AMX" in printed
    assert "fast-seed001: worst 86.00%" in printed and "0.244x the anchor" in printed


def test_a_verdict_holds_on_every_cpu_model():
    """Met on one CPU model and missed on another is not met; the anchor's accuracy is the
    mean of its 3 seeds on each CPU model, undecided before that."""
    amd = {"model": "AMD EPYC"}
    xeon = {"model": "Intel Xeon"}
    anchors = [{"cpu": amd, "machine": "AMD EPYC, 2 cores", "test_acc": 0.9, "seconds": 100,
                "runs": [{"seed": s, "test_acc": a} for s, a in enumerate((0.90, 0.91, 0.92))]},
               {"cpu": xeon, "machine": "Intel Xeon, 2 cores", "test_acc": 0.9, "seconds": 80,
                "runs": [{"seed": 0, "test_acc": 0.905}]}]
    runs = [{"recipe": "fast-50k", "seed": s, "test_acc": 0.81, "ratio_to_anchor": r,
             "anchor": i, "params": 1, "seconds": 1.0}
            for i, r in ((0, 0.13), (1, 0.21)) for s in range(3)]
    per = bench_speed.by_cpu(runs, anchors)
    assert per["AMD EPYC"]["anchor_mean_acc"] == pytest.approx(0.91)
    assert per["Intel Xeon"]["anchor_mean_acc"] is None  # 1 of 3 seeds
    assert per["AMD EPYC"]["recipes"]["fast-50k"]["required_met"] is True
    assert per["Intel Xeon"]["recipes"]["fast-50k"]["required_met"] is False  # 0.21x > 0.16x
    s = bench_speed.summarize(runs, anchors)["fast-50k"]
    assert s["required_met"] is False
    fast = [{**r, "ratio_to_anchor": 0.1} for r in runs]
    assert bench_speed.summarize(fast, anchors)["fast-50k"]["required_met"] is True
    # runs of the recipe as it was before a change decide nothing about the recipe now
    stale = [{**r, "stale_recipe": r["anchor"] == 0, "ratio_to_anchor": 0.1 + (r["anchor"] == 0)}
             for r in fast]
    per = bench_speed.by_cpu(stale, anchors)
    assert per["AMD EPYC"]["recipes"]["fast-50k"]["required_met"] is None
    assert per["AMD EPYC"]["recipes"]["fast-50k"]["stale_runs"] == 3
    s = bench_speed.summarize(stale, anchors)["fast-50k"]
    assert s["required_met"] is None
    assert s["n_runs"] == 3 and s["stale_runs_left_out"] == 3 and s["stale_runs"] == 0
    assert s["ratio_to_anchor"] == pytest.approx(0.1)  # of the recipe as shipped only


def test_resume_on_another_cpu_model_times_every_run_there(env, monkeypatch):
    """Runs recorded on one CPU model do not count as done on another: a resumed invocation on
    a new CPU model runs its anchor seeds and every recipe and seed again, and each CPU model
    gets its own verdicts."""
    bench_speed.main(["fast-50k", "--seeds", "0", "1", "2", *env["args"]])
    assert len(env["calls"]) == 3
    xeon = {"model": "Intel Xeon", "amx_bf16": True, "amx_tile": True, "avx512_bf16": True}
    monkeypatch.setattr(bench_speed, "provenance_cpu", lambda: xeon)
    prov = bench_speed.provenance()
    monkeypatch.setattr(bench_speed, "provenance",
                        lambda: {**prov, "machine": "Intel Xeon, 2 cores"})
    monkeypatch.setattr(bench_speed, "recipe_sha", lambda name, overrides: "changed since")
    bench_speed.main(["--resume", *env["args"]])
    out = json.loads(env["out"].read_text())
    assert len(env["calls"]) == 6 and len(anchor_calls(env)) == 6  # 3 anchor seeds each
    assert [r["anchor"] for r in out["runs"]] == [0, 0, 0, 1, 1, 1]
    # the other CPU model's runs cannot be timed again here: kept, marked stale
    assert [r.get("stale_recipe") for r in out["runs"]] == [True] * 3 + [None] * 3
    assert not out.get("superseded_runs")
    amd = out["anchors"][0]["cpu"]["model"]
    assert out["by_cpu"][amd]["recipes"]["fast-50k"]["stale_runs"] == 3
    assert set(out["by_cpu"]) == {out["anchors"][0]["cpu"]["model"], "Intel Xeon"}
    assert out["by_cpu"]["Intel Xeon"]["recipes"]["fast-50k"]["n_runs"] == 3
    bench_speed.main(["--resume", *env["args"]])  # the same CPU model again: nothing to time
    assert len(env["calls"]) == 6
