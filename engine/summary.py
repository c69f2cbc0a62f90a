"""Collect many runs' `results.json` into one table a paper can use.

Layout of the seeds' READMEs: rows are methods, columns are teacher -> student pairs
(classification) or set @ resolution (face). Runs whose resolved configs differ only in
`EXPERIMENT.SEED` (and their output folder) are one cell: mean ± std over seeds (population std),
with the best-checkpoint and last-checkpoint numbers side by side (decision b).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from utility.errors import DataError

IGNORED_FOR_GROUPING = (("EXPERIMENT", "SEED"), ("EXPERIMENT", "OUTPUT_DIR"), ("EXPERIMENT", "NAME"))


@dataclass
class Run:
    folder: Path
    config: dict[str, Any]
    results: dict[str, Any]
    role: str

    @property
    def method(self) -> str:
        if self.role == "teacher":
            return "teacher"
        return str(self.config.get("DISTILL", {}).get("TYPE", "none"))

    @property
    def task(self) -> str:
        return str(self.config.get("EXPERIMENT", {}).get("TASK", "face"))

    def group_key(self) -> str:
        stripped = json.loads(json.dumps(self.config))
        for section, key in IGNORED_FOR_GROUPING:
            stripped.get(section, {}).pop(key, None)
        return json.dumps(stripped, sort_keys=True)


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Every folder at or below `paths` holding a `results.json` (and its `config.yaml`)."""
    runs = []
    for base in map(Path, paths):
        if not base.exists():
            raise DataError(f"--summary: {base} does not exist")
        candidates = [base / "results.json"] if (base / "results.json").is_file() else sorted(base.rglob("results.json"))
        for results_path in candidates:
            folder = results_path.parent
            config_path = folder / "config.yaml"
            if not config_path.is_file():
                continue  # results written by test.py elsewhere; no config to group by
            config = yaml.safe_load(config_path.read_text()) or {}
            info_path = folder / "run.json"
            role = json.loads(info_path.read_text()).get("role", "student") if info_path.is_file() else "student"
            runs.append(Run(folder, config, json.loads(results_path.read_text()), role))
    if not runs:
        raise DataError(f"--summary: no run folders with results.json and config.yaml under {', '.join(map(str, paths))}")
    return runs


def _scores(run: Run, variant: str) -> dict[str, float]:
    """Column -> score (%) of one run for `variant` ('best' or 'last')."""
    entry = run.results.get(variant) or run.results
    if entry.get("task") == "classification":
        teacher = str(run.config.get("TEACHER", {}).get("BACKBONE", "")).split(".")[-1]
        student = str(run.config.get("STUDENT", {}).get("BACKBONE", "")).split(".")[-1]
        if run.role == "teacher":
            column = teacher
        elif run.method == "none":
            column = student
        else:
            column = f"{teacher} -> {student}"
        return {column: float(entry["top1"])}
    scores = {}
    for name, data in entry.get("sets", {}).items():
        for column, metrics in data["results"].items():
            scores[f"{name} {column}"] = 100.0 * float(metrics["accuracy"])
    return scores


def summarise(runs: list[Run]) -> tuple[list[str], list[str], dict[tuple[str, str], dict[str, list[float]]]]:
    """(row labels, column labels, {(row, column): {'best': [...], 'last': [...]}}) over seed groups."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group_key(), []).append(run)
    rows: list[str] = []
    columns: list[str] = []
    cells: dict[tuple[str, str], dict[str, list[float]]] = {}
    for members in groups.values():
        row = members[0].method
        rows += [row] if row not in rows else []
        for run in members:
            for variant in ("best", "last"):
                for column, value in _scores(run, variant).items():
                    columns += [column] if column not in columns else []
                    cells.setdefault((row, column), {"best": [], "last": []})[variant].append(value)
    return rows, columns, cells


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean = float(np.mean(values))
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {float(np.std(values)):.2f}"


def summary_markdown(runs: list[Run]) -> str:
    """Markdown table: one row per method, each column 'best / last' (mean ± std over seeds)."""
    rows, columns, cells = summarise(runs)
    header = ["method"] + [f"{c} (best / last)" for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        values = []
        for column in columns:
            cell = cells.get((row, column), {"best": [], "last": []})
            values.append(f"{_cell(cell['best'])} / {_cell(cell['last'])}")
        lines.append("| " + " | ".join([row] + values) + " |")
    seeds = max(len(v["last"]) for v in cells.values()) if cells else 0
    lines.append("")
    lines.append(f"Scores in %; {len(runs)} runs; up to {seeds} seeds per cell (mean ± population std).")
    return "\n".join(lines)


def summary_csv(runs: list[Run]) -> str:
    """The same numbers in long form: method, column, variant, mean, std, seeds."""
    rows, columns, cells = summarise(runs)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["method", "column", "variant", "mean", "std", "seeds"])
    for row in rows:
        for column in columns:
            for variant in ("best", "last"):
                values = cells.get((row, column), {}).get(variant, [])
                if values:
                    writer.writerow([row, column, variant, f"{np.mean(values):.4f}", f"{np.std(values):.4f}", len(values)])
    return out.getvalue()
