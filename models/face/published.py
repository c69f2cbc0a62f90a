"""Key mapping between published face checkpoints and Distillery's face models.

Pure functions on state dicts (ordered key -> tensor), used by `engine/checkpoint.py:
convert_published` for the sources `a_skd`, `f_skd`, `insightface` and `adadistill`. Where the
published names already equal ours (F-SKD, insightface, AdaDistill iResNets and MobileFaceNet) the
mapping only strips a DataParallel/DDP `module.` prefix and drops keys that belong to no Distillery
model; A-SKD's CBAMResNet is renamed module for module (spec face.md §1.1) and back. Key order is
kept, so a converted dict has the order of our own `state_dict()`.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping

from torch import Tensor

from utility.errors import CheckpointError, ConfigError

StateDict = Mapping[str, Tensor]

# A-SKD (teaching-where-to-look CBAMResNet) name -> our iResNet name, as (pattern, replacement).
_A_SKD_TO_OURS = (
    (r"^input_layer\.0\.", "conv1."),
    (r"^input_layer\.1\.", "bn1."),
    (r"^input_layer\.2\.", "prelu."),
    (r"^(layer\d+\.\d+\.)res_layer\.0\.", r"\1bn1."),
    (r"^(layer\d+\.\d+\.)res_layer\.1\.", r"\1conv1."),
    (r"^(layer\d+\.\d+\.)res_layer\.2\.", r"\1bn2."),
    (r"^(layer\d+\.\d+\.)res_layer\.3\.", r"\1prelu."),
    (r"^(layer\d+\.\d+\.)res_layer\.4\.", r"\1conv2."),
    (r"^(layer\d+\.\d+\.)res_layer\.5\.", r"\1bn3."),
    (r"^(layer\d+\.\d+\.)channel_layer\.shared_mlp\.(0|2)\.", r"\1attention.channel_mlp.\2."),
    (r"^(layer\d+\.\d+\.)spatial_layer\.conv\.", r"\1attention.spatial_conv."),
    (r"^(layer\d+\.\d+\.)shortcut_layer\.(0|1)\.", r"\1downsample.\2."),
    (r"^output_layer\.0\.", "bn2."),
    (r"^output_layer\.3\.", "fc."),
    (r"^output_layer\.4\.", "features."),
)

# Our name -> A-SKD name: the inverse of the table above.
_OURS_TO_A_SKD = (
    (r"^conv1\.", "input_layer.0."),
    (r"^bn1\.", "input_layer.1."),
    (r"^prelu\.", "input_layer.2."),
    (r"^(layer\d+\.\d+\.)bn1\.", r"\1res_layer.0."),
    (r"^(layer\d+\.\d+\.)conv1\.", r"\1res_layer.1."),
    (r"^(layer\d+\.\d+\.)bn2\.", r"\1res_layer.2."),
    (r"^(layer\d+\.\d+\.)prelu\.", r"\1res_layer.3."),
    (r"^(layer\d+\.\d+\.)conv2\.", r"\1res_layer.4."),
    (r"^(layer\d+\.\d+\.)bn3\.", r"\1res_layer.5."),
    (r"^(layer\d+\.\d+\.)attention\.channel_mlp\.(0|2)\.", r"\1channel_layer.shared_mlp.\2."),
    (r"^(layer\d+\.\d+\.)attention\.spatial_conv\.", r"\1spatial_layer.conv."),
    (r"^(layer\d+\.\d+\.)downsample\.(0|1)\.", r"\1shortcut_layer.\2."),
    (r"^bn2\.", "output_layer.0."),
    (r"^fc\.", "output_layer.3."),
    (r"^features\.", "output_layer.4."),
)

# Heads whose published `weight` is stored (in_features, num_classes), the transpose of ours.
_TRANSPOSED_WEIGHT_HEADS = ("adaface", "magface")
_HEAD_KINDS = ("arcface", "cosface", "adaface", "magface", "linear")


def strip_module_prefix(state_dict: StateDict) -> OrderedDict[str, Tensor]:
    """Drop the `module.` prefix DataParallel / DDP adds to every key (when all keys have it)."""
    keys = list(state_dict)
    if keys and all(key.startswith("module.") for key in keys):
        return OrderedDict((key[len("module."):], value) for key, value in state_dict.items())
    return OrderedDict(state_dict.items())


def _rename(state_dict: StateDict, table: tuple[tuple[str, str], ...], source: str) -> OrderedDict[str, Tensor]:
    renamed: OrderedDict[str, Tensor] = OrderedDict()
    for key, value in state_dict.items():
        for pattern, replacement in table:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                renamed[new_key] = value
                break
        else:
            raise CheckpointError(
                f"key '{key}' has no counterpart in the {source} layout; is this checkpoint an "
                f"iResNet with attention 'cbam_a_skd' (A-SKD CBAMResNet) without hint layers?"
            )
    return renamed


def from_a_skd(state_dict: StateDict) -> OrderedDict[str, Tensor]:
    """A-SKD (teaching-where-to-look) `CBAMResNet` keys -> `face.iresnetN(attention="cbam_a_skd")`."""
    return _rename(strip_module_prefix(state_dict), _A_SKD_TO_OURS, "A-SKD -> Distillery")


def to_a_skd(state_dict: StateDict) -> OrderedDict[str, Tensor]:
    """`face.iresnetN(attention="cbam_a_skd")` keys -> A-SKD `CBAMResNet` keys (same order)."""
    return _rename(strip_module_prefix(state_dict), _OURS_TO_A_SKD, "Distillery -> A-SKD")


def from_f_skd(state_dict: StateDict) -> OrderedDict[str, Tensor]:
    """F-SKD iResNet: names agree with ours; QualNet's `conv_bridge.*` (not a Distillery module) is
    dropped, student `hint_layer*` keys are kept (load them into a model built with hints)."""
    return OrderedDict(
        (key, value) for key, value in strip_module_prefix(state_dict).items()
        if not key.startswith("conv_bridge.")
    )


def from_insightface(state_dict: StateDict) -> OrderedDict[str, Tensor]:
    """insightface arcface_torch iResNet: names agree with ours; only a `module.` prefix goes."""
    return strip_module_prefix(state_dict)


def from_adadistill(state_dict: StateDict) -> OrderedDict[str, Tensor]:
    """AdaDistill iResNet / MobileFaceNet: names agree with ours; only a `module.` prefix goes."""
    return strip_module_prefix(state_dict)


def head_from_published(state_dict: StateDict, kind: str) -> OrderedDict[str, Tensor]:
    """A published margin-head state dict -> ours for head `kind` (a `models.HEADS` name).

    Our heads store `weight` as (num_classes, in_features). A `kernel` (AdaFace's original code,
    AdaDistill's `header.pth`) is always (in_features, num_classes) and becomes the transposed
    `weight`; F-SKD's AdaFace and MagFace store that orientation under `weight`, transposed too.
    Other entries (AdaFace's `t`, `batch_mean`, `batch_std`; a linear head's `bias`) pass unchanged.
    """
    if kind not in _HEAD_KINDS:
        raise ConfigError(f"unknown head kind '{kind}' for a published head; use one of {_HEAD_KINDS}")
    published = strip_module_prefix(state_dict)
    converted: OrderedDict[str, Tensor] = OrderedDict()
    for key, value in published.items():
        if key == "kernel":
            if "weight" in published:
                raise CheckpointError("published head holds both 'kernel' and 'weight'; expected one of them")
            converted["weight"] = value.t().contiguous()
        elif key == "weight" and kind in _TRANSPOSED_WEIGHT_HEADS:
            converted["weight"] = value.t().contiguous()
        else:
            converted[key] = value
    return converted


__all__ = [
    "from_a_skd",
    "from_adadistill",
    "from_f_skd",
    "from_insightface",
    "head_from_published",
    "strip_module_prefix",
    "to_a_skd",
]
