"""Export a trained network to ONNX (fp32, optionally static int8) and run exported files.

The exported graph takes a float32 NCHW batch of RGB images in [0, 1] (uint8 pixels / 255,
any batch size) and folds the run's per-channel normalisation in, so a caller feeds x / 255 and
nothing else. It outputs logits, or log-probabilities for networks trained with the NLL loss
(metadata `output` says which). Test-time augmentation is not part of the graph: one plain
forward pass. Everything a caller needs is in the file's `metadata_props` (see `_metadata`).

Every file is checked before it is kept: it is written under a temporary name in the target
folder, run in onnxruntime against PyTorch fp32 eager on test images (the parity gate), and
renamed into place only if the gate passes; otherwise it is deleted and an `ExportError` says
what failed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .data import CIFAR10, load_data
from .errors import CifarlabError
from .images import classify_files
from .inference import checkpoint_path, load_model, predict_logits, score_logits
from .provenance import commit
from .rundir import atomic_path

FORMAT = "1"  # metadata `cifarlab_format`: bump when the graph's contract changes
INPUT_NAME = "image"
FP32_MAX_DIFF = 1e-3  # parity gate, fp32 file vs PyTorch fp32 eager: max |logit difference|
FP32_MIN_AGREEMENT = 0.999  # ... and top-1 agreement
INT8_MIN_AGREEMENT = 0.97  # int8 file vs fp32 file, top-1 agreement on the whole test set
INT8_MAX_ACC_DROP = 0.01  # int8 test accuracy at most 1 point below the fp32 file's
CALIBRATION_IMAGES = 512  # training images only, never the test set
CALIBRATION_SEED = 0
CALIBRATION_BATCH = 64
CALIBRATION_METHOD = "Percentile"  # onnxruntime CalibrationMethod: 99.999th percentile ranges
BATCH = 500  # images per onnxruntime call in evaluation


class ExportError(CifarlabError):
    pass


class _Normalized(torch.nn.Module):
    """The network with its input normalisation in front: [0, 1] images -> logits."""

    def __init__(self, net: torch.nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)  # as augment.normalize computes it


# ------------------------------------------------------------------------------ onnxruntime

def make_session(path: str | os.PathLike, *, threads: int | None = None):
    """An onnxruntime CPU session for `path`: `threads` intra-op threads (default: torch's
    thread count), one inter-op thread, no spinning (idle threads sleep instead of burning the
    cores other work needs), all graph optimisations. Raises onnxruntime's own errors."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only: no warnings on stderr
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def _one_line(e: BaseException, limit: int = 200) -> str:
    s = " ".join(str(e).split()) or type(e).__name__
    return s if len(s) <= limit else s[:limit - 3] + "..."


def open_onnx(path: str | os.PathLike, *, threads: int | None = None):
    """(session, metadata) of a file cifarlab exported, or a one-line CifarlabError."""
    p = Path(path)
    if not p.exists():
        raise ExportError(f"{p}: no such ONNX file")
    if not p.is_file():
        raise ExportError(f"{p}: is a directory, not an ONNX file")
    try:
        sess = make_session(p, threads=threads)
    except Exception as e:  # onnxruntime raises its own types for garbage, truncation, ...
        raise ExportError(f"{p}: not a readable ONNX model ({_one_line(e)})") from None
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    if "cifarlab_format" not in meta:
        raise ExportError(f"{p}: an ONNX model, but not one exported by cifarlab "
                          "(no cifarlab metadata)")
    if meta["cifarlab_format"] != FORMAT:
        raise ExportError(f"{p}: cifarlab ONNX format {meta['cifarlab_format']!r}; "
                          f"this version reads format {FORMAT!r}")
    try:
        for k in ("classes", "mean", "std"):
            meta[k] = json.loads(meta[k])
    except (KeyError, json.JSONDecodeError) as e:
        raise ExportError(f"{p}: cifarlab metadata damaged ({_one_line(e)})") from None
    return sess, meta


