"""CIFAR ResNet18/34/50/101/152 of RepDistiller's `models/resnetv2.py` (`cifar.ResNet50`, ...).

Keys and forward follow the reference (same in mdistiller and ASKD; mdistiller and ASKD register
ResNet18, ASKD also ResNet34): an ImageNet-width ResNet adapted to 32x32 with a 3x3 stride-1 stem and
no max-pool; stages at 32/16/8/4 pixels; shortcuts are called `shortcut` (not torchvision's
`downsample`) and the classifier `linear`. Kaiming fan_out init, zero_init_residual off.

Features (`forward_features`), input 3x32x32:
    stages        = [layer1, layer2, layer3, layer4 outputs] = rep `feat[1:5]`
                    (ResNet50: 256@32, 512@16, 1024@8, 2048@4; ResNet18: 64@32, 128@16, 256@8, 512@4)
    preact_stages = each stage's last block before its final ReLU = rep preact
    pooled        = AdaptiveAvgPool(1) of layer4, flattened = rep `feat[-1]`
The stem output (rep `feat[0]`, 64@32) is not a stage.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from models import BACKBONES
from models.cifar.resnet import run_stage
from models.features import Features


def projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """1x1 conv + BN shortcut when shape changes, else an empty (identity) Sequential."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class ResNetV2BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN + shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = projection(in_planes, planes * self.expansion, stride)

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        preact = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_preact(x)[0]


class ResNetV2Bottleneck(nn.Module):
    """1x1-BN-ReLU, 3x3(stride)-BN-ReLU, 1x1 (x4)-BN + shortcut, then ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = projection(in_planes, planes * self.expansion, stride)

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_preact(x)[0]


class CifarResNetV2(nn.Module):
    """ResNet with a 3x3 stem for 32x32 inputs; `block` is the BasicBlock or Bottleneck class."""

    def __init__(self, block: type[nn.Module], num_blocks: list[int], num_classes: int = 100):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block: type[nn.Module], planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, block_stride))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Features:
        stem = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = run_stage(self.layer1, stem)
        f2, f2_pre = run_stage(self.layer2, f1)
        f3, f3_pre = run_stage(self.layer3, f2)
        f4, f4_pre = run_stage(self.layer4, f3)
        pooled = self.avgpool(f4).flatten(1)
        stages = [f1, f2, f3, f4]
        return Features(
            out=self.linear(pooled),
            stages=stages,
            preact_stages=[f1_pre, f2_pre, f3_pre, f4_pre],
            pooled=pooled,
            stem=stem,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).out


@BACKBONES.register("cifar.ResNet18")
def resnet18(num_classes: int = 100) -> CifarResNetV2:
    return CifarResNetV2(ResNetV2BasicBlock, [2, 2, 2, 2], num_classes)


@BACKBONES.register("cifar.ResNet34")
def resnet34(num_classes: int = 100) -> CifarResNetV2:
    return CifarResNetV2(ResNetV2BasicBlock, [3, 4, 6, 3], num_classes)


@BACKBONES.register("cifar.ResNet50")
def resnet50(num_classes: int = 100) -> CifarResNetV2:
    return CifarResNetV2(ResNetV2Bottleneck, [3, 4, 6, 3], num_classes)


@BACKBONES.register("cifar.ResNet101")
def resnet101(num_classes: int = 100) -> CifarResNetV2:
    return CifarResNetV2(ResNetV2Bottleneck, [3, 4, 23, 3], num_classes)


@BACKBONES.register("cifar.ResNet152")
def resnet152(num_classes: int = 100) -> CifarResNetV2:
    return CifarResNetV2(ResNetV2Bottleneck, [3, 8, 36, 3], num_classes)
