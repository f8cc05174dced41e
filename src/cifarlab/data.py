"""CIFAR-10 in the official "python version" layout: find, download, read safely, check, stats.

The whole set lives in memory as uint8 tensors (N, 3, 32, 32); batching and augmentation
happen on tensors (see ``augment.py``), never one PIL image at a time.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import CifarlabError

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
META_FILE = "batches.meta"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
ARCHIVE_SIZE = 170_498_071
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)


class DataError(CifarlabError):
    """The data set could not be found, fetched or read."""


# --------------------------------------------------------------------------- safe unpickling

def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_frombuffer():
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 2
        from numpy.core.numeric import _frombuffer
    return _frombuffer


def _codecs_encode(obj, encoding="latin1"):
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(str, "latin1").
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("unexpected _codecs.encode arguments")
    return obj.encode("latin1")


# Everything the official files (and numpy arrays pickled by Python 3) can contain.
_ALLOWED = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("_codecs", "encode"): lambda: _codecs_encode,
}


class RefusedGlobal(pickle.UnpicklingError):
    pass


class SafeUnpickler(pickle.Unpickler):
    """Only rebuilds numpy arrays, dicts, lists, numbers and strings; refuses any other global."""

    def find_class(self, module: str, name: str):
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise RefusedGlobal(
                f"refusing to load '{module}.{name}': not something a CIFAR-10 batch contains"
            )
        return factory()


def safe_load_pickle(path: Path) -> object:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file is missing") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except RefusedGlobal as e:
        raise DataError(f"{path}: {e}") from None
    except Exception as e:  # truncated or garbage: EOFError, UnpicklingError, ValueError, ...
        raise DataError(f"{path}: corrupt or truncated pickle ({e or type(e).__name__})") from None


def _get(d: dict, key: str):
    """The batches use byte-string keys (Python 2 pickles); accept str keys too."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One official batch file -> (uint8 images N×3×32×32, int64 labels N), checked."""
    d = safe_load_pickle(path)
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a dict, found {type(d).__name__}")
    data, labels = _get(d, "data"), _get(d, "labels")
    if data is None or labels is None:
        raise DataError(f"{path}: missing 'data' or 'labels'")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{path}: 'data' must be an N×3072 array, found {shape}")
    if data.dtype != np.uint8:
        raise DataError(f"{path}: 'data' must be uint8, found {data.dtype}")
    labels = np.asarray(labels)
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' must be {data.shape[0]} integers")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels outside 0-9 (found {labels.min()}..{labels.max()})")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_classes(folder: Path) -> tuple[str, ...]:
    meta = safe_load_pickle(folder / META_FILE)
    names = _get(meta, "label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"{folder / META_FILE}: expected 'label_names' with 10 entries")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


# --------------------------------------------------------------------------- locating

def _as_folder(d: Path) -> Path | None:
    """`d` may be the cifar-10-batches-py folder itself or its parent."""
    for cand in (d, d / FOLDER):
        if (cand / META_FILE).exists() or (cand / TEST_FILES[0]).exists():
            return cand
    return None


def candidate_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    """Where to look, in order: --data-dir, $CIFAR10_DATA, ./data."""
    if data_dir is not None:
        return [Path(data_dir)]
    out = []
    if os.environ.get("CIFAR10_DATA"):
        out.append(Path(os.environ["CIFAR10_DATA"]))
    out.append(Path("data"))
    return out


def find_data(
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    url: str = URL,
    md5: str = ARCHIVE_MD5,
    size: int | None = ARCHIVE_SIZE,
) -> Path:
    """Return the cifar-10-batches-py folder, downloading it into the first place if asked."""
    places = candidate_dirs(data_dir)
    for d in places:
        found = _as_folder(d)
        if found is not None:
            return found
    if download:
        return download_cifar10(places[0], url=url, md5=md5, size=size)
    looked = ", ".join(str(p) for p in places)
    raise DataError(
        f"CIFAR-10 not found (looked in: {looked}); pass --data-dir DIR, set CIFAR10_DATA, "
        f"or add --download to fetch it into {places[0]}"
    )


# --------------------------------------------------------------------------- download

def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe_extract(archive: Path, dest: Path) -> None:
    dest_real = dest.resolve()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                target = (dest / m.name).resolve()
                if not target.is_relative_to(dest_real):
                    raise DataError(f"{archive}: refusing archive member outside target: {m.name}")
                if not (m.isfile() or m.isdir()):
                    raise DataError(f"{archive}: refusing link or special file: {m.name}")
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{archive}: cannot extract ({e})") from None


def download_cifar10(
    dest: Path, url: str = URL, md5: str = ARCHIVE_MD5, size: int | None = ARCHIVE_SIZE
) -> Path:
    """Fetch the official archive into `dest`, verify size and md5, extract, return the folder."""
    from tqdm import tqdm

    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".download-", suffix=".tar.gz", dir=dest)
    tmp = Path(tmp_name)
    try:
        try:
            with urllib.request.urlopen(url, timeout=60) as r, os.fdopen(fd, "wb") as f:
                total = int(r.headers.get("Content-Length") or 0) or size
                with tqdm(total=total, unit="B", unit_scale=True, desc="download") as bar:
                    for chunk in iter(lambda: r.read(1 << 20), b""):
                        f.write(chunk)
                        bar.update(len(chunk))
        except (OSError, ValueError) as e:
            raise DataError(f"download of {url} failed: {e}") from None
        got = tmp.stat().st_size
        if size is not None and got != size:
            raise DataError(
                f"download of {url} is {got} bytes, expected {size} (truncated?); nothing kept"
            )
        digest = _md5(tmp)
        if digest != md5:
            raise DataError(f"download of {url} has md5 {digest}, expected {md5}; nothing kept")
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
        try:
            _safe_extract(tmp, staging)
            folder = _as_folder(staging)
            if folder is None:
                raise DataError(f"{url}: archive does not contain {FOLDER}/")
            load_split(folder, "test")  # structural check before it is put in place
            final = dest / FOLDER
            if final.exists():
                raise DataError(f"{final} already exists; remove it or point --data-dir to it")
            folder.rename(final)
        finally:
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
        return final
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- in-memory dataset

