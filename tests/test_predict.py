"""predict on every kind of image a person might have."""

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import cifarlab
from cifarlab.images import load_image


@pytest.fixture(scope="module")
def checkpoint(shared_cifar_dir, tmp_path_factory):
    m = cifarlab.train("default", data_dir=shared_cifar_dir,
                       runs_dir=tmp_path_factory.mktemp("runs"), progress=False,
                       log=lambda s: None, epochs=1, batch_size=100)
    return m["run_dir"] + "/best.pt"


def _rgb(w, h, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    files = {}
    Image.fromarray(_rgb(32, 32)).save(d / "plain.png")
    files["plain"] = d / "plain.png"
    rgba = np.dstack([_rgb(50, 40), np.full((40, 50), 128, np.uint8)])
    Image.fromarray(rgba).save(d / "rgba.png")
    files["rgba"] = d / "rgba.png"
    Image.fromarray(_rgb(64, 64)[..., 0]).save(d / "gray.jpg")
    files["gray"] = d / "gray.jpg"
    Image.fromarray(_rgb(40, 40)).convert("P", palette=Image.Palette.ADAPTIVE).save(d / "pal.gif")
    files["palette"] = d / "pal.gif"
    g16 = (np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) * 28).astype(np.uint16)
    Image.fromarray(g16).save(d / "g16.png")
    files["gray16"] = d / "g16.png"
    Image.fromarray(_rgb(30, 20)).convert("CMYK").save(d / "cmyk.jpg")
    files["cmyk"] = d / "cmyk.jpg"
    Image.fromarray(_rgb(600, 400)).resize((6000, 4000)).save(d / "photo.jpg", quality=80)
    files["photo"] = d / "photo.jpg"
    Image.fromarray(_rgb(33, 17)).save(d / "tiny.bmp")
    files["bmp"] = d / "tiny.bmp"
    Image.fromarray(_rgb(32, 32)).save(d / "img.webp")
    files["webp"] = d / "img.webp"
    la = np.dstack([_rgb(20, 20)[..., 0], np.full((20, 20), 255, np.uint8)])
    Image.fromarray(la).save(d / "la.png")
    files["la"] = d / "la.png"
    return files


@pytest.mark.parametrize("kind", ["plain", "rgba", "gray", "palette", "gray16", "cmyk",
                                  "photo", "bmp", "webp", "la"])
def test_load_any_image(odd_images, kind):
    x = load_image(odd_images[kind])
    assert x.shape == (3, 32, 32) and str(x.dtype) == "torch.uint8"


def test_16bit_is_rescaled_not_clipped(odd_images):
    x = load_image(odd_images["gray16"]).float()
    assert x.max() > 200 and x.min() < 60 and x.std() > 20  # a clipped image would be ~all 255


def test_rgba_composited_over_white(tmp_path):
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").min() == 255


def _save_jpeg(arr: np.ndarray, path, orientation: int | None = None):
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation  # EXIF Orientation, as a phone camera writes it
    Image.fromarray(arr).save(path, quality=95, exif=exif)
    return path


@pytest.mark.parametrize("orientation, turns", [(6, -1), (8, 1)])  # np.rot90 turns (+ = ccw)
def test_exif_orientation_is_applied(tmp_path, checkpoint, orientation, turns):
    """A photo stored sideways with an EXIF orientation (6: turn 90° clockwise to view, 8:
    counter-clockwise) is classified upright: the same as the image rotated by hand."""
    arr = _rgb(60, 40, seed=3)  # not square: the rotation also moves the crop
    tagged = _save_jpeg(arr, tmp_path / "tagged.jpg", orientation)
    plain = _save_jpeg(arr, tmp_path / "plain.jpg")
    with Image.open(plain) as im:  # the pixels exactly as the JPEG decodes them
        decoded = np.asarray(im.convert("RGB"))
    Image.fromarray(np.ascontiguousarray(np.rot90(decoded, turns))).save(tmp_path / "hand.png")
    x = load_image(tagged)
    assert torch.equal(x, load_image(tmp_path / "hand.png"))
    assert not torch.equal(x, load_image(plain))  # the tag did change the result
    got, want = cifarlab.predict(checkpoint, [tagged, tmp_path / "hand.png"], top_k=10)
    assert got["top"] == want["top"]


@pytest.mark.parametrize("w, h", [(64, 40), (40, 64)])
def test_non_square_image_is_centre_cropped(tmp_path, checkpoint, w, h):
    """Only the centred square is classified: the same as that square cropped by hand, and
    the strips beside it (pure red and blue here) leave no trace."""
    s = min(w, h)
    top, left = (h - s) // 2, (w - s) // 2
    square = _rgb(s, s, seed=5)
    arr = np.empty((h, w, 3), np.uint8)
    arr[...] = (255, 0, 0)  # red before the square ...
    if w > h:
        arr[:, left + s:] = (0, 0, 255)  # ... blue after it
    else:
        arr[top + s:, :] = (0, 0, 255)
    arr[top:top + s, left:left + s] = square
    Image.fromarray(arr).save(tmp_path / "wide.png")
    Image.fromarray(square).save(tmp_path / "square.png")
    x = load_image(tmp_path / "wide.png")
    assert torch.equal(x, load_image(tmp_path / "square.png"))
    got, want = cifarlab.predict(checkpoint, [tmp_path / "wide.png", tmp_path / "square.png"],
                                 top_k=10)
    assert got["top"] == want["top"]
    squeezed = np.asarray(Image.fromarray(arr).resize((32, 32), Image.Resampling.LANCZOS))
    assert not torch.equal(x, torch.from_numpy(squeezed.copy()).permute(2, 0, 1))


def test_predict_api(checkpoint, odd_images):
    res = cifarlab.predict(checkpoint, list(odd_images.values()), top_k=3)
    assert len(res) == len(odd_images)
    for r in res:
        assert "error" not in r
        assert len(r["top"]) == 3
        probs = [p for _, p in r["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


def test_predict_cli_bad_files(checkpoint, odd_images, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(odd_images["plain"].read_bytes()[:60])
    good = str(odd_images["plain"])
    r = subprocess.run([sys.executable, "-m", "cifarlab.cli", "predict", checkpoint, good,
                        str(tmp_path / "notes.txt"), str(tmp_path / "broken.png"),
                        str(tmp_path / "missing.jpg"), good, "--top-k", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stdout.count(good) == 2  # the good files are still classified
    err = r.stderr.strip().splitlines()
    assert len(err) == 3 and "Traceback" not in r.stderr
    assert "notes.txt: not a readable image" in err[0]
    assert "broken.png" in err[1]
    assert "missing.jpg: no such file" in err[2]


def test_predict_bad_checkpoint(tmp_path, odd_images):
    bad = tmp_path / "x.pt"
    bad.write_bytes(io.BytesIO(b"junk").getvalue())
    r = subprocess.run([sys.executable, "-m", "cifarlab.cli", "predict", str(bad),
                        str(odd_images["plain"])], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "x.pt" in r.stderr
