"""CIFAR ResNets of RepDistiller (`resnet8` ... `resnet110`, `resnet8x4`, `resnet32x4`).

Layout and state-dict keys follow RepDistiller's `models/resnet.py` (same in mdistiller and ASKD),
so the published CIFAR-100 teachers load with `strict=True`. Modules are created in the reference
order and initialised in the same `self.modules()` pass, so a given seed gives the same weights.

Features (`forward_features`), input 3x32x32:
    stages        = [layer1, layer2, layer3 outputs] (after the block's final ReLU) = rep `feat[1:4]`
    preact_stages = the same three maps before that ReLU (sum of branch and shortcut) = rep preact
    pooled        = AvgPool2d(8) of layer3, flattened = rep `feat[-1]`
The stem output (rep `feat[0]`) is not a stage.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from models import BACKBONES
from models.features import Features


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU (the pre-ReLU sum is the preact)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        preact = out + shortcut
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_preact(x)[0]


def run_stage(stage: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run a stage of blocks; return its output and the last block's pre-ReLU map.

    Every block of the stage must offer `forward_with_preact`; only the last one's preact is kept
    (what RepDistiller's `is_last` blocks return), without hooks so `torch.compile` sees plain code.
    """
    for block in stage[:-1]:
        x = block(x)
    return stage[-1].forward_with_preact(x)


class CifarResNet(nn.Module):
    """RepDistiller's CIFAR ResNet: 3x3 stem, three stages of n = (depth - 2) / 6 BasicBlocks."""

    def __init__(self, depth: int, num_filters: list[int], num_classes: int = 100):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(num_filters[1], blocks_per_stage, stride=1)
        self.layer2 = self._make_layer(num_filters[2], blocks_per_stage, stride=2)
        self.layer3 = self._make_layer(num_filters[3], blocks_per_stage, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(num_filters[3] * BasicBlock.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Features:
        stem = self.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = run_stage(self.layer1, stem)
        f2, f2_pre = run_stage(self.layer2, f1)
        f3, f3_pre = run_stage(self.layer3, f2)
        pooled = self.avgpool(f3).flatten(1)
        stages = [f1, f2, f3]
        return Features(
            out=self.fc(pooled),
            stages=stages,
            preact_stages=[f1_pre, f2_pre, f3_pre],
            pooled=pooled,
            stem=stem,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).out


_NARROW = [16, 16, 32, 64]
_WIDE = [32, 64, 128, 256]


@BACKBONES.register("cifar.resnet8")
def resnet8(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(8, _NARROW, num_classes)


@BACKBONES.register("cifar.resnet14")
def resnet14(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(14, _NARROW, num_classes)


@BACKBONES.register("cifar.resnet20")
def resnet20(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(20, _NARROW, num_classes)


@BACKBONES.register("cifar.resnet32")
def resnet32(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(32, _NARROW, num_classes)


@BACKBONES.register("cifar.resnet44")
def resnet44(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(44, _NARROW, num_classes)


@BACKBONES.register("cifar.resnet56")
def resnet56(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(56, _NARROW, num_classes)


@BACKBONES.register("cifar.resnet110")
def resnet110(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(110, _NARROW, num_classes)


@BACKBONES.register("cifar.resnet8x4")
def resnet8x4(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(8, _WIDE, num_classes)


@BACKBONES.register("cifar.resnet32x4")
def resnet32x4(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(32, _WIDE, num_classes)
