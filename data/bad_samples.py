"""Undecodable training samples: skipped and counted, deterministically, up to a ceiling.

One damaged JPEG in a day-long run should cost one sample, not the run. `SkipBadSamples` wraps a
training dataset: when a sample raises `DataError` (an undecodable image, a truncated record), the
next index in file order is used instead, so the substitute depends only on the index and a
resumed run sees exactly the batches the uninterrupted one saw, whatever the number of workers.
Each item carries how many records were skipped to produce it and what was wrong with them.

`BadSampleCounter` (in the main process) takes those fields out of every batch, logs them, keeps
the totals (saved in checkpoints) and stops the run with one line naming the file and records
when the data is damaged rather than unlucky: more than MAX_IN_A_ROW bad records in a row, or more
skipped samples than MAX_FRACTION of the samples seen (judged once MAX_IN_A_ROW samples have been
skipped, so that a small set with one bad image is not stopped in its first batch).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import Dataset

from utility.errors import DataError

log = logging.getLogger(__name__)

MAX_IN_A_ROW = 20
MAX_FRACTION = 0.001
SKIPPED = "skipped"
SKIPPED_RECORDS = "skipped_records"
_KEEP_RECORDS = 20  # descriptions kept for the log, the checkpoint and run.json


def _same_epoch(index: int, value: int) -> int:
    """`value` as the same kind of index as `index` (a SampleIndex keeps its epoch)."""
    epoch = getattr(index, "epoch", None)
    if epoch is None:
        return value
    return type(index)(value, epoch)


class SkipBadSamples(Dataset):
    """`dataset` with undecodable samples replaced by the next good one in index order."""

    def __init__(self, dataset: Dataset, max_in_a_row: int = MAX_IN_A_ROW) -> None:
        self.dataset = dataset
        self.max_in_a_row = max_in_a_row

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        problems: list[str] = []
        size = len(self.dataset)
        for offset in range(self.max_in_a_row + 1):
            candidate = _same_epoch(index, (int(index) + offset) % size)
            try:
                item = self.dataset[candidate]
            except DataError as exc:
                problems.append(str(exc))
                continue
            item[SKIPPED] = len(problems)
            item[SKIPPED_RECORDS] = " | ".join(problems)
            return item
        raise DataError(
            f"{len(problems)} undecodable samples in a row from index {int(index)} ({problems[0]} ... "
            f"{problems[-1]}); the data is damaged: repair or re-extract it"
        )


def without_skip_fields(batch: dict[str, Any]) -> dict[str, Any]:
    """`batch` without the fields `SkipBadSamples` adds (for callers that do not count them)."""
    if SKIPPED not in batch:
        return batch
    return {key: value for key, value in batch.items() if key not in (SKIPPED, SKIPPED_RECORDS)}


class BadSampleCounter:
    """Totals of skipped samples over the run, and the ceiling past which the run stops."""

    def __init__(self, max_in_a_row: int = MAX_IN_A_ROW, max_fraction: float = MAX_FRACTION) -> None:
        self.max_in_a_row = max_in_a_row
        self.max_fraction = max_fraction
        self.skipped = 0
        self.seen = 0
        self.records: list[str] = []

    def take(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Remove the skip fields from `batch` and count them (the caller asks `check` when to stop:
        under DDP all ranks must stop together)."""
        if SKIPPED not in batch:
            return batch
        batch = dict(batch)
        counts = batch.pop(SKIPPED)
        notes = batch.pop(SKIPPED_RECORDS, [])
        counts = counts.tolist() if torch.is_tensor(counts) else list(counts)
        self.seen += len(counts)
        skipped = int(sum(counts))
        if skipped:
            self.skipped += skipped
            found = [note for note in notes if note]
            self.records = (self.records + found)[:_KEEP_RECORDS]
            log.warning("skipped %d undecodable sample(s), %d so far: %s", skipped, self.skipped, "; ".join(found))
        return batch

    def over_ceiling(self) -> bool:
        """More skipped samples than MAX_IN_A_ROW and than MAX_FRACTION of the samples seen."""
        return self.skipped > max(self.max_in_a_row, self.max_fraction * self.seen)

    def check(self, stop: bool | None = None) -> None:
        """Raise the one-line DataError when over the ceiling (or when `stop` says another rank is)."""
        if stop if stop is not None else self.over_ceiling():
            raise DataError(
                f"{self.skipped} of {self.seen} samples seen were undecodable, more than "
                f"{100 * self.max_fraction:g}% (first: {' | '.join(self.records[:3])}); the data is damaged: "
                "repair or re-extract it, then continue with --resume"
            )

    def summary(self) -> dict[str, Any]:
        return {"count": self.skipped, "seen": self.seen, "records": list(self.records)}

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "seen": self.seen, "records": list(self.records)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.seen = int(state.get("seen", 0))
        self.records = list(state.get("records", []))
