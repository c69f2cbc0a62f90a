"""RepDistiller's CIFAR ShuffleNetV1 (`ShuffleV1`: groups 3, widths 240/480/960, blocks 4/8/4).

Keys and forward follow RepDistiller's `models/ShuffleNetv1.py` (same in mdistiller and ASKD): a 1x1
stem without max-pool, then three stages whose first block has stride 2 and concatenates
[branch, AvgPool(3, s2, p1) shortcut] while the others add the identity; ReLU after the concat/sum.
PyTorch's default initialisation, as in the reference.

Features (`forward_features`), input 3x32x32:
    stages        = [layer1, layer2, layer3 outputs] = 240@16, 480@8, 960@4 = rep `feat[1:4]`
    preact_stages = each stage's last block before its final ReLU (the sum) = rep preact
    pooled        = avg_pool(layer3, 4), flattened (960) = rep `feat[-1]`
The stem output (rep `feat[0]`, 24@32) is not a stage.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models import BACKBONES
from models.cifar.resnet import run_stage
from models.features import Features


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """[N, g*k, H, W] -> channel c = i*k + j moves to j*g + i (interleave the g groups)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class ShuffleBlock(nn.Module):
    """Channel shuffle as a module (kept as a child module, like the reference; no parameters)."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(x, self.groups)


class ShuffleV1Bottleneck(nn.Module):
    """Grouped 1x1 - shuffle - dw 3x3 (stride) - grouped 1x1, each with BN; concat or add the shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid_planes = int(out_planes / 4)
        first_groups = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ShuffleBlock(groups=first_groups)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.shuffle1(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.shortcut(x)
        preact = torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_preact(x)[0]


class ShuffleNetV1(nn.Module):
    """ShuffleNetV1 for 32x32 inputs."""

    def __init__(self, out_planes: list[int], num_blocks: list[int], groups: int, num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            stride = 2 if i == 0 else 1
            concatenated = self.in_planes if i == 0 else 0  # the shortcut supplies these channels
            layers.append(ShuffleV1Bottleneck(self.in_planes, out_planes - concatenated, stride, groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Features:
        stem = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = run_stage(self.layer1, stem)
        f2, f2_pre = run_stage(self.layer2, f1)
        f3, f3_pre = run_stage(self.layer3, f2)
        pooled = F.avg_pool2d(f3, 4).flatten(1)
        stages = [f1, f2, f3]
        return Features(
            out=self.linear(pooled),
            stages=stages,
            preact_stages=[f1_pre, f2_pre, f3_pre],
            pooled=pooled,
            stem=stem,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).out


@BACKBONES.register("cifar.ShuffleV1")
def shuffle_v1(num_classes: int = 100) -> ShuffleNetV1:
    return ShuffleNetV1([240, 480, 960], [4, 8, 4], groups=3, num_classes=num_classes)