def _inputs(images: torch.Tensor, meta: dict) -> np.ndarray:
    """uint8 N×3×32×32 -> what the graph takes (float32 in [0, 1], normalised if not folded)."""
    x = images.float().div_(255)
    if meta.get("normalization_folded") != "true":
        x = (x - torch.tensor(meta["mean"]).view(1, 3, 1, 1)) / torch.tensor(
            meta["std"]).view(1, 3, 1, 1)
    return x.contiguous().numpy()


def run_onnx(sess, meta: dict, images: torch.Tensor, batch_size: int = BATCH) -> torch.Tensor:
    """The graph's float32 output (logits or log-probs) for uint8 images, as a torch tensor."""
    name = sess.get_inputs()[0].name
    out = [torch.from_numpy(sess.run(None, {name: _inputs(images[i:i + batch_size], meta)})[0])
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).float() if out else torch.empty(0, len(meta["classes"]))


def _loss_name(meta: dict) -> str:
    return "nll" if meta.get("output") == "log_probs" else "ce"


def onnx_evaluate(path: str | os.PathLike, *, data: CIFAR10 | None = None,
                  data_dir: str | os.PathLike | None = None) -> dict:
    """`cifarlab.api.evaluate` for an exported file: acc, loss, per_class_acc, confusion,
    classes (and preds) on the whole test set, run in onnxruntime (no test-time augmentation:
    the graph has none)."""
    sess, meta = open_onnx(path)
    if data is None:
        data = load_data(data_dir)
    out = score_logits(run_onnx(sess, meta, data.test.images), data.test.labels, _loss_name(meta))
    out["classes"] = list(data.classes)
    return out


def onnx_predict(path: str | os.PathLike, images: list[str | os.PathLike],
                 top_k: int = 1) -> list:
    """`cifarlab.api.predict` for an exported file: per image file
    {'path', 'top': [(class, probability), ...]} or {'path', 'error'}."""
    sess, meta = open_onnx(path)
    return classify_files(images, meta["classes"], lambda x: run_onnx(sess, meta, x),
                          log_probs=_loss_name(meta) == "nll", top_k=top_k)


# ----------------------------------------------------------------------------------- export

def _metadata(meta: dict, source: Path, precision: str) -> dict[str, str]:
    from . import __version__

    tta = " + ".join((["flip"] if meta.get("tta") else [])
                     + ([f"{meta['tta_shift']}-px shifts"] if meta.get("tta_shift") else []))
    nll = meta["loss"] == "nll"
    return {
        "cifarlab_format": FORMAT,
        "classes": json.dumps(list(meta["classes"])),
        "input_name": INPUT_NAME,
        "input_shape": "[batch, 3, 32, 32] (batch dimension dynamic)",
        "input_layout": "NCHW, RGB",
        "input_dtype": "float32",
        "input_range": "[0, 1]: uint8 pixel / 255",
        "normalization_folded": "true",
        "normalization": "(x - mean) / std per channel, inside the graph: feed x / 255 only",
        "mean": json.dumps(list(meta["mean"])),
        "std": json.dumps(list(meta["std"])),
        "output": "log_probs" if nll else "logits",
        "output_description": ("log-probabilities (the network ends in log_softmax); "
                               "exp() gives probabilities") if nll else
                              "logits; softmax() gives probabilities",
        "tta": "not included: one plain forward pass"
               + (f" (PyTorch evaluation of this run averages over {tta})" if tta else ""),
        "precision": precision,
        "recipe": str(meta.get("recipe", "")),
        "model": str(meta["model"]),
        "model_args": json.dumps(meta.get("model_args", {}), sort_keys=True),
        "source_checkpoint": f"{source.parent.name}/{source.name}",
        "cifarlab_version": __version__,
        "cifarlab_commit": commit(),
        "torch_version": torch.__version__,
    }


