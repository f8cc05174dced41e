import os
import pickle

import numpy as np
import pytest
import torch
from conftest import write_batch

from cifarlab.data import (
    DataError,
    channel_stats,
    class_counts,
    find_data,
    load_data,
    read_batch,
    safe_load_pickle,
)


def test_load_synthetic(cifar_dir):
    d = load_data(cifar_dir)
    assert d.train.images.shape == (500, 3, 32, 32)
    assert d.train.images.dtype == torch.uint8
    assert d.test.images.shape == (100, 3, 32, 32)
    assert d.train.labels.dtype == torch.int64
    assert d.classes[0] == "airplane" and d.classes[9] == "truck"
    assert class_counts(d.train.labels) == [50] * 10


def test_parent_or_folder_both_work(cifar_dir):
    assert find_data(cifar_dir) == cifar_dir
    assert find_data(cifar_dir.parent) == cifar_dir


def test_search_order(cifar_dir, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("CIFAR10_DATA", str(cifar_dir.parent))
    assert find_data(None) == cifar_dir  # env var used
    with pytest.raises(DataError, match="other"):
        find_data(other)  # explicit dir wins over the env var, and is the only place looked
    monkeypatch.delenv("CIFAR10_DATA")
    (cwd / "data").symlink_to(cifar_dir.parent)
    assert find_data(None).resolve() == cifar_dir.resolve()  # ./data last


def test_not_found_message_lists_places(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIFAR10_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as e:
        find_data(None)
    msg = str(e.value)
    assert "nowhere" in msg and "data" in msg and "--download" in msg
    assert "\n" not in msg


def test_stats_match_manual(cifar_dir):
    d = load_data(cifar_dir)
    mean, std = channel_stats(d.train.images)
    x = d.train.images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(std, x.transpose(1, 0, 2, 3).reshape(3, -1).std(1, ddof=1),
                               rtol=1e-9)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/cifarlab_pwned",))


def test_unpickler_refuses_code(tmp_path):
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match="refusing to load 'posix.system'|refusing to load"):
        safe_load_pickle(p)
    assert not os.path.exists("/tmp/cifarlab_pwned")


def test_unpickler_refuses_in_load(cifar_dir):
    (cifar_dir / "data_batch_3").write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(DataError, match="data_batch_3"):
        load_data(cifar_dir)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_reads_python3_pickles(tmp_path, protocol):
    p = tmp_path / "b"
    data = np.zeros((3, 3072), dtype=np.uint8)
    with open(p, "wb") as f:
        pickle.dump({"data": data, "labels": [0, 1, 2]}, f, protocol=protocol)
    x, y = read_batch(p)
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [0, 1, 2]


def test_missing_file(cifar_dir):
    (cifar_dir / "data_batch_2").unlink()
    with pytest.raises(DataError, match="data_batch_2: file is missing"):
        load_data(cifar_dir)


def test_missing_meta(cifar_dir):
    (cifar_dir / "batches.meta").unlink()
    with pytest.raises(DataError, match="batches.meta: file is missing"):
        load_data(cifar_dir)


def test_truncated(cifar_dir):
    p = cifar_dir / "data_batch_4"
    p.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(DataError, match="data_batch_4: corrupt or truncated"):
        load_data(cifar_dir)


def test_garbage(cifar_dir):
    (cifar_dir / "test_batch").write_bytes(b"\x00not a pickle at all" * 10)
    with pytest.raises(DataError, match="test_batch"):
        load_data(cifar_dir)


def test_wrong_shape(cifar_dir):
    write_batch(cifar_dir / "data_batch_1", np.zeros((10, 100), np.uint8), [0] * 10)
    with pytest.raises(DataError, match=r"data_batch_1: 'data' must be an N×3072"):
        load_data(cifar_dir)


def test_wrong_dtype(cifar_dir):
    write_batch(cifar_dir / "data_batch_1", np.zeros((10, 3072), np.float32), [0] * 10)
    with pytest.raises(DataError, match="data_batch_1: 'data' must be uint8"):
        load_data(cifar_dir)


def test_bad_labels(cifar_dir):
    write_batch(cifar_dir / "data_batch_5", np.zeros((3, 3072), np.uint8), [0, 10, 2])
    with pytest.raises(DataError, match="data_batch_5: labels outside 0-9"):
        load_data(cifar_dir)


def test_label_count_mismatch(cifar_dir):
    write_batch(cifar_dir / "data_batch_5", np.zeros((3, 3072), np.uint8), [0, 1])
    with pytest.raises(DataError, match="data_batch_5: 'labels' must be 3 integers"):
        load_data(cifar_dir)
