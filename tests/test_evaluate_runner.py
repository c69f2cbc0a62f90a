"""Evaluation runners on stand-in models whose outputs reveal what they were fed, and the results files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from data.pairs import write_bin
from engine.evaluate import (
    evaluate,
    evaluate_classification,
    evaluate_verification,
    extract_pair_embeddings,
    load_verification_set_cached,
)
from engine.results import format_table, write_results
from utility.config import get_defaults


class Pixels(nn.Module):
    """The 'embedding' is the input itself, flattened: every pixel the network saw is visible."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def face_cfg(**eval_overrides):
    cfg = get_defaults()
    cfg.DATA.IMAGE_SIZE = 8
    cfg.DATA.MEAN = [0.0, 0.0, 0.0]
    cfg.DATA.STD = [1.0, 1.0, 1.0]
    cfg.DATA.WORKERS = 0
    cfg.EVAL.BATCH_SIZE = 3  # batches that split pairs and leave a short last batch
    for key, value in eval_overrides.items():
        cfg.EVAL[key] = value
    return cfg


def images_for(pairs: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(2 * pairs, 8, 8, 3), dtype=np.uint8)


def chw(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)


def nearest_8_to_4_to_8(x: np.ndarray) -> np.ndarray:
    """Down 8 -> 4 takes source index 2i, up 4 -> 8 takes i // 2: pixel (i, j) <- (2(i//2), 2(j//2))."""
    idx = 2 * (np.arange(8) // 2)
    return x[:, :, idx][:, :, :, idx]


def flip(x: np.ndarray) -> np.ndarray:
    return x[:, :, :, ::-1]


def flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


# ----------------------------------------------------------------------------------------------
# embedding extraction
# ----------------------------------------------------------------------------------------------
def test_insightface_sums_flips_in_float64():
    images = images_for(4)
    emb1, emb2 = extract_pair_embeddings(Pixels(), images, [True] * 4, face_cfg(), 8, "cpu")
    x = chw(images)
    assert emb1.dtype == np.float64 and emb1.shape == (4, 3 * 8 * 8)
    np.testing.assert_allclose(emb1, flat(x[0::2]).astype(np.float64) + flat(flip(x[0::2])), rtol=0, atol=1e-12)
    np.testing.assert_allclose(emb2, flat(x[1::2]).astype(np.float64) + flat(flip(x[1::2])), rtol=0, atol=1e-12)


def test_skd_concatenates_flips():
    images = images_for(4)
    emb1, emb2 = extract_pair_embeddings(Pixels(), images, [False] * 4, face_cfg(PROTOCOL="skd"), 8, "cpu")
    x = chw(images)
    assert emb1.shape == (4, 2 * 3 * 8 * 8)
    np.testing.assert_array_equal(emb1, np.concatenate([flat(x[0::2]), flat(flip(x[0::2]))], 1))
    np.testing.assert_array_equal(emb2, np.concatenate([flat(x[1::2]), flat(flip(x[1::2]))], 1))


def test_normalisation_uses_mean_and_std():
    cfg = face_cfg(PROTOCOL="skd")
    cfg.DATA.MEAN = [0.5, 0.25, 0.0]
    cfg.DATA.STD = [0.5, 0.5, 2.0]
    images = images_for(2)
    emb1, _ = extract_pair_embeddings(Pixels(), images, [True] * 2, cfg, 8, "cpu")
    x = chw(images)[0::2]
    expected = (x - np.array([0.5, 0.25, 0.0], np.float32)[:, None, None]) / np.array([0.5, 0.5, 2.0],
                                                                                        np.float32)[:, None, None]
    np.testing.assert_allclose(emb1[:, : 3 * 64], flat(expected), atol=1e-6)


def test_low_resolution_degrades_then_flips():
    images = images_for(3)
    emb1, emb2 = extract_pair_embeddings(Pixels(), images, [True] * 3, face_cfg(PROTOCOL="skd"), 4, "cpu")
    low = nearest_8_to_4_to_8(chw(images))
    np.testing.assert_array_equal(emb1, np.concatenate([flat(low[0::2]), flat(flip(low[0::2]))], 1))
    np.testing.assert_array_equal(emb2, np.concatenate([flat(low[1::2]), flat(flip(low[1::2]))], 1))


def test_degrade_flips_separately_degrades_the_flipped_image():
    images = images_for(3)
    cfg = face_cfg(PROTOCOL="skd", DEGRADE_FLIPS_SEPARATELY=True)
    emb1, _ = extract_pair_embeddings(Pixels(), images, [True] * 3, cfg, 4, "cpu")
    x = chw(images)[0::2]
    separate = np.concatenate([flat(nearest_8_to_4_to_8(x)), flat(nearest_8_to_4_to_8(flip(x)))], 1)
    np.testing.assert_array_equal(emb1, separate)
    # floor-index nearest is not mirror-symmetric, so the two orders really differ
    together = np.concatenate([flat(nearest_8_to_4_to_8(x)), flat(flip(nearest_8_to_4_to_8(x)))], 1)
    assert not np.array_equal(separate, together)


def test_cross_resolution_keeps_the_left_image_at_full_resolution():
    images = images_for(3)
    cfg = face_cfg(PROTOCOL="skd")
    emb1, emb2 = extract_pair_embeddings(Pixels(), images, [True] * 3, cfg, 4, "cpu", cross_resolution=True)
    x = chw(images)
    np.testing.assert_array_equal(emb1, np.concatenate([flat(x[0::2]), flat(flip(x[0::2]))], 1))
    low = nearest_8_to_4_to_8(x[1::2])
    np.testing.assert_array_equal(emb2, np.concatenate([flat(low), flat(flip(low))], 1))


def test_model_mode_is_restored_and_no_graph_is_built():
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 4), nn.BatchNorm1d(4))
    model.train()
    emb1, _ = extract_pair_embeddings(model, images_for(2), [True, False], face_cfg(), 8, "cpu")
    assert model.training
    assert np.isfinite(emb1).all()  # BN in train mode would use batch statistics; eval mode is deterministic
    model.eval()
    again, _ = extract_pair_embeddings(model, images_for(2), [True, False], face_cfg(), 8, "cpu")
    np.testing.assert_allclose(emb1, again, atol=1e-6)


