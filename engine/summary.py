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
from typing import Any, NamedTuple

import numpy as np
import yaml

from utility.errors import DataError

IGNORED_FOR_GROUPING = (("EXPERIMENT", "SEED"), ("EXPERIMENT", "OUTPUT_DIR"), ("EXPERIMENT", "NAME"))
BASELINE = "baseline (no distillation)"


@dataclass
class Run:
    folder: Path
    config: dict[str, Any]
    results: dict[str, Any]
    role: str

    @property
    def method(self) -> str:
        """Row name: `teacher`, BASELINE (the student trained alone, DISTILL.TYPE none) or the method."""
        if self.role == "teacher":
            return "teacher"
        method = str(self.config.get("DISTILL", {}).get("TYPE", "none"))
        return BASELINE if method == "none" else method

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
        elif run.method == BASELINE:
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


def _leaves(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _differences(groups: list[list[Run]]) -> list[dict[str, Any]]:
    """Per group: the config keys (SEED / OUTPUT_DIR / NAME aside) whose values differ between groups."""
    ignored = {f"{section}.{key}" for section, key in IGNORED_FOR_GROUPING}
    flats = [{k: v for k, v in _leaves(members[0].config).items() if k not in ignored} for members in groups]
    keys = sorted({k for flat in flats for k in flat if len({json.dumps(f.get(k)) for f in flats}) > 1})
    return [{k: flat.get(k) for k in keys} for flat in flats]


def _order(method: str) -> tuple[int, str]:
    """Published tables' row order: teacher, the baseline, single methods, then combinations."""
    if method == "teacher":
        return (0, "")
    if method == BASELINE:
        return (1, "")
    return (3 if "+" in method else 2, "")


def _value_order(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, json.dumps(value))


def labelled_groups(runs: list[Run]) -> list[tuple[str, str, list[Run]]]:
    """(row label, method, runs) per seed group, in table order (see `summarise`)."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group_key(), []).append(run)
    by_method: dict[str, list[list[Run]]] = {}
    for members in groups.values():
        by_method.setdefault(members[0].method, []).append(members)
    ordered = []
    for method in sorted(by_method, key=_order):  # stable: first-seen order within a class
        member_groups = by_method[method]
        spans = [{c for run in members for v in ("best", "last") for c in _scores(run, v)} for members in member_groups]
        clashing = [i for i, span in enumerate(spans) if any(span & other for j, other in enumerate(spans) if j != i)]
        ordered += [(method, method, members) for i, members in enumerate(member_groups) if i not in clashing]
        if clashing:
            differences = _differences([member_groups[i] for i in clashing])
            for k in sorted(range(len(clashing)), key=lambda k: [_value_order(v) for v in differences[k].values()]):
                text = ", ".join(f"{key}={value}" for key, value in differences[k].items())
                ordered.append((f"{method} ({text})", method, member_groups[clashing[k]]))
    return ordered


def summarise(runs: list[Run]) -> tuple[list[str], list[str], Cells]:
    """(row labels, column labels, {(row, column): {'best': [...], 'last': [...]}}) over seed groups.

    Runs whose configs differ only in EXPERIMENT.SEED / OUTPUT_DIR / NAME are one group, whose
    values are the seeds of one cell. When several configs of one method land in the same cells (a
    sweep of a temperature, a learning rate), each is its own row labelled by the values that set it
    apart, `kd (DISTILL.KD.TEMPERATURE=2.0)`, sorted by those values. Rows follow the published
    tables: teacher, the no-distillation baseline, methods, combinations (`dct+kd`). The teacher and
    the baseline of a classification pair fill every pair column with that teacher / student.
    """
    rows: list[str] = []
    kinds: dict[str, str] = {}
    columns: list[str] = []
    cells: Cells = {}
    for row, method, members in labelled_groups(runs):
        if row not in rows:
            rows.append(row)
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
        side = {"teacher": 0, BASELINE: 1}.get(kinds[row])
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


class SetsMean(NamedTuple):
    """One run's mean accuracy over the verification sets at one probe resolution, in %."""

    mean: float
    error: float  # its binomial standard error
    records: tuple[tuple[str, str], ...]  # (set, pair_correct) per set; () when a set has none


def _resolution_means(run: Run) -> dict[str, SetsMean]:
    """Face: per probe resolution, the mean accuracy over the sets, its standard error and the
    pair-by-pair records.

    Each set's accuracy over n pairs is a binomial proportion, standard error sqrt(p (1 - p) / n);
    the mean of S sets has sqrt(sum_s p_s (1 - p_s) / n_s) / S. Read a gap between two rows as
    real only when it exceeds these.
    """
    entry = run.results.get("last") or run.results
    if entry.get("task") == "classification":
        return {}
    by_column: dict[str, list[tuple[float, int, str, str | None]]] = {}  # (accuracy, pairs, set, record)
    for name, data in entry.get("sets", {}).items():
        for column, metrics in data["results"].items():
            by_column.setdefault(column, []).append(
                (float(metrics["accuracy"]), int(data.get("pairs", 0)), name, metrics.get("pair_correct")))
    means = {}
    for column, values in by_column.items():
        accuracies, counts, names, records = zip(*values)
        if min(counts) <= 0:
            continue
        mean = sum(accuracies) / len(values)
        error = float(np.sqrt(sum(p * (1 - p) / n for p, n in zip(accuracies, counts)))) / len(values)
        complete = all(record and len(record) == n for record, n in zip(records, counts))
        means[column] = SetsMean(100.0 * mean, 100.0 * error, tuple(zip(names, records)) if complete else ())
    return means


def paired_gap_error(method: SetsMean, baseline: SetsMean) -> float | None:
    """Standard error (in points) of the gap between two runs scored on the same pairs, or None.

    Per set, d_i = correct_a(i) - correct_b(i) over its n pairs; the gap of the mean over S sets has
    variance sum_s var(d)_s / n_s / S^2 (var with ddof 1). Pairs both runs got right, or both wrong,
    add no noise, so this is smaller than sqrt(se_a^2 + se_b^2), which treats the two accuracies as
    independent. None unless both runs carry records of the same sets and lengths.
    """
    def layout(run: SetsMean) -> list[tuple[str, int]]:
        return [(name, len(record)) for name, record in run.records]

    if not method.records or layout(method) != layout(baseline):
        return None
    variance = 0.0
    for (_, a), (_, b) in zip(method.records, baseline.records):
        # '1' - '1' = 0, '1' - '0' = 1, '0' - '1' = -1 in character codes
        d = np.frombuffer(a.encode(), np.uint8).astype(float) - np.frombuffer(b.encode(), np.uint8)
        variance += float(np.var(d, ddof=1)) / d.size if d.size > 1 else 0.0
    return 100.0 * float(np.sqrt(variance)) / len(method.records)


def _mean_cell(values: list[SetsMean]) -> str:
    """One run: its mean over sets ± the binomial standard error; seeds: mean ± population std over the
    seeds' means, then each seed's mean, so one lucky seed is visible."""
    if len(values) == 1:
        return f"{values[0].mean:.2f} ± {values[0].error:.2f} s.e."
    means = [value.mean for value in values]
    return f"{np.mean(means):.2f} ± {np.std(means):.2f} sd [{', '.join(f'{m:.2f}' for m in means)}]"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


#: one run's (EXPERIMENT.SEED, {resolution: SetsMean})
SeedMeans = tuple[Any, dict[str, SetsMean]]
#: per face row: (label, method, one SeedMeans per run)
FaceMeans = list[tuple[str, str, list[SeedMeans]]]


def _face_means(runs: list[Run]) -> FaceMeans:
    """Every face row's per-run means over the sets ([] when any run is not a face run)."""
    if any(run.task != "face" for run in runs):
        return []
    def seed_means(run: Run) -> SeedMeans:
        return run.config.get("EXPERIMENT", {}).get("SEED"), _resolution_means(run)

    return [(row, method, [seed_means(run) for run in members]) for row, method, members in labelled_groups(runs)]


def _resolutions(per_run: list[SeedMeans]) -> list[str]:
    return sorted({c for _, values in per_run for c in values}, key=lambda c: (len(c), c))


def face_means_markdown(rows: FaceMeans) -> str:
    """Per row and probe resolution, the mean accuracy over the sets ('' without any)."""
    columns = _resolutions([run for _, _, per_run in rows for run in per_run])
    if not columns:
        return ""
    body = []
    for row, _, per_run in rows:
        cells = [[values[c] for _, values in per_run if c in values] for c in columns]
        body.append([row] + [_mean_cell(values) if values else "–" for values in cells])
    return _markdown_table(["method"] + [f"mean @{c}" for c in columns], body)


def _gap_cell(method: dict[Any, SetsMean], baseline: dict[Any, SetsMean]) -> str:
    """A method's gap to the baseline from {seed: SetsMean} of each, over the seeds both have.

    One seed: the difference ± the standard error of the paired difference over the same pairs
    (`paired_gap_error`; without pair records, sqrt(se_a^2 + se_b^2) of two independent binomial
    means): the pair sets' noise. Several: the mean of the per-seed differences ± its standard error
    over the seeds (sample std / sqrt(k): the training noise, seed by seed paired), and at how many
    seeds the method was above the baseline.
    """
    seeds = sorted(set(method) & set(baseline), key=str)
    if not seeds:
        return "–"
    gaps = [method[seed].mean - baseline[seed].mean for seed in seeds]
    if len(seeds) == 1:
        a, b = method[seeds[0]], baseline[seeds[0]]
        paired = paired_gap_error(a, b)
        if paired is None:
            return f"{gaps[0]:+.2f} ± {float(np.hypot(a.error, b.error)):.2f} s.e."
        return f"{gaps[0]:+.2f} ± {paired:.2f} s.e. (paired)"
    error = float(np.std(gaps, ddof=1)) / np.sqrt(len(gaps))
    above = sum(gap > 0 for gap in gaps)
    return f"{np.mean(gaps):+.2f} ± {error:.2f} s.e., above at {above} of {len(gaps)} seeds"


def face_gaps_markdown(rows: FaceMeans) -> str:
    """Each method's gap to the one no-distillation baseline, per probe resolution the baseline was
    evaluated at, matched by EXPERIMENT.SEED ('' without exactly one baseline row)."""
    baselines = [per_run for _, method, per_run in rows if method == BASELINE]
    methods = [(row, per_run) for row, method, per_run in rows if method not in ("teacher", BASELINE)]
    if len(baselines) != 1 or not methods:
        return ""
    columns = _resolutions(baselines[0])
    if not columns:
        return ""

    def at(per_run: list[SeedMeans], column: str) -> dict[Any, SetsMean]:
        return {seed: values[column] for seed, values in per_run if column in values}

    body = [[row] + [_gap_cell(at(per_run, c), at(baselines[0], c)) for c in columns]
            for row, per_run in methods]
    return _markdown_table(["method"] + [f"gap @{c}" for c in columns], body)


def summary_markdown(runs: list[Run]) -> str:
    """Markdown table: one row per method, each column 'best / last' (mean ± std over seeds)."""
    rows, columns, cells = summarise(runs)
    body = []
    for row in rows:
        values = []
        for column in columns:
            cell = cells.get((row, column), {"best": [], "last": []})
            values.append(f"{_cell(cell['best'])} / {_cell(cell['last'])}")
        body.append([row] + values)
    lines = [_markdown_table(["method"] + [f"{c} (best / last)" for c in columns], body)]
    counts = sorted({len(v["last"]) for v in cells.values()}) or [0]
    seeds = f"{counts[-1]} seed{'s' if counts[-1] != 1 else ''} per cell"
    if len(counts) > 1:
        seeds = f"{counts[0]} to {seeds}"
    lines.append("")
    lines.append(f"Scores in %; {len(runs)} run{'s' if len(runs) != 1 else ''}; {seeds}"
                 + (" (mean ± population std)" if counts[-1] > 1 else "") + ".")
    face = _face_means(runs)
    means = face_means_markdown(face)
    if means:
        lines += ["", "Mean over the verification sets (last checkpoint). One run: ± its standard error from the "
                  "pair counts (sqrt(p(1-p)/n) per set), the noise of the pair sets. Several seeds: ± the population "
                  "std of the seeds' means, then each seed's mean, the noise of training. A gap smaller than "
                  "these is noise.", means]
    gaps = face_gaps_markdown(face)
    if gaps:
        lines += ["", f"Gap to the {BASELINE} in points of the mean above, matched by seed. One seed: ± the "
                  "standard error of the difference: paired, from the two runs' decisions on the same pairs "
                  "(sd of the per-pair differences / sqrt(n), over the sets), else sqrt(se_a^2 + se_b^2). "
                  "Several: the mean of the per-seed differences ± its standard error over the seeds "
                  "(sample std / sqrt(k)), and at how many seeds the method was above. A gap under about "
                  "twice its standard error is noise.", gaps]
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
