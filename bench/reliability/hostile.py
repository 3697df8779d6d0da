"""Broken and hostile requests for the classifier, each with the answer the service documents for it.

Every request is generated here, byte for byte (nothing is committed), so the tests and the fault
benchmark send exactly the same corpus: through starlette's TestClient, or as raw bytes over a
socket to a real ``bentoml serve`` (``bench.aio_http``), where the multipart framing, header
bytes and declared lengths reach the server as written.
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

BOUNDARY = "hostile-5b1e9a"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


@dataclass(frozen=True)
class Limits:
    """The service's limits the corpus is built around (service/config.py's defaults)."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_image_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_batch_images: int = 16
    num_classes: int = 10


@dataclass(frozen=True)
class Hostile:
    name: str
    path: str
    content_type: str
    body: bytes
    status: int  # the documented answer
    codes: tuple[str, ...]  # the documented code(s) of its JSON body
    method: str = "POST"
    # Declared Content-Length when it differs from len(body): the body over the byte limit is
    # announced, and only its start is sent (the server answers on the header alone).
    declared_length: int | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)

    def full_body(self) -> bytes:
        """The body a client that does send everything would send (for in-process clients)."""
        if self.declared_length is None:
            return self.body
        return self.body + b"\0" * (self.declared_length - len(self.body))


def part(name: str, data: bytes, filename: bytes | None = None, content_type: str | None = None) -> bytes:
    """One multipart part; ``filename`` is raw bytes, so it can be anything a client can send."""
    disposition = f'Content-Disposition: form-data; name="{name}"'.encode()
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    head = disposition + b"\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n".encode()
    return f"--{BOUNDARY}\r\n".encode() + head + b"\r\n" + data + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def image_form(data: bytes, filename: bytes = b"upload.png", **fields: str) -> bytes:
    """A /classify body: ``data`` in field ``image`` plus text fields."""
    return form(part("image", data, filename, "application/octet-stream"),
                *(part(k, v.encode()) for k, v in fields.items()))


