import json

import pytest
import torch

from models import create_model
from models.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint

META = {"model": "resnet20", "num_classes": 10, "class_names": list("abcdefghij"), "input_shape": [1, 28, 28],
        "channel_mode": "L", "mean": [0.5], "std": [0.5], "dataset": "fashion-mnist"}


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1, num_classes=10)
    return save_checkpoint(tmp_path / "ckpt", model, META), model


def test_round_trip(saved):
    path, model = saved
    loaded, meta = load_checkpoint(path)
    assert meta["model"] == "resnet20" and len(meta["weights_sha256"]) == 64
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert not loaded.training


def test_overwrite_keeps_other_files_and_replaces_whole(saved):
    path, model = saved
    (path / "train_state.pt").write_bytes(b"keep me")
    with torch.no_grad():
        model.fc.bias.fill_(3.0)
    save_checkpoint(path, model, META)
    assert (path / "train_state.pt").read_bytes() == b"keep me"
    assert torch.all(load_checkpoint(path)[0].fc.bias == 3.0)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt"]  # no staging folder left behind


def _one_line(err):
    return "\n" not in str(err.value)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as err:
        load_checkpoint(tmp_path / "nope")
    assert _one_line(err)


def test_corrupt_weights_detected_by_sha(saved):
    path, _ = saved
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt") as err:
        load_checkpoint(path)
    assert _one_line(err)


def test_garbage_weights_without_sha(saved):
    path, _ = saved
    (path / "model.safetensors").write_bytes(b"\x00garbage")
    meta = json.loads((path / "metadata.json").read_text())
    del meta["weights_sha256"]
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="safetensors") as err:
        load_checkpoint(path)
    assert _one_line(err)


def test_broken_metadata_json(saved):
    path, _ = saved
    (path / "metadata.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable metadata") as err:
        read_metadata(path)
    assert _one_line(err)


def test_metadata_missing_fields(saved):
    path, _ = saved
    (path / "metadata.json").write_text(json.dumps({"model": "resnet20"}))
    with pytest.raises(CheckpointError, match="lacks num_classes"):
        read_metadata(path)


def test_mismatched_architecture_names_keys(saved):
    path, _ = saved
    meta = json.loads((path / "metadata.json").read_text())
    meta["model"] = "resnet32"
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="missing: layer1.3") as err:
        load_checkpoint(path)
    assert _one_line(err)


def test_default_checkpoint_metadata_is_complete(default_checkpoint):
    meta = read_metadata(default_checkpoint)
    assert meta["model"] == "resnet20" and meta["dataset"] == "fashion-mnist" and meta["trained"] is True
    assert meta["test_accuracy"] >= 91.5
    assert meta["command"].startswith("python -m models.train --model resnet20")
    for field in ("epochs", "seed", "wall_time_s", "environment", "class_names", "mean", "std", "history"):
        assert field in meta
    assert len(meta["history"]) == meta["epochs"]
