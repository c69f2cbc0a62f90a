"""What a run records about itself: resolved `config.yaml` and `run.json` (provenance)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch


def git_commit(cwd: Path | None = None) -> str | None:
    """The checkout's commit (with `-dirty` when modified), or None outside git."""
    root = cwd or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def write_run_files(cfg: Any, output_dir: Path, device: torch.device, world_size: int, role: str) -> None:
    """`config.yaml` (the fully resolved config) and `run.json` into `output_dir`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(cfg.dump())
    info = {
        "role": role,
        "command": sys.argv,
        "git_commit": git_commit(),
        "seed": int(cfg.EXPERIMENT.SEED),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "world_size": world_size,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    }
    (output_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