@dataclass
class Split:
    images: torch.Tensor  # uint8, N×3×32×32
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int, seed: int = 0) -> Split:
        """A uniformly random subset of n images (deterministic for a seed)."""
        if n <= 0 or n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n]
        return Split(self.images[idx].contiguous(), self.labels[idx].contiguous())

    def hold_out(self, n: int, seed: int = 0) -> tuple[Split, Split]:
        """(rest, held): n images held out, stratified by class (each class gives its share,
        rounded, the largest remainders first), chosen by `seed` alone: the same images on
        every machine and in every process. Both keep the original order."""
        if n <= 0:
            return self, Split(self.images[:0], self.labels[:0])
        if n >= len(self):
            raise DataError(f"data.val_split {n} leaves no training images "
                            f"(the training set has {len(self)})")
        counts = torch.bincount(self.labels)
        exact = counts.double() * n / len(self)
        share = exact.floor().long()
        extra = n - int(share.sum())
        share[torch.argsort(exact - share, descending=True, stable=True)[:extra]] += 1
        g = torch.Generator().manual_seed(seed)
        held = []
        for c in range(len(counts)):
            idx = torch.nonzero(self.labels == c).flatten()
            held.append(idx[torch.randperm(len(idx), generator=g)[:int(share[c])]])
        mask = torch.zeros(len(self), dtype=torch.bool)
        mask[torch.cat(held)] = True
        return (Split(self.images[~mask].contiguous(), self.labels[~mask].contiguous()),
                Split(self.images[mask].contiguous(), self.labels[mask].contiguous()))


@dataclass
class CIFAR10:
    train: Split
    test: Split
    classes: tuple[str, ...]
    root: Path


def load_split(folder: Path, split: str) -> Split:
    files = TRAIN_FILES if split == "train" else TEST_FILES
    parts = [read_batch(folder / f) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return Split(torch.from_numpy(images), torch.from_numpy(labels))


def load_data(data_dir: str | os.PathLike | None = None, download: bool = False) -> CIFAR10:
    """Load CIFAR-10 into memory as uint8 tensors (see `find_data` for where it looks)."""
    folder = find_data(data_dir, download=download)
    if not (folder / META_FILE).exists():
        raise DataError(f"{folder / META_FILE}: file is missing")
    classes = read_classes(folder)
    return CIFAR10(load_split(folder, "train"), load_split(folder, "test"), classes, folder)


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, on the [0, 1] scale."""
    x = images.to(torch.float64).div_(255).transpose(0, 1).reshape(3, -1)
    return x.mean(1).tolist(), x.std(1).tolist()


def class_counts(labels: torch.Tensor) -> list[int]:
    return torch.bincount(labels, minlength=10).tolist()


def check_sizes(cfg: dict, data: CIFAR10) -> None:
    """The split sizes fit this data set (checked before a run directory is made)."""
    n, v = len(data.train), cfg["data"]["val_split"]
    if v and n - v < 2:
        raise CifarlabError(f"data.val_split {v} leaves fewer than 2 training images "
                            f"(the training set has {n:,})")


def splits(cfg: dict, data: CIFAR10) -> tuple[Split, Split | None, Split]:
    """(train, validation or None, test): the validation images are held out of the full
    training set first (the same ones whatever the subset), then the subsets are drawn."""
    d, seed = cfg["data"], cfg["train"]["seed"]
    pool, val = data.train.hold_out(d["val_split"], seed=d["val_seed"])
    train = pool.subset(d["train_subset"], seed=seed)
    if len(train) < 2:
        raise CifarlabError("training set has fewer than 2 images")
    return train, (val if d["val_split"] else None), data.test.subset(d["test_subset"],
                                                                         seed=seed)
