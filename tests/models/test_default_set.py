"""The default served set: the committed default first, then the depth study's family, each one a
committed checkpoint that verifies and names its architecture."""
import pytest

from models.checkpoint import METADATA_FILE, WEIGHTS_FILE, load_checkpoint
from models.default import CHECKPOINTS_DIR, DEFAULT_MODEL_NAME, DEFAULT_SERVED_MODELS, FAMILY_MODEL_NAMES
from models.registry import get_spec
from service.config import load_config


def test_the_default_first_then_the_family_by_kind_and_depth():
    assert DEFAULT_SERVED_MODELS == (
        "resnet20-fmnist", "resnet32-fmnist", "resnet44-fmnist", "resnet56-fmnist", "resnet110-fmnist",
        "plain20-fmnist", "plain32-fmnist", "plain44-fmnist", "plain56-fmnist")
    assert DEFAULT_SERVED_MODELS[0] == DEFAULT_MODEL_NAME and DEFAULT_SERVED_MODELS[1:] == FAMILY_MODEL_NAMES


def test_the_service_serves_the_default_set_unless_told(monkeypatch):
    monkeypatch.delenv("RESNET_MODELS", raising=False)
    config = load_config()
    assert config.models == DEFAULT_SERVED_MODELS and config.default_model == DEFAULT_MODEL_NAME
    monkeypatch.setenv("RESNET_MODELS", "resnet56-fmnist, resnet20-fmnist")
    assert load_config().models == ("resnet56-fmnist", "resnet20-fmnist")


@pytest.mark.parametrize("name", FAMILY_MODEL_NAMES)
def test_each_family_checkpoint_is_committed_and_verifies(name):
    path = CHECKPOINTS_DIR / name
    assert sorted(p.name for p in path.iterdir()) == sorted([METADATA_FILE, WEIGHTS_FILE])  # no training state
    model, meta = load_checkpoint(path)  # checks the weights' sha256 and loads them strictly
    arch = name.removesuffix("-fmnist")
    spec = get_spec(arch)
    assert meta["model"] == arch and meta["dataset"] == "fashion-mnist" and meta["trained"] is True
    assert meta["depth"] == spec.depth and meta["residual"] == spec.residual
    assert meta["input_shape"] == [1, 28, 28] and meta["num_classes"] == 10 and len(meta["history"]) == meta["epochs"]
    assert 60 < meta["test_accuracy"] < 100
    assert sum(p.numel() for p in model.parameters()) > 0
