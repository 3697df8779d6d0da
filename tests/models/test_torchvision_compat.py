"""Our ImageNet ResNets carry torchvision's exact state-dict keys, shapes and dtypes (and order).

The fixture was derived from torchvision itself in a throwaway environment (its header says how);
no torchvision code is part of this project.
"""
import json
from pathlib import Path

import pytest
import torch

from models import create_model
from models.checkpoint import load_state_dict_strict

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "torchvision_resnet_state_dicts.json"
TORCHVISION = json.loads(FIXTURE.read_text())["models"]


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_state_dict_matches_torchvision(name):
    ours = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in create_model(name).state_dict().items()]
    assert ours == TORCHVISION[name]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_layout_state_dict_loads_strictly(name):
    # A state dict with torchvision's keys and shapes (random values, as a user's file would hold).
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(shape, generator=gen) if dtype == "float32" else torch.tensor(7))
             for k, shape, dtype in TORCHVISION[name]}
    model = create_model(name)
    load_state_dict_strict(model, state, source="torchvision-format")
    assert torch.equal(model.state_dict()["fc.weight"], state["fc.weight"])


def test_mismatched_state_dict_names_the_first_keys():
    state = create_model("resnet18").state_dict()
    with pytest.raises(Exception) as err:
        load_state_dict_strict(create_model("resnet50"), state, source="r18.pth")
    msg = str(err.value)
    assert "\n" not in msg and "r18.pth" in msg and "missing" in msg and "shape mismatch" in msg
