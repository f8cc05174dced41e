"""The benchmark bookkeeping: speed.json's summary is computed from the recorded runs."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import common  # noqa: E402


def run(recipe, seed, acc, seconds):
    return {"recipe": recipe, "seed": seed, "test_acc": acc, "seconds": seconds,
            "params": 1000}


def test_speed_summary_and_replacement(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    (tmp_path / "throughput.json").write_text(json.dumps({"ratio": 1.7}))
    common.merge_speed(runs=[run("fast-50k", 0, 0.81, 200), run("fast-50k", 1, 0.79, 220),
                             run("fast-50k", 2, 0.82, 400)])
    out = json.loads((tmp_path / "speed.json").read_text())
    s = out["summary"]["fast-50k"]
    assert s["n_runs"] == 3 and s["median_seconds"] == 220
    assert s["mean_acc"] == pytest.approx(0.80667, abs=1e-4) and s["worst_acc"] == 0.79
    assert s["required_met"] is False and s["goal_met"] is False  # one run too slow, one short
    assert out["throughput"] == {"ratio": 1.7}  # taken from throughput.json
    # a re-run of the same recipe and seed replaces the old record; the others stay
    common.merge_speed(runs=[run("fast-50k", 1, 0.83, 210), run("fast-50k", 2, 0.81, 230)],
                       throughput={"ratio": 2.0})
    out = json.loads((tmp_path / "speed.json").read_text())
    s = out["summary"]["fast-50k"]
    assert s["n_runs"] == 3 and s["worst_acc"] == 0.81 and s["required_met"] is True
    assert [r["seed"] for r in out["runs"]] == [0, 1, 2]
    assert out["throughput"] == {"ratio": 2.0}


def test_commit_from_environment(monkeypatch):
    monkeypatch.setenv("CIFARLAB_COMMIT", "abc123")  # a copied checkout names its commit
    assert common.commit() == "abc123"
    monkeypatch.delenv("CIFARLAB_COMMIT")
    assert common.commit() != "abc123"


def test_readme_machine_column():
    import update_readme

    gpu = "Intel(R) Xeon(R) Processor, 16 cores, NVIDIA H200, torch 2.11.0+cu130, 3 threads"
    cpu = "Intel(R) Xeon(R) Processor, 2 cores, torch 2.13.0+cpu, 2 threads"
    assert update_readme.where(gpu) == "NVIDIA H200"
    assert update_readme.where(cpu) == "CPU, 2 cores"


def test_seed_rows_one_per_run_dir(tmp_path, monkeypatch):
    import bench_seeds

    monkeypatch.setattr(bench_seeds, "RESULTS", tmp_path)
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    rows = [{"recipe": "seed002", "run_dir": d, "date": t, "test_acc": a}
            for d, t, a in (("/r/a", "2026-01-02", 0.8), ("/r/b", "2026-01-01", 0.7),
                            ("/r/a", "2026-01-03", 0.9))]
    for r in rows:
        bench_seeds.save(r)
    out = json.loads((tmp_path / "seeds.json").read_text())
    assert [(r["run_dir"], r["test_acc"]) for r in out] == [("/r/b", 0.7), ("/r/a", 0.9)]
