"""Model integrity: each model file's sha256 is checked against its model card before it is loaded; a
corrupt, missing or absent model stops ``bentoml serve`` with one line naming it, not a traceback
(BentoML would otherwise log it and respawn the worker forever)."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.files import sha256_file
from service.catalog import ModelUnavailable, verify_checksum
from bench.reliability.scenarios import start_with_broken_model


def _model_file(tmp_path: Path, data: bytes) -> tuple[Path, str]:
    path = tmp_path / "model.fp32.onnx"
    path.write_bytes(data)
    return path, sha256_file(path)


def test_an_intact_file_passes(tmp_path):
    verify_checksum("m:1", *_model_file(tmp_path, b"onnx bytes"))


def test_one_changed_byte_is_refused_naming_the_file(tmp_path):
    path, sha256 = _model_file(tmp_path, b"onnx bytes")
    path.write_bytes(b"onnx bytez")
    with pytest.raises(ModelUnavailable, match=r"m:1: .*model\.fp32\.onnx is corrupt: sha256 .* does not match"):
        verify_checksum("m:1", path, sha256)


@pytest.mark.parametrize("recorded", [None, "abc"])
def test_a_file_without_a_recorded_sha256_is_refused(tmp_path, recorded):
    path, _ = _model_file(tmp_path, b"onnx bytes")
    with pytest.raises(ModelUnavailable, match="records no onnx_sha256"):
        verify_checksum("m:1", path, recorded)


@pytest.mark.server
@pytest.mark.parametrize("damage,words", [
    ("corrupt", "is corrupt: sha256"),
    ("missing", "is missing"),
    ("absent", "is not in the BentoML store"),
])
def test_serve_stops_with_one_line(default_model_tag, service_module, tmp_path, damage, words):
    model = default_model_tag.split(":")[0]
    result = start_with_broken_model(tmp_path / "home", model, service_module.SERVED[0].precision, damage, timeout=120)
    assert result["exit_status"] not in (0, None), result  # None: still running when the timeout hit
    assert result["tracebacks"] == 0, result["lines"]
    errors = [line for line in result["lines"] if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0] and model in errors[0], result["lines"]
    assert result["line_count"] <= 3, result["lines"]  # the line, not a log of retries


def test_the_served_card_records_the_sha256(service_module):
    """The store's models carry what the check needs (the export writes it)."""
    for served in service_module.SERVED:
        assert served.card.onnx_sha256 == sha256_file(served.onnx_path)
