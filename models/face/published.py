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

# A-SKD (teaching-where-to-look CBAMResNet) module names and ours, as (inside a block?, A-SKD, ours).
# Both directions of the conversion are generated from this one table.
_A_SKD_NAMES = (
    (False, "input_layer.0.", "conv1."),
    (False, "input_layer.1.", "bn1."),
    (False, "input_layer.2.", "prelu."),
    (True, "res_layer.0.", "bn1."),
    (True, "res_layer.1.", "conv1."),
    (True, "res_layer.2.", "bn2."),
    (True, "res_layer.3.", "prelu."),
    (True, "res_layer.4.", "conv2."),
    (True, "res_layer.5.", "bn3."),
    (True, "channel_layer.shared_mlp.0.", "attention.channel_mlp.0."),
    (True, "channel_layer.shared_mlp.2.", "attention.channel_mlp.2."),
    (True, "spatial_layer.conv.", "attention.spatial_conv."),
    (True, "shortcut_layer.0.", "downsample.0."),
    (True, "shortcut_layer.1.", "downsample.1."),
    (False, "output_layer.0.", "bn2."),
    (False, "output_layer.3.", "fc."),
    (False, "output_layer.4.", "features."),
)
_BLOCK = r"^(layer\d+\.\d+\.)"


def _rename_table(to_ours: bool) -> tuple[tuple[str, str], ...]:
    """(regex, replacement) pairs renaming A-SKD keys to ours (`to_ours`) or ours to A-SKD."""
    table = []
    for in_block, theirs, ours in _A_SKD_NAMES:
        source, target = (theirs, ours) if to_ours else (ours, theirs)
        prefix, keep = (_BLOCK, r"\1") if in_block else ("^", "")
        table.append((prefix + re.escape(source), keep + target))
    return tuple(table)


_A_SKD_TO_OURS = _rename_table(to_ours=True)
_OURS_TO_A_SKD = _rename_table(to_ours=False)

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
