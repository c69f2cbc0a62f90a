"""Collect many runs' `results.json` into one table a paper can use.

Layout of the seeds' READMEs: rows are methods, columns are teacher -> student pairs
(classification) or set @ resolution (face; IJB TAR at each FAR and TinyFace rank-k as their own
columns). Runs whose resolved configs differ only in
`EXPERIMENT.SEED` (and their output folder) are one cell: mean ± std over seeds (population std),
with the best-checkpoint and last-checkpoint numbers side by side (decision b).
"""

from __future__ import annotations

import csv
import io
import json
import re
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
        """Row name: `teacher`, `student` (the student trained alone, DISTILL.TYPE none) or the method."""
        if self.role == "teacher":
            return "teacher"
        method = str(self.config.get("DISTILL", {}).get("TYPE", "none"))
        return "student" if method == "none" else method

    @property
    def folder_label(self) -> str:
        """The run folder's name (its parent's for run_student.sh's seed<S> folders)."""
        return self.folder.parent.name if re.fullmatch(r"seed\d+", self.folder.name) else self.folder.name

    @property
    def label(self) -> str:
        """EXPERIMENT.NAME, else `folder_label`."""
        return str(self.config.get("EXPERIMENT", {}).get("NAME", "") or "") or self.folder_label

    @property
    def task(self) -> str:
        return str(self.config.get("EXPERIMENT", {}).get("TASK", "face"))

    def group_key(self) -> str:
        """The resolved config without SEED, OUTPUT_DIR and NAME: equal keys are seeds of one cell."""
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
            try:
                config = yaml.safe_load(config_path.read_text()) or {}
                info_path = folder / "run.json"
                role = json.loads(info_path.read_text()).get("role", "student") if info_path.is_file() else "student"
                results = json.loads(results_path.read_text())
            except (yaml.YAMLError, json.JSONDecodeError) as error:
                raise DataError(f"--summary: cannot read the run in {folder}: {error}") from None
            runs.append(Run(folder, config, results, role))
    if not runs:
        raise DataError(f"--summary: no run folders with results.json and config.yaml under {', '.join(map(str, paths))}")
    return runs


PAIR = " -> "


def _short(name: Any) -> str:
    return str(name or "").split(".")[-1]


def _scores(run: Run, variant: str) -> dict[str, float]:
    """Column -> score (%) of one run for `variant` ('best' or 'last').

    Classification: one column per teacher -> student pair (a teacher's or a lone student's run
    gets its backbone's name, spread over the matching pairs later); face: `set@resolution`.
    """
    entry = run.results.get(variant) or run.results
    if entry.get("task") == "classification":
        teacher = _short(run.config.get("TEACHER", {}).get("BACKBONE"))
        student = _short(run.config.get("STUDENT", {}).get("BACKBONE"))
        if run.method == "teacher":
            column = teacher
        elif run.method == "student":
            column = student
        else:
            column = f"{teacher}{PAIR}{student}"
        return {column: float(entry["top1"])}
    scores = {}
    for name, data in entry.get("sets", {}).items():
        for column, metrics in data["results"].items():
            scores[f"{name}@{column}"] = 100.0 * float(metrics["accuracy"])
    for target, data in entry.get("ijb", {}).items():  # IJB TAR at each FAR, 1:N rank-1
        for column, metrics in data["results"].items():
            for far, tar in metrics["tar"].items():
                scores[f"{target}@{column} TAR@FAR={far}"] = 100.0 * float(tar)
            if "one_to_n" in metrics:
                scores[f"{target}@{column} 1:N rank-1"] = 100.0 * float(metrics["one_to_n"]["rank"]["1"])
    for column, metrics in entry.get("tinyface", {}).get("results", {}).items():
        for rank, value in metrics["rank"].items():
            scores[f"TinyFace@{column} rank-{rank}"] = 100.0 * float(value)
    return scores


Cells = dict[tuple[str, str], dict[str, list[float]]]


def summarise(runs: list[Run]) -> tuple[list[str], list[str], Cells]:
    """(row labels, column labels, {(row, column): {'best': [...], 'last': [...]}}) over seed groups.

    Runs whose configs differ only in EXPERIMENT.SEED / OUTPUT_DIR / NAME are one group, whose
    values are the seeds of one cell. When two different configs of one method would land in the
    same cell (e.g. two temperatures), their rows are told apart by the runs' labels instead of
    being averaged together. The teacher and the lone student of a classification pair fill every
    pair column with that teacher / student (as the seeds' README tables show them).
    """
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group_key(), []).append(run)
    claimed: dict[tuple[str, str], int] = {}
    for members in groups.values():
        for column in {c for run in members for v in ("best", "last") for c in _scores(run, v)}:
            key = (members[0].method, column)
            claimed[key] = claimed.get(key, 0) + 1
    rows: list[str] = []
    kinds: dict[str, str] = {}
    owner: dict[str, str] = {}  # row -> group key
    columns: list[str] = []
    cells: Cells = {}
    for key, members in groups.items():
        method, first = members[0].method, members[0]
        row = method
        if any(claimed[(method, c)] > 1 for run in members for v in ("best", "last") for c in _scores(run, v)):
            for candidate in (first.label, first.folder_label, str(first.folder)):
                row = f"{method} ({candidate})"
                if owner.get(row, key) == key:
                    break
        owner.setdefault(row, key)
        rows += [row] if row not in rows else []
        kinds[row] = method
        for run in members:
            for variant in ("best", "last"):
                for column, value in _scores(run, variant).items():
                    columns += [column] if column not in columns else []
                    cells.setdefault((row, column), {"best": [], "last": []})[variant].append(value)
    return rows, *_spread_over_pairs(rows, kinds, columns, cells)


def _spread_over_pairs(rows: list[str], kinds: dict[str, str], columns: list[str],
                       cells: Cells) -> tuple[list[str], Cells]:
    """Copy teacher / lone-student classification cells into the pair columns they belong to."""
    pairs = [c for c in columns if PAIR in c]
    moved: set[str] = set()
    for row in rows:
        side = {"teacher": 0, "student": 1}.get(kinds[row])
        if side is None:
            continue
        for column in [c for c in columns if PAIR not in c and (row, c) in cells]:
            targets = [p for p in pairs if p.split(PAIR)[side] == column]
            for target in targets:
                cells[(row, target)] = cells[(row, column)]
            if targets:
                del cells[(row, column)]
                moved.add(column)
    kept = [c for c in columns if c not in moved or any((row, c) in cells for row in rows)]
    return kept, cells


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
