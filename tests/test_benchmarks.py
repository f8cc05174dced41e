"""The benchmark bookkeeping: speed.json's summary is computed from the recorded runs."""

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import common  # noqa: E402


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


def test_readme_results_are_what_the_json_generates():
    import update_readme

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    assert update_readme.readme_results() in readme
    history = (root / "docs" / "seed-history.md").read_text()
    assert update_readme.history_block() in history


def test_every_recorded_row_names_its_provenance():
    results = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    rows = []
    for p in sorted(results.glob("*.json")):
        data = json.loads(p.read_text())
        if isinstance(data, list):
            rows += [(p.name, r) for r in data]
        elif "rows" in data:  # inference.json: one row per model, backend, batch size
            rows += [(p.name, r) for r in data["rows"]]
        elif isinstance(data.get("variants"), list):  # levers.json
            rows += [(p.name, r) for r in data["variants"]]
        elif isinstance(data.get("runs"), list):  # speed.json
            rows += [(p.name, r) for r in data["runs"]]
            if data.get("anchor"):
                rows.append((p.name, data["anchor"]))
        else:
            rows.append((p.name, data))
    assert rows
    for name, r in rows:
        missing = [k for k in ("commit", "date", "machine", "command") if not r.get(k)]
        assert not missing, f"{name}: a row lacks {missing}"
    for r in json.loads((results / "seeds.json").read_text()):
        assert r["legs"] and all("commit" in g and "first_epoch" in g for g in r["legs"])
        assert "verifiable" in r or r["legs"][0].get("cifarlab")
