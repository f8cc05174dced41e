"""Issue 15: choices on a validation split, the test set read once, every leg recorded."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import cifarlab
from cifarlab.data import load_data
from cifarlab.errors import CifarlabError
from cifarlab.rundir import RunDir

QUICK = {"epochs": 3, "batch_size": 50, "lr": 0.05, "procs": 1, "train.eval_every": 1,
         "progress": False, "plots": False, "log": lambda s: None}


def quick(data_dir, runs_dir, **kw) -> dict:
    return cifarlab.train("fast-50k", data_dir=data_dir, runs_dir=runs_dir, **{**QUICK, **kw})


def history(run_dir) -> list[dict]:
    with open(f"{run_dir}/history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_hold_out_is_stratified_deterministic_and_disjoint(shared_cifar_dir):
    train = load_data(shared_cifar_dir).train
    rest, val = train.hold_out(105, seed=3)
    assert len(val) == 105 and len(rest) == len(train) - 105
    counts = torch.bincount(val.labels, minlength=10)
    assert counts.max() - counts.min() <= 1  # every class gives its share
    rest2, val2 = train.hold_out(105, seed=3)
    assert torch.equal(val.images, val2.images) and torch.equal(rest.images, rest2.images)
    assert not torch.equal(train.hold_out(105, seed=4)[1].images, val.images)
    # disjoint: each image is in exactly one part (the synthetic images are all distinct)
    flat = lambda s: {bytes(x.numpy()) for x in s.images}  # noqa: E731
    assert flat(rest).isdisjoint(flat(val)) and len(flat(rest) | flat(val)) == len(train)
    with pytest.raises(CifarlabError, match="leaves no training images"):
        train.hold_out(len(train), seed=0)


def test_val_split_selects_on_validation_and_reads_test_once(shared_cifar_dir, tmp_path,
                                                              monkeypatch):
    import cifarlab.engine as engine

    reads = []
    real = engine.score

    def counting(s, model, images, labels):
        reads.append("test" if images is s.test_inputs else "val")
        return real(s, model, images, labels)

    monkeypatch.setattr(engine, "score", counting)
    m = quick(shared_cifar_dir, tmp_path, val_split=200)
    assert reads.count("test") == 1 and reads[-2] == "test"  # once, after the last epoch
    rows = history(m["run_dir"])
    assert list(rows[0])[4:6] == ["val_loss", "val_acc"]
    assert all(not math.isnan(float(r["val_acc"])) for r in rows)
    assert all(math.isnan(float(r["test_acc"])) for r in rows)  # never during training
    assert m["selection"] == "validation" and m["val_images"] == 200
    assert m["train_images"] == 800 and m["test_acc"] is not None
    best = max(range(3), key=lambda i: float(rows[i]["val_acc"]))
    assert m["best_epoch"] == best + 1
    assert m["best_val_acc"] == pytest.approx(float(rows[best]["val_acc"]))
    assert "validation" in m["figures"]["best_epoch"]
    cfg = json.loads((tmp_path / "fast-50k" / "config.json").read_text())
    assert cfg["recipe"]["data"]["val_seed"] == 0 and cfg["val_images"] == 200


def test_target_on_validation(shared_cifar_dir, tmp_path, monkeypatch):
    from cifarlab import engine

    writes = []
    real = engine.save_checkpoint
    monkeypatch.setattr(engine, "save_checkpoint",
                        lambda path, state: (writes.append((path.name, state["stopped_by"])),
                                             real(path, state)))
    m = quick(shared_cifar_dir, tmp_path, val_split=200,
                       target=0.05)
    assert m["stopped_by"] == "target" and m["target_epoch"] == 1 and m["epochs"] == 1
    # last.pt written once, saying why the run ended
    assert [w for w in writes if w[0] == "last.pt"] == [("last.pt", "target")]
    assert "validation" in m["figures"]["target_epoch"]
    assert m["test_acc"] is not None  # a finished run reads the test set once


def test_target_without_split_is_labelled_as_chosen_on_test(shared_cifar_dir, tmp_path):
    m = quick(shared_cifar_dir, tmp_path, target=0.05)
    assert m["selection"] == "test" and m["stopped_by"] == "target"
    assert "test set" in m["figures"]["target_epoch"]
    assert "chosen on the test set" in m["figures"]["best_epoch"]


def test_patience_needs_a_split_and_stops(shared_cifar_dir, tmp_path):
    with pytest.raises(CifarlabError, match="needs a validation split"):
        quick(shared_cifar_dir, tmp_path, patience=1)
    assert not any(tmp_path.iterdir())  # refused before a run directory was made
    # a learning rate this small never improves on the first epoch's accuracy for long
    m = quick(shared_cifar_dir, tmp_path, val_split=200,
                       patience=1, epochs=8, lr=1e-7)
    assert m["stopped_by"] == "patience" and m["epochs"] < 8


def test_callback_stops_and_sees_rows(shared_cifar_dir, tmp_path):
    seen = []

    def cb(row):
        seen.append(row)
        return row["epoch"] == 2

    m = quick(shared_cifar_dir, tmp_path, val_split=200,
                       epoch_callback=cb, **{"train.test_eval": "never"})
    assert [r["epoch"] for r in seen] == [1, 2] and "val_acc" in seen[0]
    assert m["stopped_by"] == "callback" and m["epochs"] == 2
    assert m["test_acc"] is None and m["figures"]["per_class_acc"] == "validation split"


def test_legs_record_every_command(shared_cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CIFARLAB_COMMIT", "leg1")
    m = quick(shared_cifar_dir, tmp_path, max_seconds=0)
    assert m["stopped_by"] == "time" and m["epochs"] == 1
    monkeypatch.setenv("CIFARLAB_COMMIT", "leg2")
    m = cifarlab.train(resume=m["run_dir"], data_dir=shared_cifar_dir, progress=False,
                       plots=False, log=lambda s: None)
    legs = RunDir(m["run_dir"]).read_legs()
    assert [(g["commit"], g["first_epoch"], g["last_epoch"]) for g in legs] == [
        ("leg1", 1, 1), ("leg2", 2, 3)]
    assert all(g["started"] <= g["ended"] and g["machine"] and g["command"] for g in legs)
    assert m["legs"] == legs


def test_val_split_larger_than_data_refused_before_run_dir(shared_cifar_dir, tmp_path):
    with pytest.raises(CifarlabError, match="val_split 5000 leaves fewer than 2"):
        quick(shared_cifar_dir, tmp_path, val_split=5000)
    assert not (tmp_path / "fast-50k").exists()
