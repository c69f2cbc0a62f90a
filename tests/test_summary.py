"""`test.py --summary`: many runs' results.json in one paper table; run_student.sh seeds; curves.png.

The run folders are written by hand (config.yaml, run.json, results.json as the trainer writes
them), and every expected number is computed in the test from the values it wrote.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.summary import find_runs, summarise, summary_csv, summary_markdown
from utility.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
PAIR = "resnet32x4 -> resnet8x4"


def write_run(folder: Path, config: dict, best: dict, last: dict, role: str = "student") -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "run.json").write_text(json.dumps({"role": role, "seed": config["EXPERIMENT"]["SEED"]}))
    (folder / "results.json").write_text(json.dumps({"best": best, "last": last, "best_iteration": 5,
                                                     "last_iteration": 9}))


def cifar_config(seed: int, method: str = "kd", name: str = "kd", out: str = "o", temperature: float = 4.0,
                 lr: float = 0.05) -> dict:
    return {
        "EXPERIMENT": {"NAME": name, "SEED": seed, "OUTPUT_DIR": out, "TASK": "classification"},
        "TEACHER": {"BACKBONE": "cifar.resnet32x4"},
        "STUDENT": {"BACKBONE": "cifar.resnet8x4"},
        "DISTILL": {"TYPE": method, "KD": {"TEMPERATURE": temperature}},
        "SOLVER": {"LR": lr},
    }


def top1(value: float) -> dict:
    return {"task": "classification", "top1": value, "top5": 99.0, "main": value}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (divide by n), written out by hand."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f}"


BASELINE = "baseline (no distillation)"
KD2, KD4 = "kd (DISTILL.KD.TEMPERATURE=2.0)", "kd (DISTILL.KD.TEMPERATURE=4.0)"
KD_BEST, KD_LAST = [74.0, 75.0, 76.5], [73.0, 74.5, 75.25]
BASE_BEST, BASE_LAST = [72.0, 73.0], [71.5, 72.1]


@pytest.fixture
def cifar_runs(tmp_path) -> Path:
    runs = tmp_path / "runs"
    write_run(runs / "teacher", {**cifar_config(0, "none", "teacher"), "STUDENT": {"BACKBONE": ""},
                                 "TEACHER": {"BACKBONE": "cifar.resnet32x4"}}, top1(79.0), top1(78.5), role="teacher")
    for seed, best, last in zip((1, 2), BASE_BEST, BASE_LAST):
        write_run(runs / "baseline" / f"seed{seed}", cifar_config(seed, "none", "base", f"b/seed{seed}"),
                  top1(best), top1(last))
    # seeds of one kd config: NAME and OUTPUT_DIR differ too, and must not split the group
    for seed, best, last in zip((1, 2, 3), KD_BEST, KD_LAST):
        write_run(runs / "kd" / f"seed{seed}", cifar_config(seed, name=f"kd-{seed}", out=f"k/seed{seed}"),
                  top1(best), top1(last))
    # the same method at another temperature: its own row, never averaged with the seeds above
    write_run(runs / "kd_t2", cifar_config(1, name="kd_t2", temperature=2.0), top1(70.0), top1(69.0))
    return runs


def table_cells(markdown: str) -> dict[str, list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def test_markdown_mean_and_population_std_over_seeds(cifar_runs):
    runs = find_runs([cifar_runs])
    assert len(runs) == 7
    table = table_cells(summary_markdown(runs))
    assert table["method"] == [f"{PAIR} (best / last)"]
    assert table[KD4] == [f"{cell(KD_BEST)} / {cell(KD_LAST)}"]
    assert table[KD2] == ["70.00 / 69.00"]
    # the teacher and the student trained alone fill the pair column they belong to
    assert table["teacher"] == ["79.00 / 78.50"]
    assert table[BASELINE] == [f"{cell(BASE_BEST)} / {cell(BASE_LAST)}"]
    # published order: teacher, baseline, then the method's rows by the swept value
    assert [row for row in table if row not in ("method", "---")] == ["teacher", BASELINE, KD2, KD4]
    # a concrete hand value: (74 + 75 + 76.5) / 3 = 75.1667, population std sqrt(3.1667 / 3) = 1.0274
    assert table[KD4][0].startswith("75.17 ± 1.03 / ")


def test_grouping_ignores_only_seed_output_dir_and_name(tmp_path):
    runs_dir = tmp_path / "runs"
    write_run(runs_dir / "a", cifar_config(1, name="a", out="x"), top1(60.0), top1(60.0))
    write_run(runs_dir / "b", cifar_config(2, name="b", out="y"), top1(62.0), top1(62.0))
    write_run(runs_dir / "c", cifar_config(1, name="c", out="z", lr=0.1), top1(50.0), top1(50.0))
    rows, columns, cells = summarise(find_runs([runs_dir]))
    assert columns == [PAIR]
    # a and b are seeds of one config; c differs in SOLVER.LR, which labels the rows
    assert rows == ["kd (SOLVER.LR=0.05)", "kd (SOLVER.LR=0.1)"]
    assert cells[("kd (SOLVER.LR=0.05)", PAIR)] == {"best": [60.0, 62.0], "last": [60.0, 62.0]}
    assert cells[("kd (SOLVER.LR=0.1)", PAIR)] == {"best": [50.0], "last": [50.0]}


def test_csv_rows(cifar_runs):
    rows = list(csv.DictReader(io.StringIO(summary_csv(find_runs([cifar_runs])))))
    by_key = {(r["method"], r["column"], r["variant"]): r for r in rows}
    for variant, values in (("best", KD_BEST), ("last", KD_LAST)):
        found = by_key[(KD4, PAIR, variant)]
        mean, std = mean_std(values)
        assert float(found["mean"]) == pytest.approx(mean, abs=1e-4)
        assert float(found["std"]) == pytest.approx(std, abs=1e-4)
        assert found["seeds"] == "3"
    assert float(by_key[("teacher", PAIR, "last")]["mean"]) == 78.5
    assert by_key[("teacher", PAIR, "last")]["std"] == "0.0000"
    assert len(rows) == 4 * 2  # teacher, student, kd, kd_t2 x best/last, one column


def face_result(accuracies: dict[str, float]) -> dict:
    return {"task": "face", "sets": {"lfw": {"results": {col: {"accuracy": acc, "std": 0.01}
                                                         for col, acc in accuracies.items()}}}}


def test_face_columns_are_set_at_resolution(tmp_path):
    runs_dir = tmp_path / "face"
    seeds = {1: (0.99, 0.90), 2: (0.98, 0.86)}
    for seed, (high, low) in seeds.items():
        config = {"EXPERIMENT": {"SEED": seed, "TASK": "face", "OUTPUT_DIR": f"f{seed}", "NAME": "a_skd"},
                  "DISTILL": {"TYPE": "a_skd"}}
        write_run(runs_dir / f"seed{seed}", config, face_result({"112": high, "14": low}),
                  face_result({"112": high - 0.01, "14": low - 0.02}))
    table = table_cells(summary_markdown(find_runs([runs_dir])))
    assert table["method"] == ["lfw@112 (best / last)", "lfw@14 (best / last)"]
    high, low = [100 * v[0] for v in seeds.values()], [100 * v[1] for v in seeds.values()]
    assert table["a_skd"] == [f"{cell(high)} / {cell([h - 1 for h in high])}",
                              f"{cell(low)} / {cell([x - 2 for x in low])}"]


def face_sets_result(accuracies: dict[str, dict[str, float]], pairs: dict[str, int]) -> dict:
    """results.json's face entry for several sets, with each set's pair count (what the s.e. needs)."""
    return {"task": "face", "sets": {name: {"pairs": pairs[name], "results": {col: {"accuracy": acc, "std": 0.01}
                                                                            for col, acc in by_col.items()}}
                                     for name, by_col in accuracies.items()}}


def means_table(text: str) -> dict[str, list[str]]:
    """The rows of the 'Mean over the verification sets' table only."""
    return table_cells(text[text.index("| method | mean @"):])


def test_face_means_one_run_binomial_standard_error(tmp_path):
    pairs = {"lfw": 400, "cfp_fp": 100}
    last = face_sets_result({"lfw": {"112": 0.90, "14": 0.80}, "cfp_fp": {"112": 0.86, "14": 0.70}}, pairs)
    best = face_sets_result({"lfw": {"112": 0.99, "14": 0.99}, "cfp_fp": {"112": 0.99, "14": 0.99}}, pairs)
    config = {"EXPERIMENT": {"SEED": 0, "TASK": "face", "OUTPUT_DIR": "t"}, "DISTILL": {"TYPE": "none"}}
    write_run(tmp_path / "teacher", config, best, last, role="teacher")
    table = means_table(summary_markdown(find_runs([tmp_path])))
    assert table["method"] == ["mean @14", "mean @112"]
    # last checkpoint; @14: (80 + 70) / 2, sqrt(.8 * .2 / 400 + .7 * .3 / 100) / 2 = sqrt(.0025) / 2
    # @112: (90 + 86) / 2, sqrt(.9 * .1 / 400 + .86 * .14 / 100) / 2 = sqrt(.001429) / 2
    assert table["teacher"] == ["75.00 ± 2.50 s.e.", "88.00 ± 1.89 s.e."]


def test_face_means_over_seeds_show_spread_and_each_seed(tmp_path):
    pairs = {"lfw": 400, "cfp_fp": 400}
    config = {"EXPERIMENT": {"SEED": 0, "TASK": "face", "OUTPUT_DIR": "t"}, "DISTILL": {"TYPE": "none"}}
    teacher = face_sets_result({"lfw": {"14": 0.80}, "cfp_fp": {"14": 0.80}}, pairs)
    write_run(tmp_path / "teacher", config, teacher, teacher, role="teacher")
    for seed, (lfw, cfp) in {0: (0.60, 0.70), 1: (0.70, 0.80)}.items():
        result = face_sets_result({"lfw": {"14": lfw}, "cfp_fp": {"14": cfp}}, pairs)
        student = {"EXPERIMENT": {"SEED": seed, "TASK": "face", "OUTPUT_DIR": f"s/seed{seed}"},
                   "DISTILL": {"TYPE": "none"}, "STUDENT": {"BACKBONE": "face.iresnet18"}}
        write_run(tmp_path / "student" / f"seed{seed}", student, result, result)
    table = means_table(summary_markdown(find_runs([tmp_path])))
    # per seed the mean over sets (65, 75); then their mean 70 and population std 5
    assert table[BASELINE] == ["70.00 ± 5.00 sd [65.00, 75.00]"]
    # sqrt(2 * .8 * .2 / 400) / 2
    assert table["teacher"] == ["80.00 ± 1.41 s.e."]


def gaps_table(text: str) -> dict[str, list[str]]:
    """The rows of the 'Gap to the baseline' table only."""
    return table_cells(text[text.index("| method | gap @"):])


def write_face_student(folder: Path, method: str, seed: int, result: dict) -> None:
    config = {"EXPERIMENT": {"SEED": seed, "TASK": "face", "OUTPUT_DIR": f"{method}/seed{seed}"},
              "DISTILL": {"TYPE": method}, "STUDENT": {"BACKBONE": "face.iresnet18"}}
    write_run(folder / method / f"seed{seed}", config, result, result)


def test_face_gap_of_one_seed_carries_both_binomial_errors(tmp_path):
    pairs = {"lfw": 400, "cfp_fp": 100}
    write_face_student(tmp_path, "none", 0, face_sets_result({"lfw": {"14": 0.80}, "cfp_fp": {"14": 0.70}}, pairs))
    write_face_student(tmp_path, "kd", 0, face_sets_result({"lfw": {"14": 0.85}, "cfp_fp": {"14": 0.75}}, pairs))
    table = gaps_table(summary_markdown(find_runs([tmp_path])))
    assert table["method"] == ["gap @14"]
    # baseline 75.00 ± 2.50 (as above); kd 80.00 ± sqrt(.85 * .15 / 400 + .75 * .25 / 100) / 2 = 2.3419;
    # gap 5.00 ± sqrt(2.50^2 + 2.3419^2) = sqrt(11.7344) = 3.4256
    assert table["kd"] == ["+5.00 ± 3.43 s.e."]
    assert BASELINE not in table


def with_records(result: dict, records: dict[str, str]) -> dict:
    """The same entry with each set's @14 pair-by-pair record (`pair_correct`) added."""
    for name, record in records.items():
        result["sets"][name]["results"]["14"]["pair_correct"] = record
    return result


