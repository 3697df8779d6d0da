"""A multipart/form-data body, parsed once, in memory.

The request guard reads each classify request's body whole (it must, to bound it and time it out),
so the parts are sliced out of those bytes by python-multipart (the parser starlette uses) with no
temporary file and no second parse (docs/decisions/017-serving-path.md). The rules are starlette's,
which parsed these forms before: a part without ``name`` or a malformed body is refused (and, unlike
starlette, a body cut before its closing boundary, whose last part would be lost), a part with
a ``filename`` is a file, any other part is text, decoded with the form's charset (else Latin-1).
Each part's raw ``filename`` bytes are kept so the guard can refuse names that are not UTF-8.
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass, field

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

MAX_TEXT_BYTES = 1024 * 1024  # a text part's limit: starlette's max_part_size


class MalformedForm(Exception):
    """The body is not a multipart form this service can read; the message says why."""


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    filename: bytes | None  # as sent (None: a text field)
    data: bytes

    @property
    def is_file(self) -> bool:
        return self.filename is not None

    def text(self, charset: str = "utf-8") -> str:
        try:
            return self.data.decode(charset)
        except UnicodeDecodeError:
            return self.data.decode("latin-1")


@dataclass(frozen=True, slots=True)
class Form:
    parts: tuple[Part, ...]
    charset: str = "utf-8"
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(dict.fromkeys(p.name for p in self.parts)))

    def get_all(self, name: str) -> list[Part]:
        return [p for p in self.parts if p.name == name]


def _charset(params: dict[bytes, bytes]) -> str:
    raw = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        return codecs.lookup(raw).name
    except LookupError:
        return "latin-1"


def parse_form(body: bytes, content_type: bytes, max_parts: int) -> Form:
    """The parts of ``body``, in order; MalformedForm when the body or its boundary is broken, or it
    holds more than ``max_parts`` parts."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise MalformedForm("Missing boundary in multipart.")
    charset = _charset(params)
    parts: list[Part] = []
    chunks: list[bytes] = []
    header_name, header_value = b"", b""
    disposition = b""

    def on_part_begin() -> None:
        nonlocal disposition
        disposition = b""
        chunks.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        nonlocal header_name
        header_name += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        nonlocal header_value
        header_value += data[start:end]

    def on_header_end() -> None:
        nonlocal header_name, header_value, disposition
        if header_name.lower() == b"content-disposition":
            disposition = header_value
        header_name, header_value = b"", b""

    def on_headers_finished() -> None:
        if len(parts) >= max_parts:
            raise MalformedForm(f"Too many parts. Maximum number of parts is {max_parts}.")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunks.append(data[start:end])

    def on_part_end() -> None:
        _, options = parse_options_header(disposition)
        name = options.get(b"name")
        if name is None:
            raise MalformedForm('The Content-Disposition header field "name" must be provided.')
        data = b"".join(chunks)
        filename = options.get(b"filename")
        if filename is None and len(data) > MAX_TEXT_BYTES:
            raise MalformedForm(f"Part exceeded maximum size of {MAX_TEXT_BYTES // 1024}KB.")
        parts.append(Part(_decode(name, charset), filename, data))

    ended = False

    def on_end() -> None:
        nonlocal ended
        ended = True

    try:
        parser = MultipartParser(boundary, {
            "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
            "on_header_field": on_header_field, "on_header_value": on_header_value,
            "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_end": on_end})
        parser.write(body)
        parser.finalize()
    except FormParserError as e:
        raise MalformedForm("Invalid multipart data.") from e
    except ValueError as e:  # python-multipart's own checks (a boundary too long, a header too large)
        raise MalformedForm(str(e)) from e
    if not ended:  # python-multipart's finalize() accepts a body cut before its closing boundary
        raise MalformedForm("Invalid multipart data: the body ends before its closing boundary.")
    return Form(tuple(parts), charset)


def _decode(raw: bytes, charset: str) -> str:
    try:
        return raw.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return raw.decode("latin-1")
