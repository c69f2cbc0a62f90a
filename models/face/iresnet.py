"""iResNet face backbones (insightface / AdaDistill / F-SKD layout), optionally with CBAM.

One class covers every published variant the face KD papers use (spec face.md §1, adadistill.md
§1.2), so a checkpoint of any of them loads with `strict=True`:

- `attention="none"`: insightface / AdaDistill / F-SKD `ir` iResNet;
- `attention="cbam"`: F-SKD's Jongchan CBAM on the residual branch of every block;
- `attention="cbam_a_skd"`: A-SKD's CBAMResNet (module for module the same network with its own
  CBAM). Its published names differ (`input_layer`, `res_layer`, ...); `models/face/published.py`
  renames them. As in A-SKD, the final BatchNorm1d `features` is trainable and the weights start
  xavier-uniform; the A-SKD dropout of 0.4 comes from the config (`DROPOUT`), not from here.
- `pooling="E"`: bn2 -> flatten in (C, H, W) order -> dropout -> fc -> BN1d `features` (weight
  frozen at 1 except for `cbam_a_skd`); `pooling="A"`: global average pooling of layer 4 (F-SKD v1,
  no head keys; the embedding is then 512-d).
- `hints=True`: F-SKD student hint layers (1x1 conv [+ BN]) after each stage. They are part of the
  student: `forward_features().stages` holds the hinted maps (what F-SKD and FitNet distil) while the
  trunk continues on the raw ones.

State-dict keys, their order and shapes equal the published F-SKD / insightface / AdaDistill files
(`spec/keys/f_skd_iresnet*.json`, `adadistill_iresnet*.json`). Stage outputs at 112x112 input:
64@56, 128@28, 256@14, 512@7 (every stage starts with stride 2).
"""

from __future__ import annotations

from torch import Tensor, nn

from models import BACKBONES
from models.cbam import ASKDCBAM, CBAM, AttentionPair
from models.features import Features
from utility.errors import ConfigError

ATTENTION_TYPES = ("none", "cbam", "cbam_a_skd")
POOLING_TYPES = ("E", "A")
PUBLISHED_WIDTH = 64  # stem / first-stage width of every published iResNet


def stage_widths(width: int) -> tuple[int, int, int, int]:
    """Stage widths for a base width (64 -> 64, 128, 256, 512: the published networks)."""
    return (width, 2 * width, 4 * width, 8 * width)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-BN residual block: BN-conv-BN-PReLU-conv(stride)-BN, optional CBAM on the residual,
    plus the (projected) shortcut; no activation after the addition.

    `forward` returns `(out, gates, logits)`; the last two are `(channel, spatial)` pairs for CBAM
    blocks and None otherwise. Returning the maps (instead of hooking them) keeps the block
    stateless and `torch.compile` friendly.
    """

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None,
                 attention: str) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        # Registration order = state-dict order: F-SKD puts the attention after the shortcut,
        # A-SKD before it (so A-SKD checkpoints convert by renaming alone).
        if attention == "cbam_a_skd":
            self.attention = ASKDCBAM(planes, 16)
            self.downsample = downsample
        else:
            self.downsample = downsample
            self.attention = CBAM(planes, 16) if attention == "cbam" else None

    def forward(self, x: Tensor) -> tuple[Tensor, AttentionPair | None, AttentionPair | None]:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        gates = logits = None
        if self.attention is not None:
            out, gates, logits = self.attention(out)
        return out + identity, gates, logits


class IResNetStage(nn.Sequential):
    """A stage of blocks (keys `layerN.j.*`) that also collects each block's attention maps."""

    def forward(self, x: Tensor) -> tuple[Tensor, list[AttentionPair], list[AttentionPair]]:
        gates: list[AttentionPair] = []
        logits: list[AttentionPair] = []
        for block in self:
            x, block_gates, block_logits = block(x)
            if block_gates is not None:
                gates.append(block_gates)
                logits.append(block_logits)
        return x, gates, logits


