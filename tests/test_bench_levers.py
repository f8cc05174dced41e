"""benchmarks.levers: variants back to back on a validation split, ratios, resume."""

import json
from pathlib import Path

import pytest

from benchmarks import levers as bench_levers
from benchmarks import update_readme


def test_levers_on_validation_with_ratios_and_resume(shared_cifar_dir, tmp_path, capsys,
                                                     monkeypatch):
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
        assert len(v["epoch_seconds"]) == 1 and 0 < v["epoch_seconds"][0] <= v["seconds"]
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
    # the README table: one row per variant, the change named, the time as a ratio
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "levers-default.json").write_text(out.read_text())
    monkeypatch.setattr(update_readme, "RESULTS", tmp_path / "results")
    table = update_readme.levers_section()
    rows = [r for r in table if r.startswith("| ") and not r.startswith("| lever")]
    assert [r.split(" | ")[0] for r in rows] == ["| recipe", "| glibc-malloc", "| tiny-lr"]
    one_epoch = f"{base['epoch_seconds'][0]:.1f}"  # one epoch: no middle ones to take
    assert rows[0].endswith("| +0.00 | " + f"{base['seconds']:.0f} | ×1.00 | {one_epoch} |")
    assert "`CIFARLAB_MALLOC=system`" in rows[1] and "`optim.lr=0.001`" in rows[2]
    assert "`train.epochs=1`" not in rows[2]  # common to every variant: said once above
    assert any("`train.epochs=1`" in r for r in table if not r.startswith("|"))


def test_resume_measures_afresh_when_the_recipe_changed(shared_cifar_dir, tmp_path, capsys):
    """A baseline trained on an earlier version of the recipe is not a baseline for it now."""
    recipe = tmp_path / "mine.toml"
    recipe.write_text('base = "default"\nname = "mine"\n')
    out = tmp_path / "levers.json"
    args = [str(recipe), "--data-dir", str(shared_cifar_dir), "--runs-dir",
            str(tmp_path / "runs"), "--out", str(out), "--val-split", "200",
            "--set", "train.epochs=1", "--set", "train.batch_size=50",
            "--only", "tiny-lr", "--lever", "tiny-lr:optim.lr=0.001"]
    bench_levers.main(args)
    first = json.loads(out.read_text())
    assert first["recipe_config"]["optim"]["lr"] == 0.2
    recipe.write_text('base = "default"\nname = "mine"\n[optim]\nlr = 0.05\n')
    capsys.readouterr()
    bench_levers.main(args + ["--resume"])
    assert "measuring afresh" in capsys.readouterr().out
    again = json.loads(out.read_text())
    assert again["recipe_config"]["optim"]["lr"] == 0.05 and len(again["legs"]) == 1
    assert {v["run_dir"] for v in again["variants"]}.isdisjoint(
        v["run_dir"] for v in first["variants"])


@pytest.mark.parametrize("argv, match", [
    (["--lever", "nocolon"], "expected NAME:KEY=VALUE"),
    (["--lever", "x:optim.lr"], "--lever x: --set optim.lr: expected KEY=VALUE"),
    (["--only", "nosuch"], "unknown lever"),
    (["--data-dir", "/no/such/dir"], "CIFAR-10 not found"),
])
def test_bad_arguments_one_line(argv, match, tmp_path):
    with pytest.raises(SystemExit, match=match):
        bench_levers.main(["default", "--out", str(tmp_path / "l.json"), *argv])
