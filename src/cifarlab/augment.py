"""Batched augmentation on tensors, plus seed 001's albumentations pipeline.

A pipeline maps a uint8 batch (N×3×32×32) to a normalised float batch. The tensor pipeline
does everything on whole batches (a few vectorised ops, no Python loop over images); the
albumentations pipeline runs per image, as seed 001 did, and exists to reproduce it.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch

from .errors import CifarlabError
from .recipe import AugmentConfig, check_augment

__all__ = ["AugmentConfig", "Pipeline", "normalize"]


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] float batch -> (x - mean) / std, float32."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator, mode: str = "reflect"):
    """Pad each image by `pad` and take a random 32×32 window from it (per-image offsets)."""
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode=mode)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # n, c, dy, dx, h, w: a view, no copy
    return windows[torch.arange(n), :, dy, dx]  # copies whole rows (4x faster than per pixel)


def random_flip(x: torch.Tensor, gen: torch.Generator, p: float = 0.5, dim: int = 3):
    """Mirror each image with probability p (dim 3: horizontal, dim 2: vertical)."""
    if p >= 1:
        return x.flip(dim)
    mask = (torch.rand(x.shape[0], generator=gen) < p).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(dim), x)


def random_rotate(x: torch.Tensor, degrees: float, gen: torch.Generator) -> torch.Tensor:
    """Rotate each image by a uniform angle in [-degrees, degrees] (bilinear, zero fill)."""
    if degrees <= 0:
        return x
    n = x.shape[0]
    theta = (torch.rand(n, generator=gen) * 2 - 1) * degrees * torch.pi / 180
    cos, sin = theta.cos(), theta.sin()
    zero = torch.zeros(n)
    mat = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = torch.nn.functional.affine_grid(mat, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def cutout(x: torch.Tensor, size: int, gen: torch.Generator, fill: torch.Tensor) -> torch.Tensor:
    """One size×size hole per image at a random centre (clipped at the border), filled."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=gen).view(-1, 1)
    cx = torch.randint(0, w, (n,), generator=gen).view(-1, 1)
    ys, xs = torch.arange(h).view(1, -1), torch.arange(w).view(1, -1)
    in_y = (ys >= cy - size // 2) & (ys < cy - size // 2 + size)  # n×h
    in_x = (xs >= cx - size // 2) & (xs < cx - size // 2 + size)  # n×w
    mask = (in_y[:, :, None] & in_x[:, None, :])[:, None]  # n×1×h×w
    return torch.where(mask, fill.view(1, -1, 1, 1).to(x.dtype), x)


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each [0, 1] RGB image's hue by `shift` (N values, in turns: 0.5 is half the
    colour circle) through HSV, as torchvision's adjust_hue does; grays stay gray."""
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    delta = v - x.min(1).values
    s = torch.where(v > 0, delta / v.clamp(min=1e-12), torch.zeros_like(v))
    d = delta.clamp(min=1e-12)
    h = torch.where(v == r, ((g - b) / d) % 6,
                    torch.where(v == g, (b - r) / d + 2, (r - g) / d + 4))
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h))
    h6 = ((h + shift.view(-1, 1, 1)) % 1.0 * 6).unsqueeze(1)
    # back to RGB: channel c = v * (1 - s * clamp(min(k, 4 - k), 0, 1)), k = (n_c + 6h) mod 6
    k = (torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1) + h6) % 6
    return v.unsqueeze(1) * (1 - s.unsqueeze(1) * torch.minimum(k, 4 - k).clamp(0, 1))


