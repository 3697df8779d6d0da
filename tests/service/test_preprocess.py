"""service/preprocess.py: every pixel mode and container to the right tensor; every bad upload
refused with the right code. All images are generated here, none are committed."""
from __future__ import annotations

import io
import json
import pickle
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image, ImageFile

from models.card import ModelCard
from service.preprocess import (
    DecodeLimits,
    ImageRejected,
    PreprocessSpec,
    decode_image,
    preprocess,
    to_tensor,
)

REPO = Path(__file__).resolve().parents[2]
# A model card's fields that preprocessing does not read.
OTHER_FIELDS = {
    "name": "m-test", "model": "m", "family": "test", "depth": 1, "residual": True, "dataset": "test",
    "num_classes": 2, "class_names": ["a", "b"], "trained": False, "test_accuracy": None,
    "source": {"kind": "deterministic-init", "seed": 0, "sha256": None},
}
IMAGENET_CARD = {
    **OTHER_FIELDS,
    "input_shape": [3, 224, 224],
    "resize": 256,
    "channel_mode": "RGB",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}
FMNIST_CARD = {
    **OTHER_FIELDS,
    "input_shape": [1, 28, 28],
    "resize": 28,
    "channel_mode": "L",
    "mean": [0.2860405969887955],
    "std": [0.35302424451492254],
}
IMAGENET = PreprocessSpec.from_card(ModelCard.from_dict(IMAGENET_CARD))
FMNIST = PreprocessSpec.from_card(ModelCard.from_dict(FMNIST_CARD))
LIMITS = DecodeLimits()
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def pixels(tensor: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Undoes the normalisation: back to 0..255 pixel values, (C, H, W)."""
    mean = np.asarray(spec.mean).reshape(-1, 1, 1)
    std = np.asarray(spec.std).reshape(-1, 1, 1)
    return (tensor * std + mean) * 255


def assert_tensor(tensor: np.ndarray, spec: PreprocessSpec) -> None:
    assert tensor.shape == (spec.channels, *spec.input_size)
    assert tensor.dtype == np.float32
    assert tensor.flags.c_contiguous


def assert_colour(tensor: np.ndarray, spec: PreprocessSpec, rgb: tuple[int, ...], tol: float = 0.01) -> None:
    """Every pixel of the tensor is this 8-bit colour (its luma for an "L" spec), within tol."""
    assert_tensor(tensor, spec)
    if spec.channel_mode == "L" and len(rgb) == 3:
        rgb = (Image.new("RGB", (1, 1), rgb).convert("L").getpixel((0, 0)),)
    got = pixels(tensor, spec)
    want = np.asarray(rgb, dtype=np.float64).reshape(-1, 1, 1)
    assert np.abs(got - want).max() <= tol, f"want {rgb}, got {got.reshape(len(rgb), -1).mean(1)}"


def halves(size: tuple[int, int], left: tuple[int, ...], right: tuple[int, ...], mode: str = "RGB") -> Image.Image:
    w, h = size
    img = Image.new(mode, size, left)
    img.paste(Image.new(mode, (w - w // 2, h), right), (w // 2, 0))
    return img


def png_bomb(side: int, block_rows: int = 100) -> bytes:
    """A genuine PNG of side x side zero pixels, a few hundred KB, built without compressing
    side**2 bytes: the same fully-flushed deflate segment repeated, then the trailer."""
    row = side + 1  # the filter byte, then the pixels
    compressor = zlib.compressobj(9)
    first = compressor.compress(bytes(row * block_rows)) + compressor.flush(zlib.Z_FULL_FLUSH)
    header, segment = first[:2], first[2:]
    adler = (((row * side) % 65521) << 16) | 1  # adler32 of n zero bytes
    idat = header + segment * (side // block_rows) + b"\x03\x00" + struct.pack(">I", adler)
    assert zlib.decompressobj().decompress(idat, 1 << 20) == bytes(1 << 20)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def rejection(data: bytes, limits: DecodeLimits = LIMITS) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        preprocess(data, IMAGENET, limits)
    return info.value


# --- the spec ------------------------------------------------------------------------------------


def test_spec_from_imagenet_metadata():
    assert IMAGENET == PreprocessSpec("RGB", (224, 224), 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert IMAGENET.channels == 3


def test_fmnist_spec_resizes_straight_to_the_crop():
    assert FMNIST.resize_shorter == 28 and FMNIST.input_size == (28, 28) and FMNIST.channels == 1


@pytest.mark.parametrize("path", sorted(REPO.glob("models/checkpoints/*/metadata.json")), ids=lambda p: p.parent.name)
def test_spec_from_every_checkpoint(path: Path):
    from export.sources import checkpoint_card  # torch: only for this test

    meta = json.loads(path.read_text())
    spec = PreprocessSpec.from_card(checkpoint_card(meta, path.parent))
    tensor = preprocess(encode(Image.new("RGB", (50, 40), RED), "PNG"), spec, LIMITS)
    assert tensor.shape == tuple(meta["input_shape"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mean": None}, "lacks field 'mean'"),
        ({"input_shape": [224, 224]}, r"\[C, H, W\]"),
        ({"input_shape": [3, 0, 224]}, r"\[C, H, W\]"),
        ({"input_shape": [1, 224, 224]}, "1 channel"),
        ({"channel_mode": "BGR"}, "'L' or 'RGB'"),
        ({"mean": [0.5]}, "mean has 1 value"),
        ({"std": [0.2, 0.0, 0.2]}, "std must be positive"),
        ({"std": "0.2"}, "list of numbers"),
        ({"resize": 200}, "no smaller than"),
        ({"resize": "256"}, "'resize' must be a positive integer"),
    ],
)
def test_spec_rejects_bad_cards(change: dict, message: str):
    card = {k: v for k, v in {**IMAGENET_CARD, **change}.items() if change.get(k, "kept") is not None}
    with pytest.raises(ValueError, match=message):
        PreprocessSpec.from_card(ModelCard.from_dict(card))


@pytest.mark.parametrize("kwargs", [{"max_bytes": 0}, {"max_pixels": -1}, {"max_pixels": 1.5}])
def test_limits_must_be_positive_integers(kwargs: dict):
    with pytest.raises(ValueError, match="positive integer"):
        DecodeLimits(**kwargs)


def test_everything_crosses_a_process_boundary():
    err = pickle.loads(pickle.dumps(ImageRejected("truncated", "cut short")))
    assert (err.code, str(err)) == ("truncated", "cut short")
    assert pickle.loads(pickle.dumps(IMAGENET)) == IMAGENET
    assert pickle.loads(pickle.dumps(LIMITS)) == LIMITS


# --- values --------------------------------------------------------------------------------------


def test_solid_red_gives_the_normalised_red():
    tensor = preprocess(encode(Image.new("RGB", (300, 200), RED), "PNG"), IMAGENET, LIMITS)
    assert_tensor(tensor, IMAGENET)
    want = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225]
    np.testing.assert_allclose(tensor[:, 0, 0], want, rtol=1e-6)
    assert np.all(tensor == tensor[:, :1, :1])


def test_fashion_mnist_round_trip_is_exact():
    x = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    tensor = preprocess(encode(Image.fromarray(x), "PNG"), FMNIST, LIMITS)
    mean, std = np.float32(FMNIST.mean[0]), np.float32(FMNIST.std[0])
    assert_tensor(tensor, FMNIST)
    np.testing.assert_array_equal(tensor[0], (x.astype(np.float32) / 255 - mean) / std)
    reference64 = (x / 255 - FMNIST.mean[0]) / FMNIST.std[0]
    np.testing.assert_allclose(tensor[0], reference64, rtol=0, atol=1e-6)


def test_crop_matches_resize_then_centre_crop():
    # What torchvision's Resize(256) + CenterCrop(224) does, spelled out with PIL.
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    resized = img.resize((int(256 * 300 / 200), 256), Image.Resampling.BILINEAR)
    left, top = round((resized.width - 224) / 2), round((resized.height - 224) / 2)
    want = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float64)
    got = pixels(to_tensor(img, IMAGENET), IMAGENET).transpose(1, 2, 0)
    assert np.abs(got - want).max() <= 1.01  # 8-bit rounding of the two resamplers


S = (40, 30)
MODES: list[tuple[str, Callable[[], Image.Image], tuple[int, ...], float]] = [
    ("1", lambda: Image.new("1", S, 1), WHITE, 0.01),
    ("L", lambda: Image.new("L", S, 77), (77, 77, 77), 0.01),
    ("RGB", lambda: Image.new("RGB", S, (10, 200, 30)), (10, 200, 30), 0.01),
    ("P", lambda: Image.new("RGB", S, RED).convert("P"), RED, 0.01),
    ("P+transparency", lambda: _with_transparency(Image.new("P", S, 0)), WHITE, 0.01),
    ("RGBA-transparent-black", lambda: Image.new("RGBA", S, (0, 0, 0, 0)), WHITE, 0.01),
    ("RGBA-half-red", lambda: Image.new("RGBA", S, (255, 0, 0, 128)), (255, 127, 127), 1.01),
    ("RGBa", lambda: Image.new("RGBA", S, (255, 0, 0, 128)).convert("RGBa"), (255, 127, 127), 2.01),
    ("LA-transparent", lambda: Image.new("LA", S, (0, 0)), WHITE, 0.01),
    ("PA-transparent", lambda: Image.new("PA", S, (0, 0)), WHITE, 0.01),
    ("I;16", lambda: Image.fromarray(np.full(S[::-1], 65535, np.uint16)), WHITE, 0.01),
    ("I;16B", lambda: Image.new("I;16B", S, 32896), (128, 128, 128), 0.01),
    ("I", lambda: Image.new("I", S, 32896), (128, 128, 128), 0.01),  # untagged: 16-bit data
    ("F", lambda: Image.new("F", S, 0.5), (128, 128, 128), 0.01),
    ("CMYK", lambda: Image.new("CMYK", S, (0, 255, 255, 0)), RED, 0.01),
    ("YCbCr", lambda: Image.new("RGB", S, RED).convert("YCbCr"), RED, 2.01),
    ("HSV", lambda: Image.new("HSV", S, (0, 255, 255)), RED, 0.01),
    ("LAB", lambda: Image.new("LAB", S, (255, 128, 128)), WHITE, 2.01),
    ("RGBX", lambda: Image.new("RGBX", S, (0, 0, 255, 0)), BLUE, 0.01),
]


def _with_transparency(img: Image.Image) -> Image.Image:
    img.putpalette([0, 0, 0] * 256)
    img.info["transparency"] = 0
    return img


@pytest.mark.parametrize("spec", [IMAGENET, FMNIST], ids=["RGB", "L"])
@pytest.mark.parametrize(("make", "rgb", "tol"), [m[1:] for m in MODES], ids=[m[0] for m in MODES])
def test_every_mode(make: Callable[[], Image.Image], rgb: tuple[int, ...], tol: float, spec: PreprocessSpec):
    assert_colour(to_tensor(make(), spec), spec, rgb, tol)


def test_16_bit_png_scales_by_its_bit_depth():
    white16 = preprocess(encode(Image.fromarray(np.full((30, 40), 65535, np.uint16)), "PNG"), IMAGENET, LIMITS)
    white8 = preprocess(encode(Image.new("L", (40, 30), 255), "PNG"), IMAGENET, LIMITS)
    np.testing.assert_array_equal(white16, white8)
    ramp = np.linspace(0, 65535, 30 * 30).round().astype(np.uint16).reshape(30, 30)
    img = decode_image(encode(Image.fromarray(ramp), "PNG"), LIMITS)
    assert img.mode == "I;16"
    identity = PreprocessSpec("L", (30, 30), 30, (0.0,), (1.0,))  # no resize, no normalisation
    got = pixels(to_tensor(img, identity), identity)
    # The whole 0..65535 range maps onto 0..255 (65535 / 255 = 257), not clipped at 255.
    np.testing.assert_allclose(got[0], np.rint(ramp / 257), atol=1e-3)
    assert got.min() < 0.5 and got.max() > 254.5


@pytest.mark.parametrize(
    ("array", "rgb"),
    [
        (np.full((30, 40), 32896, dtype=">u2"), (128, 128, 128)),  # I;16B
        (np.full((30, 40), 2**31 - 1, dtype=np.int32), WHITE),  # signed 32-bit: the top is white
        (np.full((30, 40), -(2**31), dtype=np.int32), (0, 0, 0)),
        (np.full((30, 40), 0.25, dtype=np.float32), (64, 64, 64)),  # float: [0, 1]
    ],
    ids=["I;16B", "int32-max", "int32-min", "float32"],
)
def test_tiff_integer_and_float_depths(array: np.ndarray, rgb: tuple[int, ...]):
    mode = "I;16B" if array.dtype == np.dtype(">u2") else None
    img = Image.frombytes("I;16B", array.shape[::-1], array.tobytes()) if mode else Image.fromarray(array)
    assert_colour(preprocess(encode(img, "TIFF"), IMAGENET, LIMITS), IMAGENET, rgb)


def test_cmyk_jpeg():
    data = encode(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG", quality=95)
    assert decode_image(data, LIMITS).mode == "CMYK"
    assert_colour(preprocess(data, IMAGENET, LIMITS), IMAGENET, RED, tol=4)


def test_progressive_jpeg_matches_baseline():
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    progressive = encode(img, "JPEG", quality=95, progressive=True)
    assert decode_image(progressive, LIMITS).info.get("progressive")
    baseline = preprocess(encode(img, "JPEG", quality=95), IMAGENET, LIMITS)
    got = preprocess(progressive, IMAGENET, LIMITS)
    assert_tensor(got, IMAGENET)
    assert np.abs(pixels(got, IMAGENET) - pixels(baseline, IMAGENET)).max() <= 3


@pytest.mark.parametrize(("orientation", "top", "bottom"), [(6, RED, BLUE), (8, BLUE, RED)])
def test_exif_orientation(orientation: int, top: tuple[int, ...], bottom: tuple[int, ...]):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(halves((64, 32), RED, BLUE), "JPEG", quality=95, exif=exif.tobytes())
    img = decode_image(data, LIMITS)
    assert img.size == (32, 64)  # the wide stored image stands up
    assert np.abs(np.subtract(img.getpixel((16, 5)), top)).max() <= 8
    assert np.abs(np.subtract(img.getpixel((16, 58)), bottom)).max() <= 8
    # After the crop the halves are still top and bottom, not left and right.
    spec = PreprocessSpec("RGB", (8, 8), 8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    got = pixels(preprocess(data, spec, LIMITS), spec)
    assert np.abs(got[:, 0] - np.reshape(top, (3, 1))).max() <= 8
    assert np.abs(got[:, -1] - np.reshape(bottom, (3, 1))).max() <= 8


def test_palette_png_and_transparent_png():
    palette = Image.new("P", (40, 30), 0)
    palette.putpalette([*RED, *BLUE] + [0, 0, 0] * 254)
    assert_colour(preprocess(encode(palette, "PNG"), IMAGENET, LIMITS), IMAGENET, RED)
    transparent = encode(Image.new("RGBA", (40, 30), (0, 0, 0, 0)), "PNG")
    assert_colour(preprocess(transparent, IMAGENET, LIMITS), IMAGENET, WHITE)
    keyed = encode(_with_transparency(Image.new("P", (40, 30), 0)), "PNG")
    assert_colour(preprocess(keyed, IMAGENET, LIMITS), IMAGENET, WHITE)


@pytest.mark.parametrize(
    ("fmt", "kwargs"),
    [("GIF", {}), ("TIFF", {}), ("PNG", {}), ("WEBP", {"lossless": True})],
    ids=["animated-GIF", "multi-frame-TIFF", "APNG", "animated-WebP"],
)
def test_first_frame(fmt: str, kwargs: dict):
    frames = [Image.new("RGB", (40, 30), c) for c in (RED, BLUE, (0, 255, 0))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], **kwargs)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert_colour(preprocess(data, IMAGENET, LIMITS), IMAGENET, RED)


@pytest.mark.parametrize(("fmt", "kwargs"), [("WEBP", {"lossless": True}), ("BMP", {})])
def test_webp_and_bmp(fmt: str, kwargs: dict):
    data = encode(Image.new("RGB", (40, 30), (10, 200, 30)), fmt, **kwargs)
    assert_colour(preprocess(data, IMAGENET, LIMITS), IMAGENET, (10, 200, 30))


def test_one_pixel_image():
    assert_colour(preprocess(encode(Image.new("RGB", (1, 1), BLUE), "PNG"), IMAGENET, LIMITS), IMAGENET, BLUE)


def test_very_wide_image_is_cropped_at_its_centre():
    tensor = preprocess(encode(halves((4000, 10), RED, BLUE), "PNG"), IMAGENET, LIMITS)
    got = pixels(tensor, IMAGENET)
    assert_tensor(tensor, IMAGENET)
    assert np.abs(got[:, :, 0] - np.reshape(RED, (3, 1))).max() <= 0.01
    assert np.abs(got[:, :, -1] - np.reshape(BLUE, (3, 1))).max() <= 0.01


def test_large_jpeg_is_decoded_in_draft_mode():
    x = np.linspace(0, 255, 4000, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, 3000, dtype=np.float32)[:, None, None]
    photo = np.broadcast_to(np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2), (3000, 4000, 3))
    data = encode(Image.fromarray(photo.astype(np.uint8)), "JPEG", quality=90)
    assert decode_image(data, LIMITS, target=(256, 256)).size == (500, 375)  # 1/8: short side >= 256
    assert decode_image(data, LIMITS, target=(1000, 1000)).size == (2000, 1500)  # 1/2, not 1/4
    full = decode_image(data, LIMITS)
    assert full.size == (4000, 3000)
    drafted = preprocess(data, IMAGENET, LIMITS)
    assert_tensor(drafted, IMAGENET)
    assert np.abs(pixels(drafted, IMAGENET) - pixels(to_tensor(full, IMAGENET), IMAGENET)).max() <= 3


def test_draft_target_follows_exif_orientation():
    # Stored 1600x800, shown 800x1600: the target is in display axes and must hold there.
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.new("RGB", (1600, 800), RED), "JPEG", exif=exif.tobytes())
    assert decode_image(data, LIMITS, target=(200, 400)).size == (200, 400)  # 1/4 on both axes
    assert decode_image(data, LIMITS, target=(700, 100)).size == (800, 1600)  # 1/2 would be too narrow
    assert decode_image(data, LIMITS, target=(500, 500)).size == (800, 1600)  # under 2x: untouched


# --- rejections ----------------------------------------------------------------------------------


def test_empty_body():
    assert rejection(b"").code == "empty"


def test_random_bytes():
    assert rejection(np.random.default_rng(3).bytes(4096)).code == "not_an_image"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "SVG"),
        (b'<?xml version="1.0"?><catalog><item/></catalog>', "XML"),
        (b"<!DOCTYPE html><html><body><img src=cat.jpg></body></html>", "HTML"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n", "PDF"),
        (b'{"image": "iVBORw0KGgo="}', "JSON"),
        (b"just some text\n", "text"),
    ],
    ids=["svg", "xml", "html", "pdf", "json", "text"],
)
def test_documents_are_not_images(body: bytes, words: str):
    err = rejection(body)
    assert err.code == "not_an_image" and words in str(err)


def test_unsupported_format():
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(100)
    err = rejection(heic)
    assert err.code == "unsupported" and "HEIC" in str(err)


def test_damaged_header():
    assert rejection(b"\x89PNG\r\n\x1a\n" + bytes(40)).code == "corrupt"


def _noise(fmt: str) -> bytes:
    img = Image.fromarray(np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return encode(img, fmt)


@pytest.mark.parametrize("lenient_pil", [False, True], ids=["pil-default", "LOAD_TRUNCATED_IMAGES-on"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(fmt: str, lenient_pil: bool, monkeypatch: pytest.MonkeyPatch):
    # Other code in the process may switch PIL's flag on; a cut file must still be refused
    # rather than padded with grey.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", lenient_pil)
    data = _noise(fmt)
    assert decode_image(data, LIMITS).size == (64, 64)
    for keep in (0.3, 0.6, 0.95):
        assert rejection(data[: int(len(data) * keep)]).code == "truncated"


def test_over_the_byte_limit():
    data = _noise("PNG")
    err = rejection(data, DecodeLimits(max_bytes=len(data) - 1))
    assert err.code == "too_large"
    assert preprocess(data, IMAGENET, DecodeLimits(max_bytes=len(data))).shape == (3, 224, 224)


def test_over_the_pixel_limit():
    err = rejection(_noise("JPEG"), DecodeLimits(max_pixels=64 * 64 - 1))
    assert err.code == "too_many_pixels" and "64x64" in str(err)


@pytest.mark.parametrize("side", [8000, 30000])  # under, then over, PIL's own 89-MP bomb check
def test_png_decompression_bomb(side: int):
    max_pixels, load_truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    data = png_bomb(side)
    assert len(data) < 1_000_000
    err = rejection(data)
    assert err.code == "decompression_bomb"
    # Refused from the header alone, and without touching PIL's process-wide settings.
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == (max_pixels, load_truncated)
