"""ImageNet-style ResNets with torchvision's layout (`imagenet.resnet18/34/50/101/152`).

State-dict keys, order and shapes equal torchvision's `resnet*` (and the DCT-attention repository's
`Libs/resnet.py`, which is key-identical), so torchvision's ImageNet weights and DCT checkpoints load
with `strict=True`, without depending on torchvision (classification.md §1.2, decision f).
ResNet V1.5: the Bottleneck's stride sits on its 3x3 conv. Kaiming fan_out init for convs, BN 1/0,
PyTorch's default for the Linear; zero_init_residual off (torchvision's default).

Features (`forward_features`), input 3x224x224:
    stages        = [layer1, layer2, layer3, layer4 outputs] (after the residual ReLU): DCT's a0..a3,
                    resnet18/34: 64@56, 128@28, 256@14, 512@7; resnet50/101/152: 256@56 ... 2048@7
    preact_stages = the same four maps before their last block's final ReLU
    pooled        = AdaptiveAvgPool(1) of layer4, flattened (DCT's a4)
The stem (conv1, bn1, relu, maxpool) is not a stage.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from models import BACKBONES
from models.cifar.resnet import run_stage
from models.features import Features


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN + shortcut, then ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def _residual_sum(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.bn2(self.conv2(out)) + shortcut

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        preact = self._residual_sum(x)
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self._residual_sum(x))


class Bottleneck(nn.Module):
    """1x1-BN-ReLU, 3x3(stride)-BN-ReLU, 1x1 (x4)-BN + shortcut, then ReLU (ResNet V1.5)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def _residual_sum(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.bn3(self.conv3(out)) + shortcut

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        preact = self._residual_sum(x)
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self._residual_sum(x))


class ImageNetResNet(nn.Module):
    """torchvision-layout ResNet: 7x7/2 stem + max-pool, four stages, global pool, `fc`."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Features:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1, f1_pre = run_stage(self.layer1, x)
        f2, f2_pre = run_stage(self.layer2, f1)
        f3, f3_pre = run_stage(self.layer3, f2)
        f4, f4_pre = run_stage(self.layer4, f3)
        pooled = self.avgpool(f4).flatten(1)
        stages = [f1, f2, f3, f4]
        return Features(
            out=self.fc(pooled),
            stages=stages,
            preact_stages=[f1_pre, f2_pre, f3_pre, f4_pre],
            pooled=pooled,
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@BACKBONES.register("imagenet.resnet18")
def resnet18(num_classes: int = 1000) -> ImageNetResNet:
    return ImageNetResNet(BasicBlock, [2, 2, 2, 2], num_classes)


@BACKBONES.register("imagenet.resnet34")
def resnet34(num_classes: int = 1000) -> ImageNetResNet:
    return ImageNetResNet(BasicBlock, [3, 4, 6, 3], num_classes)


@BACKBONES.register("imagenet.resnet50")
def resnet50(num_classes: int = 1000) -> ImageNetResNet:
    return ImageNetResNet(Bottleneck, [3, 4, 6, 3], num_classes)


@BACKBONES.register("imagenet.resnet101")
def resnet101(num_classes: int = 1000) -> ImageNetResNet:
    return ImageNetResNet(Bottleneck, [3, 4, 23, 3], num_classes)


@BACKBONES.register("imagenet.resnet152")
def resnet152(num_classes: int = 1000) -> ImageNetResNet:
    return ImageNetResNet(Bottleneck, [3, 8, 36, 3], num_classes)
