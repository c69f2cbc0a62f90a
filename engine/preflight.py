"""Fail fast: everything a run will read later is checked before it trains (and by `--dry-run`).

A typo in an evaluation-set path must not surface after a day of training. The checks here are
existence and kind (file or folder) of every path the config names for later: evaluation sets,
the classification val split, IJB / TinyFace roots when configured, teacher / student / head /
pretrained checkpoints, the partner table. Reading the files is left to their loaders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from utility.config import resolve_data_path
from utility.errors import ConfigError, DataError


def _verification_set_problem(path: Path) -> str | None:
    if path.suffix == ".bin":
        return None if path.is_file() else "does not exist"
    if path.suffix == ".txt" or path.is_dir():
        folder, pair_list = (path.with_suffix(""), path) if path.suffix == ".txt" else (path, path.parent / f"{path.name}.txt")
        if not folder.is_dir():
            return f"needs the image folder {folder}, which does not exist"
        return None if pair_list.is_file() else f"needs the pair list {pair_list}, which does not exist"
    return "does not exist" if not path.exists() else "is neither a .bin file nor an extracted pair folder"


def _optional_root(cfg: Any, section: str) -> tuple[str, str] | None:
    """(key, value) of EVAL.<section>.ROOT when the schema has it and it is set."""
    node = cfg.EVAL.get(section)
    if node is None or not hasattr(node, "get") or not node.get("ROOT"):
        return None
    return f"EVAL.{section}.ROOT", str(node.ROOT)


def check_run_inputs(cfg: Any, role: str, uses_teacher: bool) -> None:
    """Raise a one-line ConfigError/DataError for the first input of the run that is missing."""
    if cfg.EXPERIMENT.TASK == "face":
        if not cfg.EVAL.SETS:
            raise ConfigError("EVAL.SETS is empty: list the verification sets (.bin files or pair folders) "
                              "the run is evaluated on")
        for entry in cfg.EVAL.SETS:
            resolved = resolve_data_path(cfg, entry)
            problem = _verification_set_problem(resolved)
            if problem:
                raise DataError(f"EVAL.SETS: verification set {entry!r} ({resolved}) {problem}; fix the path or "
                                "DATA.ROOT")
    elif cfg.DATA.VAL:
        resolved = resolve_data_path(cfg, cfg.DATA.VAL)
        if not resolved.exists():
            raise DataError(f"DATA.VAL = {cfg.DATA.VAL!r} resolves to {resolved}, which does not exist "
                            "(check DATA.ROOT)")
    for section in ("IJB", "TINYFACE"):
        found = _optional_root(cfg, section)
        if found is not None:
            key, raw = found
            resolved = resolve_data_path(cfg, raw)
            if not resolved.is_dir():
                raise DataError(f"{key} = {raw!r} resolves to {resolved}, which is not a folder; fix it or set it ''")
    nodes = ["TEACHER"] if role == "teacher" else ["STUDENT"] + (["TEACHER"] if uses_teacher else [])
    for name in nodes:
        node = cfg[name]
        for key in ("CHECKPOINT", "HEAD_CHECKPOINT", "PRETRAINED"):
            value = str(node.get(key, "") or "")
            if value and not Path(value).expanduser().is_file():
                raise ConfigError(f"{name}.{key} = {value!r} is not a file; fix the path"
                                  + (" (train the teacher first with train_teacher.py)"
                                     if (name, key) == ("TEACHER", "CHECKPOINT") else ""))
    if cfg.DATA.PARTNER == "table" and cfg.DATA.PARTNER_TABLE:
        table = resolve_data_path(cfg, cfg.DATA.PARTNER_TABLE)
        if not table.is_file():
            raise DataError(f"DATA.PARTNER_TABLE = {cfg.DATA.PARTNER_TABLE!r} resolves to {table}, which does not "
                            "exist; write one with `python -m engine.partners`")
