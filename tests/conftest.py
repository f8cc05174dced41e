"""Fixtures: tiny CIFAR-10 data sets written in the official python format."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck"]


def make_images(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Learnable synthetic images: each class has its own mean colour plus noise."""
    rng = np.random.default_rng(seed)
    labels = [i % 10 for i in range(n)]
    base = np.linspace(20, 235, 10)
    data = np.empty((n, 3, 32, 32), dtype=np.float64)
    for i, y in enumerate(labels):
        data[i, 0] = base[y]
        data[i, 1] = base[(y * 3) % 10]
        data[i, 2] = base[(y * 7) % 10]
    data += rng.normal(0, 20, data.shape)
    return np.clip(data, 0, 255).astype(np.uint8).reshape(n, 3072), labels


def write_batch(path: Path, data: np.ndarray, labels: list[int], label: str = "batch") -> None:
    d = {b"batch_label": label.encode(), b"labels": labels, b"data": data,
         b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


def write_cifar(root: Path, per_batch: int = 100, test: int = 100) -> Path:
    """root/cifar-10-batches-py with 5 training batches of `per_batch` images and a test batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        data, labels = make_images(per_batch, seed=i)
        write_batch(folder / f"data_batch_{i}", data, labels, f"training batch {i} of 5")
    data, labels = make_images(test, seed=99)
    write_batch(folder / "test_batch", data, labels, "testing batch 1 of 1")
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": 10000,
                     b"num_vis": 3072}, f, protocol=2)
    return folder


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    """A tiny synthetic data set; returns the cifar-10-batches-py folder."""
    return write_cifar(tmp_path / "data")


# The recipe the export and robustness fixtures train for one epoch on the synthetic set: the
# issue-17 fast-50k, whose int8 file passes the int8 gate even so; the shipped fast-50k's design
# changes with the speed work (issue 32's first one, fully trained, passed it at 98.9% top-1
# agreement, but after one synthetic epoch sat at the 97% limit)
INT8_FIXTURE_RECIPE = Path(__file__).resolve().parents[1] / "benchmarks" / "searches" / \
    "fast-50k-issue17.toml"


@pytest.fixture(scope="session")
def shared_cifar_dir(tmp_path_factory) -> Path:
    """Session-wide tiny data set for tests that only read it."""
    return write_cifar(tmp_path_factory.mktemp("data"), per_batch=200, test=200)


@pytest.fixture(scope="session")
def engine_runs(shared_cifar_dir, tmp_path_factory) -> dict[str, Path]:
    """Run directories the engine really wrote ("plain", "val": see
    conftest_runs.train_engine_runs), trained once per session; copy one before changing it."""
    from conftest_runs import train_engine_runs

    return train_engine_runs(shared_cifar_dir, tmp_path_factory.mktemp("engine-runs"))


@pytest.fixture
def real_data_dir() -> Path:
    """The shared real CIFAR-10 copy (CI sets CIFAR10_DATA); skipped where absent."""
    d = os.environ.get("CIFAR10_DATA")
    if not d or not Path(d).exists():
        pytest.skip("CIFAR10_DATA not set: real-data test skipped")
    return Path(d)


@pytest.fixture(autouse=True)
def _no_env_data(monkeypatch, request):
    """Tests see CIFAR10_DATA only when they ask for the real data."""
    if "real_data_dir" not in request.fixturenames:
        monkeypatch.delenv("CIFAR10_DATA", raising=False)


@pytest.fixture
def drawn(monkeypatch) -> dict:
    """The figures cifarlab.plots saves, by file name (to read what they show, not pixels)."""
    from cifarlab import plots

    figs = {}
    real = plots.save_figure

    def keep(fig, out):
        figs[Path(out).name] = fig
        return real(fig, out)

    monkeypatch.setattr(plots, "save_figure", keep)
    return figs