def good_png(seed: int = 0, size: int = 28) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def noise_jpeg(size: int = 64) -> bytes:
    """Noise, so that most of the file is scan data and a cut in its middle falls there."""
    pixels = np.random.default_rng(2).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png_bomb(side: int = 20_000) -> bytes:
    """A 1-bit PNG of zeros: ~50 kB on the wire, ``side``^2 pixels once decoded."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int, payload: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` followed by ``payload`` bytes of IDAT
    noise: over the pixel limit without being a decompression bomb (enough bytes per pixel),
    and built without ever holding the pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    noise = np.random.default_rng(1).bytes(payload)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", noise) + chunk(b"IEND", b"")


def hostile_requests(limits: Limits = Limits()) -> list[Hostile]:
    """The corpus: image bodies that are not (usable) images, malformed requests, hostile fields,
    limits exceeded. Each entry's status and code are the ones the README documents."""
    png, jpeg = good_png(), noise_jpeg()
    rng = np.random.default_rng(7)

    def img(name: str, data: bytes, status: int, *codes: str, filename: bytes = b"upload.png") -> Hostile:
        return Hostile(name, "/classify", MULTIPART, image_form(data, filename), status, codes)

    def fields(name: str, status: int, codes: tuple[str, ...], body: bytes, path: str = "/classify") -> Hostile:
        return Hostile(name, path, MULTIPART, body, status, codes)

    # Enough bytes per declared pixel to stay under the decompression-bomb ratio (100 px/byte).
    side = int((limits.max_pixels * 1.05) ** 0.5) + 1
    over_pixels = png_header_only(side, side, side * side // 50)
    corpus = [
        # -- the image itself --
        img("random bytes", rng.bytes(4096), 415, "not_an_image"),
        img("zero bytes", b"", 400, "empty"),
        img("truncated jpeg", jpeg[: len(jpeg) // 2], 400, "truncated"),
        img("truncated png", png[: len(png) // 2], 400, "truncated"),
        img("png decompression bomb", png_bomb(), 413, "decompression_bomb"),
        img("over the pixel limit", over_pixels, 413, "too_many_pixels"),
        img("svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" height="9">'
                   b'<rect width="9" height="9"/></svg>', 415, "not_an_image"),
        img("xml", b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;&a;</x>', 415, "not_an_image"),
        img("html", b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>", 415, "not_an_image"),
        img("pdf", b"%PDF-1.7\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n", 415, "not_an_image"),
        img("json as the image", b'{"image": "aGVsbG8="}', 415, "not_an_image"),
        img("plain text", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4, 415, "not_an_image"),
        img("unsupported format (PSD)", b"8BPS\x00\x01" + bytes(64), 415, "unsupported"),
        img("damaged png header", b"\x89PNG\r\n\x1a\n" + rng.bytes(200), 400, "corrupt"),
        img("image over the per-image byte limit", b"\xff\xd8\xff" + bytes(limits.max_image_bytes), 413, "too_large"),
        # -- the request's framing --
        Hostile("json body", "/classify", "application/json", b'{"image": "aGVsbG8=", "top_k": 1}', 415,
                ("not_multipart",)),
        Hostile("raw image body", "/classify", "image/png", png, 415, ("not_multipart",)),
        Hostile("wrong content type (text/plain)", "/classify", "text/plain", image_form(png), 415, ("not_multipart",)),
        Hostile("multipart without a boundary", "/classify", "multipart/form-data", image_form(png), 400,
                ("bad_multipart",)),
        Hostile("multipart cut off mid-part", "/classify", MULTIPART, image_form(png)[:-60], 400,
                ("bad_multipart", "missing_field")),
        fields("multipart without a file", 400, ("missing_field",), form(part("model", b"resnet20-fmnist"))),
        fields("image as a text field", 400, ("not_a_file",), form(part("image", b"not a file"))),
        fields("two images on /classify", 400, ("duplicate_field",),
               form(part("image", png, b"a.png"), part("image", png, b"b.png"))),
        fields("duplicate top_k", 400, ("duplicate_field",),
               form(part("image", png, b"a.png"), part("top_k", b"1"), part("top_k", b"2"))),
        fields("duplicate model", 400, ("duplicate_field",),
               form(part("image", png, b"a.png"), part("model", b"resnet20-fmnist"), part("model", b"x"))),
        fields("unknown field", 400, ("unknown_field",), form(part("image", png, b"a.png"), part("callback", b"http://x"))),
        fields("model as a file", 400, ("bad_field",), form(part("image", png, b"a.png"), part("model", b"x", b"m.txt"))),
        fields("too many form parts", 400, ("bad_multipart",),
               form(part("image", png, b"a.png"), *(part("top_k", b"1") for _ in range(1001)))),
        # -- filenames --
        img("non-UTF-8 filename", png, 400, "bad_filename", filename=b"\xff\xfe\xfa.png"),
        img("path-traversal filename", png, 400, "bad_filename", filename=b"../../../../etc/cron.d/x"),
        # (python-multipart refuses a part header this long itself; either way a 400)
        img("10 kB filename", png, 400, "bad_filename", "bad_multipart", filename=b"a" * 10_240 + b".png"),
        img("300-byte filename", png, 400, "bad_filename", filename=b"a" * 296 + b".png"),
        img("filename with a NUL byte", png, 400, "bad_filename", filename=b"a.png\x00.sh"),
        # -- field values --
        fields("top_k 0", 400, ("bad_top_k",), image_form(png, top_k="0")),
        fields("top_k -1", 400, ("bad_top_k",), image_form(png, top_k="-1")),
        fields("top_k huge", 400, ("bad_top_k",), image_form(png, top_k="9" * 40)),
        fields("top_k over the classes", 400, ("bad_top_k",), image_form(png, top_k=str(limits.num_classes + 1))),
        fields("top_k not a number", 400, ("bad_top_k",), image_form(png, top_k="ten")),
        fields("top_k a float", 400, ("bad_top_k",), image_form(png, top_k="2.5")),
        fields("injection as the model name", 404, ("unknown_model",),
               image_form(png, model="'; DROP TABLE models; -- <script>alert(1)</script> $(rm -rf /)")),
        fields("path traversal as the model name", 404, ("unknown_model",), image_form(png, model="../../etc/passwd")),
        fields("10 kB model name", 404, ("unknown_model",), image_form(png, model="m" * 10_240)),
        # -- /classify_batch --
        fields("classify_batch over its image limit", 413, ("too_many_images",),
               form(*(part("images", png, f"{i}.png".encode()) for i in range(limits.max_batch_images + 1))),
               path="/classify_batch"),
        fields("classify_batch with one bad image", 415, ("not_an_image",),
               form(part("images", png, b"a.png"), part("images", b"junk", b"b.png")), path="/classify_batch"),
        fields("classify_batch without images", 400, ("missing_field",), form(part("top_k", b"1")),
               path="/classify_batch"),
        # -- size and method --
        Hostile("body over the byte limit", "/classify", MULTIPART, image_form(png), 413, ("body_too_large",),
                declared_length=limits.max_body_bytes + 1),
        Hostile("GET /classify", "/classify", MULTIPART, b"", 405, ("method_not_allowed",), method="GET"),
        # -- the header block --
        Hostile("64 kB header", "/classify", MULTIPART, image_form(png), 431, ("headers_too_large",),
                extra_headers={"x-padding": "a" * 65_536}),
        Hostile("1000 headers", "/classify", MULTIPART, image_form(png), 431, ("headers_too_large",),
                extra_headers={f"x-field-{i}": "1" for i in range(1000)}),
    ]
    if len({h.name for h in corpus}) != len(corpus):
        raise ValueError("hostile request names must be unique")
    return corpus