def _set_metadata(proto, md: dict[str, str]) -> None:
    keep = [p for p in proto.metadata_props if p.key not in md]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in md.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's and quantizer's warnings and log lines (torchvision ops skipped,
    deprecations, 'consider pre-processing', ...): the user sees our summary only."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo",
                                              "onnxscript", "onnx_ir")]
    loggers.append(logging.getLogger())
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def _write(proto, path: Path) -> None:
    try:
        path.write_bytes(proto.SerializeToString())
    except (OSError, ValueError) as e:  # ValueError: protobuf over 2 GB
        raise ExportError(f"{path}: cannot write ({_one_line(e)})") from None


def _compare(ref: torch.Tensor, got: torch.Tensor) -> dict:
    """Max |difference| and top-1 agreement of two N×C outputs."""
    if ref.shape != got.shape:
        return {"images": len(ref), "max_abs_diff": float("inf"), "top1_agreement": 0.0}
    diff = (ref - got).abs().max().item() if len(ref) else 0.0
    agree = (ref.argmax(1) == got.argmax(1)).float().mean().item() if len(ref) else 1.0
    return {"images": len(ref), "max_abs_diff": diff, "top1_agreement": agree}


def _default_out(path: Path, out: str | os.PathLike | None) -> Path:
    run_dir = path if path.is_dir() else path.parent
    if out is None:
        return run_dir / "model.onnx"
    o = Path(out)
    if o.is_dir():
        return o / "model.onnx"
    if o.suffix != ".onnx":
        raise ExportError(f"{o}: the output file name must end in .onnx")
    return o


class _Calibration:
    """onnxruntime CalibrationDataReader over a fixed batch of training images."""

    def __init__(self, name: str, images: np.ndarray, batch: int = CALIBRATION_BATCH):
        self.feeds = iter([{name: images[i:i + batch]} for i in range(0, len(images), batch)])

    def get_next(self):
        return next(self.feeds, None)


def _first_and_last_layers(model) -> list[str]:
    """Names of the first and the last weight layer (Conv / Gemm / MatMul; nodes are in
    topological order): the input and classifier layers that int8 hurts most."""
    layers = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    return sorted({layers[0], layers[-1]}) if layers else []


