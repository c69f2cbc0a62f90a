"""RepDistiller's CIFAR MobileNetV2 (`mobile_half`, registered as `cifar.MobileNetV2`).

Keys and forward follow RepDistiller's `models/mobilenetv2.py` (same in mdistiller and ASKD): expansion
T = 6, width 0.5 applied as int(c * 0.5) without rounding to multiples of 8, ReLU (not ReLU6), a
stride-2 stem (so the network works at 16x16 from the start), an expansion 1x1 in every inverted
residual (also for t = 1), the 1x1 conv to 1280 channels, AvgPool2d(2, ceil_mode) and one Linear.
The reference constructor's print of "6 0.5" is not reproduced.

Features (`forward_features`), input 3x32x32:
    stages        = [after blocks 0-1 (12@16), after block 2 (16@8), after blocks 3-4 (48@4),
                     after blocks 5-6 (160@2)] = rep `feat[1:5]`
    preact_stages = the same tensors: each stage ends in a linear (BN, no ReLU) bottleneck, and the
                    reference ignores `preact` for this model
    pooled        = AvgPool of the 1280-channel map, flattened = rep `feat[-1]`
The stem output (rep `feat[0]`, 16@16) is not a stage.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from models import BACKBONES
from models.features import Features

# (channels c, repeats n, first stride s) before the width multiplier; the first group expands by 1,
# the others by the model's expansion T
CHANNELS_REPEATS_STRIDES = [(16, 1, 1), (24, 2, 1), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1)]


def conv_bn_relu(inp: int, oup: int, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """pw 1x1 (expand) - dw 3x3 (stride) - pw-linear 1x1, each with BN; identity add when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs with expansion `expansion` and width multiplier `width_mult`."""

    def __init__(self, expansion: int, num_classes: int = 100, width_mult: float = 1.0, input_size: int = 32):
        super().__init__()
        input_channel = int(32 * width_mult)
        self.conv1 = conv_bn_relu(3, input_channel, 3, 2)
        self.blocks = nn.ModuleList()
        for group, (c, n, s) in enumerate(CHANNELS_REPEATS_STRIDES):
            t = 1 if group == 0 else expansion
            output_channel = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(input_channel, output_channel, stride, t))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn_relu(input_channel, self.last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)

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
        stem = self.conv1(x)
        f1 = self.blocks[1](self.blocks[0](stem))
        f2 = self.blocks[2](f1)
        f3 = self.blocks[4](self.blocks[3](f2))
        f4 = self.blocks[6](self.blocks[5](f3))
        pooled = self.avgpool(self.conv2(f4)).flatten(1)
        stages = [f1, f2, f3, f4]
        return Features(
            out=self.classifier(pooled),
            stages=stages,
            preact_stages=list(stages),
            pooled=pooled,
            stem=stem,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).out


@BACKBONES.register("cifar.MobileNetV2")
def mobile_half(num_classes: int = 100) -> CifarMobileNetV2:
    """RepDistiller's `mobile_half`: expansion 6, width 0.5."""
    return CifarMobileNetV2(6, num_classes, width_mult=0.5)
