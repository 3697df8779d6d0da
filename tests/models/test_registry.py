import pytest
import torch

from models import create_model, get_spec, list_models
from models.registry import UnknownModelError

IMAGENET = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain18", "plain34"]
CIFAR = [f"{kind}{d}" for d in (20, 32, 44, 56, 110) for kind in ("resnet", "plain")]


def test_registry_lists_every_family_member():
    assert sorted(list_models()) == sorted(IMAGENET + CIFAR)


def test_unknown_name_is_one_line_listing_valid_names():
    with pytest.raises(UnknownModelError) as err:
        create_model("resnet19")
    msg = str(err.value)
    assert "\n" not in msg and "'resnet19'" in msg
    assert all(name in msg for name in list_models())


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_forward_shape(name):
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))  # adaptive pooling: any size >= 32 works
    assert out.shape == (2, 1000)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_imagenet_forward_at_224(name):
    with torch.no_grad():
        assert create_model(name).eval()(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_forward_shape_on_fashion_mnist_input(name):
    model = create_model(name, in_channels=1, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("name", ["resnet20", "plain20"])
def test_cifar_default_input_is_rgb_32(name):
    with torch.no_grad():
        assert create_model(name).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_configurable_channels_and_classes_for_imagenet_family():
    model = create_model("resnet18", in_channels=1, num_classes=7).eval()
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 7)


@pytest.mark.parametrize("depth,params", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)])
def test_cifar_parameter_counts_match_the_paper_table_6(depth, params):
    # Paper, Table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M (option A there; B adds two 1x1 projections).
    model = create_model(f"resnet{depth}", shortcut="A")
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert n == pytest.approx(params, rel=0.03)


def test_cifar_layer_count_is_6n_plus_2():
    for depth in (20, 32, 44, 56, 110):
        model = create_model(f"plain{depth}")
        weighted = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        assert len(weighted) == depth
        assert get_spec(f"plain{depth}").depth == depth


def test_option_a_has_no_projection_parameters():
    a = create_model("resnet20", shortcut="A")
    b = create_model("resnet20", shortcut="B")
    assert not any("downsample" in k for k, _ in a.named_parameters())
    assert sum("downsample.0.weight" in k for k, _ in b.named_parameters()) == 2


def test_option_a_shortcut_zero_pads_channels():
    model = create_model("resnet20", shortcut="A").eval()
    shortcut = model.layer2[0].downsample
    x = torch.randn(1, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (1, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2]) and not y[:, 16:].any()


def test_shortcut_option_refused_for_imagenet_family():
    with pytest.raises(Exception, match="CIFAR"):
        create_model("resnet18", shortcut="A")
