"""Inference: a trained model from its checkpoint; logits with test-time augmentation;
accuracy, per-class accuracy, confusion."""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from .augment import normalize
from .errors import CifarlabError
from .models import REGISTRY, create_model
from .rundir import load_checkpoint


def autocast(precision: str, device_type: str = "cpu"):
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return nullcontext()


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, mean, std, *,
                   batch_size: int = 1000, precision: str = "bf16", channels_last: bool = True,
                   tta: bool = False, tta_shift: int = 0) -> torch.Tensor:
    """Float32 logits for uint8 images (N×3×32×32) or already-normalised float images;
    with `tta`, averaged with the mirror; with `tta_shift` s, also over the image moved by s
    pixels up-left and down-right (reflect padding), weighted 1/2, 1/4, 1/4 (airbench).
    Runs on the model's device; the logits come back on the CPU."""
    was_training = model.training
    model.eval()
    p = next(model.parameters(), None)
    dev = p.device if p is not None else torch.device("cpu")
    mean_t, std_t = torch.as_tensor(mean), torch.as_tensor(std)
    out = []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        x = normalize(batch, mean_t, std_t) if batch.dtype == torch.uint8 else batch
        x = x.to(dev)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(precision, dev.type):
            logits = _views(model, x, tta)
            if tta_shift:
                s, (h, w) = tta_shift, x.shape[-2:]
                padded = F.pad(x, (s, s, s, s), mode="reflect")
                moved = (padded[..., :h, :w], padded[..., 2 * s:, 2 * s:])
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                logits = logits / 2 + sum(_views(model, m.contiguous(memory_format=fmt), tta)
                                          for m in moved) / 4
        out.append(logits.cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 10)


def infer(model: torch.nn.Module, images: torch.Tensor, meta: dict, *,
          batch_size: int = 1000, tta: bool | None = None) -> torch.Tensor:
    """Logits as the run evaluates them: `meta` (a checkpoint's) gives the normalisation,
    precision, memory format and test-time augmentation."""
    return predict_logits(model, images, meta["mean"], meta["std"], batch_size=batch_size,
                          precision=meta["precision"], channels_last=meta["channels_last"],
                          tta=meta["tta"] if tta is None else tta,
                          tta_shift=meta.get("tta_shift", 0))


def _views(model: torch.nn.Module, x: torch.Tensor, flip: bool) -> torch.Tensor:
    logits = model(x).float()
    return (logits + model(x.flip(3)).float()) / 2 if flip else logits


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, n: int = 10) -> torch.Tensor:
    """Rows: true class, columns: predicted class."""
    return torch.bincount(labels * n + preds, minlength=n * n).view(n, n)


def summarize(logits: torch.Tensor, labels: torch.Tensor, loss_name: str = "ce") -> dict:
    preds = logits.argmax(1)
    cm = confusion_matrix(labels, preds)
    per_class = (cm.diag().float() / cm.sum(1).clamp(min=1).float()).tolist()
    if loss_name == "nll":  # models trained with NLL output log-probabilities
        loss = F.nll_loss(logits, labels).item()
    else:
        loss = F.cross_entropy(logits, labels).item()
    return {
        "loss": loss,
        "acc": (preds == labels).float().mean().item(),
        "per_class_acc": per_class,
        "confusion": cm.tolist(),
        "preds": preds,
    }


def checkpoint_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise CifarlabError(f"{p}: no best.pt or last.pt in this directory")
    if not p.exists():
        raise CifarlabError(f"{p}: no such run directory or checkpoint")
    return p


def load_model(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """A model ready for inference from a checkpoint or run directory, and its metadata.
    A checkpoint whose weights do not fit the network registered under its name today is
    refused in one line naming the mismatch."""
    ckpt = checkpoint_path(path)
    st = load_checkpoint(ckpt)
    meta = st["meta"]
    name = meta.get("model")
    if name not in REGISTRY:
        raise CifarlabError(f"{ckpt}: model '{name}' is not a registered network "
                            "(`cifarlab models` lists them)")
    model = create_model(name, **meta.get("model_args", {}))
    weights = st["ema"] if st.get("ema") else st["model"]
    have = sum(p.numel() for p in model.parameters())
    if meta.get("params") is not None and meta["params"] != have:
        raise CifarlabError(f"{ckpt}: trained as '{name}' with {meta['params']:,} parameters; "
                            f"'{name}' has {have:,} today (the network changed since)")
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        why = first[1].strip() if len(first) > 1 else first[0]
        raise CifarlabError(f"{ckpt}: weights do not fit today's '{name}' network (the "
                            f"network changed since it was trained): {why}") from None
    if meta.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), meta
