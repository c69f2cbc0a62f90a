"""`BatchRequest`: what a training batch must carry beyond `image`, `label` and `index`.

The distillers declare their needs (`kd.batch_request(cfg)` merges those of every method in
DISTILL.TYPE); the datasets, the loader and the training transform read the request and never a
method's name or keys. Evaluation datasets get the empty request.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from utility.errors import ConfigError

#: rules for drawing contrast negatives: "class" = every training sample of another class (CRD);
#: "dct_first_n" = only the first num_classes samples form the pools (the DCT repository's scene quirk)
CONTRAST_POOLS = ("class", "dct_first_n")
#: partner views: "" none, "shuffle" an in-batch permutation, "table" a same-identity sample from DATA.PARTNER_TABLE
PARTNER_MODES = ("", "shuffle", "table")


@dataclass(frozen=True)
class BatchRequest:
    """contrast_negatives: K > 0 adds `contrast_index` (K + 1 int64 per sample: the sample itself, then K
    negatives of other classes drawn by `contrast_pool`); partner: see PARTNER_MODES; teacher_view: the
    transform also returns `image_teacher` (the full-resolution view a teacher sees)."""

    contrast_negatives: int = 0
    contrast_pool: str = "class"
    partner: str = ""
    teacher_view: bool = True

    def __post_init__(self) -> None:
        if self.contrast_negatives < 0:
            raise ConfigError(f"the number of contrast negatives must be >= 0, got {self.contrast_negatives}")
        if self.contrast_pool not in CONTRAST_POOLS:
            raise ConfigError(f"contrast pool must be one of {list(CONTRAST_POOLS)}, got {self.contrast_pool!r}")
        if self.partner not in PARTNER_MODES:
            raise ConfigError(f"partner mode must be one of {list(PARTNER_MODES)}, got {self.partner!r}")

    def merge(self, other: BatchRequest) -> BatchRequest:
        """Both requests at once (methods combined with '+'); two different non-empty values of one
        field cannot both be served and are a ConfigError naming the field."""
        merged = {}
        empty = BatchRequest()
        for item in fields(self):
            mine, theirs = getattr(self, item.name), getattr(other, item.name)
            if item.name == "teacher_view":
                merged[item.name] = mine or theirs
            elif mine == getattr(empty, item.name) or mine == theirs:
                merged[item.name] = theirs
            elif theirs == getattr(empty, item.name):
                merged[item.name] = mine
            else:
                raise ConfigError(f"the combined methods need different batches: {item.name} {mine!r} and {theirs!r}")
        return replace(empty, **merged)


#: what plain training and every evaluation set get
NOTHING_EXTRA = BatchRequest(teacher_view=False)
