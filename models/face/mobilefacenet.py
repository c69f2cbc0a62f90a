"""MobileFaceNet exactly as AdaDistill defines its student (spec adadistill.md §1.1).

Not insightface's `mbf` and not F-SKD's `mbf_large`: widths 64/64/128/128 with expansions
128/128/256/512/256, a true depthwise second conv, a GDC head ending in a BatchNorm1d without
affine parameters. 1,199,488 parameters; keys, order and shapes equal
`spec/keys/adadistill_mobilefacenet.json`, so AdaDistill checkpoints load with `strict=True`.

`forward_features().stages` are the last maps at each resolution (112x112 input):
`conv2_dw` 64@56, `conv_3` 64@28, `conv_4` 128@14 and `conv_6_sep` 512@7 (the map the GDC head
pools); `pooled` is the flattened 512-d output of the global depthwise conv, before `linear`.
"""

from __future__ import annotations

from torch import Tensor, nn

from models import BACKBONES
from models.features import Features
from utility.errors import ConfigError


class LinearBlock(nn.Module):
    """Conv (no bias) + BN, no activation."""

    def __init__(self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_c)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class ConvBlock(LinearBlock):
    """Conv (no bias) + BN + per-channel PReLU."""

    def __init__(self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1) -> None:
        super().__init__(in_c, out_c, kernel, stride, padding, groups)
        self.prelu = nn.PReLU(out_c)

    def forward(self, x: Tensor) -> Tensor:
        return self.prelu(self.bn(self.conv(x)))


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to `expansion` -> 3x3 depthwise (stride) -> 1x1 project,
    plus the input when `residual` (no activation after the sum)."""

    def __init__(self, in_c: int, out_c: int, expansion: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.conv = ConvBlock(in_c, expansion, 1, 1, 0)
        self.conv_dw = ConvBlock(expansion, expansion, 3, stride, 1, groups=expansion)
        self.project = LinearBlock(expansion, out_c, 1, 1, 0)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class Residual(nn.Module):
    """`num_blocks` residual DepthWise blocks at constant width (keys `model.{i}`)."""

    def __init__(self, channels: int, num_blocks: int, expansion: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            *[DepthWise(channels, channels, expansion, 1, residual=True) for _ in range(num_blocks)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class GDC(nn.Module):
    """Global depthwise 7x7 conv + BN -> flatten -> Linear (no bias) -> BatchNorm1d without affine."""

    def __init__(self, channels: int, embedding_size: int) -> None:
        super().__init__()
        self.conv_6_dw = LinearBlock(channels, channels, 7, 1, 0, groups=channels)
        self.linear = nn.Linear(channels, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size, affine=False)

    def pool(self, x: Tensor) -> Tensor:
        return self.conv_6_dw(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.linear(self.pool(x)))


class MobileFaceNet(nn.Module):
    """AdaDistill's MobileFaceNet student for 112x112 faces; `model(x)` is the raw embedding."""

    def __init__(self, num_features: int = 512) -> None:
        super().__init__()
        self.conv1 = ConvBlock(3, 64, 3, 2, 1)
        self.conv2_dw = ConvBlock(64, 64, 3, 1, 1, groups=64)
        self.conv_23 = DepthWise(64, 64, 128, 2, residual=False)
        self.conv_3 = Residual(64, 4, 128)
        self.conv_34 = DepthWise(64, 128, 256, 2, residual=False)
        self.conv_4 = Residual(128, 6, 256)
        self.conv_45 = DepthWise(128, 128, 512, 2, residual=False)
        self.conv_5 = Residual(128, 2, 256)
        self.conv_6_sep = ConvBlock(128, 512, 1, 1, 0)
        self.output_layer = GDC(512, num_features)
        self._init_weights()

    def _init_weights(self) -> None:
        """Conv and Linear: kaiming-normal (fan_out, relu); BN2d: 1/0 (reference `initialize_weights`)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).out

    def forward_features(self, x: Tensor) -> Features:
        stage56 = self.conv2_dw(self.conv1(x))
        stage28 = self.conv_3(self.conv_23(stage56))
        stage14 = self.conv_4(self.conv_34(stage28))
        stage7 = self.conv_6_sep(self.conv_5(self.conv_45(stage14)))
        pooled = self.output_layer.pool(stage7)
        out = self.output_layer.bn(self.output_layer.linear(pooled))
        stages = [stage56, stage28, stage14, stage7]
        return Features(out=out, stages=stages, pooled=pooled)


@BACKBONES.register("face.mobilefacenet")
def mobilefacenet(num_features: int = 512, dropout: float = 0.0, attention: str = "none",
                  pooling: str = "E", hints: bool = False, hint_bn: bool = True) -> MobileFaceNet:
    """AdaDistill's MobileFaceNet. Takes the common face-backbone keywords but has no attention,
    pooling choice, dropout or hint layers, so asking for them is a configuration error
    (`hint_bn` only matters with hints and is ignored)."""
    if attention != "none":
        raise ConfigError(f"face.mobilefacenet has no attention modules; set ATTENTION 'none' (got '{attention}')")
    if pooling != "E":
        raise ConfigError(f"face.mobilefacenet always ends in its GDC head; set POOLING 'E' (got '{pooling}')")
    if hints:
        raise ConfigError("face.mobilefacenet has no F-SKD hint layers; set HINTS False")
    if dropout != 0.0:
        raise ConfigError(f"face.mobilefacenet has no dropout; set DROPOUT 0.0 (got {dropout})")
    return MobileFaceNet(num_features=num_features)


__all__ = ["ConvBlock", "DepthWise", "GDC", "LinearBlock", "MobileFaceNet", "Residual", "mobilefacenet"]
