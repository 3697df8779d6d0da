"""service/multipart.py: the classify forms parsed once, in memory, by starlette's rules, on bodies
written byte by byte (bench/reliability/hostile.py's helpers and by hand)."""
from __future__ import annotations

import asyncio

import pytest
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from bench.reliability.hostile import BOUNDARY, MULTIPART, form, image_form, part
from service.guard import replay_body
from service.multipart import MAX_TEXT_BYTES, Form, MalformedForm, parse_form

CT = MULTIPART.encode()


def parse(body: bytes, content_type: bytes = CT, max_parts: int = 1000) -> Form:
    return parse_form(body, content_type, max_parts)


def raw_part(head: bytes, data: bytes) -> bytes:
    """A part with its header block exactly as given (``head`` without the blank line)."""
    return f"--{BOUNDARY}\r\n".encode() + head + b"\r\n\r\n" + data + b"\r\n"


def test_parts_come_back_in_order_with_file_and_text_told_apart():
    body = form(part("model", b"resnet20-fmnist"), part("image", b"\x89PNG first", b"a.png", "image/png"),
                part("top_k", b"3"), part("image", b"\x89PNG second", b"b.png"), part("model", b"again"))
    parsed = parse(body)
    assert [(p.name, p.filename, p.data) for p in parsed.parts] == [
        ("model", None, b"resnet20-fmnist"), ("image", b"a.png", b"\x89PNG first"), ("top_k", None, b"3"),
        ("image", b"b.png", b"\x89PNG second"), ("model", None, b"again")]
    assert [p.is_file for p in parsed.parts] == [False, True, False, True, False]
    assert parsed.names == ("model", "image", "top_k")  # each name once, first seen first
    assert [p.data for p in parsed.get_all("image")] == [b"\x89PNG first", b"\x89PNG second"]
    assert parsed.get_all("absent") == []
    assert parsed.charset == "utf-8"


def test_an_empty_filename_is_still_a_file_and_an_empty_value_still_a_field():
    parsed = parse(form(part("image", b"", b""), part("model", b"")))
    image, model = parsed.parts
    assert image.is_file and image.filename == b"" and image.data == b""
    assert not model.is_file and model.filename is None and model.text() == ""


def test_binary_data_is_kept_byte_for_byte():
    data = bytes(range(256)) * 64 + b"\r\n--not-the-boundary\r\n" + b"\r\n\r\n"
    [upload] = parse(image_form(data)).parts
    assert upload.data == data and upload.filename == b"upload.png"


@pytest.mark.parametrize("filename", [b"caf\xc3\xa9.png", b"\xff\xfe\xfd.png", b"\x80", b"a\x01b.png",
                                      b"x" * 300 + b".png"])
def test_raw_filename_bytes_are_kept_as_sent(filename):
    # UTF-8 or not, with control characters or long: the guard decides on the bytes as sent
    [upload] = parse(image_form(b"img", filename=filename)).parts
    assert upload.filename == filename


def test_charset_of_the_content_type_decodes_names_and_text():
    body = form(raw_part(b'Content-Disposition: form-data; name="m\xe9"', b"caf\xe9"))
    parsed = parse(body, (MULTIPART + "; charset=latin-1").encode())
    assert parsed.charset == "iso8859-1"
    [field] = parsed.parts
    assert field.name == "mé" and field.text(parsed.charset) == "café"


def test_utf8_by_default_and_latin1_for_what_is_not_utf8():
    parsed = parse(form(part("top_k", "café".encode()), part("model", b"caf\xe9")))
    good, bad = parsed.parts
    assert good.text(parsed.charset) == "café"
    assert bad.text(parsed.charset) == "caf\xe9"  # not UTF-8: read as Latin-1, never an error


def test_an_unknown_charset_falls_back_to_latin1():
    parsed = parse(form(part("model", b"caf\xe9")), (MULTIPART + "; charset=klingon").encode())
    assert parsed.charset == "latin-1"
    assert parsed.parts[0].text(parsed.charset) == "café"


@pytest.mark.parametrize("content_type", [b"multipart/form-data", b"multipart/form-data; boundary=",
                                          b"multipart/form-data; charset=utf-8", b""])
def test_a_missing_boundary_is_malformed(content_type):
    with pytest.raises(MalformedForm, match="Missing boundary"):
        parse(image_form(b"img"), content_type)


@pytest.mark.parametrize("head", [
    b'Content-Disposition: form-data; filename="a.png"',  # no name
    b'Content-Disposition: form-data',
    b"Content-Type: image/png",  # no Content-Disposition at all
])
def test_a_part_without_a_name_is_malformed(head):
    with pytest.raises(MalformedForm, match='"name" must be provided'):
        parse(form(part("model", b"x"), raw_part(head, b"data")))


@pytest.mark.parametrize("body", [
    b"not a multipart body at all",
    b"--wrong-boundary\r\n" + b'Content-Disposition: form-data; name="a"\r\n\r\nx\r\n--wrong-boundary--\r\n',
    f"--{BOUNDARY}\r\nheader line without a colon\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(),
])
def test_garbage_is_malformed(body):
    with pytest.raises(MalformedForm, match="Invalid multipart data"):
        parse(body)


@pytest.mark.parametrize("cut", [5, 20])
def test_a_body_cut_before_its_closing_boundary_is_malformed(cut):
    # python-multipart alone would drop the last part (top_k) without a word: answered with top_k=5
    body = form(part("image", b"\x89PNG data", b"a.png"), part("top_k", b"3"))
    with pytest.raises(MalformedForm):
        parse(body[:-cut])


