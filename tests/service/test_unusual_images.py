"""Unusual but valid uploads are classified (200), each converted as its format and mode require.

Every upload is built from one Fashion-MNIST test image. The lossless ones must reproduce the
probabilities of that image sent as a plain 8-bit PNG exactly (the conversion is right to the last
bit); lossy ones (JPEG) must come close to the same picture sent losslessly, and, where the
conversion could be skipped by mistake (EXIF rotation, alpha, the first frame), a control shows
that skipping it would change the answer beyond that tolerance. Nothing is committed: all images
are made here.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bench.reliability.hostile import MULTIPART, image_form

N_CLASSES = 10
EXACT = 1e-6  # float32 softmax of identical tensors: identical, up to print rounding
LOSSY = 0.01  # JPEG at quality 95 of a 4x upscaled picture, averaged back down by the resize (seen: 3e-4)


@pytest.fixture(scope="module")
def client(asgi_client):
    return asgi_client


def save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def probs(client, data: bytes) -> np.ndarray:
    """The service's probability for each class (all 10 asked for, put back in class order)."""
    r = client.post("/classify", content=image_form(data, top_k=str(N_CLASSES)), headers={"content-type": MULTIPART})
    assert r.status_code == 200, r.text[:300]
    out = np.zeros(N_CLASSES)
    for p in r.json()["predictions"]:
        out[p["class_index"]] = p["probability"]
    return out


@pytest.fixture(scope="module")
def picture(client, fmnist_test):
    """A test image the model is sure about, and one of another class for second frames."""
    images, labels = fmnist_test
    for i in range(200):
        p = probs(client, save(Image.fromarray(images[i]), "PNG"))
        if p.argmax() == labels[i] and p.max() > 0.9:
            other = next(j for j in range(200) if labels[j] != labels[i])
            return images[i], images[other]
    raise AssertionError("no confidently classified image among the first 200")


def grey_palette(g: np.ndarray) -> Image.Image:
    img = Image.new("P", g.shape[::-1])
    img.putpalette([v for i in range(256) for v in (i, i, i)])
    img.putdata(g.flatten().tolist())
    return img


def upscaled(g: np.ndarray, k: int = 4) -> np.ndarray:
    return np.kron(g, np.ones((k, k), np.uint8))


# ---- lossless: the exact probabilities of the plain PNG ------------------------------------

def _lossless_cases(g: np.ndarray, other: np.ndarray) -> dict[str, tuple[bytes, np.ndarray]]:
    """name -> (upload, the 8-bit greyscale picture it must be read as)."""
    rgb = np.repeat(g[..., None], 3, axis=2)
    wide = np.zeros((28, 2028), np.uint8)
    wide[:, 1000:1028] = g  # the centre crop of a 2028x28 strip starts at x = 1000
    wide[:, :1000] = 255  # what a resize of the whole strip instead of a crop would mix in
    tall = np.ascontiguousarray(wide.T)
    tall[1000:1028, :] = g
    # Transparent where the garment's background is black: composited onto white.
    rgba = np.dstack([rgb, np.full_like(g, 255)])
    rgba[g == 0] = (255, 0, 0, 0)  # red under alpha 0: showing it would be a bug
    on_white = np.where(g == 0, 255, g).astype(np.uint8)
    frames = [Image.fromarray(g), Image.fromarray(other)]
    return {
        "16-bit PNG": (save(Image.fromarray(g.astype(np.uint16) * 257), "PNG"), g),  # 0..65535 scaled back
        "palette PNG": (save(grey_palette(g), "PNG"), g),
        "transparent PNG": (save(Image.fromarray(rgba, "RGBA"), "PNG"), on_white),
        "RGB PNG": (save(Image.fromarray(rgb), "PNG"), g),
        "animated GIF (first frame)": (save(grey_palette(g), "GIF", save_all=True,
                                            append_images=[grey_palette(other)], duration=100, loop=0), g),
        "multi-frame TIFF": (save(frames[0], "TIFF", save_all=True, append_images=frames[1:]), g),
        "lossless WebP": (save(Image.fromarray(rgb), "WEBP", lossless=True), g),
        "BMP": (save(Image.fromarray(g), "BMP"), g),
        "very wide (2028x28)": (save(Image.fromarray(wide), "PNG"), g),
        "very tall (28x2028)": (save(Image.fromarray(tall), "PNG"), g),
    }


