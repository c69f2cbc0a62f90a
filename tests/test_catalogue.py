"""`--list` on the three CLIs, the dry run's config sections, MACs beside FLOPs, DataLoader workers."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data import DATASETS
from engine.catalogue import catalogue, method_defaults, recipes, used_sections
from engine.session import compute_label, flops_per_image
from kd import DISTILLERS
from models import BACKBONES, HEADS
from utility.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cli", ["train_student.py", "train_teacher.py", "test.py"])
def test_list_needs_no_config(cli):
    done = subprocess.run([sys.executable, cli, "--list"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "distillers" in done.stdout and "recipes" in done.stdout


def test_catalogue_names_everything_registered():
    text = catalogue()
    lines = text.splitlines()
    for name in DISTILLERS.names():
        assert any(line.split("  (")[0] == f"  {name}" for line in lines), name
        for key, default, _ in method_defaults(name, DISTILLERS.get(name)):
            assert any(line.strip().startswith(f"DISTILL.{name.upper()}.{key} = {default!r}") for line in lines)
    assert "DISTILL.KD.TEMPERATURE = 4.0" in text  # the schema's default, written out
    for name in BACKBONES.names():
        assert name.partition(".")[2] in text
    for name in HEADS.names() + DATASETS.names():
        assert name in text
    grouped = recipes()
    assert "resnet32x4_resnet8x4" in grouped["cifar100/kd"] and "face_student" in grouped["demo"]
    assert all("base" not in names for names in grouped.values())
    assert lines.index("  cifar100:") < lines.index("    kd/: " + ", ".join(grouped["cifar100/kd"]))


def test_listed_keys_are_the_declared_ones_with_their_docs():
    from kd import DISTILLERS

    assert method_defaults("kd", DISTILLERS.get("kd")) == [
        ("TEMPERATURE", 4.0, "softmax temperature T (loss scaled by T^2)"), ("WEIGHT", 1.0, "weight of the KL term")]
    shared = dict((key, value) for key, value, _ in method_defaults("cosdistill", DISTILLERS.get("cosdistill")))
    assert shared["S"] == 64.0 and shared["M"] == 0.45  # cosdistill reads AdaDistill's node
    assert method_defaults("none", DISTILLERS.get("none")) == []


def test_dry_run_sections():
    cfg = load_config(ROOT / "configs/demo/face_student.yaml", ["DISTILL.TYPE", "kd+a_skd"])
    shown = used_sections(cfg, "student", ["kd", "a_skd"])
    assert "  KD:\n" in shown and "  A_SKD:\n" in shown and "CRD:" not in shown and "TEACHER:" in shown
    teacher = used_sections(load_config(ROOT / "configs/demo/face_teacher.yaml"), "teacher", ["none"])
    assert "DISTILL:" not in teacher and "STUDENT:" not in teacher and "TEACHER:" in teacher


def test_flops_and_macs_by_hand():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False))
    # output 6 x 6 x 4, each a 3 x 3 x 3 dot product: 432 outputs x 27 multiply-accumulates = 3888 MACs
    assert flops_per_image(conv, 8, torch.device("cpu")) == 2 * 3888
    assert compute_label(2 * 3888).startswith("0.000 GFLOPs")
    assert compute_label(3_000_000_000) == "3.000 GFLOPs (1.500 GMACs, the 'FLOPs' of KD papers' tables)/image"


def test_workers_capped_at_the_cores_and_said_once(monkeypatch, caplog):
    import data.loader as loader

    monkeypatch.setattr(loader, "available_cores", lambda: 2)
    loader._note_capped.cache_clear()
    cfg = load_config(ROOT / "configs/demo/face_base.yaml", ["DATA.WORKERS", "8"])
    with caplog.at_level(logging.INFO, logger="data.loader"):
        assert loader.worker_count(cfg) == 2 and loader.worker_count(cfg) == 2
    assert sum("DATA.WORKERS 8" in r.getMessage() for r in caplog.records) == 1
    assert loader.worker_count(load_config(ROOT / "configs/demo/face_base.yaml", ["DATA.WORKERS", "1"])) == 1