def test_a_body_cut_inside_the_upload_leaves_no_upload_behind():
    body = image_form(b"\x89PNG" + bytes(200))
    try:
        parsed = parse(body[: len(body) // 2])
    except MalformedForm:
        return  # the better answer
    assert parsed.get_all("image") == []  # never half an image handed on as if whole


def test_too_many_parts_is_malformed():
    parts = [part(f"f{i}", b"v") for i in range(4)]
    assert len(parse(form(*parts[:3]), max_parts=3).parts) == 3
    with pytest.raises(MalformedForm, match="Too many parts. Maximum number of parts is 3"):
        parse(form(*parts), max_parts=3)


def test_a_text_part_over_1_mib_is_malformed_but_a_file_is_not():
    at_limit = b"a" * MAX_TEXT_BYTES
    assert parse(form(part("model", at_limit))).parts[0].data == at_limit
    with pytest.raises(MalformedForm, match="Part exceeded maximum size of 1024KB"):
        parse(form(part("model", at_limit + b"a")))
    big_file = b"\0" * (2 * MAX_TEXT_BYTES)
    assert parse(image_form(big_file)).parts[0].data == big_file


def test_a_boundary_too_long_for_the_parser_is_malformed():
    boundary = "b" * 257
    body = f"--{boundary}\r\n".encode() + b'Content-Disposition: form-data; name="a"\r\n\r\nx\r\n' + \
        f"--{boundary}--\r\n".encode()
    with pytest.raises(MalformedForm):
        parse(body, f"multipart/form-data; boundary={boundary}".encode())


def test_a_part_header_too_large_for_the_parser_is_malformed():
    head = b'Content-Disposition: form-data; name="a"\r\nX-Pad: ' + b"p" * 8192
    with pytest.raises(MalformedForm):
        parse(form(raw_part(head, b"x")))


# ---- the same answers as starlette's Request.form(), which parsed these forms before --------------

Item = tuple[str, "str | None", "bytes | str"]  # name, filename (None: a text field), data or text


def starlette_form(body: bytes, content_type: bytes) -> list[Item]:
    """(name, filename or None, bytes of a file or a field's text) of each item starlette parses."""
    async def main() -> list[Item]:
        receive = replay_body(body)
        request = Request({"type": "http", "method": "POST", "path": "/classify", "query_string": b"",
                           "headers": [(b"content-type", content_type)]}, receive)
        parsed = await request.form()
        try:
            items = []
            for name, value in parsed.multi_items():
                if isinstance(value, UploadFile):
                    items.append((name, value.filename, await value.read()))
                else:
                    items.append((name, None, value))
            return items
        finally:
            await parsed.close()

    return asyncio.run(main())


def ours(body: bytes, content_type: bytes) -> list[Item]:
    parsed = parse(body, content_type)
    items = []
    for p in parsed.parts:
        if p.is_file:
            filename = p.filename.decode(parsed.charset, "strict") if _decodes(p.filename, parsed.charset) \
                else p.filename.decode("latin-1")
            items.append((p.name, filename, p.data))
        else:
            items.append((p.name, None, p.text(parsed.charset)))
    return items


def _decodes(raw: bytes, charset: str) -> bool:
    try:
        raw.decode(charset)
        return True
    except UnicodeDecodeError:
        return False


AGREED = {
    "classify": (image_form(b"\x89PNG\r\n\x1a\nrest", model="resnet20-fmnist", top_k="3"), CT),
    "batch, repeated field": (form(part("images", b"one", b"1.png"), part("images", b"two", b"2.jpg"),
                                   part("top_k", b"2"), part("images", b"three", b"3.png")), CT),
    "utf-8 and non-utf-8 filenames": (form(part("image", b"x", "café.png".encode()),
                                           part("image", b"y", b"\xff\xfe.png")), CT),
    "latin-1 charset": (form(raw_part(b'Content-Disposition: form-data; name="mod\xe8le"', b"caf\xe9"),
                             part("image", b"z", "\xe9t\xe9.png".encode("latin-1"))),
                        (MULTIPART + "; charset=latin-1").encode()),
    "empty values and filename": (form(part("model", b""), part("image", b"", b"")), CT),
    "windows path in filename": (image_form(b"img", filename=b"C:\\Users\\me\\cat.png"), CT),
    "quoted name with escapes": (form(raw_part(b'Content-Disposition: form-data; name="a\\"b"', b"v")), CT),
    "no parts": (f"--{BOUNDARY}--\r\n".encode(), CT),
}


@pytest.mark.parametrize("name", list(AGREED))
def test_agrees_with_starlette(name):
    body, content_type = AGREED[name]
    expected = starlette_form(body, content_type)
    assert ours(body, content_type) == expected
    if name != "no parts":
        assert expected  # a comparison of two empty lists would prove nothing


@pytest.mark.parametrize("body, content_type", [
    (image_form(b"img"), b"multipart/form-data"),
    (form(raw_part(b'Content-Disposition: form-data; filename="a.png"', b"x")), CT),
    (b"not a multipart body at all", CT),
    (form(part("model", b"a" * (MAX_TEXT_BYTES + 1))), CT),
], ids=["no boundary", "no name", "garbage", "text over 1 MiB"])
def test_refuses_what_starlette_refuses(body, content_type):
    with pytest.raises(MultiPartException):
        starlette_form(body, content_type)
    with pytest.raises(MalformedForm):
        parse(body, content_type)
