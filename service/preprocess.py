"""Image preprocessing for the service: upload bytes -> checked image -> normalised (C, H, W) tensor.

Why this is separate from batched inference: the model's batchable API hands one onnxruntime call
to a single batch worker. Decoding and resizing is per-image CPU work (about 3 ms of one core for
a 640x480 JPEG, 40 ms for a 12-MP photo) with nothing to gain from batching, and it can fail on a
bad upload. Done inside the batch worker it would be serialised there (one core decoding every
image of every batch while the batch waits), and one malformed upload would fail the whole batch
it shared. So each request is decoded and validated where it arrives (an API worker, a process
pool or an entry Service), and only ready float32 tensors reach the batch. The module is plain
numpy/PIL, with no BentoML import, so it is testable without a server and everything it takes
or raises pickles into and out of a process pool.

The steps follow the model's card, as torchvision's and timm's eval transforms do: resize the
shorter side to ``resize`` (bilinear, antialiased), centre-crop to the input size, scale to
[0, 1], then subtract ``mean`` and divide by ``std`` per channel.

Uploads are untrusted, so decoding refuses, with an :class:`ImageRejected` the service maps to a
4xx: empty or oversized bodies, non-images, formats outside :data:`ACCEPTED_FORMATS`, images whose
header declares more than ``max_pixels`` (checked before any pixel is decoded, which is what
stops a few-hundred-KB PNG that inflates to gigabytes), and truncated files. PIL's process-wide
settings (``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``) are read, never written:
other code in the process may depend on them.
"""
from __future__ import annotations

import io
import logging
import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from models.card import ModelCard

logger = logging.getLogger(__name__)

RejectCode = Literal[
    "empty",  # 0 bytes
    "too_large",  # more bytes than DecodeLimits.max_bytes
    "not_an_image",  # text, HTML, SVG/XML, JSON, PDF, random bytes
    "unsupported",  # a real image, but a format or pixel mode we do not decode (HEIC, PSD, ...)
    "corrupt",  # an accepted format whose header or data is damaged
    "truncated",  # the file ends before its pixel data does
    "too_many_pixels",  # width * height over DecodeLimits.max_pixels
    "decompression_bomb",  # ... and tiny for its size: built to exhaust memory
]

# Only these parsers see uploads: fewer parsers, smaller attack surface, and PIL's formats
# without a magic number (TGA and friends) cannot "identify" random bytes as an image.
# (PIL's JPEG opener also returns camera JPEGs that carry a second picture, as format "MPO".)
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")

# Transparent pixels are composited onto white: it is how browsers and image viewers show a
# transparent PNG to the person uploading it (so the model sees what they see), and cut-out
# product shots, logos and icons, the usual transparent uploads, are drawn for white pages.
# Dropping alpha instead would expose whatever colour the transparent pixels happen to hold.
BACKGROUND = 255

# Over the pixel limit, an image is labelled a decompression bomb rather than merely too big when
# it declares more than this many pixels per byte of upload. Photos and screenshots stay well
# under 100 (JPEG is 3-10, flat PNG screenshots 10-50); a PNG of zeros reaches ~1000.
_BOMB_PIXELS_PER_BYTE = 100

_EXIF_ORIENTATION = 0x0112
_TIFF_BITS_PER_SAMPLE = 258
_TIFF_SAMPLE_FORMAT = 339  # 1 unsigned, 2 signed, 3 float


