"""BatchNorm folding and projection merging (export/fold.py) against the unfolded models.

Every comparison runs on models whose BatchNorms have random statistics: a fresh model's BNs are
identities in eval mode, and folding them would prove nothing.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from export.fold import (
    FoldedBasicBlock,
    FoldedBottleneck,
    FoldedResNet,
    can_merge,
    count_convs,
    fold_block,
    fold_conv_bn,
    fold_model,
    fold_report,
    merge_convs,
)
from models import create_model, get_spec, list_models
from models.blocks import BasicBlock, Bottleneck, ZeroPadShortcut, projection_shortcut
from models.init import randomize_batchnorm_stats_

F64_RTOL = 1e-9


def assert_same(actual: torch.Tensor, expected: torch.Tensor, rtol: float = F64_RTOL) -> None:
    """Close relative to the output's scale: random deep nets give logits of any magnitude."""
    assert expected.abs().max() > 0, "a zero reference would make the comparison vacuous"
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * expected.abs().max().item())


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def random_bn(num_features: int, seed: int = 0) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(num_features)
    randomize_batchnorm_stats_(bn, seed)
    return bn.eval()


def build(name: str, shortcut: str = "B", seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A float64 eval-mode model with random BN statistics, and a small input for it."""
    generator = torch.Generator().manual_seed(seed)
    if get_spec(name).family == "imagenet":
        model = create_model(name)
        # Adaptive pooling takes any size; 64 keeps layer4 at 2x2 so its 3x3 convs see real pixels.
        x = torch.randn(1, 3, 64, 64, generator=generator, dtype=torch.float64)
    else:
        model = create_model(name, in_channels=1, num_classes=10, shortcut=shortcut)
        x = torch.randn(2, 1, 28, 28, generator=generator, dtype=torch.float64)
    randomize_batchnorm_stats_(model, seed)
    return model.double().eval(), x


# ---------------------------------------------------------------- one conv + BN


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(5, 7, 3, stride=2, padding=1, bias=False),
        nn.Conv2d(5, 7, 1, bias=True),  # a conv that already has a bias
        nn.Conv2d(6, 9, 3, padding=2, dilation=2, groups=3, bias=False),
        nn.Conv2d(3, 4, 7, stride=2, padding=3, bias=False),
    ],
    ids=["3x3s2", "1x1-bias", "grouped-dilated", "7x7s2"],
)
def test_fold_conv_bn_equals_conv_then_eval_bn(conv: nn.Conv2d) -> None:
    torch.manual_seed(0)
    conv = conv.double()
    if conv.bias is not None:
        nn.init.normal_(conv.bias)
    bn = random_bn(conv.out_channels).double()
    x = torch.randn(2, conv.in_channels, 11, 13, dtype=torch.float64)

    folded = fold_conv_bn(conv, bn)

    assert folded.bias is not None and folded.weight.dtype == torch.float64
    assert (folded.stride, folded.padding, folded.dilation, folded.groups) == (
        conv.stride, conv.padding, conv.dilation, conv.groups
    )
    with torch.no_grad():
        assert_same(folded(x), bn(conv(x)))


def test_fold_conv_bn_rounds_once_from_float64() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, padding=1, bias=False)
    bn = random_bn(32)

    folded = fold_conv_bn(conv, bn)
    exact = fold_conv_bn(copy.deepcopy(conv).double(), copy.deepcopy(bn).double())

    assert folded.weight.dtype == folded.bias.dtype == torch.float32
    # Bit-equal to the float64 fold rounded once; folding in float32 would differ in some entries.
    assert torch.equal(folded.weight, exact.weight.float())
    assert torch.equal(folded.bias, exact.bias.float())


def test_fold_conv_bn_refuses_batch_statistics() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    with pytest.raises(ValueError, match="running statistics"):
        fold_conv_bn(conv, nn.BatchNorm2d(4, track_running_stats=False))


# ---------------------------------------------------------------- merging


def test_merge_convs_puts_the_projection_at_the_centre_tap() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 3, stride=2, padding=1, bias=False).double()
    conv = fold_conv_bn(conv, random_bn(7).double())
    projection = nn.Conv2d(5, 9, 1, stride=2, bias=False).double()
    projection = fold_conv_bn(projection, random_bn(9, seed=1).double())
    x = torch.randn(2, 5, 11, 13, dtype=torch.float64)

    merged = merge_convs(conv, projection)

    assert merged.out_channels == 7 + 9
    extra = merged.weight[7:].clone()
    assert torch.equal(extra[:, :, 1, 1], projection.weight[:, :, 0, 0])
    extra[:, :, 1, 1] = 0
    assert not extra.any()
    with torch.no_grad():
        y = merged(x)
        assert_same(y[:, :7], conv(x))
        assert_same(y[:, 7:], projection(x))


@pytest.mark.parametrize(
    ("conv", "mergeable"),
    [
        (nn.Conv2d(5, 7, 3, stride=2, padding=1), True),
        (nn.Conv2d(5, 7, 1, stride=2), True),
        (nn.Conv2d(5, 7, 1, stride=1), False),  # v1.5 Bottleneck: conv1 is 1x1/1, projection 1x1/2
        (nn.Conv2d(5, 7, 3, stride=2, padding=0), False),  # "valid" padding shifts the centre
        (nn.Conv2d(4, 7, 3, stride=2, padding=1), False),  # reads a different input
        (nn.Conv2d(5, 10, 3, stride=2, padding=1, groups=5), False),
    ],
)
def test_can_merge_checks_geometry(conv: nn.Conv2d, mergeable: bool) -> None:
    projection = nn.Conv2d(5, 9, 1, stride=2)
    assert can_merge(conv, projection) is mergeable
    if not mergeable:
        with pytest.raises(ValueError, match="cannot merge"):
            merge_convs(conv, projection)


# ---------------------------------------------------------------- single blocks

# (factory, folded class, convs after merging, merged?, separate projection?)
BLOCK_CASES: dict[str, tuple[Callable[[], nn.Module], type, int, bool, bool]] = {
    "basic-identity": (lambda: BasicBlock(7, 7), FoldedBasicBlock, 2, False, False),
    "basic-proj-s2": (
        lambda: BasicBlock(5, 7, 2, projection_shortcut(5, 7, 2)), FoldedBasicBlock, 2, True, False
    ),
    "basic-proj-s1": (
        lambda: BasicBlock(5, 7, 1, projection_shortcut(5, 7, 1)), FoldedBasicBlock, 2, True, False
    ),
    "basic-option-a": (
        lambda: BasicBlock(5, 7, 2, ZeroPadShortcut(5, 7, 2)), FoldedBasicBlock, 2, False, False
    ),
    # A plain block never calls its downsample: folding drops it rather than merging it.
    "basic-plain": (
        lambda: BasicBlock(5, 7, 2, projection_shortcut(5, 7, 2), residual=False),
        FoldedBasicBlock, 2, False, False,
    ),
    "bottleneck-identity": (lambda: Bottleneck(12, 3), FoldedBottleneck, 3, False, False),
    "bottleneck-proj-s1": (
        lambda: Bottleneck(5, 3, 1, projection_shortcut(5, 12, 1)), FoldedBottleneck, 3, True, False
    ),
    "bottleneck-proj-s2": (
        lambda: Bottleneck(5, 3, 2, projection_shortcut(5, 12, 2)), FoldedBottleneck, 4, False, True
    ),
    "bottleneck-plain": (
        lambda: Bottleneck(5, 3, 2, residual=False), FoldedBottleneck, 3, False, False
    ),
}


@pytest.mark.parametrize("case", list(BLOCK_CASES))
def test_fold_block_equals_block(case: str) -> None:
    factory, folded_cls, convs_after, merged, separate = BLOCK_CASES[case]
    torch.manual_seed(0)
    block = randomize_batchnorm_stats_(factory(), seed=1).double().eval()
    in_channels = block.conv1.in_channels
    x = torch.randn(2, in_channels, 11, 13, dtype=torch.float64)  # odd sizes: stride-2 rounding

    folded = fold_block(block)
    unmerged = fold_block(block, merge_projections=False)

    assert type(folded) is folded_cls
    assert not has_batchnorm(folded) and not has_batchnorm(unmerged)
    assert count_convs(folded) == convs_after
    assert folded.merged is merged
    assert isinstance(folded.downsample, nn.Conv2d) is separate
    if case == "basic-option-a":
        assert isinstance(folded.downsample, ZeroPadShortcut)
    if case == "basic-plain":
        assert folded.downsample is None and unmerged.downsample is None
    assert not unmerged.merged
    with torch.no_grad():
        expected = block(x)
        assert_same(folded(x), expected)
        assert_same(unmerged(x), expected)


def test_fold_block_rejects_other_modules() -> None:
    with pytest.raises(TypeError, match="BasicBlock or Bottleneck"):
        fold_block(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))


# ---------------------------------------------------------------- whole models

CIFAR_RESIDUAL = [
    n for n in list_models() if get_spec(n).family == "cifar" and get_spec(n).residual
]
REGISTRY_CASES = [(n, "B") for n in list_models()] + [(n, "A") for n in CIFAR_RESIDUAL]


@pytest.mark.parametrize(
    ("name", "shortcut"), REGISTRY_CASES, ids=[f"{n}-{s}" for n, s in REGISTRY_CASES]
)
def test_fold_model_equals_original(name: str, shortcut: str) -> None:
    model, x = build(name, shortcut)

    merged = fold_model(model)
    unmerged = fold_model(model, merge_projections=False)

    assert isinstance(merged, FoldedResNet) and not merged.training
    assert not has_batchnorm(merged) and not has_batchnorm(unmerged)
    with torch.no_grad():
        expected = model(x)
        assert_same(merged(x), expected)
        assert_same(unmerged(x), expected)

    report = fold_report(model, merged)
    assert report.batchnorms_after == 0
    assert report.batchnorms_before == report.convs_before  # one BN per conv before folding
    assert report.merged_projections + report.separate_projections == report.projections_before
    assert report.convs_after == report.convs_before - report.merged_projections
    assert count_convs(unmerged) == report.convs_before
    if not get_spec(name).residual or shortcut == "A":
        assert report.projections_before == 0


# name -> (convs before, projections, convs after merging, merged, separate)
EXPECTED_COUNTS = {
    "resnet18": (20, 3, 17, 3, 0),
    "resnet34": (36, 3, 33, 3, 0),
    "resnet50": (53, 4, 52, 1, 3),
    "resnet101": (104, 4, 103, 1, 3),
    "resnet152": (155, 4, 154, 1, 3),
    "plain18": (17, 0, 17, 0, 0),
    "resnet20": (21, 2, 19, 2, 0),
    "resnet110": (111, 2, 109, 2, 0),
    "plain20": (19, 0, 19, 0, 0),
}


@pytest.mark.parametrize("name", list(EXPECTED_COUNTS))
def test_fold_report_counts(name: str) -> None:
    # Counting needs no numerics: the default init is cheap enough even for ResNet-152.
    model = create_model(name).eval()
    convs, projections, convs_after, merged, separate = EXPECTED_COUNTS[name]

    report = fold_report(model, fold_model(model))
    unmerged = fold_report(model, fold_model(model, merge_projections=False))

    assert (report.convs_before, report.projections_before, report.batchnorms_before) == (
        convs, projections, convs
    )
    assert (report.convs_after, report.merged_projections, report.separate_projections) == (
        convs_after, merged, separate
    )
    assert (unmerged.convs_after, unmerged.merged_projections, unmerged.separate_projections) == (
        convs, 0, projections
    )
    assert report.batchnorms_after == unmerged.batchnorms_after == 0


def test_resnet50_merges_only_the_stride_1_projection() -> None:
    folded = fold_model(create_model("resnet50").eval())

    first = folded.layer1[0]
    assert first.merged and first.branch_channels == 64
    assert first.conv1.kernel_size == (1, 1) and first.conv1.out_channels == 64 + 256
    for stage in (folded.layer2, folded.layer3, folded.layer4):
        assert not stage[0].merged
        assert stage[0].downsample.stride == (2, 2) and stage[0].conv1.stride == (1, 1)


def test_cifar_option_a_keeps_zero_pad_shortcuts() -> None:
    model = create_model("resnet20", in_channels=1, shortcut="A").eval()
    folded = fold_model(model)
    shortcuts = [m for m in folded.modules() if isinstance(m, ZeroPadShortcut)]
    assert len(shortcuts) == 2
    assert fold_report(model, folded).convs_after == count_convs(model) == 19


def test_fold_model_leaves_its_input_untouched() -> None:
    model, x = build("resnet18")
    model.train()  # fold_model must not switch the caller's mode either
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types_before = [type(m) for m in model.modules()]

    folded = fold_model(model)

    assert model.training
    assert [type(m) for m in model.modules()] == types_before
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    # No storage shared: editing the folded model cannot reach the original.
    original_ptrs = {p.data_ptr() for p in model.parameters()}
    assert not original_ptrs & {p.data_ptr() for p in folded.parameters()}
    # And it folded the eval-mode behaviour, whatever mode the input was in.
    with torch.no_grad():
        assert_same(folded(x), model.eval()(x))


def test_fold_model_rejects_other_models() -> None:
    with pytest.raises(TypeError, match="ImageNetResNet or CifarResNet"):
        fold_model(nn.Sequential(nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3)))


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet20"])
def test_float32_fold_is_within_export_tolerance(name: str) -> None:
    """The export check compares a float32 folded model to the float64 unfolded one at 1e-5."""
    model, x = build(name)
    folded32 = fold_model(model.float())
    with torch.no_grad():
        actual = folded32(x.float()).double()
        expected = model.double()(x)
    assert folded32.fc.weight.dtype == torch.float32
    assert_same(actual, expected, rtol=1e-5)


# ---------------------------------------------------------------- models/init.py


def test_randomize_batchnorm_stats_is_seeded_and_changes_every_bn() -> None:
    a = randomize_batchnorm_stats_(create_model("resnet20"), seed=3)
    b = randomize_batchnorm_stats_(create_model("resnet20"), seed=3)
    c = randomize_batchnorm_stats_(create_model("resnet20"), seed=4)

    bns = [m for m in a.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 21
    for bn in bns:
        assert 0.5 <= bn.weight.min() and bn.weight.max() <= 1.5 and not torch.all(bn.weight == 1)
        assert 0.5 <= bn.running_var.min() and bn.running_var.max() <= 1.5
        assert bn.running_mean.abs().max() > 0 and bn.bias.abs().max() > 0
    # Conv weights come from the global RNG; only the BN tensors depend on the seed.
    def bn_tensors(model: nn.Module) -> list[torch.Tensor]:
        return [t for m in model.modules() if isinstance(m, nn.BatchNorm2d)
                for t in (m.weight, m.bias, m.running_mean, m.running_var)]

    assert all(torch.equal(x, y) for x, y in zip(bn_tensors(a), bn_tensors(b), strict=True))
    assert not any(torch.equal(x, y) for x, y in zip(bn_tensors(a), bn_tensors(c), strict=True))
