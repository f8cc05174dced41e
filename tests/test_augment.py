import numpy as np
import pytest
import torch

from cifarlab.augment import (
    AugmentConfig,
    Pipeline,
    color_jitter,
    cutout,
    random_crop,
    random_flip,
    random_rotate,
    shift_hue,
)
from cifarlab.errors import CifarlabError

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_crop_is_a_window_of_the_padded_image():
    x = batch().float()
    out = random_crop(x, 4, gen())
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    for i in range(len(x)):  # every output is some 32x32 window of its own padded image
        windows = padded[i].unfold(1, 32, 1).unfold(2, 32, 1)  # 3×9×9×32×32
        hit = (windows == out[i][:, None, None]).flatten(3).all(3).all(0)
        assert hit.any()


def test_flip_probability_and_exactness():
    x = batch(200).float()
    out = random_flip(x, gen(), 0.5)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert (flipped | same).all()
    assert 60 < flipped.sum() < 140
    assert (random_flip(x, gen(), 1.0) == x.flip(3)).all()
    assert (random_flip(x, gen(), 1.0, dim=2) == x.flip(2)).all()


def test_cutout_hole_size_and_fill():
    x = torch.ones(50, 3, 32, 32)
    out = cutout(x, 8, gen(), torch.zeros(3))
    holes = (out == 0).all(1).flatten(1).sum(1)
    assert holes.max() == 64 and holes.min() >= 16  # clipped at the border: 4x4 at least


def test_jitter_stays_in_range():
    x = batch().float() / 255
    out = color_jitter(x, gen(), 0.4, 0.4, 0.4)
    assert out.min() >= 0 and out.max() <= 1 and not torch.equal(out, x)


def test_hue_shift_matches_colorsys():
    import colorsys

    x = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    x[0] = 0.5  # gray: no hue to shift
    shift = torch.tensor([0.3, -0.25, 0.1, 0.5, -0.05, 0.0])
    out = shift_hue(x, shift)
    for n in range(6):
        for yy, xx in ((0, 0), (1, 2), (3, 3)):
            h, s_, v = colorsys.rgb_to_hsv(*x[n, :, yy, xx].tolist())
            want = colorsys.hsv_to_rgb((h + float(shift[n])) % 1.0, s_, v)
            assert out[n, :, yy, xx].tolist() == pytest.approx(want, abs=1e-5)
    assert torch.allclose(out[0], x[0]) and torch.allclose(out[5], x[5], atol=1e-6)
    red = torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1)
    assert shift_hue(red, torch.tensor([1 / 3])).flatten().tolist() == pytest.approx([0, 1, 0],
                                                                                    abs=1e-6)


def test_hue_jitter_keeps_brightness_order_and_range():
    x = batch().float() / 255
    out = color_jitter(x, gen(), hue=0.1)
    assert out.min() >= 0 and out.max() <= 1 and not torch.equal(out, x)
    assert torch.allclose(out.max(1).values, x.max(1).values, atol=1e-5)  # HSV value kept


def test_rotate_zero_is_identity_and_rotation_moves_pixels():
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(random_rotate(x, 0, gen()), x)
    out = random_rotate(x, 45, gen())
    assert out.shape == x.shape and not torch.allclose(out, x)


@pytest.mark.parametrize("backend", ["tensor", "albumentations", "none"])
def test_pipeline_shapes_and_determinism(backend):
    cfg = AugmentConfig(backend=backend, cutout=8, brightness=0.2, rotate=10)
    p = Pipeline(cfg, MEAN, STD)
    x = batch()
    a, b = p(x, gen(3)), p(x, gen(3))
    assert a.shape == (16, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)  # same generator state -> same augmentation


def test_albumentations_coarse_dropout_mean_fill():
    cfg = AugmentConfig(backend="albumentations", flip=False, shift_limit=0, scale_limit=0,
                        rotate_limit=0, coarse_dropout=16)
    mean = [0.2, 0.4, 0.6]
    p = Pipeline(cfg, mean, STD)
    x = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)
    out = p(x, gen())
    fill = (torch.tensor([round(m * 255) for m in mean]) / 255 - torch.tensor(mean)) / 0.25
    hole = torch.isclose(out, fill.view(1, 3, 1, 1), atol=1e-3).all(1)  # N×32×32
    per_image = hole.flatten(1).sum(1)
    assert set(per_image.unique().tolist()) <= {0, 256}  # no hole or exactly one 16x16 hole
    assert (per_image == 256).any()


