"""The two ResNet families of He et al., "Deep Residual Learning for Image Recognition" (2016).

* ``ImageNetResNet``: ResNet-18/34/50/101/152 with torchvision's exact module tree, so
  ``model.load_state_dict(torchvision_state_dict, strict=True)`` works.
* ``CifarResNet``: the paper's Sec. 4.2 networks, 6n+2 layers with widths 16/32/64.

Both take ``residual=False`` for the plain twins (no shortcuts at all, so no projections either).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from models.blocks import BasicBlock, Bottleneck, ZeroPadShortcut, conv3x3, projection_shortcut

Block = type[BasicBlock] | type[Bottleneck]
ShortcutOption = Literal["A", "B"]


def _init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        # Zero-init the last BN of each residual branch so every block starts as the identity
        # (Goyal et al., "Accurate, Large Minibatch SGD", 2017); meaningless for plain nets.
        for m in model.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)


class ImageNetResNet(nn.Module):
    """7x7/2 stem, 3x3/2 max-pool, four stages of widths 64..512 (x expansion), global pool, fc."""

    def __init__(
        self,
        block: Block,
        layers: list[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        residual: bool = True,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = [64, 128, 256, 512]
        in_planes = 64
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            stage = self._make_stage(block, in_planes, planes, blocks, stride, residual)
            setattr(self, f"layer{i + 1}", stage)
            in_planes = planes * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_planes, num_classes)
        _init_weights(self, zero_init_residual and residual)

    @staticmethod
    def _make_stage(
        block: Block, in_planes: int, planes: int, blocks: int, stride: int, residual: bool
    ) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample = None
        if residual and (stride != 1 or in_planes != out_planes):
            downsample = projection_shortcut(in_planes, out_planes, stride)
        stage = [block(in_planes, planes, stride, downsample, residual)]
        stage += [block(out_planes, planes, residual=residual) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 512*e, H/32, W/32)
        x = torch.flatten(self.avgpool(x), 1)  # (N, 512*e)
        return self.fc(x)


class CifarResNet(nn.Module):
    """3x3 stem of 16 channels, three stages of n BasicBlocks (16/32/64), global pool, fc."""

    def __init__(
        self,
        n: int,
        num_classes: int = 10,
        in_channels: int = 3,
        residual: bool = True,
        shortcut: ShortcutOption = "B",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', not {shortcut!r}")
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        in_planes = 16
        for i, planes in enumerate([16, 32, 64]):
            stride = 1 if i == 0 else 2
            downsample: nn.Module | None = None
            if residual and (stride != 1 or in_planes != planes):
                downsample = (
                    projection_shortcut(in_planes, planes, stride)
                    if shortcut == "B"
                    else ZeroPadShortcut(in_planes, planes, stride)
                )
            stage = [BasicBlock(in_planes, planes, stride, downsample, residual)]
            stage += [BasicBlock(planes, planes, residual=residual) for _ in range(1, n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            in_planes = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        _init_weights(self, zero_init_residual and residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (N, 16, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 64, H/4, W/4)
        x = torch.flatten(self.avgpool(x), 1)  # (N, 64)
        return self.fc(x)


IMAGENET_LAYERS: dict[int, tuple[Block, list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}
CIFAR_DEPTHS = (20, 32, 44, 56, 110)


def imagenet_resnet(depth: int, **kwargs) -> ImageNetResNet:
    block, layers = IMAGENET_LAYERS[depth]
    return ImageNetResNet(block, layers, **kwargs)


def cifar_resnet(depth: int, **kwargs) -> CifarResNet:
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, not {depth}")
    return CifarResNet((depth - 2) // 6, **kwargs)
