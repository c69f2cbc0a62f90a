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


def read_run_json(output_dir: Path) -> dict[str, Any]:
    """The run's `run.json` ({} when there is none or it is unreadable)."""
    try:
        info = json.loads((output_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def update_run_json(output_dir: Path, **fields: Any) -> None:
    """Set top-level fields of `run.json` (e.g. the count of skipped samples)."""
    info = read_run_json(output_dir)
    info.update(fields)
    _write_json(output_dir / "run.json", info)


def _write_json(path: Path, info: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(info, indent=2, default=str) + "\n")
    tmp.replace(path)


def write_run_files(cfg: Any, output_dir: Path, device: torch.device, world_size: int, role: str,
                    resumed: dict[str, Any] | None = None) -> None:
    """`config.yaml` (the fully resolved config) and `run.json` into `output_dir`.

    A resumed run keeps the earlier `run.json`'s history and adds one entry (`resumed`: the
    iteration it continued from and the safe config changes it was resumed with), so the record
    says which settings each part of the run used.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    earlier = read_run_json(output_dir) if resumed is not None else {}
    history = list(earlier.get("history", []))
    if resumed is not None:
        history.append({"resumed": resumed, "command": sys.argv})
    (output_dir / "config.yaml").write_text(cfg.dump())
    info = {
        "role": role,
        "command": earlier.get("command", sys.argv),  # the run's first command; resumes are in history
        "git_commit": git_commit(),
        "seed": int(cfg.EXPERIMENT.SEED),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "world_size": world_size,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    }
    if resumed is not None:
        info["history"] = history
    _write_json(output_dir / "run.json", info)
