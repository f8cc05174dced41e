"""TensorBoard logger: scalars, image grid, hparams and resumed runs, read back with
TensorBoard's own event reader."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from cifarlab.errors import CifarlabError
from cifarlab.tblog import SUBDIR, TensorBoardLogger, flatten, image_grid, to_uint8


def row(epoch: int, **kw) -> dict:
    r = {"epoch": epoch, "lr": 0.1 / epoch, "train_loss": 2.0 / epoch, "train_acc": 0.1 * epoch,
         "test_loss": math.nan, "test_acc": math.nan, "images_per_second": 1000.0 + epoch,
         "seconds": 10.0 + epoch}
    r.update(kw)
    return r


def read(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / SUBDIR), size_guidance={"scalars": 0, "images": 0,
                                                                 "tensors": 0})
    acc.Reload()
    return acc


def steps(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_scalars_values_steps_and_nan_skipped(tmp_path):
    with TensorBoardLogger(tmp_path) as tb:
        tb.log_epoch(row(1))
        tb.log_epoch(row(2, test_loss=1.5, test_acc=0.42, val_acc=None))
        tb.log_epoch({"epoch": 3, "train_loss": 0.5})  # keys may be missing
    acc = read(tmp_path)
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "accuracy/train", "lr", "accuracy/test", "loss/test",
            "speed/images_per_second", "speed/epoch_seconds"} <= tags
    assert "accuracy/val" not in tags  # None / missing: nothing logged
    assert steps(acc, "loss/train") == [(1, pytest.approx(2.0)), (2, pytest.approx(1.0)),
                                        (3, pytest.approx(0.5))]
    assert steps(acc, "accuracy/test") == [(2, pytest.approx(0.42))]  # NaN epochs skipped
    assert steps(acc, "lr") == [(1, pytest.approx(0.1)), (2, pytest.approx(0.05))]
    assert steps(acc, "speed/epoch_seconds") == [(1, 11.0), (2, 12.0)]


def test_image_grid_written(tmp_path):
    batch = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    with TensorBoardLogger(tmp_path) as tb:
        tb.log_images(batch)
    acc = read(tmp_path)
    assert acc.Tags()["images"] == ["augmented_train"]
    (ev,) = acc.Images("augmented_train")
    assert ev.step == 1
    # 10 images: 4 columns x 3 rows of 32 px with 2 px padding
    assert (ev.width, ev.height) == (4 * 34 + 2, 3 * 34 + 2)
    png = np.asarray(Image.open(io.BytesIO(ev.encoded_image_string)).convert("RGB"))
    assert (png[2:34, 2:34] == batch[0].permute(1, 2, 0).numpy()).all()
    assert (png[2:34, 36:68] == batch[1].permute(1, 2, 0).numpy()).all()


def test_grid_and_unnormalise():
    imgs = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).view(4, 3, 2, 2)
    g = image_grid(imgs, ncol=2, pad=1, fill=7)
    assert g.shape == (3, 2 * 3 + 1, 2 * 3 + 1)
    assert (g[:, 1:3, 1:3] == imgs[0]).all() and (g[:, 4:6, 4:6] == imgs[3]).all()
    assert (g[:, 0] == 7).all()
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    x = imgs.float() / 255
    normed = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert (to_uint8(normed, mean, std) == imgs).all()
    assert (to_uint8(imgs) == imgs).all()


def test_hparams_flattened_with_metrics(tmp_path):
    recipe = {"name": "fast-50k", "model": "fast-50k",
              "optim": {"name": "sgd", "lr": 0.2, "nesterov": True},
              "train": {"epochs": 14, "target": None},
              "constraints": {"require": ["gap"]}}
    assert flatten(recipe) == {"name": "fast-50k", "model": "fast-50k", "optim.name": "sgd",
                               "optim.lr": 0.2, "optim.nesterov": True, "train.epochs": 14}
    with TensorBoardLogger(tmp_path) as tb:
        tb.log_epoch(row(1))
        tb.log_epoch(row(2, test_acc=0.8))
        tb.log_hparams(recipe, {"test_acc": 0.8, "best_test_acc": 0.81, "target_epoch": None,
                                "params": 49658, "nan": math.nan})
    acc = read(tmp_path)
    assert steps(acc, "hparam/test_acc") == [(2, pytest.approx(0.8))]
    assert "hparam/nan" not in acc.Tags()["scalars"]
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optim.lr"].number_value == pytest.approx(0.2)
    assert start.hparams["optim.name"].string_value == "sgd"
    assert start.hparams["optim.nesterov"].number_value == 1  # torch stores bools as 0/1
    assert "constraints.require" not in start.hparams and "train.target" not in start.hparams
    exp = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in exp.metric_infos} == {"hparam/test_acc", "hparam/best_test_acc",
                                                      "hparam/params"}


def test_resumed_run_has_one_value_per_epoch(tmp_path):
    first = TensorBoardLogger(tmp_path)
    for e in (1, 2, 3):
        first.log_epoch(row(e))
    # the checkpoint after epoch 3 is the last one; epoch 4 is logged, then the run is killed
    first.log_epoch(row(4, train_loss=99.0))
    first.writer.flush()  # no close(): a crash
    resumed = TensorBoardLogger(tmp_path, start_epoch=3)
    for e in (4, 5):
        resumed.log_epoch(row(e))
    resumed.close()
    first.close()
    acc = read(tmp_path)
    got = steps(acc, "loss/train")
    assert [s for s, _ in got] == [1, 2, 3, 4, 5]
    assert got[3][1] == pytest.approx(0.5)  # the resumed leg's epoch 4, not the orphan's 99
    for tag in ("lr", "accuracy/train", "speed/epoch_seconds"):
        assert [s for s, _ in steps(acc, tag)] == [1, 2, 3, 4, 5]


def test_row_without_epoch_and_empty_batch_rejected(tmp_path):
    with TensorBoardLogger(tmp_path) as tb:
        with pytest.raises(ValueError):
            tb.log_epoch({"train_loss": 1.0})
        with pytest.raises(ValueError):
            tb.log_images(torch.zeros(0, 3, 32, 32, dtype=torch.uint8))


def test_unwritable_run_dir_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CifarlabError, match="cannot create"):
        TensorBoardLogger(blocker)


def test_training_with_tensorboard_and_resume(shared_cifar_dir, tmp_path):
    """`train --tensorboard`: curves per epoch, one augmented grid, the recipe as hparams; a
    run stopped by its time budget and resumed continues its curves without duplicates."""
    import cifarlab
    from cifarlab.cli import main

    args = ["train", "--recipe", "fast-50k", "--data-dir", str(shared_cifar_dir),
            "--runs-dir", str(tmp_path), "--epochs", "3", "--batch-size", "100", "--procs", "1",
            "--val-split", "100", "--set", "train.eval_every=1", "--tensorboard", "--no-plots",
            "--max-minutes", "0.0001"]
    assert main(args) == 0  # stops after epoch 1 (time budget)
    run = tmp_path / "fast-50k"
    m = cifarlab.train(resume=run, data_dir=shared_cifar_dir, progress=False, plots=False,
                       log=lambda s: None)
    assert m["epochs"] == 3
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    tags = acc.Tags()
    for tag in ("loss/train", "accuracy/val", "lr", "speed/images_per_second"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3], tag
    assert "accuracy/test" not in tags["scalars"]  # the test set is read once, at the end
    assert tags["images"] == ["augmented_train"]
    assert any(t.startswith("hparam/test_acc") for t in tags["scalars"])
