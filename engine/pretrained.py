"""Initial weights for a backbone that is then trained (e.g. ImageNet weights for scene models).

Unlike `load_network_weights`, the classifier may differ: a 1000-class ImageNet `fc` does not fit
a 67-class MIT67 model, so classifier tensors whose shapes differ are left at their fresh
initialisation (and logged). Every other tensor must match exactly.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from engine.checkpoint import convert_published, describe_mismatch, detect_source, load_checkpoint
from utility.errors import CheckpointError

log = logging.getLogger(__name__)

CLASSIFIER_PREFIXES = ("fc.", "classifier.", "linear.")


def load_pretrained_backbone(backbone: nn.Module, path: str | Path, source: str = "auto") -> None:
    """Load `path` into `backbone`, skipping only classifier tensors whose shapes differ."""
    raw = load_checkpoint(path)
    resolved = detect_source(raw) if source in ("auto", "distillery") else source
    state = convert_published(raw, resolved)
    own = backbone.state_dict()
    skipped = [k for k in state if k.startswith(CLASSIFIER_PREFIXES) and k in own
               and tuple(state[k].shape) != tuple(own[k].shape)]
    for key in skipped:
        state.pop(key)
        state[key] = own[key]
    problem = describe_mismatch(backbone, state)
    if problem:
        raise CheckpointError(f"{path}: pretrained weights do not fit {type(backbone).__name__}: {problem}")
    backbone.load_state_dict(state, strict=True)
    if skipped:
        log.info("%s: kept fresh classifier tensors %s (class count differs)", path, ", ".join(skipped))
