"""Turn published CIFAR checkpoints (RepDistiller, mdistiller, ASKD, DCT's CIFAR ResNets) into our state dicts.

Distillery's `cifar.*` models use the reference key names, so conversion only removes packaging:
the checkpoint wrapper (`{'model': sd, 'epoch': ..., ...}` as RepDistiller and mdistiller save,
`{'state_dict': sd}`, or DCT's `{'model_state_dict': sd}`) and the `module.` prefix that
`DataParallel`/DDP adds. Names are otherwise kept as they are (also a RepDistiller `CRDLoss` state
dict's `embed_s.*`, `embed_t.*`, `contrast.*`) and nothing is resized; a layout that does not fit
the model is reported by the strict load.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from utility.errors import CheckpointError

# wrapper keys under which published training scripts store the model's state dict, in lookup order
STATE_DICT_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The state dict inside a checkpoint object (or the object itself when it is one already).

    Follows nested wrappers (e.g. `{'state_dict': {'model': sd}}`) until every value is a tensor.
    Raises CheckpointError when no state dict can be found.
    """
    current: Any = checkpoint
    for _ in range(len(STATE_DICT_WRAPPER_KEYS) + 1):
        if not isinstance(current, Mapping):
            break
        if current and all(isinstance(value, Tensor) for value in current.values()):
            return dict(current)
        inner = next((current[key] for key in STATE_DICT_WRAPPER_KEYS if isinstance(current.get(key), Mapping)), None)
        if inner is None:
            break
        current = inner
    keys = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
    raise CheckpointError(
        f"no state dict found in checkpoint (top-level keys: {keys}); expected a mapping of tensors, "
        f"possibly under one of {list(STATE_DICT_WRAPPER_KEYS)}"
    )


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """Drop `prefix` from every key that starts with it, keeping the order."""
    return {(key[len(prefix) :] if key.startswith(prefix) else key): value for key, value in state_dict.items()}


def convert_repdistiller(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """A RepDistiller / mdistiller / ASKD checkpoint (or bare state dict) as a `cifar.*` state dict."""
    return strip_prefix(unwrap_state_dict(checkpoint))
