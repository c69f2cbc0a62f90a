"""Turn published ImageNet-style checkpoints (torchvision ImageNet weights, DCT-attention scene models)
into `imagenet.*` state dicts.

Distillery's `imagenet.*` models keep torchvision's key names (classification.md §1.2, decision f), and
the DCT repository's models are key-identical, so conversion only removes packaging: a checkpoint
wrapper (DCT saves `{'model_state_dict': sd, ...}`; also `model` / `state_dict`) and the `module.`
prefix of `DataParallel`/DDP. Nothing is renamed or resized: a classifier trained for another number
of classes is reported by the strict load, and replacing it is the caller's decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from models.cifar.published import strip_prefix, unwrap_state_dict


def convert_torchvision(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """A torchvision / DCT-attention checkpoint (or bare state dict) as an `imagenet.*` state dict."""
    return strip_prefix(unwrap_state_dict(checkpoint))