def _quantize(fp32: Path, dst: Path, calib: np.ndarray) -> list[str]:
    """Static QDQ int8 of `fp32` into `dst`: shape inference + ORT graph optimisation first
    (folds BatchNorm into the convolutions), per-channel int8 weights, uint8 activations
    (U8S8: the fast path of onnxruntime's x86 kernels), the first and the last weight layer
    kept in fp32, calibration on `calib`. Returns the layers kept in fp32."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Calibration, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="cifarlab-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        keep = _first_and_last_layers(onnx.load(str(pre)))
        with contextlib.redirect_stdout(io.StringIO()):  # histogram calibrators print
            quantize_static(str(pre), str(dst), Reader(INPUT_NAME, calib),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=keep,
                            calibrate_method=CalibrationMethod[CALIBRATION_METHOD])
    return keep


def export_onnx(path: str | os.PathLike, out: str | os.PathLike | None = None, *,
                int8: bool = False, opset: int | None = None, data: CIFAR10 | None = None,
                data_dir: str | os.PathLike | None = None, parity_images: int = 2000,
                log=print) -> dict:
    """Export a run directory's (or checkpoint's) network to ONNX; see the module docstring.

    `out`: the .onnx file (default RUN_DIR/model.onnx; a folder: FOLDER/model.onnx). With
    `int8`, also OUT-int8.onnx (e.g. model-int8.onnx), statically quantized on
    `CALIBRATION_IMAGES` training images, and both files' test accuracy in onnxruntime.
    `parity_images`: how many test images the gates compare on. Returns paths, file sizes,
    parity figures and (int8) accuracies; raises ExportError (a CifarlabError) when a gate
    fails, after deleting the failing file.
    """
    _check_export_args(parity_images, opset)
    src = Path(path)
    ckpt = checkpoint_path(src)
    dst = _default_out(src, out)
    model, meta = load_model(src)
    if data is None:
        data = load_data(data_dir)
    model = model.float().to(memory_format=torch.contiguous_format).eval()
    output = "log_probs" if meta["loss"] == "nll" else "logits"
    proto = _torch_to_onnx(model, meta, opset, output)
    _set_metadata(proto, _metadata(meta, ckpt, "fp32"))
    opset_used = _opset_written(proto, opset)

    n = min(parity_images, len(data.test))
    result: dict = {"onnx": str(dst), "opset": opset_used, "output": output}
    sess, md, parity = _publish_fp32(proto, model, meta, data.test.images[:n], dst, output)
    result.update(onnx_bytes=dst.stat().st_size, parity=parity)
    log(f"wrote {dst} ({dst.stat().st_size:,} bytes, opset {opset_used}): parity with PyTorch "
        f"fp32 on {n} test images: max |diff| {parity['max_abs_diff']:.2e}, top-1 agreement "
        f"{parity['top1_agreement']:.2%}")
    if int8:
        result.update(_export_int8(dst, sess, md, meta, ckpt, data, result["onnx_bytes"], log))
    return result


def _check_export_args(parity_images: int, opset: int | None) -> None:
    if parity_images < 1:
        raise ExportError("parity_images must be at least 1: every exported file is checked")
    if opset is not None and opset < 18:
        raise ExportError(f"opset {opset}: torch's ONNX exporter writes opset 18 or newer")


def _torch_to_onnx(model: torch.nn.Module, meta: dict, opset: int | None, output: str):
    """The ModelProto of `model` with its normalisation folded in (batch dimension dynamic)."""
    net = _Normalized(model, meta["mean"], meta["std"]).eval()
    with _quiet():
        try:
            batch = torch.export.Dim("batch", min=1)
            program = torch.onnx.export(
                net, (torch.rand(2, 3, 32, 32),), dynamo=True, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[output],
                dynamic_shapes=({0: batch},), verbose=False)
            return program.model_proto
        except Exception as e:
            raise ExportError(f"ONNX export of model {meta['model']} failed: "
                              f"{type(e).__name__}: {_one_line(e)}") from None


def _opset_written(proto, opset: int | None) -> int | None:
    """The opset the exporter wrote; an ExportError if it is not the one asked for."""
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                      None)
    if opset is not None and opset_used != opset:  # the exporter falls back silently
        raise ExportError(f"opset {opset}: torch's ONNX exporter cannot write it (it wrote "
                          f"opset {opset_used}); leave --opset out for the default")
    return opset_used


def _publish_fp32(proto, model: torch.nn.Module, meta: dict, images: torch.Tensor, dst: Path,
                  output: str):
    """Write `proto` to `dst` if it passes the fp32 parity gate against PyTorch on `images`:
    (session, metadata, parity figures) of the written file."""
    n = len(images)
    ref = predict_logits(model, images, meta["mean"], meta["std"], precision="fp32",
                         channels_last=False, tta=False, tta_shift=0)
    with atomic_path(dst) as tmp:  # published only once it passes the gate
        _write(proto, tmp)
        sess, md = open_onnx(tmp)
        parity = _compare(ref, run_onnx(sess, md, images))
        if not (parity["max_abs_diff"] <= FP32_MAX_DIFF
                and parity["top1_agreement"] >= FP32_MIN_AGREEMENT):
            raise ExportError(
                f"{dst}: parity gate failed on {n} test images: max |{output} difference| "
                f"{parity['max_abs_diff']:.3g} (limit {FP32_MAX_DIFF:g}), top-1 agreement "
                f"{parity['top1_agreement']:.2%} (limit {FP32_MIN_AGREEMENT:.1%}); "
                "file not written")
    return sess, md, parity


def _export_int8(dst: Path, sess, md: dict, meta: dict, ckpt: Path, data: CIFAR10,
                 fp32_bytes: int, log) -> dict:
    """OUT-int8.onnx beside `dst` (the fp32 file, open in `sess`), written if it passes the
    int8 gate; the result's int8 fields."""
    dst8 = dst.with_name(dst.stem + "-int8.onnx")
    calib_split = data.train.subset(CALIBRATION_IMAGES, seed=CALIBRATION_SEED)
    calib = _inputs(calib_split.images, md)
    with atomic_path(dst8) as tmp8:  # published only once it passes the int8 gate
        kept_fp32 = _write_int8(dst, tmp8, calib, meta, ckpt)
        parity8, fp32_acc, int8_acc = _int8_gate(sess, md, tmp8, data, dst, dst8)
    size8 = dst8.stat().st_size
    log(f"wrote {dst8} ({size8:,} bytes): top-1 agreement with fp32 "
        f"{parity8['top1_agreement']:.2%} on {len(data.test):,} test images")
    log(f"test accuracy on {len(data.test):,} images in onnxruntime: fp32 "
        f"{fp32_acc:.4f} ({fp32_bytes:,} bytes), int8 {int8_acc:.4f} "
        f"({size8:,} bytes)")
    return dict(int8=str(dst8), int8_bytes=size8, int8_parity=parity8,
                test_images=len(data.test), fp32_acc=fp32_acc, int8_acc=int8_acc,
                calibration_images=len(calib), int8_fp32_layers=kept_fp32)


