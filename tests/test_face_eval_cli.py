"""`test.py` end to end on synthetic IJB-C and TinyFace; the IJB numbers recomputed from the kept image
features by a literal transcription of insightface's ijb_11.py / ijb_1n.py steps (loops, sklearn)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve
from sklearn.preprocessing import normalize

from data.ijb import load_ijb, meta_paths
from data.pairs import write_bin
from data.synthetic import face_pairs
from data.synthetic_face_eval import write_ijb, write_tinyface
from engine.checkpoint import save_checkpoint
from engine.evaluate import evaluate
from engine.summary import Run, _scores
from models import build_network
from models.network import Network
from utility.config import load_config
from utility.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/demo/face_student.yaml"
NET = ["STUDENT.WIDTH", "8", "STUDENT.EMBEDDING_SIZE", "16", "EXPERIMENT.DEVICE", "cpu", "EVAL.SETS", "[]",
       "EVAL.BATCH_SIZE", "64", "LOG.PROGRESS", "False"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "test.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("face_eval")
    write_ijb(base / "ijb", subjects=5, targets=("IJBC",), seed=3)
    write_tinyface(base / "tinyface", identities=6, distractors=8, seed=3)
    cfg = load_config(ROOT / CONFIG, NET)
    torch.manual_seed(0)
    network = Network(build_network(cfg.STUDENT, 1).backbone, None)
    checkpoint = base / "student.pt"
    save_checkpoint({"model": {f"student.{k}": v for k, v in network.state_dict().items()}}, checkpoint)
    return {"ijb": base / "ijb", "tinyface": base / "tinyface", "checkpoint": checkpoint, "base": base}


def reference_ijb_11(raw: np.ndarray, faceness, templates, medias, p1, p2, labels, fars) -> tuple:
    """ijb_11.py's default path (N1D1F1) written out step by step: ({far: TAR}, template features, ids)."""
    half = raw.shape[1] // 2
    feats = (raw[:, :half] + raw[:, half:]) * faceness[:, None]
    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), half))
    for count, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_feats, face_medias = feats[ind_t], medias[ind_t]
        media_feats = []
        for u, ct in zip(*np.unique(face_medias, return_counts=True)):
            (ind_m,) = np.where(face_medias == u)
            media_feats.append(face_feats[ind_m] if ct == 1 else np.mean(face_feats[ind_m], 0, keepdims=True))
        template_feats[count] = np.sum(np.array(media_feats), 0)
    template_feats = normalize(template_feats)
    template2id = np.zeros(max(unique_templates) + 1, dtype=int)
    template2id[unique_templates] = np.arange(len(unique_templates))
    score = np.sum(template_feats[template2id[p1]] * template_feats[template2id[p2]], -1)
    fpr, tpr, _ = roc_curve(labels, score)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    return {f"{x:g}": float(tpr[np.argmin(abs(fpr - x))]) for x in fars}, template_feats, unique_templates


def reference_ijb_1n(template_feats, unique_templates, ijb) -> dict:
    """ijb_1n.py's evaluation(): mask, argsort ranks, pooled non-mate threshold."""
    def pick(chosen, subjects):
        ids, first = np.unique(chosen, return_index=True)
        return template_feats[np.searchsorted(unique_templates, ids)], subjects[first]

    gallery, gallery_ids = pick(ijb.gallery_templates, ijb.gallery_subjects)
    probe, probe_ids = pick(ijb.probe_templates, ijb.probe_subjects)
    mask = [int(np.flatnonzero(gallery_ids == pid)[0]) for pid in probe_ids]
    similarity = probe @ gallery.T
    top = np.argsort(-similarity)
    ranks = {str(k): float(np.mean([mask[i] in top[i, :k] for i in range(len(mask))])) for k in (1, 5, 10)}
    pos = similarity[np.arange(len(mask)), mask].copy()
    similarity[np.arange(len(mask)), mask] = -2.0
    neg = np.sort(similarity[similarity > -2.0])[::-1]
    tpir = {f"{far:g}": float(np.sum(pos > neg[math.ceil(len(mask) * far) - 1]) / len(mask)) for far in (0.01, 0.1)}
    return {"rank": ranks, "tpir": tpir}


def test_ijb_and_tinyface_tables_equal_the_reference_steps(data, tmp_path):
    out, feats = tmp_path / "out", tmp_path / "features"
    result = run("--config", CONFIG, "--checkpoint", str(data["checkpoint"]), "--output", str(out), *NET,
                 "EVAL.IJB.ROOT", str(data["ijb"]), "EVAL.TINYFACE.ROOT", str(data["tinyface"]),
                 "EVAL.RESOLUTIONS", "[14, 112]", "EVAL.IJB.ONE_TO_N", "True", "EVAL.IJB.FEATURES_DIR", str(feats))
    assert result.returncode == 0, result.stderr
    assert "IJB 1:1 template verification" in result.stdout and "TinyFace closed-set" in result.stdout
    results = json.loads((out / "results.json").read_text())["last"]
    assert (out / "roc_last" / "roc_IJBC.png").is_file()
    ijb = load_ijb(data["ijb"], "IJBC", one_to_n=True)
    for column in ("14", "112"):
        raw = np.load(feats / f"IJBC_{column}.npy")
        assert raw.shape == (len(ijb), 32)
        tar, template_feats, unique = reference_ijb_11(raw, ijb.faceness, ijb.templates, ijb.medias, ijb.pair_t1,
                                                        ijb.pair_t2, ijb.pair_labels, (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1))
        found = results["ijb"]["IJBC"]["results"][column]
        assert found["tar"] == tar
        assert found["one_to_n"] == reference_ijb_1n(template_feats, unique, ijb)
    ranks = results["tinyface"]["results"]["native"]["rank"]
    assert list(ranks) == ["1", "5", "10", "20"]
    assert all(0 < ranks[a] <= ranks[b] <= 1 for a, b in zip(list(ranks), list(ranks)[1:]))
    assert results["tinyface"]["probes"] == 12 and results["tinyface"]["gallery"] == 12 + 8
    assert results["main"] == pytest.approx(np.mean([results["ijb"]["IJBC"]["results"][c]["tar"]["0.0001"]
                                                     for c in ("14", "112")]))


