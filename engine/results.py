"""Results files: `results.json` (everything, machine-readable) and `results.md` (the table a paper shows).

A results dict is what `engine.evaluate.evaluate` returns (face: sets x resolutions; classification:
top-k), or a summary {"last": results, "best": results, ...} of the final and the best checkpoint:
the papers do not say which of the two they report, so Distillery shows both side by side.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS = ("last", "best")
MISSING = "–"


def _variants(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, results) for a summary's last/best entries, or [("", results)] for a plain result."""
    found = [(name, results[name]) for name in VARIANTS if isinstance(results.get(name), dict)]
    if not found:
        return [("", results)]
    labelled = []
    for name, entry in found:
        iteration = entry.get("iteration", results.get(f"{name}_iteration"))
        labelled.append((name if iteration is None else f"{name} @ {iteration}", entry))
    return labelled


def _percent(value: Any, std: Any = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    text = f"{100.0 * value:.2f}"
    return text if std is None else f"{text} ± {100.0 * std:.2f}"


def _markdown(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _ordered_union(groups: Iterable[Iterable[str]]) -> list[str]:
    seen: list[str] = []
    for group in groups:
        for item in group:
            if item not in seen:
                seen.append(item)
    return seen


def _face_tables(variants: list[tuple[str, dict[str, Any]]]) -> str:
    sets = _ordered_union(entry.get("sets", {}) for _, entry in variants)
    columns = _ordered_union(
        [column for found in entry.get("sets", {}).values() for column in found.get("results", {})]
        for _, entry in variants
    )
    header = ["set"] + [f"{column} ({label})" if label else column for column in columns for label, _ in variants]

    def cells(metric: str, with_std: bool) -> list[list[str]]:
        rows = []
        for name in sets:
            row = [name]
            for column in columns:
                for _, entry in variants:
                    found = entry.get("sets", {}).get(name, {}).get("results", {}).get(column)
                    if found is None:
                        row.append(MISSING)
                    else:
                        row.append(_percent(found.get(metric), found.get("std") if with_std else None))
            rows.append(row)
        return rows

    parts: list[str] = []
    if sets:
        protocol = next((entry.get("protocol") for _, entry in variants if entry.get("protocol")), "")
        far = next((entry.get("far_target") for _, entry in variants if entry.get("far_target") is not None), None)
        parts += [
            f"Verification accuracy (%, mean ± std over folds, protocol {protocol}); columns: probe resolution in px",
            "",
            _markdown(header, cells("accuracy", True)),
            "",
            f"TAR (%) at FAR = {far:g}" if far is not None else "TAR (%)",
            "",
            _markdown(header, cells("tar", False)),
            "",
        ]
    parts += _ijb_tables(variants) + _tinyface_table(variants)
    mains = [f"{label or 'result'} {_percent(entry.get('main'))} %" for label, entry in variants]
    parts.append("Main (best-checkpoint metric: mean pair-set accuracy over sets and same-resolution columns; "
                 "without sets IJB TAR@FAR=1e-4, else TinyFace rank-1): " + ", ".join(mains))
    return "\n".join(parts)


def _row_label(name: str, label: str) -> str:
    return f"{name} ({label})" if label else name


def _ijb_tables(variants: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """IJB 1:1 TAR at each FAR (rows: target @ column, per checkpoint) and, when computed, 1:N."""
    rows_11, rows_1n, fars, ranks, fpirs = [], [], [], [], []
    for label, entry in variants:
        for target, found in entry.get("ijb", {}).items():
            for column, metrics in found.get("results", {}).items():
                fars = _ordered_union([fars, metrics["tar"]])
                rows_11.append((_row_label(f"{target} @ {column}", label), metrics["tar"]))
                if "one_to_n" in metrics:
                    ranks = _ordered_union([ranks, metrics["one_to_n"]["rank"]])
                    fpirs = _ordered_union([fpirs, metrics["one_to_n"]["tpir"]])
                    rows_1n.append((_row_label(f"{target} @ {column}", label), metrics["one_to_n"]))
    if not rows_11:
        return []
    parts = [
        "IJB 1:1 template verification, TAR (%) at FAR (insightface ijb_11.py); rows: target @ probe resolution",
        "",
        _markdown(["target @ px"] + [f"FAR={far}" for far in fars],
                  [[name] + [_percent(tar.get(far)) for far in fars] for name, tar in rows_11]),
        "",
    ]
    if rows_1n:
        header = ["target @ px"] + [f"rank-{k}" for k in ranks] + [f"TPIR@FPIR={f}" for f in fpirs]
        body = [[name] + [_percent(found["rank"].get(k)) for k in ranks] + [_percent(found["tpir"].get(f)) for f in fpirs]
                for name, found in rows_1n]
        parts += ["IJB 1:N identification (%) as insightface ijb_1n.py defines it (one gallery G1+G2 / S1+S2)", "",
                  _markdown(header, body), ""]
    return parts


def _tinyface_table(variants: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """TinyFace closed-set rank-k (%), one row per checkpoint and column (native resolution)."""
    rows, ranks = [], []
    for label, entry in variants:
        for column, metrics in entry.get("tinyface", {}).get("results", {}).items():
            ranks = _ordered_union([ranks, metrics["rank"]])
            rows.append((_row_label(f"TinyFace @ {column}", label), metrics["rank"]))
    if not rows:
        return []
    return ["TinyFace closed-set identification (%), AdaFace's protocol (probes vs matches + distractors)", "",
            _markdown(["set"] + [f"rank-{k}" for k in ranks], [[name] + [_percent(found.get(k)) for k in ranks]
                                                               for name, found in rows]), ""]


def _classification_table(variants: list[tuple[str, dict[str, Any]]]) -> str:
    metrics = _ordered_union(
        sorted((key for key in entry if key.startswith("top") and key[3:].isdigit()), key=lambda k: int(k[3:]))
        for _, entry in variants
    )
    if any("mca" in entry for _, entry in variants):
        metrics.append("mca")
    header = ["checkpoint"] + [f"top-{key[3:]} (%)" if key != "mca" else "mean class acc. (%)" for key in metrics]
    rows = []
    for label, entry in variants:
        values = [entry.get(key) for key in metrics]
        rows.append([label or "result"] + [MISSING if v is None else f"{v:.2f}" for v in values])
    return _markdown(header, rows)


def format_table(results: dict[str, Any]) -> str:
    """Markdown tables of one result or of a {"last": ..., "best": ...} summary.

    Face: rows are sets, columns resolutions ("acc ± std" in %), one table for accuracy and one for
    TAR@FAR, last and best side by side. Classification: top-k (%) per checkpoint.
    """
    variants = _variants(results)
    tasks = {entry.get("task") for _, entry in variants}
    if tasks == {"face"}:
        return _face_tables(variants)
    if tasks == {"classification"}:
        return _classification_table(variants)
    raise ValueError(f"cannot tabulate results of tasks {sorted(map(str, tasks))}; expected face or classification")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_results(results: dict[str, Any], output_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `results.json` (results plus `extra`, e.g. config name and checkpoint paths) and
    `results.md` (the `extra` entries as a list, then the tables). Returns the markdown path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    payload = {**results, **(extra or {})}
    _write_atomic(output_dir / "results.json", json.dumps(payload, indent=2, default=_json_default) + "\n")
    lines = ["# Results", ""]
    lines += [f"- {key}: {value}" for key, value in (extra or {}).items()]
    if extra:
        lines.append("")
    lines += [format_table(results), ""]
    markdown = output_dir / "results.md"
    _write_atomic(markdown, "\n".join(lines))
    return markdown
