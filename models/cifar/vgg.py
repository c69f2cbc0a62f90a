"""CIFAR VGGs with BatchNorm of RepDistiller (`vgg8`, `vgg11`, `vgg13`, `vgg16`, `vgg19`).

Keys and forward follow RepDistiller's `models/vgg.py` (the `*_bn` constructors, registered there as
`vgg8` ... `vgg19`; same in mdistiller and ASKD). Each of the five blocks is conv3x3 (with bias)-BN-ReLU
repeated, with the block's last ReLU applied in `forward`, so the block output itself is pre-ReLU.
Max-pooling follows blocks 0, 1 and 2; `pool3` runs only for 64-pixel inputs, so on CIFAR blocks 3
and 4 both work at 4x4.

Features (`forward_features`), input 3x32x32:
    stages        = [ReLU(block1), ReLU(block2), ReLU(block3), ReLU(block4)]
                    = 128@16, 256@8, 512@4, 512@4 = rep `feat[1:5]`
    preact_stages = the same four block outputs before the ReLU (BN outputs) = rep preact
    pooled        = AdaptiveAvgPool(1) of ReLU(block4), flattened (512) = rep `feat[-1]`
The block0 output (rep `feat[0]`) is not a stage.
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F

from models import BACKBONES
from models.features import Features

VGG_CONFIGS: dict[str, list[list[int]]] = {
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
    "S": [[64], [128], [256], [512], [512]],
}


def make_block(widths: list[int], in_channels: int) -> nn.Sequential:
    """conv3x3-BN-ReLU per width, without the final ReLU (applied by the caller)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class CifarVGG(nn.Module):
    """Five conv blocks, max-pools, global average pool and one Linear(512 -> classes)."""

    def __init__(self, cfg: list[list[int]], num_classes: int = 100):
        super().__init__()
        self.block0 = make_block(cfg[0], 3)
        self.block1 = make_block(cfg[1], cfg[0][-1])
        self.block2 = make_block(cfg[2], cfg[1][-1])
        self.block3 = make_block(cfg[3], cfg[2][-1])
        self.block4 = make_block(cfg[4], cfg[3][-1])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.data.normal_(0, 0.01)
                m.bias.data.zero_()

    def forward_features(self, x: Tensor) -> Features:
        height = x.shape[2]
        stem = F.relu(self.block0(x))
        f1_pre = self.block1(self.pool0(stem))
        f1 = F.relu(f1_pre)
        f2_pre = self.block2(self.pool1(f1))
        f2 = F.relu(f2_pre)
        f3_pre = self.block3(self.pool2(f2))
        f3 = F.relu(f3_pre)
        x = self.pool3(f3) if height == 64 else f3
        f4_pre = self.block4(x)
        f4 = F.relu(f4_pre)
        pooled = self.pool4(f4).flatten(1)
        stages = [f1, f2, f3, f4]
        return Features(
            out=self.classifier(pooled),
            stages=stages,
            preact_stages=[f1_pre, f2_pre, f3_pre, f4_pre],
            pooled=pooled,
            stem=stem,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).out


@BACKBONES.register("cifar.vgg8")
def vgg8(num_classes: int = 100) -> CifarVGG:
    return CifarVGG(VGG_CONFIGS["S"], num_classes)


@BACKBONES.register("cifar.vgg11")
def vgg11(num_classes: int = 100) -> CifarVGG:
    return CifarVGG(VGG_CONFIGS["A"], num_classes)


@BACKBONES.register("cifar.vgg13")
def vgg13(num_classes: int = 100) -> CifarVGG:
    return CifarVGG(VGG_CONFIGS["B"], num_classes)


@BACKBONES.register("cifar.vgg16")
def vgg16(num_classes: int = 100) -> CifarVGG:
    return CifarVGG(VGG_CONFIGS["D"], num_classes)


@BACKBONES.register("cifar.vgg19")
def vgg19(num_classes: int = 100) -> CifarVGG:
    return CifarVGG(VGG_CONFIGS["E"], num_classes)