def test_bad_meta_line_exits_2_with_one_line_before_embedding(data, tmp_path):
    shutil.copytree(data["ijb"], tmp_path / "ijb")
    path = meta_paths(tmp_path / "ijb", "IJBC")["face_tid_mid"]
    lines = path.read_text().split("\n")
    lines[1] = "2.jpg 1 2 3"
    path.write_text("\n".join(lines))
    result = run("--config", CONFIG, "--checkpoint", str(data["checkpoint"]), "--output", str(tmp_path / "out"),
                 *NET, "EVAL.IJB.ROOT", str(tmp_path / "ijb"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ijbc_face_tid_mid.txt:2: expected 3 fields" in lines[0]
    assert not (tmp_path / "out").exists()  # failed before anything was embedded or written


def test_missing_tinyface_folder_exits_2(data, tmp_path):
    result = run("--config", CONFIG, "--checkpoint", str(data["checkpoint"]), "--output", str(tmp_path / "out"),
                 *NET, "EVAL.TINYFACE.ROOT", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "no tinyface/Testing_Set" in result.stderr


def test_nothing_to_evaluate_is_a_config_error(data, tmp_path):
    result = run("--config", CONFIG, "--checkpoint", str(data["checkpoint"]), *NET)
    assert result.returncode == 2 and "nothing to evaluate" in result.stderr


def test_shipped_recipes_evaluate_the_benchmarks():
    for name in ("adaarcdistill_ms1mv2", "adacosdistill_casia", "mobilefacenet_ms1mv2"):
        cfg = load_config(ROOT / "configs/face/adadistill" / f"{name}.yaml")
        assert cfg.EVAL.IJB.ROOT and list(cfg.EVAL.IJB.TARGETS) == ["IJBB", "IJBC"]
    cfg = load_config(ROOT / "configs/face/a_skd/student_24_tinyface.yaml")
    assert cfg.EVAL.TINYFACE.ROOT and list(cfg.EVAL.TINYFACE.RANKS) == [1, 5, 10, 20]


def _tiny_model(cfg):
    torch.manual_seed(0)
    return Network(build_network(cfg.STUDENT, 1).backbone, None).eval()


def test_periodic_evaluation_skips_the_benchmarks_when_pair_sets_exist(data, tmp_path):
    images, issame = face_pairs(20, seed=1)
    write_bin(tmp_path / "lfw.bin", list(images), issame)
    overrides = [*NET, "EVAL.SETS", f"['{tmp_path / 'lfw.bin'}']", "EVAL.FOLDS", "2", "EVAL.ROC", "False",
                 "EVAL.IJB.ROOT", str(tmp_path / "absent")]
    cfg = load_config(ROOT / CONFIG, overrides)
    periodic = evaluate(cfg, _tiny_model(cfg), "cpu", periodic=True)  # the absent IJB folder is never read
    assert "ijb" not in periodic and periodic["main"] == periodic["sets"]["lfw"]["results"]["14"]["accuracy"]
    cfg = load_config(ROOT / CONFIG, [*overrides, "EVAL.IJB.PERIODIC", "True"])
    with pytest.raises(DataError, match="absent/IJBC/loose_crop does not exist"):
        evaluate(cfg, _tiny_model(cfg), "cpu", periodic=True)


def test_alignment_size_must_fit_the_templates(data):
    cfg = load_config(ROOT / CONFIG, [*NET, "EVAL.IJB.ROOT", str(data["ijb"]), "DATA.IMAGE_SIZE", "96"])
    with pytest.raises(ConfigError, match="multiple of 112 or 128"):
        evaluate(cfg, None, "cpu")


def test_summary_columns_carry_the_benchmark_numbers():
    results = {"task": "face", "sets": {}, "main": 0.5,
               "ijb": {"IJBC": {"results": {"28": {"tar": {"0.0001": 0.5, "0.001": 0.75},
                                                   "one_to_n": {"rank": {"1": 0.25}, "tpir": {}}}}}},
               "tinyface": {"results": {"native": {"rank": {"1": 0.125, "5": 0.5}}}}}
    run = Run(Path("x"), {"DISTILL": {"TYPE": "kd"}}, {"last": results, "best": results}, "student")
    assert _scores(run, "last") == {"IJBC@28 TAR@FAR=0.0001": 50.0, "IJBC@28 TAR@FAR=0.001": 75.0,
                                    "IJBC@28 1:N rank-1": 25.0, "TinyFace@native rank-1": 12.5,
                                    "TinyFace@native rank-5": 50.0}
