"""Inference: a trained model from its checkpoint; logits with test-time augmentation;
accuracy, per-class accuracy, confusion."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from .augment import Pipeline, normalize
from .device import autocast
from .errors import CifarlabError
from .models import create_model
from .models.registry import file_sha256
from .rundir import load_checkpoint


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


def score_logits(logits: torch.Tensor, labels: torch.Tensor, loss_name: str = "ce") -> dict:
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


def _rebuild(ckpt: Path, meta: dict) -> torch.nn.Module:
    """The checkpoint's network built anew from its recorded name (and, for a network from
    the user's own file, that file: refused in one line when it is missing, noted when it has
    changed since the run)."""
    name, source = meta.get("model"), meta.get("model_source") or {}
    hint = "or pass the network: cifarlab.load_model(RUN, model=Net(...))"
    if isinstance(name, str) and name.startswith("instance:"):
        raise CifarlabError(f"{ckpt}: trained from a model instance ({name[9:]}) whose class "
                            f"cifarlab cannot import; {hint}")
    if source.get("file"):
        f = Path(source["file"])
        if not f.is_file():
            raise CifarlabError(f"{ckpt}: trained with the network in {f}, which is missing "
                                f"(eval, predict and export need it: restore it, {hint})")
        now = file_sha256(f)
        if now != source.get("sha256"):
            print(f"cifarlab: warning: {f} has changed since this run trained it "
                  f"(sha256 {source.get('sha256', '?')[:12]} then, {now[:12]} now)",
                  file=sys.stderr)
    try:
        return create_model(name, **meta.get("model_args", {}))
    except CifarlabError as e:
        raise CifarlabError(f"{ckpt}: {e}") from None


def load_model(path: str | os.PathLike, model: torch.nn.Module | None = None
               ) -> tuple[torch.nn.Module, dict]:
    """A model ready for inference from a checkpoint or run directory, and its metadata.
    `model`: the network to load the weights into (its architecture must match); by default
    the network is built from the name the run recorded. Weights that do not fit are refused
    in one line naming the mismatch."""
    ckpt = checkpoint_path(path)
    checkpoint = load_checkpoint(ckpt)
    meta = checkpoint["meta"]
    name = meta.get("model")
    if model is None:
        model = _rebuild(ckpt, meta)
    weights = checkpoint["ema"] if checkpoint.get("ema") else checkpoint["model"]
    have = sum(p.numel() for p in model.parameters())
    if meta.get("params") is not None and meta["params"] != have:
        why = ("it trained a model instance built with arguments cifarlab cannot know: pass "
               "it, load_model(RUN, model=Net(...))"
               if (meta.get("model_source") or {}).get("instance")
               else "the network or its arguments changed since")
        raise CifarlabError(f"{ckpt}: trained as '{name}' with {meta['params']:,} parameters; "
                            f"'{name}' has {have:,} today ({why})")
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        why = first[1].strip() if len(first) > 1 else first[0]
        raise CifarlabError(f"{ckpt}: weights do not fit today's '{name}' network (it "
                            f"changed since it was trained): {why}") from None
    if meta.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), meta


def fixed_test_inputs(images: torch.Tensor, meta: dict) -> torch.Tensor:
    """The test images as the run scored them: one fixed random transform with augment.test."""
    if not meta.get("test_augment"):
        return images
    pipeline = Pipeline(meta["test_augment"], meta["mean"], meta["std"])
    return pipeline(images, torch.Generator().manual_seed(meta["seed"] + 1))