LOSSLESS = ["16-bit PNG", "palette PNG", "transparent PNG", "RGB PNG", "animated GIF (first frame)",
            "multi-frame TIFF", "lossless WebP", "BMP", "very wide (2028x28)", "very tall (28x2028)"]


@pytest.mark.parametrize("name", LOSSLESS)
def test_lossless_upload_gives_the_exact_probabilities(client, picture, name):
    upload, expected = _lossless_cases(*picture)[name]
    want = probs(client, save(Image.fromarray(expected), "PNG"))
    assert np.abs(probs(client, upload) - want).max() <= EXACT


def test_the_controls_would_catch_a_skipped_conversion(client, picture):
    """Alpha ignored (red shows), the second frame taken, the strip squashed instead of cropped:
    each gives other probabilities, so the exact comparisons above can fail."""
    g, other = picture
    want = probs(client, save(Image.fromarray(g), "PNG"))
    rgba = np.dstack([np.repeat(g[..., None], 3, axis=2), np.full_like(g, 255)])
    rgba[g == 0] = (255, 0, 0, 0)
    red_shown = np.asarray(Image.fromarray(rgba, "RGBA").convert("RGB").convert("L"))
    wide = np.zeros((28, 2028), np.uint8)
    wide[:, 1000:1028] = g
    wide[:, :1000] = 255
    squashed = np.asarray(Image.fromarray(wide).resize((28, 28), Image.Resampling.BILINEAR))
    for wrong in (red_shown, other, squashed):
        assert np.abs(probs(client, save(Image.fromarray(wrong), "PNG")) - want).max() > 10 * LOSSY


def test_one_pixel_image(client):
    """A 1x1 image is resized to a uniform 28x28: the same answer as a uniform 28x28 upload."""
    one = probs(client, save(Image.new("L", (1, 1), 200), "PNG"))
    assert np.abs(one - probs(client, save(Image.new("L", (28, 28), 200), "PNG"))).max() <= EXACT


# ---- lossy: close to the same picture sent losslessly ----------------------------------------

def test_progressive_jpeg_equals_baseline(client, picture):
    big = Image.fromarray(upscaled(picture[0]))
    baseline = probs(client, save(big, "JPEG", quality=95))
    assert np.abs(probs(client, save(big, "JPEG", quality=95, progressive=True)) - baseline).max() <= EXACT


def test_cmyk_jpeg(client, picture):
    big = upscaled(picture[0])
    want = probs(client, save(Image.fromarray(big), "PNG"))
    cmyk = Image.fromarray(np.repeat(big[..., None], 3, axis=2)).convert("CMYK")
    got = probs(client, save(cmyk, "JPEG", quality=95))
    assert got.argmax() == want.argmax() and np.abs(got - want).max() <= LOSSY


@pytest.mark.parametrize("orientation,turn", [(6, 1), (8, -1), (3, 2)])  # 90 cw, 90 ccw, 180 stored
def test_exif_rotated_jpeg(client, picture, orientation, turn):
    """Stored turned, with the EXIF orientation that turns it back: read upright."""
    big = upscaled(picture[0])
    want = probs(client, save(Image.fromarray(big), "PNG"))
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(big, turn)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    got = probs(client, save(stored, "JPEG", quality=95, exif=exif))
    assert got.argmax() == want.argmax() and np.abs(got - want).max() <= LOSSY
    sideways = probs(client, save(stored, "JPEG", quality=95))  # the control: EXIF not applied
    assert np.abs(sideways - want).max() > LOSSY


def test_large_photo(client, picture):
    """A 12-MP RGB JPEG (decoded in draft mode at reduced scale): the picture, centred."""
    g = picture[0]
    side = 3000
    photo = np.zeros((side, 4000, 3), np.uint8)
    small = Image.fromarray(g).resize((side, side), Image.Resampling.BILINEAR)
    photo[:, 500:3500] = np.asarray(small)[..., None]
    noise = np.random.default_rng(0).normal(0, 6, photo.shape)  # a sensor's, so it compresses like a photo
    photo = np.clip(photo + noise, 0, 255).astype(np.uint8)
    data = save(Image.fromarray(photo), "JPEG", quality=90)
    assert len(data) > 1_000_000
    want = probs(client, save(Image.fromarray(g), "PNG"))
    got = probs(client, data)
    assert got.argmax() == want.argmax() and np.abs(got - want).max() <= LOSSY
