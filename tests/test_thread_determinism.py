"""EXPERIMENT.THREADS: the same CPU run gives the same numbers whatever OMP_NUM_THREADS says (the demo's table)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from data.synthetic import write_faces

ROOT = Path(__file__).resolve().parents[1]


def train(root: Path, out: Path, omp_threads: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(omp_threads), "MKL_NUM_THREADS": str(omp_threads)}
    return subprocess.run(
        [sys.executable, "train_teacher.py", "--config", "configs/demo/face_teacher.yaml",
         "EXPERIMENT.DEVICE", "cpu", "EXPERIMENT.THREADS", "2", "EXPERIMENT.OUTPUT_DIR", str(out),
         "DATA.ROOT", str(root), "EVAL.SETS", "['lfw.bin']", "EVAL.FOLDS", "2", "EVAL.ROC", "False",
         "EVAL.RESOLUTIONS", "[112]", "SOLVER.BATCH_SIZE", "8", "SOLVER.MAX_ITERS", "3", "LOG.PROGRESS", "False",
         "LOG.TENSORBOARD", "False"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_fixed_thread_count_repeats_bit_for_bit(tmp_path):
    write_faces(tmp_path / "data", identities=4, images_per_identity=4, pairs=20, seed=2, sets=("lfw",))
    weights, results = [], []
    for threads in (1, 3):
        done = train(tmp_path / "data", tmp_path / f"t{threads}", threads)
        assert done.returncode == 0, done.stderr[-2000:]
        state = torch.load(tmp_path / f"t{threads}" / "last.pt", weights_only=True)
        weights.append(state)
        results.append(json.loads((tmp_path / f"t{threads}" / "results.json").read_text())["last"])
    assert results[0]["sets"] == results[1]["sets"]

    def tensors(value, prefix=""):
        if torch.is_tensor(value):
            yield prefix, value
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from tensors(item, f"{prefix}/{key}")

    first, second = dict(tensors(weights[0])), dict(tensors(weights[1]))
    assert first.keys() == second.keys() and first
    assert all(torch.equal(first[key], second[key]) for key in first)
