"""RepDistiller's CIFAR ShuffleNetV2 (`ShuffleV2`, net_size 1: widths 116/232/464, head 1024).

Keys and forward follow RepDistiller's `models/ShuffleNetv2.py` (same in mdistiller and ASKD): a 1x1
stem without max-pool, then three stages of one stride-2 DownBlock and 3/7/3 BasicBlocks that split
the channels in halves, transform the second half, concatenate [first half, result] and shuffle
with 2 groups. PyTorch's default initialisation, as in the reference.

Features (`forward_features`), input 3x32x32:
    stages        = [layer1, layer2, layer3 outputs] = 116@16, 232@8, 464@4 = rep `feat[1:4]`
    preact_stages = rep preact: concat[first half, branch before its final ReLU] of each stage's
                    last block, taken *before* the channel shuffle, so its channel order differs
                    from the stage's (shuffle(ReLU(preact)) == stage)
    pooled        = avg_pool(ReLU(bn2(conv2(layer3))), 4), flattened (1024) = rep `feat[-1]`
The stem output (rep `feat[0]`, 24@32) is not a stage.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models import BACKBONES
from models.cifar.resnet import run_stage
from models.cifar.shufflenetv1 import ShuffleBlock
from models.features import Features


class SplitBlock(nn.Module):
    """Split channels at int(C * ratio) into (first, second)."""

    def __init__(self, ratio: float):
        super().__init__()
        self.ratio = ratio

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c = int(x.size(1) * self.ratio)
        return x[:, :c], x[:, c:]


class ShuffleV2BasicBlock(nn.Module):
    """Keep the first half; 1x1-BN-ReLU, dw3x3-BN, 1x1-BN-ReLU on the second; concat; shuffle(2)."""

    def __init__(self, in_channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split = SplitBlock(split_ratio)
        half = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, stride=1, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.shuffle = ShuffleBlock(groups=2)

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kept, transformed = self.split(x)
        branch = F.relu(self.bn1(self.conv1(transformed)))
        branch = self.bn2(self.conv2(branch))
        branch_preact = self.bn3(self.conv3(branch))
        out = self.shuffle(torch.cat([kept, F.relu(branch_preact)], 1))
        return out, torch.cat([kept, branch_preact], 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_preact(x)[0]


class ShuffleV2DownBlock(nn.Module):
    """Two stride-2 branches, each ending in 1x1-BN-ReLU to out/2 channels; concat; shuffle(2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        # left branch: dw3x3 s2 - BN - 1x1 - BN - ReLU
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch: 1x1 - BN - ReLU - dw3x3 s2 - BN - 1x1 - BN - ReLU
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ShuffleBlock(groups=2)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 for 32x32 inputs; `out_channels` = three stage widths + head width."""

    def __init__(self, out_channels: tuple[int, int, int, int], num_blocks: tuple[int, int, int], num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers: list[nn.Module] = [ShuffleV2DownBlock(self.in_channels, out_channels)]
        layers += [ShuffleV2BasicBlock(out_channels) for _ in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Features:
        stem = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = run_stage(self.layer1, stem)
        f2, f2_pre = run_stage(self.layer2, f1)
        f3, f3_pre = run_stage(self.layer3, f2)
        pooled = F.avg_pool2d(F.relu(self.bn2(self.conv2(f3))), 4).flatten(1)
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


@BACKBONES.register("cifar.ShuffleV2")
def shuffle_v2(num_classes: int = 100) -> ShuffleNetV2:
    return ShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), num_classes)
