"""Test-time augmentation: which views are averaged, with which weights."""

import torch
import torch.nn.functional as F

from cifarlab.inference import predict_logits


def linear_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))


def images(n=4):
    torch.manual_seed(1)
    return torch.randn(n, 3, 32, 32)  # already normalised


def run(model, x, **kw):
    return predict_logits(model, x, [0, 0, 0], [1, 1, 1], precision="fp32",
                          channels_last=False, **kw)


def test_flip_tta_averages_the_mirror():
    model, x = linear_model(), images()
    with torch.no_grad():
        want = (model(x) + model(x.flip(3))) / 2
    torch.testing.assert_close(run(model, x, tta=True), want)
    torch.testing.assert_close(run(model, x), model(x).detach())


def test_shift_tta_weights_the_moved_copies():
    model, x = linear_model(), images()
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    up_left, down_right = padded[..., :32, :32], padded[..., 4:, 4:]
    assert torch.equal(up_left[..., 2:, 2:], x[..., :30, :30])  # content moved by 2 px
    with torch.no_grad():
        want = model(x) / 2 + (model(up_left) + model(down_right)) / 4
        flip = lambda v: (model(v) + model(v.flip(3))) / 2  # noqa: E731
        want_flip = flip(x) / 2 + (flip(up_left) + flip(down_right)) / 4
    torch.testing.assert_close(run(model, x, tta_shift=2), want)
    torch.testing.assert_close(run(model, x, tta=True, tta_shift=2), want_flip)
    assert not torch.allclose(run(model, x, tta_shift=2), run(model, x))