class ImageRejected(ValueError):
    """An upload that is not a usable image: ``code`` is machine-readable, the message says why."""

    def __init__(self, code: RejectCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle both fields: the default rebuilds from args alone, which loses ``code`` on the
        # way back from a process-pool worker.
        return (type(self), (self.code, self.message))


@dataclass(frozen=True)
class DecodeLimits:
    """What one upload may cost: its size on the wire, and its size once decoded."""

    max_bytes: int = 10 * 1024 * 1024  # 10 MiB: a 12-MP phone JPEG is 3-6 MiB
    max_pixels: int = 40_000_000  # 40 MP: 120 MB as RGB; below PIL's own 89-MP bomb warning

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"DecodeLimits.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class PreprocessSpec:
    """A model's preprocessing, as read from its card."""

    channel_mode: Literal["L", "RGB"]
    input_size: tuple[int, int]  # (H, W) after the centre crop
    resize_shorter: int  # the shorter side is resized to this before the crop
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.channel_mode not in ("L", "RGB"):
            raise ValueError(f"channel_mode must be 'L' or 'RGB', got {self.channel_mode!r}")
        h, w = self.input_size
        if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
            raise ValueError(f"input size must be two positive integers, got {self.input_size!r}")
        if not _is_int(self.resize_shorter) or self.resize_shorter < max(h, w):
            # A smaller shorter side would leave the crop hanging off the image.
            raise ValueError(
                f"resize ({self.resize_shorter!r}) must be an integer no smaller than the input "
                f"size's larger side ({max(h, w)})"
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != self.channels:
                raise ValueError(
                    f"{name} has {len(values)} value(s) but channel_mode {self.channel_mode!r} "
                    f"has {self.channels} channel(s)"
                )
        if not all(math.isfinite(m) for m in self.mean):
            raise ValueError(f"mean must be finite numbers, got {list(self.mean)}")
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ValueError(f"std must be positive finite numbers, got {list(self.std)}")

    @property
    def channels(self) -> int:
        return 1 if self.channel_mode == "L" else 3

    @classmethod
    def from_card(cls, card: ModelCard) -> PreprocessSpec:
        """The spec of a model card, whose fields are already typed; raises ValueError when they
        do not fit together (channels, resize, normalisation)."""
        c, h, w = card.input_shape
        if c != (1 if card.channel_mode == "L" else 3):
            raise ValueError(f"model card input_shape has {c} channel(s) but channel_mode is {card.channel_mode!r}")
        return cls(
            channel_mode=card.channel_mode,
            input_size=(h, w),
            resize_shorter=card.resize,
            mean=card.mean,
            std=card.std,
        )


def preprocess(data: bytes, spec: PreprocessSpec, limits: DecodeLimits) -> np.ndarray:
    """Upload bytes to the model's input tensor, float32 (C, H, W); raises ImageRejected."""
    # Square target: JPEG draft then keeps the shorter side >= resize_shorter, whichever it is.
    img = decode_image(data, limits, target=(spec.resize_shorter, spec.resize_shorter))
    return to_tensor(img, spec)


def decode_image(
    data: bytes, limits: DecodeLimits, target: tuple[int, int] | None = None
) -> Image.Image:
    """Decodes the first frame of an upload, fully, upright per its EXIF orientation.

    ``target`` is the (width, height) the caller needs at least: a JPEG at least twice as large on
    both axes is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, much faster than decoding
    everything and resizing) but never below ``target``. Raises ImageRejected.
    """
    if not data:
        raise ImageRejected("empty", "the upload is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageRejected(
            "too_large", f"the upload is {_mib(len(data))}; the limit is {_mib(limits.max_bytes)}"
        )
    fp = _EofTrackingReader(data)
    try:
        # Reads the header only. PIL raises DecompressionBombError itself past 2x its
        # MAX_IMAGE_PIXELS (89 MP); between 1x and 2x it warns, for images over our 40-MP default.
        img = Image.open(fp, formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except Image.DecompressionBombError as e:
        raise ImageRejected("decompression_bomb", f"the image declares too many pixels to decode ({e})") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - any parser failure on untrusted bytes is a bad upload
        raise ImageRejected("corrupt", f"the image header is damaged ({e})") from None

    name = img.format or "image"
    w, h = img.size
    pixels = w * h
    if pixels <= 0:
        raise ImageRejected("corrupt", f"the {name} header declares an empty {w}x{h} image")
    if pixels > limits.max_pixels:
        size = f"{w}x{h} ({pixels / 1e6:.1f} MP)"
        if pixels > _BOMB_PIXELS_PER_BYTE * len(data):
            raise ImageRejected(
                "decompression_bomb",
                f"the {name} declares {size} in only {_mib(len(data))}: a decompression bomb",
            )
        raise ImageRejected(
            "too_many_pixels",
            f"the {name} is {size}; the limit is {limits.max_pixels / 1e6:.1f} MP, downscale it first",
        )

    # With PIL's flag off (the default) load() raises on a short file; the tracker is the check
    # that still holds when other code in the process has switched LOAD_TRUNCATED_IMAGES on,
    # where PIL would pad the missing rows with grey and return normally.
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    if lenient:
        _warn_lenient_pil()
    fp.read_past_end = False  # from here on, only pixel data is read (PNG's getexif() loads too)

    if target is not None and img.format in ("JPEG", "MPO"):
        if _exif_orientation(img) in (5, 6, 7, 8):  # stored sideways: the target's axes swap too
            target = (target[1], target[0])
        if min(w // target[0], h // target[1]) >= 2:  # else no power of two fits: decode as is
            img.draft(None, target)
    try:
        img.load()
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - as above: a decoder failure is a bad upload
        if fp.read_past_end or "truncated" in str(e):
            raise ImageRejected("truncated", f"the {name} file ends before its pixel data ({e})") from None
        raise ImageRejected("corrupt", f"the {name} pixel data cannot be decoded ({e})") from None
    if lenient and fp.read_past_end:
        raise ImageRejected("truncated", f"the {name} file ends before its pixel data")

    if _exif_orientation(img) != 1:
        ImageOps.exif_transpose(img, in_place=True)
    return img


def to_tensor(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Any PIL mode to the model's input: float32 (C, H, W), C-contiguous, normalised.

    Transparency is composited onto white (see BACKGROUND), 16- and 32-bit samples are scaled by
    their bit depth, and colour is converted to the spec's channel mode with PIL's conversions.
    """
    flat = _to_8bit(img)
    if flat.mode != spec.channel_mode:
        flat = flat.convert(spec.channel_mode)
    crop = _resize_centre_crop(flat, spec.resize_shorter, spec.input_size)
    pixels = np.asarray(crop)  # (H, W) uint8 for L, (H, W, 3) for RGB
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    out = np.ascontiguousarray(chw, dtype=np.float32)  # (C, H, W)
    # The same float32 operations, in the same order, as the training transform
    # (x / 255 - mean) / std, so a 28x28 upload reproduces the training tensor bit for bit.
    out /= 255
    out -= np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    out /= np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    return out


def _to_8bit(img: Image.Image) -> Image.Image:
    """The image as 8-bit "L" or "RGB", transparency flattened onto BACKGROUND."""
    mode = img.mode
    has_key = "transparency" in img.info  # palette or colour-key transparency (GIF, PNG tRNS)
    if mode in ("L", "RGB") and not has_key:
        return img
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I") or mode == "F":  # I, I;16, I;16B, I;16L, I;16N, F
        return Image.fromarray(_scale_to_uint8(img))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or has_key:
        rgba = (img.convert("LA") if mode == "La" else img).convert("RGBA")
        background = Image.new("RGBA", rgba.size, (BACKGROUND, BACKGROUND, BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV, RGBX
    except (ValueError, OSError) as e:
        raise ImageRejected("unsupported", f"cannot convert a {mode} image to RGB ({e})") from None


def _scale_to_uint8(img: Image.Image) -> np.ndarray:
    """Integer images scaled by their bit depth (0..65535 -> 0..255 for 16-bit), not clipped as
    PIL's convert("L") does; float images are taken to hold intensities in [0, 1]."""
    values = np.asarray(img).astype(np.float32)  # also makes big-endian I;16B native
    if img.mode == "F":
        scaled = np.nan_to_num(values, nan=0.0) * 255
    else:
        bits, signed = _integer_depth(img)
        if signed:
            values += 2 ** (bits - 1)  # the most negative value becomes black
        scaled = values * (255 / (2**bits - 1))
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def _integer_depth(img: Image.Image) -> tuple[int, bool]:
    """(bits, signed) of an integer image's samples."""
    if img.mode.startswith("I;16"):
        return 16, False
    tags = getattr(img, "tag_v2", None)  # TIFF: the only accepted format that yields mode "I"
    if tags is not None:
        bits = _first(tags.get(_TIFF_BITS_PER_SAMPLE))
        sample_format = _first(tags.get(_TIFF_SAMPLE_FORMAT))
        if bits in (8, 16, 32):
            return int(bits), sample_format == 2
    # An untagged "I" image (built in memory): PIL's historical meaning, 16-bit data widened.
    return 16, False


def _resize_centre_crop(img: Image.Image, shorter: int, size: tuple[int, int]) -> Image.Image:
    """torchvision's Resize(shorter) then CenterCrop(size), bilinear with antialiasing, done as
    one resize of just the crop's source region: the same pixels, without materialising the whole
    resized image (a 4000x10 strip would otherwise become 102400x256)."""
    out_h, out_w = size
    w, h = img.size
    # torchvision's rounding: the long side is truncated, the crop offset rounded.
    if w <= h:
        new_w, new_h = shorter, int(shorter * h / w)
    else:
        new_w, new_h = int(shorter * w / h), shorter
    top = int(round((new_h - out_h) / 2.0))
    left = int(round((new_w - out_w) / 2.0))
    sx, sy = w / new_w, h / new_h
    box = (left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy)
    # PIL's filter reaches outside ``box`` when the image continues there, so crop edges match
    # resize-then-crop.
    return img.resize((out_w, out_h), Image.Resampling.BILINEAR, box=box)


def _exif_orientation(img: Image.Image) -> int:
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception as e:  # noqa: BLE001 - a broken EXIF block should not cost the picture
        logger.debug("ignoring unreadable EXIF: %s", e)
        return 1
    return orientation if orientation in range(1, 9) else 1


class _EofTrackingReader(io.BytesIO):
    """Remembers a read that found nothing left: the decoder wanted more bytes than were sent."""

    read_past_end = False

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        if not chunk and size != 0:
            self.read_past_end = True
        return chunk


_warned_lenient = False


def _warn_lenient_pil() -> None:
    global _warned_lenient
    if not _warned_lenient:
        _warned_lenient = True
        logger.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was switched on by other code in this process; "
            "truncated uploads are still refused, by tracking reads past the end of the upload"
        )


def _unidentified(data: bytes) -> ImageRejected:
    """Why PIL could not open the upload, as specifically as its first bytes tell."""
    head = data[:1024]
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()  # BOM, whitespace
    if stripped.startswith(b"%pdf"):
        return ImageRejected("not_an_image", "the upload is a PDF document, not an image")
    if stripped.startswith(b"<"):
        if b"<svg" in stripped:
            what = "an SVG document (vector graphics)"
        elif stripped.startswith((b"<!doctype html", b"<html")) or b"<body" in stripped:
            what = "an HTML page"
        else:
            what = "an XML/markup document"
        return ImageRejected("not_an_image", f"the upload is {what}, not a raster image")
    if stripped.startswith((b"{", b"[")):
        return ImageRejected("not_an_image", "the upload is JSON, not an image; send the image bytes themselves")
    unsupported = _unsupported_format(head)
    if unsupported:
        return ImageRejected(
            "unsupported",
            f"{unsupported} images are not supported; send JPEG, PNG, GIF, WebP, BMP or TIFF",
        )
    accepted = _accepted_format(head)
    if accepted:
        return ImageRejected("corrupt", f"the upload starts like a {accepted} but its header is damaged or cut short")
    if _looks_like_text(head):
        return ImageRejected("not_an_image", "the upload is text, not an image")
    return ImageRejected("not_an_image", "the upload is not an image in any accepted format (JPEG, PNG, GIF, WebP, BMP, TIFF)")


def _unsupported_format(head: bytes) -> str | None:
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIC/HEIF"
    for magic, name in (
        (b"8BPS", "Photoshop (PSD)"),
        (b"\x00\x00\x01\x00", "ICO"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
        (b"\xffO\xffQ", "JPEG 2000"),
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
        (b"\xff\x0a", "JPEG XL"),
        (b"qoif", "QOI"),
        (b"DDS ", "DDS"),
    ):
        if head.startswith(magic):
            return name
    return None


def _accepted_format(head: bytes) -> str | None:
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    # "BM" alone is too common at the start of text; also require a known DIB header size.
    if head.startswith(b"BM") and len(head) >= 18 and struct.unpack("<I", head[14:18])[0] in (12, 40, 52, 56, 64, 108, 124):
        return "BMP"
    return None


def _looks_like_text(head: bytes) -> bool:
    control = sum(b < 9 or 13 < b < 32 for b in head)
    return control == 0


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, tuple) and value else value


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _mib(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"
