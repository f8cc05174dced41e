"""Accuracy, per-class accuracy, confusion matrix; test-time flip."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from .augment import normalize


def autocast(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, mean, std, *,
                   batch_size: int = 1000, precision: str = "bf16", channels_last: bool = True,
                   tta: bool = False) -> torch.Tensor:
    """Float32 logits for uint8 images (N×3×32×32) or already-normalised float images;
    with `tta`, averaged with the mirror."""
    was_training = model.training
    model.eval()
    mean_t, std_t = torch.as_tensor(mean), torch.as_tensor(std)
    out = []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        x = normalize(batch, mean_t, std_t) if batch.dtype == torch.uint8 else batch
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(precision):
            logits = model(x).float()
            if tta:
                logits = (logits + model(x.flip(3)).float()) / 2
        out.append(logits)
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 10)


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