def _write_int8(fp32: Path, tmp8: Path, calib: np.ndarray, meta: dict, ckpt: Path) -> list[str]:
    """Quantize `fp32` into `tmp8` and stamp its metadata; returns the layers kept in fp32."""
    import onnx

    with _quiet():
        try:
            kept_fp32 = _quantize(fp32, tmp8, calib)
        except Exception as e:
            raise ExportError(f"int8 quantization of {fp32} failed: {type(e).__name__}: "
                              f"{_one_line(e)}") from None
    proto8 = onnx.load(str(tmp8))
    _set_metadata(proto8, _metadata(meta, ckpt, (
        f"int8 (static QDQ, per-channel int8 weights, uint8 activations, first and last "
        f"layer ({', '.join(kept_fp32)}) kept in fp32, {CALIBRATION_METHOD} calibration on "
        f"{len(calib)} training images, seed {CALIBRATION_SEED})")))
    _write(proto8, tmp8)
    return kept_fp32


def _int8_gate(sess, md: dict, tmp8: Path, data: CIFAR10, dst: Path,
               dst8: Path) -> tuple[dict, float, float]:
    """The int8 file vs the fp32 one on the whole test set (both are run on it anyway):
    (parity, fp32 accuracy, int8 accuracy), or an ExportError if the gate fails."""
    sess8, md8 = open_onnx(tmp8)
    fp32_all = run_onnx(sess, md, data.test.images)
    int8_all = run_onnx(sess8, md8, data.test.images)
    parity8 = _compare(fp32_all, int8_all)
    fp32_acc = score_logits(fp32_all, data.test.labels, _loss_name(md))["acc"]
    int8_acc = score_logits(int8_all, data.test.labels, _loss_name(md))["acc"]
    drop = fp32_acc - int8_acc
    if not (parity8["top1_agreement"] >= INT8_MIN_AGREEMENT and drop <= INT8_MAX_ACC_DROP):
        raise ExportError(
            f"{dst8}: int8 gate failed: top-1 agreement with fp32 "
            f"{parity8['top1_agreement']:.2%} on {len(data.test)} test images (limit "
            f"{INT8_MIN_AGREEMENT:.0%}), test accuracy "
            f"{int8_acc:.4f} vs fp32 {fp32_acc:.4f} (max drop "
            f"{INT8_MAX_ACC_DROP:.2f}); int8 file not written, {dst.name} kept")
    return parity8, fp32_acc, int8_acc
