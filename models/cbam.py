"""Convolutional block attention (CBAM) in the two flavours the face KD papers use.

`CBAM` is the Park/Woo ("Jongchan") implementation that F-SKD's iResNet carries
(`attention="cbam"`); `ASKDCBAM` is the variant of A-SKD's CBAMResNet (teaching-where-to-look,
`attention="cbam_a_skd"`). They differ in every detail that matters for distillation (spec
face.md §1.1-1.2):

| | `CBAM` (F-SKD) | `ASKDCBAM` (A-SKD) |
|---|---|---|
| channel MLP | Linear, with bias | 1x1 Conv, no bias |
| spatial pool order | [max_c, mean_c] | [mean_c, max_c] |
| spatial conv | 7x7 + BN(momentum 0.01) | 3x3, no BN |
| distilled maps | gates after the sigmoid | logits before the sigmoid |

Both return `(x * Mc * Ms, (Mc, Ms), (a, b))`: the gated tensor, the gates after the sigmoid and
the logits before it, so a distiller can pick either without hooks. Shapes are the same for both
flavours: channel maps B x C x 1 x 1, spatial maps B x 1 x H x W (F-SKD's own code hands the
channel gate out as B x C; the A-SKD/F-SKD losses flatten every map per sample, so the extra unit
dimensions change nothing). Parameter names follow the published state dicts: `CBAM` keys are
`ChannelGate.mlp.{1,3}` and `SpatialGate.spatial.{conv,bn}` as in F-SKD checkpoints; `ASKDCBAM`
uses `channel_mlp.{0,2}` and `spatial_conv`, renamed from/to A-SKD's `channel_layer.shared_mlp`
and `spatial_layer.conv` by `models/face/published.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AttentionPair = tuple[Tensor, Tensor]



def hidden_width(channels: int, reduction: int) -> int:
    """Bottleneck width of the channel MLP: C / r as published (at least one unit for the narrow
    demo networks, whose 8-channel stages would otherwise have none)."""
    return max(1, channels // reduction)

class ChannelGate(nn.Module):
    """F-SKD channel attention: shared Linear MLP over the average- and max-pooled channels."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        # Index 0 is the flatten so the Linear layers sit at mlp.1 / mlp.3, the published key names.
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, hidden_width(channels, reduction)),
            nn.ReLU(),
            nn.Linear(hidden_width(channels, reduction), channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Channel logits, B x C x 1 x 1 (pooling over the full window, as the reference)."""
        window = (x.shape[2], x.shape[3])
        average = F.avg_pool2d(x, window, stride=window)
        maximum = F.max_pool2d(x, window, stride=window)
        logits = self.mlp(average) + self.mlp(maximum)
        return logits[:, :, None, None]


class SpatialConvBN(nn.Module):
    """7x7 conv (no bias) + BN with momentum 0.01 and no activation: the reference `BasicConv`."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, stride=1, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class SpatialGate(nn.Module):
    """F-SKD spatial attention over the [max_c, mean_c] channel pool (max first)."""

    def __init__(self) -> None:
        super().__init__()
        self.spatial = SpatialConvBN(7)

    def forward(self, x: Tensor) -> Tensor:
        """Spatial logits, B x 1 x H x W."""
        pooled = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
        return self.spatial(pooled)


class CBAM(nn.Module):
    """F-SKD / Jongchan CBAM: x <- x * sigmoid(channel), then x <- x * sigmoid(spatial)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.ChannelGate = ChannelGate(channels, reduction)
        self.SpatialGate = SpatialGate()

    def forward(self, x: Tensor) -> tuple[Tensor, AttentionPair, AttentionPair]:
        channel_logit = self.ChannelGate(x)
        channel_gate = torch.sigmoid(channel_logit)
        x = x * channel_gate
        spatial_logit = self.SpatialGate(x)
        spatial_gate = torch.sigmoid(spatial_logit)
        return x * spatial_gate, (channel_gate, spatial_gate), (channel_logit, spatial_logit)


class ASKDCBAM(nn.Module):
    """A-SKD (TWTL) CBAM: bias-free 1x1-conv MLP, [mean_c, max_c] pool, 3x3 spatial conv, no BN."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.channel_mlp = nn.Sequential(
            nn.Conv2d(channels, hidden_width(channels, reduction), kernel_size=1, padding=0, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden_width(channels, reduction), channels, kernel_size=1, padding=0, bias=False),
        )
        self.spatial_conv = nn.Conv2d(2, 1, kernel_size=3, padding=1, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, AttentionPair, AttentionPair]:
        channel_logit = self.channel_mlp(F.adaptive_avg_pool2d(x, 1)) + self.channel_mlp(
            F.adaptive_max_pool2d(x, 1)
        )
        channel_gate = torch.sigmoid(channel_logit)
        x = x * channel_gate
        pooled = torch.cat((torch.mean(x, 1, True), torch.max(x, 1, True)[0]), dim=1)
        spatial_logit = self.spatial_conv(pooled)
        spatial_gate = torch.sigmoid(spatial_logit)
        return x * spatial_gate, (channel_gate, spatial_gate), (channel_logit, spatial_logit)


__all__ = ["AttentionPair", "ASKDCBAM", "CBAM", "ChannelGate", "SpatialConvBN", "SpatialGate"]