def test_image_count_must_match_pairs():
    with pytest.raises(Exception, match="pairs"):
        extract_pair_embeddings(Pixels(), images_for(2), [True] * 3, face_cfg(), 8, "cpu")


# ----------------------------------------------------------------------------------------------
# evaluate_verification end to end, on a real .bin written by the data package
# ----------------------------------------------------------------------------------------------
def write_face_set(path, pairs=20, seed=0):
    """Genuine pairs: an image and a copy with +-2 noise; impostors: two unrelated images. Images are
    constant on aligned 2 x 2 blocks, so nearest 8 -> 4 -> 8 leaves them unchanged (cross-resolution
    pairs stay as close as same-resolution ones)."""
    rng = np.random.default_rng(seed)

    def blocks(small):
        return np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)

    images, issame = [], []
    for pair in range(pairs):
        first = rng.integers(0, 256, size=(4, 4, 3))
        same = pair % 2 == 0
        second = first + rng.integers(-2, 3, size=first.shape) if same else rng.integers(0, 256, size=(4, 4, 3))
        images += [blocks(np.clip(first, 0, 255).astype(np.uint8)), blocks(np.clip(second, 0, 255).astype(np.uint8))]
        issame.append(same)
    write_bin(path, images, issame, quality=100)
    return path


def test_evaluate_verification_end_to_end(tmp_path):
    set_path = write_face_set(tmp_path / "data" / "tiny.bin")
    cfg = face_cfg(SETS=["tiny.bin"], RESOLUTIONS=[8, 4], CROSS_RESOLUTION=True)
    cfg.DATA.ROOT = str(tmp_path / "data")
    out = tmp_path / "out"
    results = evaluate_verification(cfg, Pixels(), "cpu", output_dir=out)
    assert results["task"] == "face" and results["protocol"] == "insightface"
    table = results["sets"]["tiny"]["results"]
    assert list(table) == ["8", "4", "4 cross"]
    assert results["sets"]["tiny"]["pairs"] == 20
    for column in table.values():
        assert column["accuracy"] == 1.0 and column["std"] == 0.0  # genuine copies vs unrelated images
        assert len(column["fold_accuracies"]) == 10 and len(column["thresholds"]) == 10
    # main: mean over sets and same-resolution columns only
    assert results["main"] == pytest.approx((table["8"]["accuracy"] + table["4"]["accuracy"]) / 2)
    assert (out / "roc_tiny.png").read_bytes()[:4] == b"\x89PNG"
    json.dumps(results)  # JSON-serialisable as it is
    # cached per file: a second load returns the very same arrays
    first = load_verification_set_cached(cfg, "tiny.bin")[1]
    assert load_verification_set_cached(cfg, str(set_path))[1] is first
    # evaluate() dispatches on EXPERIMENT.TASK
    assert evaluate(cfg, Pixels(), "cpu")["main"] == results["main"]


