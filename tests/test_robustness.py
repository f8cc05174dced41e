"""`cifarlab robustness`: results, robustness.json, subsets, checkpoint vs ONNX, report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import INT8_FIXTURE_RECIPE

import cifarlab
from cifarlab.cli import main
from cifarlab.corruptions import CORRUPTIONS
from cifarlab.errors import CifarlabError
from cifarlab.export import export_onnx
from cifarlab.report import make_report
from cifarlab.robust import stratified_indices

IMAGES = 40  # of the tiny set's 200 test images: 76 x 40 images per evaluation


def quiet(s: str) -> None:
    pass


@pytest.fixture(scope="module")
def data(shared_cifar_dir):
    return cifarlab.load_data(shared_cifar_dir)


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory) -> Path:
    """The issue-17 fast-50k (conftest.INT8_FIXTURE_RECIPE) trained for one epoch on the tiny
    synthetic set (as in test_export: the session's engine runs are too weak for the int8
    gate), exported (fp32 and int8)."""
    m = cifarlab.train(INT8_FIXTURE_RECIPE, data=data, runs_dir=tmp_path_factory.mktemp("runs"),
                       progress=False, plots=False, log=quiet, epochs=1, batch_size=100,
                       procs=1)
    export_onnx(m["run_dir"], int8=True, data=data, log=quiet)
    return Path(m["run_dir"])


@pytest.fixture(scope="module")
def result(run_dir, data) -> dict:
    return cifarlab.robustness(run_dir, data=data, images=IMAGES, progress=False)


def figures(r: dict) -> np.ndarray:
    return np.array([r["clean_acc"]] + [a for v in r["by_corruption"].values() for a in v])


def test_results_and_json(result, run_dir):
    r = result
    assert list(r["by_corruption"]) == list(CORRUPTIONS)
    assert all(len(v) == 5 for v in r["by_corruption"].values())
    acc = np.array(list(r["by_corruption"].values()))
    assert ((acc >= 0) & (acc <= 1)).all() and 0 <= r["clean_acc"] <= 1
    assert r["mca"] == pytest.approx(acc.mean())
    assert r["by_severity"] == pytest.approx(acc.mean(0).tolist())
    assert r["relative"] == pytest.approx(r["mca"] / r["clean_acc"])
    assert r["worst_corruption"] == CORRUPTIONS[int(acc.mean(1).argmin())]
    assert r["images"] == IMAGES and r["seed"] == 0 and r["kind"] == "checkpoint"
    assert r["commit"] and r["machine"] and r["timing"]["generate_images_per_second"] > 0
    assert r["json"] == str(run_dir / "robustness.json")
    saved = json.loads((run_dir / "robustness.json").read_text())
    assert {k: saved[k] for k in ("clean_acc", "mca", "by_severity", "by_corruption")} == \
        {k: r[k] for k in ("clean_acc", "mca", "by_severity", "by_corruption")}
    assert (run_dir / "plots" / "robustness.png").stat().st_size > 0
    assert not [f for f in run_dir.iterdir() if f.name.endswith(".tmp")]


def test_the_corruptions_cost_accuracy(result):
    # even the tiny model (it tells classes apart by colour) loses more at severity 5 than at 1
    r = result
    assert r["by_severity"][4] < r["by_severity"][0] <= r["clean_acc"] + 1 / IMAGES


def test_stratified_subset(data):
    labels = data.test.labels
    idx = stratified_indices(labels, 50)
    assert len(idx) == 50 and len(set(idx.tolist())) == 50 and (np.diff(idx) > 0).all()
    assert np.bincount(labels[idx].numpy(), minlength=10).tolist() == [5] * 10
    assert np.array_equal(idx, stratified_indices(labels, 50))  # the same images every time
    counts = np.bincount(labels[stratified_indices(labels, 23)].numpy(), minlength=10)
    assert counts.sum() == 23 and counts.max() - counts.min() <= 1
    assert np.array_equal(stratified_indices(labels, None), np.arange(len(labels)))
    assert len(stratified_indices(labels, 10_000)) == len(labels)
    with pytest.raises(CifarlabError, match="at least 1"):
        stratified_indices(labels, 0)


def test_checkpoint_and_its_onnx_export_agree(result, run_dir, data):
    fp32 = cifarlab.robustness(run_dir / "model.onnx", data=data, images=IMAGES,
                               progress=False)
    assert fp32["kind"] == "onnx" and fp32["json"] == str(run_dir / "robustness-model.json")
    assert (run_dir / "plots" / "robustness-model.png").is_file()
    # the same forward pass in fp32: at most one image in a figure may flip on a near tie
    assert np.abs(figures(fp32) - figures(result)).max() <= 1 / IMAGES
    int8 = cifarlab.robustness(run_dir / "model-int8.onnx", data=data, images=IMAGES,
                               progress=False)
    # int8: within its quantisation noise (the export's gate: >= 97% top-1 agreement)
    assert abs(int8["mca"] - fp32["mca"]) <= 0.03
    assert np.abs(figures(int8) - figures(fp32)).mean() <= 0.03


def test_cli_prints_the_table(run_dir, shared_cifar_dir, capsys):
    assert main(["robustness", str(run_dir / "model.onnx"), "--images", "20", "--seed", "1",
                 "--data-dir", str(shared_cifar_dir)]) == 0
    out = capsys.readouterr().out
    assert "mCA" in out and "relative" in out and "by severity" in out
    assert "worst corruption:" in out and "(20 test images, seed 1)" in out
    lines = [x for x in out.splitlines() if x.startswith("  ")]
    assert [x.split()[0] for x in lines] == list(CORRUPTIONS)
    assert main(["robustness", str(run_dir / "nothing.onnx")]) == 2
    err = capsys.readouterr().err
    assert "no such" in err and len(err.strip().splitlines()) == 1


def test_report_has_a_robustness_column_and_figure(result, run_dir, tmp_path):
    make_report([run_dir], tmp_path)
    md = (tmp_path / "report.md").read_text()
    header, _, row = md.splitlines()[4:7]
    cols = [c.strip() for c in header.strip("|").split("|")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    cell = cells[cols.index("mCA (relative)")]
    assert cell == f"{100 * result['mca']:.2f}% ({result['relative']:.3f}, {IMAGES} images)"
    assert (tmp_path / "robustness.png").is_file() and "## Robustness" in md