def test_face_gap_of_one_seed_is_paired_when_both_runs_carry_pair_records(tmp_path):
    pairs = {"lfw": 10, "cfp_fp": 10}
    same = "1010101010"
    base = with_records(face_sets_result({"lfw": {"14": 0.6}, "cfp_fp": {"14": 0.5}}, pairs),
                        {"lfw": "1111110000", "cfp_fp": same})
    kd = with_records(face_sets_result({"lfw": {"14": 0.8}, "cfp_fp": {"14": 0.5}}, pairs),
                      {"lfw": "1111111100", "cfp_fp": same})
    write_face_student(tmp_path, "none", 0, base)
    write_face_student(tmp_path, "kd", 0, kd)
    table = gaps_table(summary_markdown(find_runs([tmp_path])))
    # lfw: d = (0 x6, 1, 1, 0, 0), mean .2, var (8 x .04 + 2 x .64) / 9 = .17778, / 10 pairs; cfp_fp: d = 0.
    # gap (20 + 0) / 2 = 10 points; s.e. sqrt(.017778 + 0) / 2 = .066667 -> 6.67 points (unpaired it is
    # sqrt(.8 x .2 / 10 + .6 x .4 / 10 + 2 x .5 x .5 / 10) / 2 = 15.00)
    assert table["kd"] == ["+10.00 ± 6.67 s.e. (paired)"]


