"""ONNX export (fp32 + int8), its parity gates, and inference with exported files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import INT8_FIXTURE_RECIPE
from PIL import Image

import cifarlab
from cifarlab import export
from cifarlab.api import load_model
from cifarlab.errors import CifarlabError
from cifarlab.export import export_onnx, make_session, onnx_evaluate, onnx_predict, open_onnx
from cifarlab.inference import predict_logits, score_logits
from cifarlab.models import create_model
from cifarlab.rundir import save_checkpoint


def quiet(s: str) -> None:
    pass


@pytest.fixture(scope="module")
def data(shared_cifar_dir):
    return cifarlab.load_data(shared_cifar_dir)


@pytest.fixture(scope="module")
def run_dir(shared_cifar_dir, tmp_path_factory):
    """The issue-17 fast-50k (conftest.INT8_FIXTURE_RECIPE) trained for one epoch on the tiny
    synthetic set (1,000 train / 200 test)."""
    m = cifarlab.train(INT8_FIXTURE_RECIPE, data_dir=shared_cifar_dir,
                       runs_dir=tmp_path_factory.mktemp("runs"), progress=False, plots=False,
                       log=quiet, epochs=1, batch_size=100, procs=1)
    return m["run_dir"]


@pytest.fixture(scope="module")
def exported(run_dir, data):
    """model.onnx and model-int8.onnx in the run directory."""
    return export_onnx(run_dir, int8=True, data=data, log=quiet)


def torch_fp32(path, images):
    model, meta = load_model(path)
    return predict_logits(model, images, meta["mean"], meta["std"], precision="fp32",
                          channels_last=False, tta=False), meta


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


def hand_made_checkpoint(path, model: str, loss: str, data) -> None:
    """A checkpoint as the engine writes it, with random weights (no training)."""
    torch.manual_seed(0)
    net = create_model(model)
    meta = {"model": model, "model_args": {}, "classes": list(data.classes),
            "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26], "loss": loss,
            "precision": "fp32", "channels_last": False, "tta": False, "tta_shift": 0,
            "recipe": "hand-made"}
    save_checkpoint(path, {"model": net.state_dict(), "meta": meta})


def test_export_writes_checked_files(exported, run_dir, data):
    assert exported["onnx"] == f"{run_dir}/model.onnx"
    assert exported["int8"] == f"{run_dir}/model-int8.onnx"
    p = exported["parity"]
    assert p["images"] == len(data.test) == 200  # parity_images 2000, capped at the test set
    assert p["max_abs_diff"] <= export.FP32_MAX_DIFF
    assert p["top1_agreement"] >= export.FP32_MIN_AGREEMENT
    assert exported["output"] == "logits" and exported["opset"] >= 18
    for key in ("onnx", "int8"):
        with open(exported[key], "rb") as f:
            assert len(f.read()) == exported[f"{key}_bytes"] > 0
    assert exported["int8_bytes"] < exported["onnx_bytes"]
    assert exported["int8_parity"]["images"] == 200  # int8 gate: the whole test set
    assert exported["int8_parity"]["top1_agreement"] >= export.INT8_MIN_AGREEMENT
    assert exported["fp32_acc"] - exported["int8_acc"] <= export.INT8_MAX_ACC_DROP
    assert exported["test_images"] == 200
    assert exported["calibration_images"] == export.CALIBRATION_IMAGES
    assert 1 <= len(exported["int8_fp32_layers"]) <= 2  # first and last layer kept in fp32
    assert not [f for f in Path(run_dir).iterdir() if f.name.endswith(".tmp")]


def test_metadata(exported, run_dir, data):
    md = {p.key: p.value for p in onnx.load(exported["onnx"]).metadata_props}
    _, meta = load_model(run_dir)
    assert md["cifarlab_format"] == export.FORMAT
    assert json.loads(md["classes"]) == list(data.classes)
    assert md["input_layout"].startswith("NCHW") and md["input_dtype"] == "float32"
    assert md["input_range"].startswith("[0, 1]")
    assert md["normalization_folded"] == "true"
    assert json.loads(md["mean"]) == pytest.approx(meta["mean"])
    assert json.loads(md["std"]) == pytest.approx(meta["std"])
    assert md["output"] == "logits"
    assert md["tta"].startswith("not included")
    assert md["recipe"] == "fast-50k-issue17" and md["model"] == "family"
    assert md["precision"] == "fp32" and md["cifarlab_commit"]
    md8 = {p.key: p.value for p in onnx.load(exported["int8"]).metadata_props}
    assert md8["precision"].startswith("int8") and "training images" in md8["precision"]
    assert md8["classes"] == md["classes"]


def test_file_runs_in_onnxruntime_with_any_batch(exported, run_dir, data):
    sess = make_session(exported["onnx"], threads=1)
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "image" and out.name == "logits"
    ref, _ = torch_fp32(run_dir, data.test.images[:3])
    for n in (1, 3):
        x = data.test.images[:n].float().div(255).numpy()
        y = sess.run(None, {"image": x})[0]
        assert y.shape == (n, 10)
        assert np.abs(y - ref[:n].numpy()).max() < 1e-3


def test_onnx_evaluate_matches_pytorch(exported, run_dir, data, shared_cifar_dir):
    ref, meta = torch_fp32(run_dir, data.test.images)
    want = score_logits(ref, data.test.labels, meta["loss"])
    got = onnx_evaluate(exported["onnx"], data=data)
    assert set(got) >= {"acc", "loss", "per_class_acc", "confusion", "classes"}
    assert abs(got["acc"] - want["acc"]) <= 0.001
    assert got["loss"] == pytest.approx(want["loss"], abs=1e-4)
    assert got["confusion"] == want["confusion"]
    assert got["classes"] == list(data.classes)
    assert got["acc"] == pytest.approx(exported["fp32_acc"])
    got8 = onnx_evaluate(exported["int8"], data_dir=shared_cifar_dir)  # loads the data itself
    assert got8["acc"] == pytest.approx(exported["int8_acc"])


def test_onnx_predict(exported, run_dir, data, tmp_path):
    Image.fromarray(data.test.images[7].permute(1, 2, 0).numpy()).save(tmp_path / "img.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ref, _ = torch_fp32(run_dir, data.test.images[7:8])
    res = onnx_predict(exported["onnx"], [tmp_path / "img.png", tmp_path / "notes.txt",
                                          exported["onnx"], tmp_path / "missing.jpg"], top_k=3)
    assert [r["path"] for r in res][0] == str(tmp_path / "img.png")
    top = res[0]["top"]
    assert len(top) == 3 and [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    probs = ref.softmax(1)[0]
    assert top[0][0] == data.classes[int(probs.argmax())]
    assert top[0][1] == pytest.approx(probs.max().item(), abs=1e-4)
    for r in res[1:]:  # a text file, the .onnx file itself, a missing file: one line each
        assert "top" not in r and r["error"] and "\n" not in r["error"]
    all10 = onnx_predict(exported["int8"], [tmp_path / "img.png"], top_k=99)[0]["top"]
    assert len(all10) == 10 and sum(p for _, p in all10) == pytest.approx(1, abs=1e-4)


def test_nll_model_exports_log_probs(tmp_path, data):
    ckpt = tmp_path / "nll" / "last.pt"
    hand_made_checkpoint(ckpt, "seed000-m2", "nll", data)
    r = export_onnx(ckpt, data=data, parity_images=50, log=quiet)
    assert r["onnx"] == str(tmp_path / "nll" / "model.onnx") and r["output"] == "log_probs"
    assert r["parity"]["images"] == 50
    sess, md = open_onnx(r["onnx"])
    assert sess.get_outputs()[0].name == "log_probs" and md["output"] == "log_probs"
    ref, meta = torch_fp32(ckpt, data.test.images)
    got = onnx_evaluate(r["onnx"], data=data)
    assert got["loss"] == pytest.approx(score_logits(ref, data.test.labels, "nll")["loss"],
                                        abs=1e-4)


def test_out_argument(run_dir, data, tmp_path):
    r = export_onnx(run_dir, tmp_path / "sub" / "net.onnx", data=data, parity_images=20,
                    log=quiet)
    assert r["onnx"] == str(tmp_path / "sub" / "net.onnx") and "int8" not in r
    r = export_onnx(f"{run_dir}/last.pt", tmp_path, data=data, parity_images=20, log=quiet)
    assert r["onnx"] == str(tmp_path / "model.onnx")
    with pytest.raises(CifarlabError) as e:
        export_onnx(run_dir, tmp_path / "net.txt", data=data, log=quiet)
    assert "must end in .onnx" in one_line_error(e)


def test_parity_gate_deletes_a_bad_file(run_dir, data, tmp_path, monkeypatch):
    real = export.predict_logits
    monkeypatch.setattr(export, "predict_logits", lambda *a, **k: real(*a, **k) + 0.01)
    out = tmp_path / "bad.onnx"
    with pytest.raises(CifarlabError) as e:
        export_onnx(run_dir, out, data=data, parity_images=30, log=quiet)
    msg = one_line_error(e)
    assert "parity gate failed" in msg and "max |logits difference| 0.01" in msg
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_int8_gate_keeps_fp32_and_removes_int8(run_dir, data, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "INT8_MIN_AGREEMENT", 1.01)  # no file can pass
    with pytest.raises(CifarlabError) as e:
        export_onnx(run_dir, tmp_path / "m.onnx", int8=True, data=data, parity_images=30,
                    log=quiet)
    assert "int8 gate failed" in one_line_error(e)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_bad_files_are_one_line_errors(tmp_path, data, run_dir):
    missing = tmp_path / "missing.onnx"
    with pytest.raises(CifarlabError) as e:
        onnx_evaluate(missing, data=data)
    assert "no such ONNX file" in one_line_error(e)
    text = tmp_path / "x.onnx"
    text.write_text("this is not a model\n" * 5)
    with pytest.raises(CifarlabError) as e:
        onnx_predict(text, [text])
    assert "not a readable ONNX model" in one_line_error(e)
    export_onnx(run_dir, tmp_path / "ok.onnx", data=data, parity_images=10, log=quiet)
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes((tmp_path / "ok.onnx").read_bytes()[:5000])
    with pytest.raises(CifarlabError) as e:
        onnx_evaluate(truncated, data=data)
    assert "not a readable ONNX model" in one_line_error(e)
    with pytest.raises(CifarlabError) as e:
        onnx_evaluate(tmp_path, data=data)
    assert "is a directory" in one_line_error(e)
    # a valid ONNX model that cifarlab did not write
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 10])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 10])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [x], [y])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]),
              foreign)
    with pytest.raises(CifarlabError) as e:
        onnx_predict(foreign, [])
    assert "not one exported by cifarlab" in one_line_error(e)
    with pytest.raises(CifarlabError) as e:
        export_onnx(tmp_path / "no-run", data=data, log=quiet)
    one_line_error(e)


def test_opset(run_dir, data, tmp_path):
    r = export_onnx(run_dir, tmp_path / "m.onnx", opset=18, data=data, parity_images=10,
                    log=quiet)
    assert r["opset"] == 18
    for bad in (17, 99):  # too old; newer than the exporter writes (it would fall back)
        with pytest.raises(CifarlabError) as e:
            export_onnx(run_dir, tmp_path / "bad.onnx", opset=bad, data=data, log=quiet)
        assert f"opset {bad}" in one_line_error(e)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_cli_export_eval_predict(run_dir, shared_cifar_dir, tmp_path, capsys):
    """The commands a user types: export, then eval and predict on the .onnx file."""
    from cifarlab.cli import main

    out = tmp_path / "m.onnx"
    assert main(["export", str(run_dir), "--out", str(out), "--parity-images", "100",
                 "--data-dir", str(shared_cifar_dir)]) == 0
    assert out.is_file()
    capsys.readouterr()
    assert main(["eval", str(out), "--data-dir", str(shared_cifar_dir)]) == 0
    acc = float(capsys.readouterr().out.split()[2])
    assert acc == pytest.approx(cifarlab.evaluate(out, data_dir=shared_cifar_dir)["acc"])
    img = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(img)
    assert main(["predict", str(out), str(img), "--top-k", "2"]) == 0
    assert capsys.readouterr().out.startswith(f"{img}: ")
    assert main(["eval", str(out), "--tta", "--data-dir", str(shared_cifar_dir)]) == 2
    assert "no test-time augmentation" in capsys.readouterr().err
