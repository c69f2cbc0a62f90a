"""`Network`: a backbone plus an optional margin/linear head, the unit a trainer optimises."""

from __future__ import annotations

from torch import Tensor, nn

from models.features import Features


class Network(nn.Module):
    """Backbone (+ head). `forward(x)` is the backbone's output (embedding or logits), so plain
    inference and export stay ordinary; `logits(out, labels)` applies the head when there is one."""

    def __init__(self, backbone: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def forward_features(self, x: Tensor) -> Features:
        return self.backbone.forward_features(x)

    def logits(self, out: Tensor, labels: Tensor | None = None) -> Tensor:
        """Class logits: the head's (margin at `labels` when given) or the backbone output itself."""
        return out if self.head is None else self.head(out, labels)