def test_evaluate_verification_accuracy_reflects_the_model(tmp_path):
    write_face_set(tmp_path / "tiny.bin")

    class Blind(nn.Module):
        """Sees only the image mean: useless at telling these random faces apart."""

        def forward(self, x):
            return torch.stack([x.mean((1, 2, 3)), torch.ones_like(x[:, 0, 0, 0])], 1)

    cfg = face_cfg(SETS=[str(tmp_path / "tiny.bin")], RESOLUTIONS=[8], ROC=False)
    results = evaluate_verification(cfg, Blind(), "cpu", output_dir=tmp_path / "out")
    assert results["sets"]["tiny"]["results"]["8"]["accuracy"] < 1.0
    assert not (tmp_path / "out" / "roc_tiny.png").exists()


def test_missing_set_names_the_path(tmp_path):
    cfg = face_cfg(SETS=["nowhere/lfw.bin"])
    cfg.DATA.ROOT = str(tmp_path)
    with pytest.raises(Exception, match="lfw.bin"):
        evaluate_verification(cfg, Pixels(), "cpu")


# ----------------------------------------------------------------------------------------------
# classification
# ----------------------------------------------------------------------------------------------
# logits per sample (6 samples, 6 classes); labels chosen so ranks are known by hand
LOGITS = torch.tensor([
    [9.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # label 0: rank 1
    [9.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # label 5: rank 2
    [0.0, 6.0, 5.0, 4.0, 3.0, 2.0],  # label 4: rank 4
    [0.0, 6.0, 5.0, 4.0, 3.0, 2.0],  # label 0: rank 6
    [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # label 5: rank 1
    [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # label 1: rank 5
])
LABELS = [0, 5, 4, 0, 5, 1]


class IndexDataset:
    """Images carry their sample index in pixel (0, 0, 0)."""

    def __len__(self):
        return len(LABELS)

    def __getitem__(self, index):
        image = np.zeros((4, 4, 3), dtype=np.uint8)
        image[0, 0, 0] = index
        return {"image": image, "label": LABELS[index], "index": index}


class LookupModel(nn.Module):
    """Logits of the sample whose index is in channel 0, pixel (0, 0), plus channel 1's value on class 0."""

    def forward(self, x):
        shift = torch.zeros(len(x), 6)
        shift[:, 0] = x[:, 1, 0, 0]
        return LOGITS[x[:, 0, 0, 0].round().long()] + shift


def plain_transform(batch):
    return {"image": batch["image"].permute(0, 3, 1, 2).float(), "num_crops": 1}


def ten_crop_transform(batch):
    images = batch["image"].permute(0, 3, 1, 2).float().repeat_interleave(10, dim=0)
    # crop j shifts class 0 by (j - 4.5) * 20: zero on average, but any single crop reorders the ranking
    images[:, 1, 0, 0] = (torch.arange(10).repeat(len(batch["image"])).float() - 4.5) * 20.0
    return {"image": images, "num_crops": 10}


def cls_cfg():
    cfg = get_defaults()
    cfg.EXPERIMENT.TASK = "classification"
    cfg.DATA.WORKERS = 0
    cfg.DATA.PIN_MEMORY = False
    cfg.EVAL.BATCH_SIZE = 4
    return cfg


def test_classification_top1_top5_by_hand():
    results = evaluate_classification(cls_cfg(), LookupModel(), "cpu", dataset=IndexDataset(),
                                      transform=plain_transform)
    # ranks 1, 2, 4, 6, 1, 5 -> top-1: 2/6, top-5: 5/6
    assert results["top1"] == pytest.approx(100 * 2 / 6)
    assert results["top5"] == pytest.approx(100 * 5 / 6)
    assert results["main"] == results["top1"] and results["samples"] == 6
    # per-class top-1: class 0: 1/2, class 1: 0/1, class 4: 0/1, class 5: 1/2 -> mean 0.25
    assert results["mca"] == pytest.approx(25.0)


def test_classification_averages_ten_crops():
    results = evaluate_classification(cls_cfg(), LookupModel(), "cpu", dataset=IndexDataset(),
                                      transform=ten_crop_transform)
    assert results["top1"] == pytest.approx(100 * 2 / 6)
    assert results["top5"] == pytest.approx(100 * 5 / 6)


# ----------------------------------------------------------------------------------------------
# results files
# ----------------------------------------------------------------------------------------------
def face_result(acc8, std8, acc14, std14, tar8, iteration):
    def cell(acc, std, tar):
        return {"accuracy": acc, "std": std, "tar": tar, "far": 0.001, "fold_accuracies": [acc] * 10}

    return {
        "task": "face", "protocol": "skd", "far_target": 0.001, "iteration": iteration,
        "sets": {
            "lfw": {"path": "lfw.bin", "pairs": 6000,
                    "results": {"112": cell(acc8, std8, tar8), "14": cell(acc14, std14, None)}},
            "agedb_30": {"path": "agedb_30.bin", "pairs": 6000, "results": {"112": cell(0.95, 0.01, 0.5)}},
        },
        "main": (acc8 + acc14 + 0.95) / 3,
    }


def test_format_table_face_single_result():
    text = format_table(face_result(0.99312, 0.004, 0.9, 0.0123, 0.9871, 100))
    assert "| set | 112 | 14 |" in text
    assert "| lfw | 99.31 ± 0.40 | 90.00 ± 1.23 |" in text
    assert "| agedb_30 | 95.00 ± 1.00 | – |" in text
    assert "TAR (%) at FAR = 0.001" in text
    assert "| lfw | 98.71 | – |" in text  # no TAR at 14 px


def test_write_results_last_and_best_side_by_side(tmp_path):
    summary = {"last": face_result(0.99, 0.004, 0.9, 0.01, 0.98, 1000),
               "best": face_result(0.995, 0.003, 0.92, 0.02, 0.99, 600),
               "best_iteration": 600, "last_iteration": 1000}
    markdown = write_results(summary, tmp_path, extra={"experiment": "f_skd_r50"})
    text = markdown.read_text()
    assert "- experiment: f_skd_r50" in text
    assert "| set | 112 (last @ 1000) | 112 (best @ 600) | 14 (last @ 1000) | 14 (best @ 600) |" in text
    assert "| lfw | 99.00 ± 0.40 | 99.50 ± 0.30 | 90.00 ± 1.00 | 92.00 ± 2.00 |" in text
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["best"]["sets"]["lfw"]["results"]["14"]["accuracy"] == 0.92
    assert stored["experiment"] == "f_skd_r50"


def test_format_table_classification_last_and_best():
    summary = {"last": {"task": "classification", "top1": 73.456, "top5": 92.1, "mca": 70.0, "main": 73.456},
               "best": {"task": "classification", "top1": 74.0, "top5": 92.5, "main": 74.0}}
    text = format_table(summary)
    assert "| checkpoint | top-1 (%) | top-5 (%) | mean class acc. (%) |" in text
    assert "| last | 73.46 | 92.10 | 70.00 |" in text
    assert "| best | 74.00 | 92.50 | – |" in text
