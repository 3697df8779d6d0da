"""python -m export.default_model for the family: one member exported into the tests' store, left
alone the second time; a bad or missing committed checkpoint is one line naming it."""
import shutil

import pytest

import export.default_model as default_model
from export.default_model import FAMILY_PRECISIONS, ensure_served_models
from models.default import CHECKPOINTS_DIR
from service.catalog import ModelUnavailable, resolve_models
from service.config import load_config

MEMBER = "plain20-fmnist"  # the family's cheapest to export


@pytest.fixture(scope="module")
def member_tag():
    return ensure_served_models([MEMBER])[MEMBER]


@pytest.mark.slow
def test_a_registered_member_is_not_exported_again(member_tag, monkeypatch, caplog):
    def no_export(cfg):
        raise AssertionError(f"exported {cfg.checkpoint} again")

    monkeypatch.setattr(default_model, "export_model", no_export)
    caplog.set_level("INFO")
    assert ensure_served_models([MEMBER]) == {MEMBER: member_tag}
    assert f"[1/1] {member_tag} is already in the BentoML store" in caplog.text


@pytest.mark.slow
def test_a_member_is_served_in_fp32_where_auto_picks_fp16(member_tag, monkeypatch):
    assert FAMILY_PRECISIONS == ["fp32"]
    monkeypatch.setenv("RESNET_MODELS", MEMBER)
    monkeypatch.setattr("service.catalog.cuda_usable", lambda: True)  # as on a GPU: auto means fp16
    (served,) = resolve_models(load_config(), verify_checksums=True)
    assert served.tag == member_tag and served.precision == "fp32" and served.onnx_path.name == "model.fp32.onnx"
    monkeypatch.setenv("RESNET_PRECISION", "fp16")  # asked for explicitly: still refused
    with pytest.raises(ModelUnavailable, match="model.fp16.onnx is missing"):
        resolve_models(load_config())


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_bad_family_checkpoint_is_one_line_naming_it(tmp_path, monkeypatch, capsys, damage):
    shutil.copytree(CHECKPOINTS_DIR / MEMBER, tmp_path / MEMBER)
    if damage == "missing":
        shutil.rmtree(tmp_path / MEMBER)
    else:
        weights = tmp_path / MEMBER / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    monkeypatch.setattr(default_model, "CHECKPOINTS_DIR", tmp_path)
    monkeypatch.setattr(default_model, "export_model", lambda cfg: pytest.fail("exported"))
    monkeypatch.setattr(default_model, "DEFAULT_SERVED_MODELS", (MEMBER,))
    assert default_model.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {MEMBER}: "), err
    assert ("checkpoint not found" if damage == "missing" else "sha256 does not match") in err
