"""`Features`: what every backbone's `forward_features` returns.

Features are returned rather than captured with hooks, so the same code runs under
`torch.compile` and DDP. Fields a backbone does not have stay empty (`[]` or `None`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields

from torch import Tensor


@dataclass
class Features:
    """Mapping-like record of one forward pass.

    out:              the primary output, identical to `model(x)` (face embedding or class logits)
    stages:           stage outputs, N x C x H x W, shallow to deep (F-SKD students: after the hints)
    preact_stages:    the same stages before their final ReLU, where a method needs it (CIFAR zoo)
    pooled:           the penultimate vector (before the classifier / embedding FC)
    attention:        CBAM models: per block (channel gate, spatial gate) after the sigmoid
    attention_logits: CBAM models: the same maps before the sigmoid (A-SKD distils these)
    stem:             the stem's output before the first stage (CIFAR zoo: RepDistiller's `feat[0]`; FSP reads it)
    """

    out: Tensor
    stages: list[Tensor] = field(default_factory=list)
    preact_stages: list[Tensor] = field(default_factory=list)
    pooled: Tensor | None = None
    attention: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    attention_logits: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    stem: Tensor | None = None

    def __getitem__(self, key: str):
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())
