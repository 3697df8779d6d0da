"""Plain twins: the same layers with the shortcut addition removed."""
import pytest
import torch

from models import create_model
from models.blocks import BasicBlock, Bottleneck


def _blocks(model):
    return [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]


@pytest.mark.parametrize("plain,residual", [("plain20", "resnet20"), ("plain18", "resnet18"), ("plain34", "resnet34")])
def test_plain_twin_has_same_layers_minus_projections(plain, residual):
    p, r = create_model(plain), create_model(residual)
    p_keys = set(p.state_dict())
    r_keys = {k for k in r.state_dict() if ".downsample." not in k}
    assert p_keys == r_keys
    assert not any(".downsample." in k for k in p_keys)


@pytest.mark.parametrize("name", ["plain20", "plain18"])
def test_plain_block_output_is_the_branch_alone(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    block = _blocks(model)[1]
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        branch = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
        assert torch.allclose(block(x), torch.relu(branch))


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_residual_block_adds_identity(name):
    # With the branch's last BN zeroed, a residual block is relu(identity); a plain one would be 0.
    model = create_model(name, zero_init_residual=True).eval()
    block = _blocks(model)[1]
    assert block.downsample is None
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), torch.relu(x))
