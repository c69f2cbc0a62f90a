"""curves.png shows the main metrics in %; attention-map pictures show the view each network saw."""

from __future__ import annotations

import numpy as np
import torch

from data.transforms import normalize
from engine.attention_maps import _as_picture, student_resolution
from engine.curves import main_metrics, plot_training_curves
from utility.config import load_config


def test_main_metrics_only_and_in_percent(tmp_path):
    history = [
        {"iteration": 5, "loss/ce": 3.0, "lr": 0.1},
        {"iteration": 10, "loss/ce": 2.0, "lr": 0.0, "eval/main": 0.7, "eval/far_target": 0.001,
         "eval/sets/lfw/pairs": 80.0, "eval/sets/lfw/results/14/accuracy": 0.7,
         "eval/sets/lfw/results/14/tar": 0.1, "eval/sets/lfw/results/14/std": 0.05},
    ]
    assert main_metrics(history) == {"eval/sets/lfw/results/14/accuracy": "lfw@14"}
    assert main_metrics([{"iteration": 1, "eval/top1": 50.0, "eval/top5": 80.0, "eval/main": 50.0}]) == {
        "eval/top1": "top-1", "eval/top5": "top-5"}
    path = plot_training_curves(history, tmp_path / "curves.png")  # lr reaching 0 and one eval point
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_student_sees_its_training_resolution():
    cfg = load_config("configs/demo/face_student.yaml", ["EVAL.RESOLUTIONS", "[28, 14, 112]",
                                                         "DATA.LOWRES.SIZES", "[14]"])
    assert student_resolution(cfg) == 14
    cfg = load_config("configs/demo/face_student.yaml", ["EVAL.RESOLUTIONS", "[112, 28]", "DATA.LOWRES.SIZES", "[]"])
    assert student_resolution(cfg) == 28


def test_picture_undoes_the_normalisation():
    images = np.random.default_rng(0).integers(0, 256, (2, 6, 6, 3), dtype=np.uint8)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    assert np.array_equal(_as_picture(normalize(torch.as_tensor(images), mean, std), mean, std), images)
