"""ImageNet-style MobileNetV2 with torchvision's layout (`imagenet.mobilenet_v2`).

State-dict keys, order and shapes equal torchvision's `mobilenet_v2` (and the DCT-attention
repository's `Libs/mobilenetv2.py`, key-identical), without depending on torchvision: `features.0..18`
(stem conv-BN-ReLU6 at stride 2, 17 inverted residuals, 1x1 conv-BN-ReLU6 to 1280), then global
average pooling and `classifier = [Dropout(0.2), Linear]`. Channels are rounded with torchvision's
`_make_divisible` (multiples of 8). Init: convs kaiming fan_out (bias 0), BN 1/0, Linear N(0, 0.01).

Features (`forward_features`), input 3x224x224, at strides 4/8/16/32 (DCT's multiscale points):
    stages        = [features[0:4] (24@56), features[4:7] (32@28), features[7:14] (96@14),
                     features[14:19] (1280@7, after the final 1x1 conv-BN-ReLU6)]
    preact_stages = the first three are the same tensors (they end in a linear bottleneck);
                    the fourth is features[18]'s BN output before its ReLU6
    pooled        = global average of the 1280-channel map (DCT's a4)
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from models import BACKBONES
from models.features import Features

# (expansion t, channels c, repeats n, first stride s), torchvision's inverted_residual_setting
INVERTED_RESIDUAL_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
# where the first three stages end (exclusive index into `features`); the fourth runs to the end
STAGE_ENDS = (4, 7, 14)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round `value` to the nearest multiple of `divisor`, never below `divisor` nor 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNReLU6(nn.Sequential):
    """conv (no bias, 'same' padding) - BN - ReLU6, as torchvision's Conv2dNormActivation (children 0, 1, 2)."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """[1x1 expand-BN-ReLU6 when t != 1] - dw3x3(stride)-BN-ReLU6 - 1x1-BN; identity add when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class ImageNetMobileNetV2(nn.Module):
    """torchvision-layout MobileNetV2."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        input_channel = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU6(3, input_channel, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            output_channel = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        features.append(ConvBNReLU6(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Features:
        stages = []
        start = 0
        for end in STAGE_ENDS:
            x = self.features[start:end](x)
            stages.append(x)
            start = end
        x = self.features[start : len(self.features) - 1](x)
        head_conv, head_bn, _ = self.features[-1]
        head_preact = head_bn(head_conv(x))
        stages.append(F.relu6(head_preact))
        pooled = F.adaptive_avg_pool2d(stages[-1], (1, 1)).flatten(1)
        return Features(
            out=self.classifier(pooled),
            stages=stages,
            preact_stages=[*stages[:-1], head_preact],
            pooled=pooled,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), (1, 1)).flatten(1))


@BACKBONES.register("imagenet.mobilenet_v2")
def mobilenet_v2(num_classes: int = 1000) -> ImageNetMobileNetV2:
    return ImageNetMobileNetV2(num_classes)
