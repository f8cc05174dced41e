"""Turn any image file a person might have into a 32×32 RGB uint8 tensor."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import CifarlabError

SIZE = 32


class ImageError(CifarlabError):
    pass


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB from any mode: 16-bit and float grayscale rescaled, transparency over white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if im.mode == "F" and arr.max(initial=0) <= 1.0:
            hi = 1.0
        im = Image.fromarray(np.clip(arr / hi * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB")


def load_image(path: str | Path) -> torch.Tensor:
    """3×32×32 uint8: EXIF-rotated, centre-cropped to a square, resized with antialiasing."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.draft("RGB", (SIZE * 4, SIZE * 4))  # JPEG: decode big photos at reduced size
                im = ImageOps.exif_transpose(im)
                im = _to_rgb(im)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{path}: image too large (decompression bomb guard)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{path}: cannot decode image ({e})") from None
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    im = im.resize((SIZE, SIZE), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)


def classify_files(paths, classes, logits_of, log_probs: bool = False, top_k: int = 1) -> list:
    """Per file: {'path', 'top': [(class, probability), ...]} or {'path', 'error'} (a file
    that is not an image gets its error; the others are still classified). `logits_of` maps a
    uint8 N×3×32×32 batch to logits (log-probabilities when `log_probs`)."""
    k = max(1, min(top_k, len(classes)))
    results, loaded, rows = [], [], []
    for p in paths:
        try:
            loaded.append(load_image(p))
            rows.append(len(results))
            results.append({"path": str(p)})
        except ImageError as e:
            results.append({"path": str(p), "error": str(e)})
    if loaded:
        out = logits_of(torch.stack(loaded))
        probs = out.exp() if log_probs else out.softmax(1)
        top_p, top_i = probs.topk(k, dim=1)
        for r, ps, ids in zip(rows, top_p.tolist(), top_i.tolist(), strict=True):
            results[r]["top"] = [(classes[i], q) for i, q in zip(ids, ps, strict=True)]
    return results
