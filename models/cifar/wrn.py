"""Wide ResNets of RepDistiller (`wrn_16_1`, `wrn_16_2`, `wrn_40_1`, `wrn_40_2`).

Keys and forward follow RepDistiller's `models/wrn.py` (same in mdistiller and ASKD). The blocks are
pre-activation: there is no ReLU after the residual addition, and a block whose width changes adds
its 1x1 projection of the *activated* input, while an equal-width block adds the *raw* input.

Features (`forward_features`), input 3x32x32:
    stages        = [block1, block2, block3 outputs] (residual sums, not activated) = rep `feat[1:4]`
    preact_stages = what rep returns with `preact=True`: block2.layer[0].bn1(f1),
                    block3.layer[0].bn1(f2) and bn1(f3), i.e. BN outputs without ReLU
    pooled        = avg_pool(ReLU(bn1(f3)), 8), flattened = rep `feat[-1]`
The preact BN outputs are computed with the same parameters and (in train mode) batch statistics
as the reference, but without touching the running statistics: RepDistiller/mdistiller call those
BN layers a second time and so update their running stats twice per step (classification.md §6,
pitfall 7: fixed here).
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F

from models import BACKBONES
from models.features import Features


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with identity (equal width) or 1x1 projection shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A group of `nb_layers` blocks; only the first one changes width and stride."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(nb_layers)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


def batch_norm_untracked(bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """`bn(x)` as it would compute now, but leaving its running statistics untouched."""
    use_batch_stats = bn.training or bn.running_mean is None
    return F.batch_norm(
        x,
        None if use_batch_stats else bn.running_mean,
        None if use_batch_stats else bn.running_var,
        bn.weight,
        bn.bias,
        training=use_batch_stats,
        momentum=0.0,
        eps=bn.eps,
    )


class WideResNet(nn.Module):
    """WRN-depth-k for 32x32 inputs: channels [16, 16k, 32k, 64k], (depth - 4) / 6 blocks per group."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        blocks_per_group = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(blocks_per_group, channels[0], channels[1], 1)
        self.block2 = NetworkBlock(blocks_per_group, channels[1], channels[2], 2)
        self.block3 = NetworkBlock(blocks_per_group, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def _trunk(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        stem = self.conv1(x)
        f1 = self.block1(stem)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        pooled = F.avg_pool2d(self.relu(self.bn1(f3)), 8).flatten(1)
        return stem, f1, f2, f3, pooled

    def forward_features(self, x: Tensor) -> Features:
        stem, f1, f2, f3, pooled = self._trunk(x)
        preact = [
            batch_norm_untracked(self.block2.layer[0].bn1, f1),
            batch_norm_untracked(self.block3.layer[0].bn1, f2),
            batch_norm_untracked(self.bn1, f3),
        ]
        stages = [f1, f2, f3]
        return Features(
            out=self.fc(pooled), stages=stages, preact_stages=preact, pooled=pooled, stem=stem
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self._trunk(x)[4])


@BACKBONES.register("cifar.wrn_16_1")
def wrn_16_1(num_classes: int = 100) -> WideResNet:
    return WideResNet(16, 1, num_classes)


@BACKBONES.register("cifar.wrn_16_2")
def wrn_16_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(16, 2, num_classes)


@BACKBONES.register("cifar.wrn_40_1")
def wrn_40_1(num_classes: int = 100) -> WideResNet:
    return WideResNet(40, 1, num_classes)


@BACKBONES.register("cifar.wrn_40_2")
def wrn_40_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(40, 2, num_classes)

