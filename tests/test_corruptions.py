"""The 15 CIFAR-10-C-style corruptions: shape, dtype, determinism, severity, no NaN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifarlab import corruptions as C
from cifarlab.corruptions import CORRUPTIONS, SEVERITIES, corrupt


def natural_images(n: int = 8, seed: int = 0) -> np.ndarray:
    """Photo-like uint8 N×32×32×3: colour noise with a natural image's 1/f amplitude spectrum
    (texture at every scale), and a few hard-edged discs and bars (objects)."""
    rng = np.random.default_rng(seed)
    fy, fx = np.meshgrid(np.fft.fftfreq(32), np.fft.fftfreq(32), indexing="ij")
    amplitude = 1 / np.maximum(np.hypot(fy, fx), 1 / 32)
    phase = np.exp(2j * np.pi * rng.uniform(0, 1, (n, 3, 32, 32)))
    x = np.fft.ifft2(amplitude * phase).real.transpose(0, 2, 3, 1)
    x = 0.5 + 0.18 * x / x.std(axis=(1, 2, 3), keepdims=True)
    rows, cols = np.mgrid[:32, :32]
    for i in range(n):
        for _ in range(2):
            cy, cx, r = rng.uniform(6, 26), rng.uniform(6, 26), rng.uniform(3, 7)
            x[i][(rows - cy) ** 2 + (cols - cx) ** 2 < r ** 2] = rng.uniform(0.1, 0.9, 3)
        t, b = sorted(rng.integers(0, 30, 2))
        x[i, t:b + 3, 5:11] = rng.uniform(0.1, 0.9, 3)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


IMAGES = natural_images()


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def sharpness(a: np.ndarray) -> float:
    """Mean |difference| between neighbouring pixels (falls as an image is blurred)."""
    a = a.astype(np.float64)
    return float(np.abs(np.diff(a, axis=1)).mean() + np.abs(np.diff(a, axis=2)).mean())


def structure_loss(a: np.ndarray, b: np.ndarray) -> float:
    """1 - Pearson correlation of each corrupted image with its clean image, averaged."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    r = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return float(1 - r.mean())


# How far a severity takes the image from the clean one: mean |difference|, except for three
# whose original constants make a raw difference the wrong ruler:
# - frost: the image fades (weight 1, 1, .9, .85, .75) while the frost grows (.2 ... .45); the
#   fading cancels part of the added frost in a signed pixel difference, so the measure is how
#   much of the image's structure is lost (1 - correlation with the clean image);
# - glass_blur and elastic_transform: two parts that the constants move in opposite
#   directions; each part is tested on its own (test_glass_blur_parts, test_elastic_parts).
NOT_RANDOM = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate",
              "jpeg_compression"}
MEASURES = {"frost": structure_loss}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption(name):
    x = IMAGES
    measure = MEASURES.get(name, mean_abs_diff)
    dist = []
    for s in SEVERITIES:
        y = corrupt(x, name, s, seed=3)
        assert y.dtype == np.uint8 and y.shape == x.shape
        assert np.array_equal(y, corrupt(x, name, s, seed=3))  # deterministic
        # an image does not depend on its batch: the last two alone, with their indices
        last = corrupt(x[-2:], name, s, seed=3, index=[len(x) - 2, len(x) - 1])
        assert np.array_equal(y[-2:], last)
        dist.append(measure(x, y))
    assert all(np.isfinite(dist)) and dist[0] > 0
    seeded = not np.array_equal(corrupt(x, name, 5, seed=3), corrupt(x, name, 5, seed=4))
    assert seeded == (name not in NOT_RANDOM)
    if name in ("glass_blur", "elastic_transform"):
        return  # test_glass_blur_parts, test_elastic_parts
    for s in range(1, 5):
        if name == "motion_blur" and s == 3:
            # the original's (6, 2) -> (8, 2): radius 8 adds taps 7 and 8 of a Gaussian of
            # sigma 2 (0.2% of the weight): the same image to within rounding
            assert dist[3] >= dist[2]
            continue
        assert dist[s] > dist[s - 1], f"{name}: severity {s + 1} not beyond {s}: {dist}"


