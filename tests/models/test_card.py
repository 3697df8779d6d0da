"""models/card.py: the typed model card, its JSON as exports write it, and the one served name."""
from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys

import pytest

from export.onnx_io import read_embedded_metadata
from export.pipeline import ExportConfig, export_model
from models.card import ModelCard, Provenance, served_name

# An int8 card as an export writes it beside the file (class names and figures shortened).
EXPORTED = {
    "name": "resnet20-fmnist", "model": "resnet20", "family": "cifar", "depth": 20, "residual": True,
    "dataset": "fashion-mnist", "num_classes": 3, "class_names": ["T-shirt/top", "Trouser", "Pullover"],
    "input_shape": [1, 28, 28], "resize": 28, "channel_mode": "L",
    "mean": [0.2860405969887955], "std": [0.35302424451492254], "trained": True, "test_accuracy": 94.55,
    "source": {"kind": "checkpoint", "path": "models/checkpoints/resnet20-fmnist", "sha256": "ab" * 32,
               "command": "python -m models.train --model resnet20 --epochs 30"},
    "precision": "int8", "opset": 18, "input_name": "images", "output_name": "logits",
    "folding": {"convs_before": 21, "convs_after": 21, "batchnorms_after": 0, "merge_projections": False},
    "verification": {"ops": {"Conv": 21, "QuantizeLinear": 33}, "top1_agreement": 99.6, "agreement_images": 1000,
                     "min_logit_cosine": 0.995817244052887, "calibration_images": 512},
    "exported": "2026-12-01T04:10:52+00:00", "export_seconds": 12.4,
    "versions": {"torch": "2.13.0+cpu", "onnx": "1.23.2"},
    "onnx_sha256": "cd" * 32,
}


def test_round_trip_keeps_the_json_byte_for_byte():
    card = ModelCard.from_dict(EXPORTED)
    assert card.to_json() == json.dumps(EXPORTED, indent=2) + "\n"
    assert ModelCard.from_json(card.to_json()) == card
    assert card.input_shape == (1, 28, 28) and card.class_names[1] == "Trouser" and card.mean == (0.2860405969887955,)
    assert card.provenance == Provenance(kind="checkpoint", path="models/checkpoints/resnet20-fmnist",
                                         sha256="ab" * 32, command="python -m models.train --model resnet20 --epochs 30")


def test_an_untrained_card_before_export():
    data = {k: v for k, v in EXPORTED.items() if k in list(EXPORTED)[:16]}  # up to "source"
    data.update(trained=False, test_accuracy=None, source={"kind": "deterministic-init", "seed": 0, "sha256": None})
    card = ModelCard.from_dict(data)
    assert card.precision is None and card.onnx_sha256 is None and card.provenance.path is None
    # Unset export fields and source fields are left out, a null accuracy is kept, the order too.
    assert json.dumps(card.to_dict()) == json.dumps(data)


def test_a_card_built_in_code_is_typed_as_a_parsed_one():
    parsed = ModelCard.from_dict(EXPORTED)
    built = dataclasses.replace(parsed, class_names=list(EXPORTED["class_names"]), input_shape=[1, 28, 28],
                                mean=[0.2860405969887955], test_accuracy=94.55)
    assert built == parsed and built.input_shape == (1, 28, 28)


@pytest.mark.parametrize("field", ["name", "depth", "class_names", "input_shape", "mean", "test_accuracy", "source"])
def test_a_missing_field_is_named(field):
    data = {k: v for k, v in EXPORTED.items() if k != field}
    with pytest.raises(ValueError, match=f"model card lacks field '{field}'"):
        ModelCard.from_dict(data)


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("depth", "20", "a positive integer"),
    ("residual", 1, "true or false"),
    ("class_names", ["a", 2, "c"], "a list of strings"),
    ("input_shape", [28, 28], r"\[C, H, W\]"),
    ("channel_mode", "BGR", "'L' or 'RGB'"),
    ("std", "0.35", "a list of numbers"),
    ("test_accuracy", "94.55", "a number"),
    ("trained", None, "true or false"),
    ("verification", [], "a JSON object"),
])
def test_a_wrongly_typed_field_is_named(field, value, expected):
    with pytest.raises(ValueError, match=f"model card field '{field}' must be {expected}"):
        ModelCard.from_dict({**EXPORTED, field: value})


def test_bad_provenance_and_inconsistent_classes_are_refused():
    bad = copy.deepcopy(EXPORTED)
    del bad["source"]["sha256"]
    with pytest.raises(ValueError, match="model card 'source' lacks field 'sha256'"):
        ModelCard.from_dict(bad)
    with pytest.raises(ValueError, match="'kind' must be 'checkpoint' or"):
        ModelCard.from_dict({**EXPORTED, "source": {"kind": "download", "sha256": None}})
    with pytest.raises(ValueError, match="2 class_names for num_classes 3"):
        ModelCard.from_dict({**EXPORTED, "class_names": ["a", "b"]})
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelCard.from_json("{")
    with pytest.raises(ValueError, match="must be a JSON object"):
        ModelCard.from_json("[]")


def test_served_name():
    assert served_name("resnet20", "fashion-mnist") == "resnet20-fmnist"
    assert served_name("plain56", "fashion-mnist") == "plain56-fmnist"
    assert served_name("resnet50", "imagenet") == "resnet50-imagenet"


def test_the_card_module_does_not_import_torch():
    code = "import sys, models.card, service.preprocess; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_exported_card_parses_back_equal(tmp_path, default_checkpoint):
    result = export_model(ExportConfig(checkpoint=default_checkpoint, out=tmp_path, verify_random=2, verify_real=2))
    card, path = result.cards["fp32"], result.files["fp32"]
    beside = path.with_suffix(".json").read_text()
    assert ModelCard.from_json(beside) == card and card.to_json() == beside
    inside = ModelCard.from_dict(read_embedded_metadata(path))
    assert inside == dataclasses.replace(card, onnx_sha256=None)  # the file cannot hold its own hash
    assert card.name == "resnet20-fmnist" and card.precision == "fp32" and card.provenance.kind == "checkpoint"
