"""Folds every BatchNorm of a ResNet into the conv before it, and merges projection shortcuts.

In eval mode a BatchNorm is a fixed per-channel affine map, so ``bn(conv(x))`` is one conv with
a rescaled kernel and a bias. ``fold_model`` rebuilds an ``ImageNetResNet`` or ``CifarResNet``
from ``models.resnet`` that way, in plain PyTorch before any exporter sees it, so the ONNX graph
and every runtime after it get the same smaller network, whichever fusions the exporter does.

It also merges a block's 1x1 projection shortcut into the branch conv that reads the same input
at the same stride: both convs then run as one wider conv whose output channels are split. That
applies to every projection BasicBlock (3x3/s and 1x1/s both read ``x``; the 1x1 kernel becomes
the 3x3 kernel's centre tap) and to the first Bottleneck of ResNet-50/101/152 (two 1x1/1 convs).
The other Bottleneck projections stay separate: "ResNet v1.5" puts the stride on the 3x3 conv,
so the block's first conv is 1x1/1 while its projection is 1x1/2.

    model = create_model("resnet50").eval()
    folded = fold_model(model)
    fold_report(model, folded)  # FoldReport(convs_before=53, ..., convs_after=52, ...)
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import skip_init

from models.blocks import BasicBlock, Bottleneck
from models.resnet import CifarResNet, ImageNetResNet

logger = logging.getLogger(__name__)


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv with bias that computes ``bn(conv(x))`` as ``bn`` does in eval mode.

    Eval-mode BN is y = (z - mean) * weight / sqrt(var + eps) + bias per channel: it scales each
    output channel's kernel and shifts its bias. The arithmetic runs in float64 and is rounded
    once to the conv's dtype, so folding adds no float32 error of its own on top of the forward
    pass (the export check compares against an unfolded float64 model at 1e-5).
    """
    if bn.running_mean is None or bn.running_var is None:
        # Without running statistics BN normalises with batch statistics even in eval mode.
        raise ValueError("cannot fold a BatchNorm2d that has no running statistics")
    if bn.num_features != conv.out_channels:
        raise ValueError(
            f"BatchNorm2d({bn.num_features}) cannot follow a conv with {conv.out_channels} outputs"
        )
    f64 = dict(dtype=torch.float64, device=conv.weight.device)
    zeros = torch.zeros(conv.out_channels, **f64)
    conv_bias = conv.bias.double() if conv.bias is not None else zeros
    gamma = bn.weight.double() if bn.affine else torch.ones(bn.num_features, **f64)
    beta = bn.bias.double() if bn.affine else zeros
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)  # (C_out,)

    folded = _empty_conv_like(conv, conv.out_channels)
    folded.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
    folded.bias.copy_((conv_bias - bn.running_mean.double()) * scale + beta)
    return folded


def can_merge(conv: nn.Conv2d, projection: nn.Conv2d) -> bool:
    """Whether a 1x1 ``projection`` reads exactly the input pixel at the centre tap of each of
    ``conv``'s windows, so both fit in one conv. Needs the same input and stride, and "same"
    padding (2p = d(k-1), k odd): the centre tap then sits at input (i*s, j*s), as the 1x1's does,
    and both outputs have the same size for every input size.
    """
    if projection.kernel_size != (1, 1) or projection.padding != (0, 0):
        return False
    if conv.groups != 1 or projection.groups != 1 or isinstance(conv.padding, str):
        return False
    if conv.in_channels != projection.in_channels or conv.stride != projection.stride:
        return False
    same_tensors = (conv.weight.dtype, conv.weight.device) == (
        projection.weight.dtype, projection.weight.device
    )
    if not same_tensors:
        return False
    return all(
        k % 2 == 1 and 2 * p == d * (k - 1)
        for k, p, d in zip(conv.kernel_size, conv.padding, conv.dilation)
    )


@torch.no_grad()
def merge_convs(conv: nn.Conv2d, projection: nn.Conv2d) -> nn.Conv2d:
    """One conv computing ``cat([conv(x), projection(x)], dim=1)``; see ``can_merge``.

    The projection's output channels get a kernel that is zero except at the centre tap, where
    its 1x1 weights go: exact, since the added taps multiply by zero. Both convs need a bias
    (true after ``fold_conv_bn``).
    """
    if not can_merge(conv, projection):
        raise ValueError(f"cannot merge {projection} into {conv}")
    if conv.bias is None or projection.bias is None:
        raise ValueError("merge_convs expects folded convs, with a bias")
    branch = conv.out_channels
    centre_h, centre_w = conv.kernel_size[0] // 2, conv.kernel_size[1] // 2

    merged = _empty_conv_like(conv, branch + projection.out_channels)
    merged.weight.zero_()
    merged.weight[:branch] = conv.weight
    merged.weight[branch:, :, centre_h, centre_w] = projection.weight[:, :, 0, 0]
    merged.bias.copy_(torch.cat([conv.bias, projection.bias]))
    return merged