def test_normalised_output_matches_stats():
    x = batch(500)
    out = Pipeline(AugmentConfig(backend="none"), MEAN, STD)(x, gen())
    ref = (x.float() / 255 - 0.5) / 0.25
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-6)


def test_given_flips_replace_chance():
    x = batch(8)
    flip = torch.tensor([True, False] * 4)
    p = Pipeline(AugmentConfig(crop_pad=0), MEAN, STD)
    out = p(x, gen(), flip)
    plain = Pipeline(AugmentConfig(crop_pad=0, flip=False), MEAN, STD)(x, gen())
    assert torch.equal(out[flip], plain[flip].flip(3))
    assert torch.equal(out[~flip], plain[~flip])


def test_alternate_flips_need_the_tensor_backend():
    with pytest.raises(CifarlabError, match="flip_mode"):
        Pipeline(AugmentConfig(backend="albumentations", flip_mode="alternate"), MEAN, STD)


@pytest.mark.parametrize("border", ["constant", "reflect"])
def test_shift_scale_rotate_border(border):
    # a pure shift right/down by 8 px (p = 0.5 per image): the uncovered left columns are the
    # dataset mean (constant) or mirrored pixels (reflect; a ramp of multiples of 8 never
    # equals the mean fill 51/102/153)
    cfg = AugmentConfig(backend="albumentations", flip=False, shift_limit=(0.25, 0.25),
                        scale_limit=0, rotate_limit=0, coarse_dropout=0, border=border)
    mean = [0.2, 0.4, 0.6]
    x = (torch.arange(32, dtype=torch.uint8) * 8).repeat(16, 3, 32, 1)
    out = Pipeline(cfg, mean, STD)(x, gen())
    fill = (torch.tensor([round(m * 255) for m in mean]) / 255 - torch.tensor(mean)) / 0.25
    edge_is_mean = [torch.isclose(out[i, :, :, 0], fill.view(3, 1), atol=1e-3).all().item()
                    for i in range(16)]
    assert any(edge_is_mean) == (border == "constant")


def test_augmix_batched():
    """AugMix: deterministic for a generator, images stay in [0, 1], each one a blend of the
    original and its chains (so changed, but correlated with the original)."""
    from cifarlab.augment import AUGMIX_OPS, _equalize, _posterize, _solarize, augmix

    x = torch.rand(64, 3, 32, 32) * 0.5 + 0.25
    a = augmix(x, torch.Generator().manual_seed(1))
    b = augmix(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 1 and torch.isfinite(a).all()
    assert not torch.equal(a, augmix(x, torch.Generator().manual_seed(2)))
    diff = (a - x).abs().flatten(1).mean(1)
    assert (diff > 0).float().mean() > 0.9  # almost every image changed
    corr = torch.nn.functional.cosine_similarity((a - a.mean()).flatten(1),
                                                 (x - x.mean()).flatten(1))
    assert corr.mean() > 0.3
    assert len(AUGMIX_OPS) == 9 and "contrast" not in AUGMIX_OPS  # none overlaps CIFAR-10-C
    # the operations themselves
    eq = _equalize(x, torch.zeros(64))
    assert eq.min() == 0 and eq.max() == 1  # stretched to the full range
    levels = _posterize(x, torch.zeros(64)).mul(255).round().unique()
    assert len(levels) <= 16  # 4 bits kept
    s = _solarize(x, torch.full((64,), 0.5))
    assert torch.allclose(s, torch.where(x >= 0.5, 1 - x, x))


def test_augmix_in_the_pipeline():
    from cifarlab.recipe import resolve

    cfg = resolve("fast-seed001", {"augment.augmix": 3})["augment"]
    u = (torch.rand(8, 3, 32, 32) * 255).to(torch.uint8)
    with_mix = Pipeline(cfg, [0.5] * 3, [0.25] * 3)(u, torch.Generator().manual_seed(0))
    cfg["augmix"] = 0
    without = Pipeline(cfg, [0.5] * 3, [0.25] * 3)(u, torch.Generator().manual_seed(0))
    assert with_mix.shape == without.shape and not torch.allclose(with_mix, without)