def color_jitter(x: torch.Tensor, gen: torch.Generator, brightness: float = 0.0,
                 contrast: float = 0.0, saturation: float = 0.0,
                 hue: float = 0.0) -> torch.Tensor:
    """torchvision-style jitter on [0, 1] images, factors uniform in [1-s, 1+s] per image
    (hue: a shift uniform in [-hue, hue] turns), applied in that order."""
    n = x.shape[0]

    def factor(s: float) -> torch.Tensor:
        return (1 + (torch.rand(n, generator=gen) * 2 - 1) * s).view(-1, 1, 1, 1)

    if brightness > 0:
        x = (x * factor(brightness)).clamp_(0, 1)
    gray_w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    if contrast > 0:
        m = (x * gray_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        x = (m + (x - m) * factor(contrast)).clamp_(0, 1)
    if saturation > 0:
        g = (x * gray_w).sum(1, keepdim=True)
        x = (g + (x - g) * factor(saturation)).clamp_(0, 1)
    if hue > 0:
        x = shift_hue(x, (torch.rand(n, generator=gen) * 2 - 1) * hue)
    return x


# ---------------------------------------------------------------------------------------------
# AugMix (Hendrycks et al., "AugMix: A Simple Data Processing Method to Improve Robustness and
# Uncertainty", ICLR 2020), batched. Each image becomes a convex mix of `width` chains of 1-3
# operations drawn from those that do not overlap the CIFAR-10-C corruptions (autocontrast,
# equalize, posterize, solarize, rotate, shear, translate; no contrast, colour, brightness,
# sharpness, blur or noise), mixed with Dirichlet(1) weights and blended with the original by a
# Beta(1, 1) factor (alpha = 1, the paper's setting: both are then sums of exponential or
# uniform draws, which torch draws from our generator). The Jensen-Shannon consistency loss is
# not used: it triples the forward passes. Images are [0, 1] floats; per step every image gets
# one operation, each operation running once on the images that drew it.

AUGMIX_OPS = ("autocontrast", "equalize", "posterize", "solarize", "rotate", "shear_x",
              "shear_y", "translate_x", "translate_y")


def _autocontrast(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    lo = x.amin((2, 3), keepdim=True)
    hi = x.amax((2, 3), keepdim=True)
    return torch.where(hi > lo, (x - lo) / (hi - lo).clamp(min=1e-6), x)


def _equalize(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel on 256 levels (PIL's ImageOps.equalize
    up to rounding)."""
    n, c, h, w = x.shape
    q = (x * 255).round().long().clamp_(0, 255).view(n * c, h * w)
    hist = torch.zeros(n * c, 256).scatter_add_(1, q, torch.ones(n * c, h * w))
    cdf = hist.cumsum(1)
    first = cdf.gather(1, (hist > 0).float().argmax(1, keepdim=True))  # cdf at the lowest level
    lut = ((cdf - first) / (h * w - first).clamp(min=1)).clamp_(0, 1)
    return lut.gather(1, q).view(n, c, h, w)


def _posterize(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    bits = (4 - (level * 4).long()).clamp(1, 8).view(-1, 1, 1, 1)  # keep 4..1 bits
    step = (2 ** (8 - bits)).float()
    return torch.div((x * 255).round(), step, rounding_mode="floor") * step / 255


def _solarize(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    t = (1 - level).view(-1, 1, 1, 1)  # threshold 1 .. 0 of the [0, 1] range
    return torch.where(x >= t, 1 - x, x)


def _affine(x: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:
    grid = torch.nn.functional.affine_grid(mats, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def _geometric(op: str, x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor):
    n = x.shape[0]
    m = torch.eye(2, 3).repeat(n, 1, 1)
    v = level * sign
    if op == "rotate":  # up to 30 degrees
        a = v * torch.pi / 6
        m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    elif op == "shear_x":  # up to 0.3
        m[:, 0, 1] = v * 0.3
    elif op == "shear_y":
        m[:, 1, 0] = v * 0.3
    elif op == "translate_x":  # up to a third of the image (grid units: 2 = the width)
        m[:, 0, 2] = v * 2 / 3
    else:
        m[:, 1, 2] = v * 2 / 3
    return _affine(x, m)


_PIXEL_OPS = {"autocontrast": _autocontrast, "equalize": _equalize, "posterize": _posterize,
              "solarize": _solarize}


def augmix(x: torch.Tensor, gen: torch.Generator, width: int = 3, severity: int = 3,
           depth: int = 3) -> torch.Tensor:
    """AugMix on a batch of [0, 1] images (see above): per image, `width` chains of 1-`depth`
    operations of strength up to severity/10, Dirichlet(1)-mixed, Beta(1, 1)-blended."""
    n = x.shape[0]
    weights = -torch.rand(n, width, generator=gen).clamp_(min=1e-12).log_()  # Exp(1) draws
    weights /= weights.sum(1, keepdim=True)  # -> Dirichlet(1, ..., 1)
    mixed = torch.zeros_like(x)
    for i in range(width):
        chain = x.clone()
        steps = torch.randint(1, depth + 1, (n,), generator=gen)
        for step in range(depth):
            ops = torch.randint(0, len(AUGMIX_OPS), (n,), generator=gen)
            level = torch.rand(n, generator=gen) * (severity - 0.1) / 10 + 0.01
            sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
            for k, op in enumerate(AUGMIX_OPS):
                idx = torch.nonzero((ops == k) & (steps > step)).flatten()
                if len(idx) == 0:
                    continue
                sub = chain[idx]
                out = (_PIXEL_OPS[op](sub, level[idx]) if op in _PIXEL_OPS
                       else _geometric(op, sub, level[idx], sign[idx]))
                chain[idx] = out
        mixed += weights[:, i].view(-1, 1, 1, 1) * chain
    m = torch.rand(n, generator=gen).view(-1, 1, 1, 1)  # Beta(1, 1)
    return m * x + (1 - m) * mixed


class Pipeline:
    """Callable: (uint8 batch, generator) -> normalised float32 batch."""

    def __init__(self, cfg: AugmentConfig | dict, mean: list[float], std: list[float]):
        """`cfg`: an AugmentConfig or a recipe's [augment] section."""
        if isinstance(cfg, dict):
            cfg = AugmentConfig(**cfg)
        self.cfg = cfg
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        if cfg.backend == "albumentations":
            self._albu = _albumentations_pipeline(cfg, mean)
        elif cfg.backend not in ("tensor", "none"):
            raise CifarlabError(f"augment.backend: unknown backend '{cfg.backend}'")
        check_augment(dataclasses.asdict(cfg))

    def __call__(self, x: torch.Tensor, gen: torch.Generator,
                 flip: torch.Tensor | None = None) -> torch.Tensor:
        """`flip` (bool per image) decides the horizontal flips instead of chance."""
        c = self.cfg
        if c.backend == "none":
            return normalize(x, self.mean, self.std)
        if c.backend == "albumentations":
            return normalize(self._run_albu(x, gen), self.mean, self.std)
        x = x.float().div_(255)
        if c.brightness or c.contrast or c.saturation or c.hue:
            x = color_jitter(x, gen, c.brightness, c.contrast, c.saturation, c.hue)
        x = random_crop(x, c.crop_pad, gen, c.crop_mode)
        if c.flip and flip is not None:
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        elif c.flip:
            x = random_flip(x, gen, c.flip_p)
        if c.vflip_p > 0:
            x = random_flip(x, gen, c.vflip_p, dim=2)
        if c.augmix:
            x = augmix(x, gen, width=c.augmix, severity=c.augmix_severity)
        x = normalize(x, self.mean, self.std)  # from here on, 0 = the dataset mean
        x = random_rotate(x, c.rotate, gen)
        return cutout(x, c.cutout, gen, torch.zeros(3))

    def _run_albu(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        # albumentations draws from its own RNG; seed it from ours so runs are reproducible.
        self._albu.set_random_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        imgs = x.permute(0, 2, 3, 1).numpy()
        out = np.stack([self._albu(image=im)["image"] for im in imgs])
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _albumentations_pipeline(cfg: AugmentConfig, mean: list[float]):
    import albumentations as A
    import cv2

    fill = tuple(int(round(m * 255)) for m in mean)
    s = cfg.coarse_dropout
    steps = []
    if cfg.flip:
        steps.append(A.HorizontalFlip(p=cfg.flip_p))
    with warnings.catch_warnings():  # seed 001 names ShiftScaleRotate; 2.x suggests Affine
        warnings.simplefilter("ignore", UserWarning)
        steps.append(A.ShiftScaleRotate(
            shift_limit=cfg.shift_limit, scale_limit=cfg.scale_limit,
            rotate_limit=cfg.rotate_limit, fill=fill, p=0.5,
            border_mode=cv2.BORDER_REFLECT_101 if cfg.border == "reflect"
            else cv2.BORDER_CONSTANT))
    if s > 0:
        steps.append(A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(s, s),
                                     hole_width_range=(s, s), fill=fill, p=0.5))
    return A.Compose(steps)
