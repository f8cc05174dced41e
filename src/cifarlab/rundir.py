"""The run directory: the one module that knows its format.

runs/<name>/
  config.json    resolved recipe, seed, versions
  history.csv    one row per epoch (val_loss / val_acc columns when there is a split)
  metrics.json   final numbers, each saying which split it comes from
  legs.json      every command that trained it: commit, machine, dates, epochs covered
  best.pt, last.pt   checkpoints (weights_only-loadable), written atomically
  robustness.json    `cifarlab robustness`: accuracy under corruptions (robust.py)
  plots/         figures
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import CifarlabError
from .provenance import command, commit, machine, now
from .version import __version__

HISTORY_FIELDS = [
    "epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds",
]
VAL_FIELDS = ["val_loss", "val_acc"]  # after train_acc, in runs with a validation split


class RunDirError(CifarlabError):
    pass


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A new temporary file beside `path` (same folder, so the rename is atomic) for the block
    to write, and check, before it replaces `path` in one rename when the block ends without
    an error; removed otherwise. A reader (or a kill at any moment) sees either the old file
    or the new one, never a torn one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise RunDirError(f"{path}: cannot write ({e.strerror})") from None
    os.close(fd)
    tmp, published = Path(name), False
    try:
        yield tmp
        try:
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
            os.replace(tmp, path)
            published = True
        except OSError as e:
            raise RunDirError(f"{path}: cannot write ({e.strerror}); previous file kept") \
                from None
    finally:
        if not published:
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (`atomic_path`), fsynced before the rename."""
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise RunDirError(f"{path}: cannot write ({e.strerror}); previous file kept") \
                from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path}: file is missing") from None
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path}: cannot read JSON ({e})") from None


def save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict:
    """Load with weights_only=True: a checkpoint that carries code is refused."""
    if not path.is_file():
        raise RunDirError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives
        raise RunDirError(f"{path}: corrupt or not a checkpoint (not a torch.save archive)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"(?i)unsupported (?:global:? )?GLOBAL ([\w.]+)", str(e))
        why = f"it would import {m.group(1)}" if m else "it holds more than plain weights"
        raise RunDirError(f"{path}: refused to load: {why}") from None
    except Exception as e:  # truncated zip, garbage bytes, ...
        raise RunDirError(f"{path}: corrupt or not a checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        raise RunDirError(f"{path}: not a cifarlab checkpoint (no 'model'/'meta')")
    return state


def tested(rows: list[dict], key: str = "test_acc") -> list[tuple[int, float]]:
    """(epoch, value) of the history rows that were tested: train.eval_every may skip epochs,
    which then hold NaN."""
    return [(r["epoch"], r[key]) for r in rows if math.isfinite(r[key])]


def _fields(row: dict) -> list[str]:
    """history.csv's columns for rows like `row` (the val columns only where it has them)."""
    if "val_acc" not in row:
        return HISTORY_FIELDS
    return HISTORY_FIELDS[:4] + VAL_FIELDS + HISTORY_FIELDS[4:]


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.json")
    history = property(lambda self: self.path / "history.csv")
    metrics = property(lambda self: self.path / "metrics.json")
    legs = property(lambda self: self.path / "legs.json")
    best = property(lambda self: self.path / "best.pt")
    last = property(lambda self: self.path / "last.pt")
    plots = property(lambda self: self.path / "plots")
    robustness = property(lambda self: self.path / "robustness.json")

    @staticmethod
    def create(root: str | os.PathLike, name: str) -> RunDir:
        """A fresh directory root/name, or root/name-2, -3, ... if taken (never overwrite)."""
        root = Path(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"{root}: cannot create runs directory ({e.strerror})") from None
        for i in range(1, 10_000):
            p = root / (name if i == 1 else f"{name}-{i}")
            try:
                p.mkdir()
                return RunDir(p)
            except FileExistsError:
                continue
            except OSError as e:
                raise RunDirError(f"{p}: cannot create run directory ({e.strerror})") from None
        raise RunDirError(f"{root}: too many runs named {name}")

    def write_history(self, rows: list[dict]) -> None:
        fields = _fields(rows[0] if rows else {})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in fields})
        atomic_write_text(self.history, buf.getvalue())

    def read_legs(self) -> list[dict]:
        return read_json(self.legs) if self.legs.is_file() else []

    def read_history(self) -> tuple[list[dict], list[str]]:
        """Rows (numbers as floats, epoch as int) and a list of problems found (never raises
        for a torn or missing file: the report marks it instead)."""
        problems: list[str] = []
        if not self.history.is_file():
            return [], ["history.csv missing"]
        rows = []
        with open(self.history, newline="") as f:
            reader = csv.DictReader(f)
            fields = _fields(dict.fromkeys(reader.fieldnames or []))
            for i, r in enumerate(reader, start=2):
                try:
                    row = {k: float(r[k]) for k in fields}
                except (TypeError, ValueError, KeyError):
                    problems.append(f"history.csv line {i} unreadable (torn write?)")
                    continue
                row["epoch"] = int(row["epoch"])
                rows.append(row)
        return rows, problems


def model_meta(cfg: dict, classes, mean, std, model_facts: dict) -> dict:
    """What inference needs, stored in every checkpoint (plain types: weights_only-safe);
    `model_source`: the user's file and its sha256 for a FILE.py:NAME network, else None."""
    return {
        "model": cfg["model"], "model_args": dict(cfg["model_args"]),
        "params": model_facts["params"], "model_source": model_facts.get("model_source"),
        "classes": list(classes), "mean": list(mean), "std": list(std),
        "loss": cfg["loss"]["name"], "precision": cfg["train"]["precision"],
        "channels_last": cfg["train"]["channels_last"], "tta": cfg["train"]["tta"],
        "tta_shift": cfg["train"]["tta_shift"],
        # seed 003 scored a test set augmented once; eval must score the same input
        "test_augment": dict(cfg["augment"]) if cfg["augment"]["test"] else None,
        "seed": cfg["train"]["seed"],
        "recipe": cfg["name"],
    }


class LegRecorder:
    """legs.json: every command that trained the run (commit, machine, dates, epochs)."""

    def __init__(self, run: RunDir, main: bool, resume: bool, epoch: int, device: str):
        self.run, self.main = run, main
        self.legs = run.read_legs() if (main and resume) else []
        self.leg = {"commit": commit(), "started": now(), "ended": None,
                    "machine": machine() if main else "", "device": device,
                    "cifarlab": __version__, "command": command(),
                    "first_epoch": epoch + 1, "last_epoch": epoch}

    def record(self, epoch: int) -> None:
        self.leg.update(ended=now(), last_epoch=epoch)
        write_json(self.run.legs, self.legs + [self.leg])

    def all(self) -> list[dict]:
        return self.legs + ([self.leg] if self.leg["last_epoch"] >= self.leg["first_epoch"]
                            else [])
