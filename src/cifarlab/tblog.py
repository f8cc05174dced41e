"""TensorBoard logging for a training run: RUN_DIR/tensorboard/ (`tensorboard --logdir runs`).

The training loop drives it through callbacks: `log_epoch(row)` after each epoch (scalars at
step = epoch), `log_images(batch)` once per training leg (a grid of augmented training images),
`log_hparams(recipe, metrics)` at the end, `close()` always. A resumed run constructs it with
`start_epoch=k` (the epochs its checkpoint holds): the new event file then starts with a
restart marker at step k+1, and TensorBoard drops whatever an interrupted earlier leg wrote at
steps after k, so every curve has one value per epoch.
"""

from __future__ import annotations

import math
import os
import re
import time
from numbers import Real
from pathlib import Path

import torch

from .errors import CifarlabError

SUBDIR = "tensorboard"

# history-row key -> scalar tag (grouped so that TensorBoard draws train/val/test together)
TAGS = {
    "train_loss": "loss/train", "val_loss": "loss/val", "test_loss": "loss/test",
    "train_acc": "accuracy/train", "val_acc": "accuracy/val", "test_acc": "accuracy/test",
    "lr": "lr",
    "images_per_second": "speed/images_per_second", "seconds": "speed/epoch_seconds",
}
_EVENT_FILE = re.compile(r"^events\.out\.tfevents\.(\d+)\.")


def _finite(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def flatten(d: dict, prefix: str = "") -> dict:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}; only bool/int/float/str leaves are kept
    (lists, None and other values are left out: TensorBoard's hparams take scalars only)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, bool | int | float | str):
            out[key] = v
    return out


def image_grid(images: torch.Tensor, ncol: int | None = None, pad: int = 2,
               fill: int = 255) -> torch.Tensor:
    """N×3×H×W uint8 -> one 3×H'×W' uint8 grid (ncol columns, default about √N; `pad` pixels
    of `fill` between and around images)."""
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = torch.full((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), fill,
                      dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, y:y + h, x:x + w] = images[i]
    return grid


def to_uint8(images: torch.Tensor, mean=None, std=None) -> torch.Tensor:
    """uint8 images as they are; float images un-normalised with mean/std (per channel, on
    [0, 1] pixels) if given, else taken as [0, 1]; any device or memory format."""
    x = images.detach().cpu()
    if x.dtype == torch.uint8:
        return x.contiguous()
    x = x.float()
    if mean is not None and std is not None:
        x = x * torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1) \
            + torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()


class TensorBoardLogger:
    """Scalars, an image grid and hparams of one run, in RUN_DIR/tensorboard/."""

    def __init__(self, run_dir: str | os.PathLike, *, start_epoch: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise CifarlabError("TensorBoard logging needs the tensorboard package "
                                "(pip install tensorboard)") from None
        self.log_dir = Path(run_dir) / SUBDIR
        self.start_epoch = start_epoch
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CifarlabError(f"{self.log_dir}: cannot create ({e.strerror})") from None
        self._after_existing_files()
        # purge_step=k+1: TensorBoard drops every event of earlier files at step >= k+1,
        # i.e. what an interrupted leg logged after the checkpoint this run resumes from.
        purge = start_epoch + 1 if start_epoch > 0 else None
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)
        self._last_step = start_epoch

    def _after_existing_files(self) -> None:
        """Event files are read in name order, and names start with the creation second: wait
        (at most a second) if an earlier leg's file has this second, so ours sorts after it
        and its restart marker is read after the events it purges."""
        stamps = [int(m.group(1)) for f in self.log_dir.iterdir()
                  if (m := _EVENT_FILE.match(f.name))]
        if stamps and max(stamps) >= int(time.time()):
            time.sleep(max(0.0, max(stamps) + 1 - time.time()) + 0.01)

    def log_epoch(self, row: dict) -> None:
        """One history row (epoch, lr, train_loss, ..., seconds) as scalars at step = epoch;
        missing, None and NaN values are skipped (e.g. epochs without a test). Flushed at once:
        a crash loses nothing already logged."""
        if "epoch" not in row:
            raise ValueError("log_epoch: the row has no 'epoch'")
        step = int(row["epoch"])
        for key, value in row.items():
            if key == "epoch" or not _finite(value):
                continue
            self.writer.add_scalar(TAGS.get(key, key), float(value), step)
        self._last_step = step
        self.writer.flush()

    def log_images(self, images: torch.Tensor, tag: str = "augmented_train", *,
                   step: int | None = None, mean=None, std=None, max_images: int = 64) -> None:
        """The first `max_images` of a batch as one grid image. uint8 batches as they are;
        normalised float batches (what the augmentation pipeline returns) are mapped back to
        pixels with the run's `mean`/`std`. Step: the first epoch of this leg by default."""
        if images.dim() != 4 or images.shape[0] == 0:
            raise ValueError("log_images: expected a non-empty N×C×H×W batch")
        grid = image_grid(to_uint8(images[:max_images], mean, std))
        self.writer.add_image(tag, grid, self.start_epoch + 1 if step is None else step,
                              dataformats="CHW")
        self.writer.flush()

    def log_hparams(self, recipe: dict, final_metrics: dict, *, step: int | None = None) -> None:
        """The recipe (flattened: 'optim.lr', ...) with the run's final metrics (finite
        numbers only, logged as 'hparam/<name>') for TensorBoard's HPARAMS tab; written into
        the same run (not a timestamped sub-run)."""
        hp = flatten(recipe)
        metrics = {f"hparam/{k}": float(v) for k, v in final_metrics.items() if _finite(v)}
        if not metrics:
            raise ValueError("log_hparams: no finite metric to record")
        self.writer.add_hparams(hp, metrics, run_name=".",
                                global_step=self._last_step if step is None else step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RunBoard:
    """train.tensorboard: event files in RUN_DIR/tensorboard (tblog.TensorBoardLogger): a grid
    of augmented training images, each epoch's row, and the recipe with its final figures."""

    def __init__(self, cfg: dict, run_path: Path, epoch: int, pipeline, images: torch.Tensor,
                 mean, std):
        self.cfg, self.first = cfg, epoch
        self.logger = TensorBoardLogger(run_path, start_epoch=epoch)
        # its own generator: the training run's random streams are untouched
        grid = pipeline(images[:64], torch.Generator().manual_seed(cfg["train"]["seed"]))
        self.logger.log_images(grid, mean=mean, std=std)

    def log_epoch(self, row: dict) -> None:
        self.logger.log_epoch(row)

    def log_final(self, metrics: dict) -> None:
        if metrics["epochs"] > self.first:  # this leg trained: the run's final figures
            keys = ("test_acc", "val_acc", "best_val_acc", "best_test_acc", "test_loss",
                    "train_seconds", "params")
            self.logger.log_hparams(self.cfg, {k: metrics[k] for k in keys
                                               if metrics.get(k) is not None},
                                    step=metrics["epochs"])

    def close(self) -> None:
        self.logger.close()