class HintLayer(nn.Module):
    """F-SKD student hint: 1x1 conv (C -> C, no bias) [+ BN]; keys `hint`, `bn`."""

    def __init__(self, channels: int, bn: bool) -> None:
        super().__init__()
        self.hint = nn.Conv2d(channels, channels, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(channels, eps=1e-5) if bn else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.hint(x)
        return out if self.bn is None else self.bn(out)


class IResNet(nn.Module):
    """iResNet for 112x112 faces; `model(x)` is the embedding, `forward_features(x)` the details."""

    def __init__(self, layers: list[int], num_features: int = 512, dropout: float = 0.0,
                 attention: str = "none", pooling: str = "E", hints: bool = False,
                 hint_bn: bool = True, width: int = PUBLISHED_WIDTH) -> None:
        super().__init__()
        _check_options(attention, pooling, num_features, dropout, width)
        widths = stage_widths(width)
        self.attention_type = attention
        self.pooling = pooling
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=1e-5)
        self.prelu = nn.PReLU(width)
        inplanes = width
        for index, (planes, depth) in enumerate(zip(widths, layers), start=1):
            self.add_module(f"layer{index}", _make_stage(inplanes, planes, depth, attention))
            inplanes = planes
        self.hints = hints
        if hints:
            for index, planes in enumerate(widths, start=1):
                self.add_module(f"hint_layer{index}", HintLayer(planes, hint_bn))
        if pooling == "E":
            self.bn2 = nn.BatchNorm2d(widths[-1], eps=1e-5)
            self.dropout = nn.Dropout(p=dropout)
            self.fc = nn.Linear(widths[-1] * 7 * 7, num_features)
            self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        self._init_weights()

    def _init_weights(self) -> None:
        """A-SKD: xavier-uniform convs and linears, trainable BN1d. F-SKD / insightface: convs
        N(0, 0.1^2), linears keep PyTorch's default, `features.weight` fixed at 1 and frozen."""
        for module in self.modules():
            if self.attention_type == "cbam_a_skd" and isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.pooling == "E" and self.attention_type != "cbam_a_skd":
            self.features.weight.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).out

    def forward_features(self, x: Tensor) -> Features:
        """Embedding plus stage maps (hinted and raw), pooled vector and CBAM maps.

        `attention` / `attention_logits` hold one (channel B x C x 1 x 1, spatial B x 1 x H x W)
        pair per block in execution order (24 for r50), after / before the sigmoid.
        """
        x = self.prelu(self.bn1(self.conv1(x)))
        stages: list[Tensor] = []
        gates: list[AttentionPair] = []
        logits: list[AttentionPair] = []
        for index, stage in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            x, stage_gates, stage_logits = stage(x)
            gates.extend(stage_gates)
            logits.extend(stage_logits)
            stages.append(getattr(self, f"hint_layer{index}")(x) if self.hints else x)
        if self.pooling == "A":
            pooled = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
            out = pooled
        else:
            pooled = self.dropout(self.bn2(x).flatten(1))
            out = self.features(self.fc(pooled))
        return Features(out=out, stages=stages, pooled=pooled, attention=gates,
                        attention_logits=logits)


def _check_options(attention: str, pooling: str, num_features: int, dropout: float, width: int) -> None:
    if width < 1:
        raise ConfigError(f"WIDTH must be positive (64 = the published networks), got {width}")
    if attention not in ATTENTION_TYPES:
        raise ConfigError(f"ATTENTION '{attention}' is not an iResNet option; use one of {ATTENTION_TYPES}")
    if pooling not in POOLING_TYPES:
        raise ConfigError(f"POOLING '{pooling}' is not an iResNet option; use 'E' (BN-FC-BN) or 'A' (GAP)")
    if pooling == "A" and num_features != 8 * width:
        raise ConfigError(f"POOLING 'A' gives the {8 * width}-d average of layer 4; set EMBEDDING_SIZE "
                          f"{8 * width} (got {num_features}) or use POOLING 'E'")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"DROPOUT must be in [0, 1), got {dropout}")


def _make_stage(inplanes: int, planes: int, depth: int, attention: str) -> IResNetStage:
    """First block strides by 2 with a projection shortcut; the shortcut is built before the block,
    as in the reference, so the same seed gives the same initial weights."""
    downsample = nn.Sequential(
        nn.Conv2d(inplanes, planes, kernel_size=1, stride=2, bias=False),
        nn.BatchNorm2d(planes, eps=1e-5),
    )
    blocks = [IBasicBlock(inplanes, planes, 2, downsample, attention)]
    blocks += [IBasicBlock(planes, planes, 1, None, attention) for _ in range(1, depth)]
    return IResNetStage(*blocks)


def _register(name: str, layers: list[int]) -> None:
    def build(num_features: int = 512, dropout: float = 0.0, attention: str = "none",
              pooling: str = "E", hints: bool = False, hint_bn: bool = True,
              width: int = PUBLISHED_WIDTH) -> IResNet:
        return IResNet(layers, num_features=num_features, dropout=dropout, attention=attention,
                       pooling=pooling, hints=hints, hint_bn=hint_bn, width=width)

    build.__name__ = name.replace("face.", "")
    build.__doc__ = f"{name}: iResNet with stage depths {layers} (see `IResNet`)."
    BACKBONES.register(name)(build)


_register("face.iresnet18", [2, 2, 2, 2])
_register("face.iresnet34", [3, 4, 6, 3])
_register("face.iresnet50", [3, 4, 14, 3])
_register("face.iresnet100", [3, 13, 30, 3])

__all__ = ["HintLayer", "IBasicBlock", "IResNet", "IResNetStage"]