def test_face_gap_falls_back_to_independent_errors_when_records_do_not_match(tmp_path):
    pairs = {"lfw": 10}
    base = with_records(face_sets_result({"lfw": {"14": 0.6}}, pairs), {"lfw": "1111110000"})
    kd = face_sets_result({"lfw": {"14": 0.8}}, pairs)  # no record (an older results.json)
    write_face_student(tmp_path, "none", 0, base)
    write_face_student(tmp_path, "kd", 0, kd)
    # sqrt(.8 x .2 / 10 + .6 x .4 / 10) = .2
    assert gaps_table(summary_markdown(find_runs([tmp_path])))["kd"] == ["+20.00 ± 20.00 s.e."]


def test_face_gap_over_seeds_pairs_them_by_seed(tmp_path):
    pairs = {"lfw": 400}
    for seed, accuracy in {0: 0.70, 1: 0.80, 2: 0.75}.items():
        write_face_student(tmp_path, "none", seed, face_sets_result({"lfw": {"14": accuracy}}, pairs))
    for seed, accuracy in {0: 0.74, 1: 0.81, 2: 0.73, 3: 0.90}.items():  # seed 3 has no baseline: left out
        write_face_student(tmp_path, "a_skd", seed, face_sets_result({"lfw": {"14": accuracy}}, pairs))
    table = gaps_table(summary_markdown(find_runs([tmp_path])))
    # per-seed gaps +4, +1, -2: mean 1; sample std sqrt((9 + 0 + 9) / 2) = 3; s.e. 3 / sqrt(3) = 1.732
    assert table["a_skd"] == ["+1.00 ± 1.73 s.e., above at 2 of 3 seeds"]


