"""One logger configuration for the CLIs; library code only calls `logging.getLogger(__name__)`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(output_dir: str | Path | None = None, rank: int = 0, level: int = logging.INFO) -> None:
    """Log to stderr (rank 0 only, others warn and above) and, if given, to `<output_dir>/log.txt`."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    root.addHandler(console)
    if output_dir is not None and rank == 0:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(output_dir) / "log.txt")
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)
