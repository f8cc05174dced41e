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
