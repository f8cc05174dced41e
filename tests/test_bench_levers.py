"""benchmarks/bench_levers.py: variants back to back on a validation split, ratios, resume."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_levers  # noqa: E402


def test_levers_on_validation_with_ratios_and_resume(shared_cifar_dir, tmp_path, capsys):
    out = tmp_path / "levers.json"
    args = ["default", "--data-dir", str(shared_cifar_dir), "--runs-dir", str(tmp_path / "runs"),
            "--out", str(out), "--val-split", "200", "--set", "train.epochs=1",
            "--set", "train.batch_size=50", "--only", "glibc-malloc", "tiny-lr",
            "--lever", "tiny-lr:optim.lr=0.001"]
    bench_levers.main(args)
    rec = json.loads(out.read_text())
    names = [v["lever"] for v in rec["variants"]]
    assert names == ["recipe", "glibc-malloc", "tiny-lr"]  # the baseline first
    base, malloc, tiny = rec["variants"]
    assert base["seconds_ratio"] == 1.0 and base["val_acc_delta"] == 0.0
    assert malloc["env"] == {"CIFARLAB_MALLOC": "system"}
    assert tiny["overrides"]["optim.lr"] == 0.001 and tiny["overrides"]["train.epochs"] == 1
    for v in rec["variants"]:
        assert 0.0 <= v["val_acc"] <= 1.0 and v["epochs"] == 1 and v["seconds"] > 0
        assert v["overrides"]["train.test_eval"] == "never"  # the test set is not read
        m = json.loads((Path(v["run_dir"]) / "metrics.json").read_text())
        assert m.get("test_acc") is None and m["val_acc"] == v["val_acc"]
        assert all(v.get(k) for k in ("commit", "date", "machine", "command"))
    assert rec["val_split"] == 200 and rec["overrides"] == {"train.epochs": 1,
                                                            "train.batch_size": 50}
    # resumed on the same machine and boot: nothing is measured again
    bench_levers.main(args + ["--resume"])
    assert "recipe: recorded already" in capsys.readouterr().out
    again = json.loads(out.read_text())
    assert [v["run_dir"] for v in again["variants"]] == [v["run_dir"] for v in rec["variants"]]
    assert len(again["legs"]) == 2


@pytest.mark.parametrize("argv, match", [
    (["--lever", "nocolon"], "expected NAME:KEY=VALUE"),
    (["--lever", "x:optim.lr"], "--lever x: --set optim.lr: expected KEY=VALUE"),
    (["--only", "nosuch"], "unknown lever"),
    (["--data-dir", "/no/such/dir"], "no such folder"),
])
def test_bad_arguments_one_line(argv, match, tmp_path):
    with pytest.raises(SystemExit, match=match):
        bench_levers.main(["default", "--out", str(tmp_path / "l.json"), *argv])