def test_no_gap_table_without_a_baseline(tmp_path):
    write_face_student(tmp_path, "kd", 0, face_sets_result({"lfw": {"14": 0.85}}, {"lfw": 400}))
    assert "| method | gap @" not in summary_markdown(find_runs([tmp_path]))


def test_summary_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_runs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no run folders"):
        find_runs([tmp_path / "empty"])


def test_run_student_two_seeds_then_summary_and_curves(tmp_path):
    from data.synthetic_classification import write_cifar100

    write_cifar100(tmp_path / "data", num_classes=4, train_per_class=12, test_per_class=4, seed=3)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "EXPERIMENT": {"TASK": "classification", "OUTPUT_DIR": str(tmp_path / "out"), "DEVICE": "cpu"},
        "DATA": {"ROOT": str(tmp_path / "data"), "TRAIN": "cifar-100-python", "FORMAT": "cifar100",
                 "COLOR": "rgb", "IMAGE_SIZE": 32, "WORKERS": 0},
        "STUDENT": {"BACKBONE": "cifar.resnet8"},
        "DISTILL": {"TYPE": "none"},
        "SOLVER": {"BATCH_SIZE": 8, "LR": 0.05},
        "LOG": {"PERIOD": 1, "PROGRESS": False, "TENSORBOARD": False},
        "EVAL": {"BATCH_SIZE": 16},
    }))
    # called from elsewhere with a config path relative to the caller, as users type it
    done = subprocess.run(["bash", str(ROOT / "run_student.sh"), config.name, "--seeds", "3", "4", "--",
                           "SOLVER.MAX_ITERS", "2"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    for seed in (3, 4):
        folder = tmp_path / "out" / f"seed{seed}"
        resolved = yaml.safe_load((folder / "config.yaml").read_text())
        assert resolved["EXPERIMENT"]["SEED"] == seed and resolved["EXPERIMENT"]["OUTPUT_DIR"] == str(folder)
        assert json.loads((folder / "results.json").read_text())["last_iteration"] == 2
        assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv_path = tmp_path / "table.csv"
    shown = subprocess.run([sys.executable, str(ROOT / "test.py"), "--summary", str(tmp_path / "out"),
                            "--csv", str(csv_path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert shown.returncode == 0, shown.stderr[-2000:]
    table = table_cells(shown.stdout)
    assert table["method"] == ["resnet8 (best / last)"]
    assert "2 seeds per cell" in shown.stdout
    tops = [json.loads((tmp_path / "out" / f"seed{s}" / "results.json").read_text())["last"]["top1"]
            for s in (3, 4)]
    assert table[BASELINE][0].endswith(f" / {cell(tops)}")
    rows = list(csv.DictReader(csv_path.open()))
    assert {(r["method"], r["variant"], r["seeds"]) for r in rows} == {(BASELINE, "best", "2"),
                                                                      (BASELINE, "last", "2")}


def test_rows_in_published_order_and_one_seed(tmp_path):
    runs_dir = tmp_path / "runs"
    for folder, method in (("a_combo", "dct+kd"), ("b_kd", "kd"), ("c_none", "none"), ("d_at", "at")):
        write_run(runs_dir / folder, cifar_config(0, method, name=folder, out=folder), top1(60.0), top1(60.0))
    write_run(runs_dir / "z_teacher", {**cifar_config(0, "none", "t"), "STUDENT": {"BACKBONE": ""}},
              top1(79.0), top1(79.0), role="teacher")
    text = summary_markdown(find_runs([runs_dir]))
    assert [row for row in table_cells(text) if row not in ("method", "---")] == ["teacher", BASELINE, "kd", "at", "dct+kd"]
    assert "1 seed per cell." in text and "seeds" not in text


def test_swept_values_are_rows_with_mean_and_std(tmp_path):
    """What run_student.sh --sweep writes: <OUTPUT_DIR>/<KEY>=<V>/seed<S>."""
    runs_dir = tmp_path / "sweep"
    values = {2.0: [70.0, 71.0], 8.0: [72.0, 75.0]}
    for temperature, scores in values.items():
        for seed, score in enumerate(scores):
            folder = runs_dir / f"DISTILL.KD.TEMPERATURE={temperature}" / f"seed{seed}"
            write_run(folder, cifar_config(seed, out=str(folder), temperature=temperature), top1(score), top1(score))
    table = table_cells(summary_markdown(find_runs([runs_dir])))
    assert table["kd (DISTILL.KD.TEMPERATURE=2.0)"] == [f"{cell(values[2.0])} / {cell(values[2.0])}"]
    assert table["kd (DISTILL.KD.TEMPERATURE=8.0)"] == ["73.50 ± 1.50 / 73.50 ± 1.50"]  # (72+75)/2, |75-72|/2