def _empty_conv_like(conv: nn.Conv2d, out_channels: int) -> nn.Conv2d:
    """Same geometry, dtype and device as ``conv``, with a bias; weights left uninitialised."""
    return skip_init(
        nn.Conv2d, conv.in_channels, out_channels, conv.kernel_size, stride=conv.stride,
        padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
        padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype,
    )


class _FoldedBlock(nn.Module):
    """Shortcut handling shared by the folded blocks.

    ``downsample`` is ``None`` (identity), a folded projection conv, or a parameter-free module
    such as ``ZeroPadShortcut``. When ``branch_channels`` is set, the projection was merged into
    ``conv1``: its first ``branch_channels`` outputs feed the branch and the rest are the shortcut.
    """

    def __init__(
        self, downsample: nn.Module | None, residual: bool, branch_channels: int | None
    ) -> None:
        super().__init__()
        # Not in place: torch.export turns an in-place ReLU on a slice of the merged conv's output
        # into a write-back to the whole tensor (Transpose + ScatterND in the ONNX graph).
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.residual = residual
        self.branch_channels = branch_channels

    @property
    def merged(self) -> bool:
        return self.branch_channels is not None

    def split_shortcut(
        self, x: torch.Tensor, conv1_out: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(branch, identity) from the block input and ``conv1``'s output."""
        if self.branch_channels is not None:
            return conv1_out[:, : self.branch_channels], conv1_out[:, self.branch_channels :]
        if self.downsample is not None:
            return conv1_out, self.downsample(x)
        return conv1_out, x


class FoldedBasicBlock(_FoldedBlock):
    """``BasicBlock`` without BatchNorm: conv -> relu -> conv, shortcut add, relu."""

    def __init__(
        self,
        conv1: nn.Conv2d,
        conv2: nn.Conv2d,
        downsample: nn.Module | None = None,
        residual: bool = True,
        branch_channels: int | None = None,
    ) -> None:
        super().__init__(downsample, residual, branch_channels)
        self.conv1 = conv1
        self.conv2 = conv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, identity = self.split_shortcut(x, self.conv1(x))
        out = self.relu(out)

        out = self.conv2(out)

        if self.residual:
            out = out + identity
        return self.relu(out)


class FoldedBottleneck(_FoldedBlock):
    """``Bottleneck`` without BatchNorm: 1x1 -> relu -> 3x3 -> relu -> 1x1, shortcut add, relu."""

    def __init__(
        self,
        conv1: nn.Conv2d,
        conv2: nn.Conv2d,
        conv3: nn.Conv2d,
        downsample: nn.Module | None = None,
        residual: bool = True,
        branch_channels: int | None = None,
    ) -> None:
        super().__init__(downsample, residual, branch_channels)
        self.conv1 = conv1
        self.conv2 = conv2
        self.conv3 = conv3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, identity = self.split_shortcut(x, self.conv1(x))
        out = self.relu(out)

        out = self.conv2(out)
        out = self.relu(out)

        out = self.conv3(out)

        if self.residual:
            out = out + identity
        return self.relu(out)


def _fold_shortcut(downsample: nn.Module | None) -> nn.Module | None:
    """A folded conv for a projection ``Sequential(conv1x1, BatchNorm2d)``; any BN-free shortcut
    (``ZeroPadShortcut``) is copied as it is."""
    if downsample is None:
        return None
    children = list(downsample.children())
    if (
        isinstance(downsample, nn.Sequential)
        and len(children) == 2
        and isinstance(children[0], nn.Conv2d)
        and isinstance(children[1], nn.BatchNorm2d)
    ):
        return fold_conv_bn(children[0], children[1])
    if any(isinstance(m, nn.BatchNorm2d) for m in downsample.modules()):
        raise TypeError(f"don't know how to fold this shortcut: {downsample}")
    return copy.deepcopy(downsample)


def fold_block(
    block: nn.Module, merge_projections: bool = True
) -> FoldedBasicBlock | FoldedBottleneck:
    """The folded twin of a ``BasicBlock`` or ``Bottleneck``; the input block is left untouched."""
    if isinstance(block, BasicBlock):
        convs = [fold_conv_bn(block.conv1, block.bn1), fold_conv_bn(block.conv2, block.bn2)]
        folded_cls: type[FoldedBasicBlock] | type[FoldedBottleneck] = FoldedBasicBlock
    elif isinstance(block, Bottleneck):
        convs = [
            fold_conv_bn(block.conv1, block.bn1),
            fold_conv_bn(block.conv2, block.bn2),
            fold_conv_bn(block.conv3, block.bn3),
        ]
        folded_cls = FoldedBottleneck
    else:
        raise TypeError(f"expected a BasicBlock or Bottleneck, got {type(block).__name__}")

    # A plain block never calls its downsample, so it has no shortcut to keep.
    downsample = _fold_shortcut(block.downsample) if block.residual else None
    branch_channels = None
    # Decided from the convs' actual geometry: BasicBlock projections and ResNet-50's layer1.0
    # pass, a v1.5 Bottleneck's strided projection does not (its conv1 has stride 1).
    if merge_projections and isinstance(downsample, nn.Conv2d) and can_merge(convs[0], downsample):
        branch_channels = convs[0].out_channels
        convs[0] = merge_convs(convs[0], downsample)
        downsample = None
    return folded_cls(
        *convs, downsample=downsample, residual=block.residual, branch_channels=branch_channels
    )


class FoldedResNet(nn.Module):
    """An ``ImageNetResNet`` or ``CifarResNet`` after folding, for inference only.

    Module names follow the original (``conv1``, ``layer2.0.conv1``, ``fc``) so that each folded
    conv is easy to trace back; ``maxpool`` is ``None`` for the CIFAR stem, which has none.
    """

    def __init__(
        self,
        conv1: nn.Conv2d,
        maxpool: nn.Module | None,
        stages: list[nn.Sequential],
        avgpool: nn.Module,
        fc: nn.Linear,
    ) -> None:
        super().__init__()
        self.conv1 = conv1
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = maxpool
        self.stage_names = tuple(f"layer{i + 1}" for i in range(len(stages)))
        for name, stage in zip(self.stage_names, stages):
            setattr(self, name, stage)
        self.avgpool = avgpool
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        x = torch.flatten(self.avgpool(x), 1)  # (N, C)
        return self.fc(x)


def fold_model(model: nn.Module, merge_projections: bool = True) -> FoldedResNet:
    """A new, BatchNorm-free model with the same eval-mode outputs as ``model``.

    ``model`` comes from ``models.create_model`` (either family, residual or plain, shortcut A or
    B) and is not modified. The result is in eval mode; it has no BatchNorm to switch, and its
    outputs are those of ``model.eval()`` whatever mode ``model`` is in.
    """
    if not isinstance(model, (ImageNetResNet, CifarResNet)):
        raise TypeError(f"expected an ImageNetResNet or CifarResNet, got {type(model).__name__}")
    stages = [
        nn.Sequential(*(fold_block(block, merge_projections) for block in stage))
        for name, stage in model.named_children()
        if name.startswith("layer")
    ]
    folded = FoldedResNet(
        conv1=fold_conv_bn(model.conv1, model.bn1),
        maxpool=copy.deepcopy(model.maxpool) if isinstance(model, ImageNetResNet) else None,
        stages=stages,
        avgpool=copy.deepcopy(model.avgpool),
        fc=copy.deepcopy(model.fc),
    ).eval()
    logger.info("folded %s: %s", type(model).__name__, fold_report(model, folded))
    return folded


def count_convs(model: nn.Module) -> int:
    """Number of ``nn.Conv2d`` modules; a merged conv counts once."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


def _count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _count_projections(model: nn.Module) -> int:
    """Convs inside a ``downsample`` module, i.e. projection shortcuts that run separately."""
    return sum(
        isinstance(m, nn.Conv2d) and "downsample" in name.split(".")
        for name, m in model.named_modules()
    )


@dataclass(frozen=True)
class FoldReport:
    """What folding did to one model, counted from both module trees."""

    convs_before: int
    projections_before: int  # convs inside the original's ``downsample`` modules
    batchnorms_before: int
    convs_after: int
    merged_projections: int  # projections now computed by their block's conv1
    separate_projections: int  # projections still run as their own (folded) conv
    batchnorms_after: int  # 0 for any model that fold_model returned


def fold_report(original: nn.Module, folded: nn.Module) -> FoldReport:
    """Counts convs, projections and BatchNorms of ``original`` and its ``fold_model`` output."""
    return FoldReport(
        convs_before=count_convs(original),
        projections_before=_count_projections(original),
        batchnorms_before=_count_batchnorms(original),
        convs_after=count_convs(folded),
        merged_projections=sum(isinstance(m, _FoldedBlock) and m.merged for m in folded.modules()),
        separate_projections=_count_projections(folded),
        batchnorms_after=_count_batchnorms(folded),
    )