def test_elastic_parts():
    """elastic_transform moves the image by a random affine map and then by a smooth random
    field; by the original's constants the affine jitter shrinks with severity (2.56 ... 0.96
    pixels at the corners) while the field grows (alpha 0 ... 3.2 px, sigma 6.4 ... 0.96 px),
    so no whole-image pixel difference rises. The field's own part (each severity against the
    same affine map alone, the same random draws) rises at every step, and the affine part
    falls, as the original has it."""
    x = IMAGES.astype(np.float32) / 255
    field, affine = [], []
    for c in C.CONSTANTS["elastic_transform"]:
        both = C.elastic_transform(x, c, C._Streams(3, "elastic_transform", range(len(x))))
        alone = C.elastic_transform(x, (0, 0, c[2]),
                                    C._Streams(3, "elastic_transform", range(len(x))))
        field.append(mean_abs_diff(both * 255, alone * 255))
        affine.append(mean_abs_diff(alone * 255, x * 255))
    assert field[0] == 0 and all(b > a for a, b in zip(field[:-1], field[1:], strict=True)), field
    assert all(b < a for a, b in zip(affine[:-1], affine[1:], strict=True)), affine


def test_glass_blur_parts():
    """glass_blur blurs (sigma .05, .25, .4, .25, .4), shuffles pixels (1, 1, 1, 2, 2 passes)
    and blurs again. A blur after the shuffle averages the shuffle's pixel-to-pixel noise, so
    by the original's constants severity 3 is *closer* to the clean image than 2, and 5 than 4,
    in every pixel difference we tried (raw, low-passed): the two parts are tested on their
    own. More passes take the image farther from the clean one (2 -> 4 and 3 -> 5, the same
    blur); more blur leaves it less sharp (1 -> 2 -> 3 and 4 -> 5, the same shuffle: common
    random numbers). Sigma .05 and .25 are both far below a pixel (a neighbour weight of
    0.03%): severities 1 and 2 differ by rounding only."""
    x = IMAGES
    y = {s: corrupt(x, "glass_blur", s, seed=3) for s in SEVERITIES}
    far = {s: mean_abs_diff(x, y[s]) for s in SEVERITIES}
    sharp = {s: sharpness(y[s]) for s in SEVERITIES}
    assert far[4] > far[2] and far[5] > far[3], far
    assert sharp[1] >= sharp[2] > sharp[3] and sharp[4] > sharp[5], sharp
    assert min(far.values()) > 5  # every severity moves pixels visibly


def test_torch_layout_and_errors():
    x = torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy())
    y = corrupt(x, "fog", 2, seed=1)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.uint8 and y.shape == x.shape
    assert np.array_equal(y.numpy().transpose(0, 2, 3, 1), corrupt(IMAGES, "fog", 2, seed=1))
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(IMAGES, "rain", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(IMAGES, "fog", 6)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(IMAGES.astype(np.float32), "fog", 1)


def test_constants_are_the_cifar_ones():
    assert len(CORRUPTIONS) == 15 and len(set(CORRUPTIONS)) == 15
    assert set(C.CONSTANTS) == set(CORRUPTIONS)
    assert all(len(v) == 5 for v in C.CONSTANTS.values())
    # spot checks against make_cifar_c.py (the CIFAR values, not ImageNet's or Tiny ImageNet's)
    assert C.CONSTANTS["gaussian_noise"] == (0.04, 0.06, .08, .09, .10)
    assert C.CONSTANTS["motion_blur"] == ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))
    assert C.CONSTANTS["jpeg_compression"] == (80, 65, 58, 50, 40)
    assert len(np.arange(1, C.CONSTANTS["zoom_blur"][4], 0.01)) == 26


def test_glass_blur_shuffles_pixels_locally():
    """Without the blurs the shuffle is a permutation of each image's pixels, moving values
    a few pixels at most (the original's offsets are -1 or 0 per pass and axis)."""
    ids = np.arange(32 * 32).reshape(32, 32)
    img = np.stack([ids // 256, ids % 256, np.zeros_like(ids)], -1).astype(np.float32) / 255
    x = np.broadcast_to(img, (4, 32, 32, 3)).copy()
    y = C.glass_blur(x, (0, 1, 2), C._Streams(0, "glass_blur", range(4)))
    got = np.round(y[..., 0] * 255).astype(int) * 256 + np.round(y[..., 1] * 255).astype(int)
    assert all(np.array_equal(np.sort(g.ravel()), ids.ravel()) for g in got)
    moved = np.abs(got // 32 - ids // 32) + np.abs(got % 32 - ids % 32)
    assert 0.5 < (moved > 0).mean() < 1 and moved.max() <= 16
