"""Verification metrics against hand-worked examples and naive re-implementations of the references.

Naive versions here follow the reference code's shape (one comparison per grid threshold, Python
sorting for the interpolation) and share nothing with `engine.evaluate`'s sorted-count search.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.evaluate import (
    fold_slices,
    interp_slinear_scipy181,
    pair_scores,
    plot_roc,
    roc_curve_points,
    tar_at_far,
    verification_accuracy,
)


# ----------------------------------------------------------------------------------------------
# naive references
# ----------------------------------------------------------------------------------------------
def naive_folds(n, folds):
    """Fold id per pair, as sklearn's KFold(shuffle=False) assigns them."""
    base, extra = divmod(n, folds)
    ids = []
    for fold in range(folds):
        ids += [fold] * (base + (1 if fold < extra else 0))
    return np.array(ids)


def naive_insightface(emb1, emb2, issame, folds=10):
    e1 = emb1 / np.linalg.norm(emb1, axis=1, keepdims=True)
    e2 = emb2 / np.linalg.norm(emb2, axis=1, keepdims=True)
    dist = ((e1 - e2) ** 2).sum(1)
    grid = np.arange(0, 4, 0.01)
    fold_id = naive_folds(len(issame), folds)
    accs, ths = [], []
    for k in range(folds):
        train, test = fold_id != k, fold_id == k
        best_acc, best_t = -1.0, None
        for t in grid:
            pred = dist[train] < t
            acc = np.mean(pred == issame[train])
            if acc > best_acc:  # keeps the first maximum
                best_acc, best_t = acc, t
        accs.append(np.mean((dist[test] < best_t) == issame[test]))
        ths.append(best_t)
    return accs, ths


def naive_skd(fl, fr, issame, folds=10, cmp_dtype=np.float64):
    flags = np.where(issame, 1, -1)
    fold_id = naive_folds(len(issame), folds)
    grid = np.array([k / 10000 for k in range(-10000, 10001)])
    accs, ths = [], []
    for k in range(folds):
        val, test = fold_id != k, fold_id == k
        mu = np.vstack([fl[val], fr[val]]).mean(0)
        l, r = fl - mu, fr - mu
        l = l / np.linalg.norm(l, axis=1, keepdims=True)
        r = r / np.linalg.norm(r, axis=1, keepdims=True)
        s = (l * r).sum(1)
        sv, fv = s[val], flags[val]
        g = grid.astype(cmp_dtype)
        counts = (sv[fv == 1][:, None] > g[None, :]).sum(0) + (sv[fv == -1][:, None] < g[None, :]).sum(0)
        t = grid[counts == counts.max()].mean()
        tc = cmp_dtype(t)
        st, ft = s[test], flags[test]
        accs.append(((ft == 1) & (st > tc)).sum() / len(st) + ((ft == -1) & (st < tc)).sum() / len(st))
        ths.append(t)
    return accs, ths


def slinear_181(x, y, u):
    """Piecewise-linear reading of scipy 1.8.1 interp1d(kind='slinear') with repeated x values."""
    pts = sorted(zip(x, y), key=lambda p: p[0])  # stable, as mergesort
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if u == xs[-1]:
        return ys[-1] if xs[-2] != xs[-1] else 0.0
    i = max(j for j in range(len(xs)) if xs[j] <= u)
    return ys[i] + (u - xs[i]) * (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])


def naive_val(emb1, emb2, issame, far_target=1e-3, folds=10):
    e1 = emb1 / np.linalg.norm(emb1, axis=1, keepdims=True)
    e2 = emb2 / np.linalg.norm(emb2, axis=1, keepdims=True)
    dist = ((e1 - e2) ** 2).sum(1)
    grid = np.arange(0, 4, 0.001)
    fold_id = naive_folds(len(issame), folds)
    vals, fars = [], []
    for k in range(folds):
        train, test = fold_id != k, fold_id == k
        imp = dist[train][~issame[train]]
        far_train = [float(np.sum(imp < t)) / len(imp) for t in grid]
        t_star = slinear_181(far_train, list(grid), far_target) if max(far_train) >= far_target else 0.0
        d, s = dist[test], issame[test]
        vals.append(np.sum((d < t_star) & s) / np.sum(s))
        fars.append(np.sum((d < t_star) & ~s) / np.sum(~s))
    return float(np.mean(vals)), float(np.mean(fars))


def unit(angle_deg):
    a = math.radians(angle_deg)
    return [math.cos(a), math.sin(a)]


# ----------------------------------------------------------------------------------------------
# folds
# ----------------------------------------------------------------------------------------------
def test_fold_slices_are_contiguous_kfold_blocks():
    slices = fold_slices(23, 10)
    assert [(s.start, s.stop) for s in slices] == [(0, 3), (3, 6), (6, 9), (9, 11), (11, 13), (13, 15),
                                                   (15, 17), (17, 19), (19, 21), (21, 23)]
    assert [(s.start, s.stop) for s in fold_slices(6000, 10)][:2] == [(0, 600), (600, 1200)]


# ----------------------------------------------------------------------------------------------
# insightface protocol, hand-worked
# ----------------------------------------------------------------------------------------------
def insightface_example():
    """20 pairs, fold k = pairs 2k, 2k+1. Left (1, 0) everywhere. Genuine pairs (even) at cos 0.8
    (squared distance 0.4), impostors (odd) at cos 0 (distance 2.0); exceptions: genuine pair 0 at
    cos 0.6 (distance 0.8) and impostor pair 7 at cos 0.8 (distance 0.4)."""
    left = np.tile([1.0, 0.0], (20, 1))
    right = np.array([[0.8, 0.6] if i % 2 == 0 else [0.0, 1.0] for i in range(20)])
    right[0] = [0.6, 0.8]
    right[7] = [0.8, 0.6]
    issame = np.array([i % 2 == 0 for i in range(20)])
    return left, right, issame


def test_insightface_hand_worked():
    left, right, issame = insightface_example()
    result = verification_accuracy(left * 3.0, right * 0.5, issame)  # scale does not matter: L2-normalised
    # fold 0: train (pair 0 out) is separable except impostor 7 at 0.4; best t = first grid value above
    # 0.4 -> pair 0 (0.8) is called different: 1/2. Fold 3: train perfect for t in (0.8, 2];
    # first grid value above 0.8 -> impostor 7 (0.4) accepted: 1/2. Other folds: t just above 0.8 -> 2/2.
    expected = [0.5, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert result["fold_accuracies"] == pytest.approx(expected)
    assert result["mean"] == pytest.approx(0.9)
    assert result["std"] == pytest.approx(0.2)  # ddof 0: sqrt((8 * 0.1^2 + 2 * 0.4^2) / 10); ddof 1 gives 0.2108
    assert 0.40 <= result["thresholds"][0] <= 0.41 + 1e-9
    assert all(0.80 <= t <= 0.81 + 1e-9 for t in result["thresholds"][1:])
    # and exactly what the reference loop picks (first argmax, "same" iff dist < t)
    accs, ths = naive_insightface(left, right, issame)
    assert result["fold_accuracies"] == accs
    assert result["thresholds"] == ths


def test_insightface_first_argmax_threshold():
    # separable everywhere: genuine 0.4, impostors 2.0 -> every t in (0.4, 2.0] is best; the first wins
    left = np.tile([1.0, 0.0], (20, 1))
    right = np.array([[0.8, 0.6] if i % 2 == 0 else [0.0, 1.0] for i in range(20)])
    issame = np.array([i % 2 == 0 for i in range(20)])
    result = verification_accuracy(left, right, issame)
    assert result["mean"] == 1.0 and result["std"] == 0.0
    assert all(0.40 <= t <= 0.41 + 1e-9 for t in result["thresholds"])


def test_insightface_matches_naive_on_random_and_torch_inputs():
    rng = np.random.default_rng(0)
    n = 157  # not divisible by 10
    emb1 = rng.normal(size=(n, 16))
    issame = rng.random(n) < 0.5
    emb2 = np.where(issame[:, None], emb1 + rng.normal(scale=0.9, size=(n, 16)), rng.normal(size=(n, 16)))
    result = verification_accuracy(emb1, emb2, issame)
    accs, ths = naive_insightface(emb1, emb2, issame)
    assert result["fold_accuracies"] == pytest.approx(accs, abs=0)
    assert result["thresholds"] == ths
    assert result["mean"] == pytest.approx(np.mean(accs))
    as_torch = verification_accuracy(torch.from_numpy(emb1), torch.from_numpy(emb2), torch.from_numpy(issame))
    assert as_torch == result


def test_contiguous_folds_with_remainder_decide_membership():
    # 23 pairs: folds of 3, 3, 3, 2, ... Only genuine pair 2 is hard (cos -0.6: far beyond any threshold
    # the other pairs choose), so only the fold holding pair 2 loses accuracy: fold 0 with 3 pairs.
    left = np.tile([1.0, 0.0], (23, 1))
    right = np.array([[0.8, 0.6] if i % 2 == 0 else [0.0, 1.0] for i in range(23)])
    right[2] = [-0.6, 0.8]
    issame = np.array([i % 2 == 0 for i in range(23)])
    for protocol in ("insightface", "skd"):
        result = verification_accuracy(left, right, issame, protocol=protocol)
        assert result["fold_accuracies"] == pytest.approx([2 / 3] + [1.0] * 9), protocol
        mean = (2 / 3 + 9) / 10
        std = math.sqrt(((2 / 3 - mean) ** 2 + 9 * (1 - mean) ** 2) / 10)
        assert result["mean"] == pytest.approx(mean) and result["std"] == pytest.approx(std)


# ----------------------------------------------------------------------------------------------
# skd protocol, hand-worked
# ----------------------------------------------------------------------------------------------
def skd_example():
    """Every fold = pair 2k: L (1, 0), R (4, 3) (cosine exactly 0.8) and pair 2k+1: L (-5, 0), R (0, -3)
    (cosine exactly 0). The four vectors of a fold sum to zero, so every training mean is exactly 0
    and the centred cosines stay 0.8 and 0: both exact grid values."""
    left = np.array([[1.0, 0.0] if i % 2 == 0 else [-5.0, 0.0] for i in range(20)])
    right = np.array([[4.0, 3.0] if i % 2 == 0 else [0.0, -3.0] for i in range(20)])
    issame = np.array([i % 2 == 0 for i in range(20)])
    return left, right, issame


def test_skd_tie_mean_threshold_and_strict_inequalities():
    left, right, issame = skd_example()
    result = verification_accuracy(left, right, issame, protocol="skd")
    assert result["fold_accuracies"] == [1.0] * 10
    # best grid values: 0 < t < 0.8 strictly (t = 0 misses the impostors' 0 < t, t = 0.8 the genuine
    # 0.8 > t), i.e. k = 1..7999, mean 0.4. First-argmax would give 0.0001; ">=" would give 0.40005;
    # "<=" 0.39995.
    assert result["thresholds"] == pytest.approx([0.4] * 10, abs=1e-12)
    accs, ths = naive_skd(left, right, issame)
    assert result["fold_accuracies"] == accs and result["thresholds"] == pytest.approx(ths, abs=0)


def test_skd_hand_worked_with_a_mislabelled_pair():
    left, right, issame = skd_example()
    issame = issame.copy()
    issame[1] = True  # pair 1 scores 0 but is now "same": fold 0's test gets 1/2
    result = verification_accuracy(left, right, issame, protocol="skd")
    assert result["fold_accuracies"] == pytest.approx([0.5] + [1.0] * 9)
    assert result["mean"] == pytest.approx(0.95)
    assert result["std"] == pytest.approx(0.15)  # sqrt((0.45^2 + 9 * 0.05^2) / 10)
    # folds 1..9 train on pair 1 as well: t in (0, 0.8) still gives 17/18, t just below 0 only 10/18
    assert result["thresholds"] == pytest.approx([0.4] * 10, abs=1e-12)


def test_skd_centres_on_the_training_folds_only():
    left, right, issame = skd_example()
    shift = np.array([10.0, -7.0])
    # adding the same vector to every feature changes nothing: each fold subtracts its own training mean
    result = verification_accuracy(left + shift, right + shift, issame, protocol="skd")
    assert result["fold_accuracies"] == [1.0] * 10
    assert result["thresholds"] == pytest.approx([0.4] * 10, abs=1e-9)


def test_skd_float32_features_compare_with_float32_thresholds():
    # Genuine pairs L (1, 0), R (3, 4): cosine 3/5, in float32 0.6000000238 = float32(0.6). The reference
    # kept float32 features and NumPy 1.x compared them with float32-rounded thresholds, so t = 0.6 is
    # NOT below the genuine score: best grid = k 1..5999 (mean 0.3); float64 comparisons would add 0.6.
    left = np.array([[1.0, 0.0] if i % 2 == 0 else [-4.0, 0.0] for i in range(20)], dtype=np.float32)
    right = np.array([[3.0, 4.0] if i % 2 == 0 else [0.0, -4.0] for i in range(20)], dtype=np.float32)
    issame = np.array([i % 2 == 0 for i in range(20)])
    result = verification_accuracy(left, right, issame, protocol="skd")
    assert result["thresholds"] == pytest.approx([0.3] * 10, abs=1e-9)
    wide = verification_accuracy(left.astype(np.float64), right.astype(np.float64), issame, protocol="skd")
    assert wide["thresholds"] == pytest.approx([0.3] * 10, abs=1e-9)  # 3/5 is exactly the double 0.6


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_skd_matches_naive_with_ties(dtype):
    rng = np.random.default_rng(1)
    n = 64
    # small integer features: many equal cosines, plateaus in the accuracy curve
    fl = rng.integers(-2, 3, size=(n, 3)).astype(dtype)
    issame = rng.random(n) < 0.5
    fr = np.where(issame[:, None], fl + rng.integers(-1, 2, size=(n, 3)), rng.integers(-2, 3, size=(n, 3)))
    fr = fr.astype(dtype)
    result = verification_accuracy(fl, fr, issame, protocol="skd")
    accs, ths = naive_skd(fl, fr, issame, cmp_dtype=np.float32 if dtype == np.float32 else np.float64)
    assert result["fold_accuracies"] == pytest.approx(accs, abs=1e-15)
    assert result["thresholds"] == pytest.approx(ths, abs=1e-15)


def test_skd_matches_naive_on_continuous_features():
    rng = np.random.default_rng(2)
    n = 95
    fl = rng.normal(size=(n, 8))
    issame = rng.random(n) < 0.5
    fr = np.where(issame[:, None], fl + rng.normal(scale=1.2, size=(n, 8)), rng.normal(size=(n, 8)))
    result = verification_accuracy(fl, fr, issame, protocol="skd")
    accs, ths = naive_skd(fl, fr, issame)
    assert result["fold_accuracies"] == pytest.approx(accs, abs=1e-15)
    assert result["thresholds"] == pytest.approx(ths, abs=1e-15)


def test_bad_inputs_raise():
    left, right, issame = skd_example()
    with pytest.raises(ValueError, match="protocol"):
        verification_accuracy(left, right, issame, protocol="lfw")
    with pytest.raises(ValueError, match="issame"):
        verification_accuracy(left, right, issame[:-1])
    with pytest.raises(ValueError, match="folds"):
        verification_accuracy(left[:5], right[:5], issame[:5])


# ----------------------------------------------------------------------------------------------
# VAL@FAR with scipy-1.8.1 slinear semantics
# ----------------------------------------------------------------------------------------------
def test_slinear_hand_cases_with_duplicates():
    x = [0.0, 0.0, 0.001, 0.001, 0.002]
    y = [10.0, 11.0, 12.0, 13.0, 14.0]
    assert interp_slinear_scipy181(np.array(x), np.array(y), 0.0005) == pytest.approx(11.5)  # from the last x=0
    assert interp_slinear_scipy181(np.array(x), np.array(y), 0.001) == pytest.approx(13.0)  # last duplicate
    assert interp_slinear_scipy181(np.array(x), np.array(y), 0.0015) == pytest.approx(13.5)
    assert interp_slinear_scipy181(np.array(x), np.array(y), 0.002) == pytest.approx(14.0)  # unique maximum
    # a repeated maximum is a zero-width last interval: SciPy 1.8.1 returns 0
    assert interp_slinear_scipy181(np.array([0.0, 0.5, 1.0, 1.0]), np.array([1.0, 2.0, 3.0, 4.0]), 1.0) == 0.0
    with pytest.raises(ValueError):
        interp_slinear_scipy181(np.array(x), np.array(y), 0.003)


def test_slinear_matches_piecewise_reading_on_far_curves():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(2, 40))
        x = np.sort(rng.integers(0, 8, size=n) / 8.0)  # monotone with many repeats, like FAR(t)
        y = np.sort(rng.random(n)) * 4
        u = float(rng.choice(np.r_[x, rng.uniform(x[0], x[-1], size=3)]))
        assert interp_slinear_scipy181(x, y, u) == pytest.approx(slinear_181(list(x), list(y), u), rel=1e-12,
                                                                  abs=1e-15)


def test_slinear_agrees_with_scipy_without_duplicates():
    interpolate = pytest.importorskip("scipy.interpolate")
    x = np.array([0.0, 0.1, 0.25, 0.7, 1.0])
    y = np.array([0.0, 0.3, 0.35, 2.0, 4.0])
    for u in (0.0, 0.05, 0.25, 0.6, 1.0):
        assert interp_slinear_scipy181(x, y, u) == pytest.approx(float(interpolate.interp1d(x, y, kind="slinear")(u)))


def random_pairs(seed, n=230, noise=0.8):
    rng = np.random.default_rng(seed)
    emb1 = rng.normal(size=(n, 12))
    issame = rng.random(n) < 0.5
    emb2 = np.where(issame[:, None], emb1 + rng.normal(scale=noise, size=(n, 12)), rng.normal(size=(n, 12)))
    return emb1, emb2, issame


@pytest.mark.parametrize("far", [1e-3, 0.05, 0.3])
def test_tar_at_far_matches_naive(far):
    emb1, emb2, issame = random_pairs(4)
    result = tar_at_far(emb1, emb2, issame, far=far)
    tar, achieved = naive_val(emb1, emb2, issame, far_target=far)
    assert result["tar"] == pytest.approx(tar, abs=1e-12)
    assert result["far"] == pytest.approx(achieved, abs=1e-12)
    assert result["far_target"] == far and len(result["fold_tar"]) == 10


def test_tar_at_far_repeated_maximum_far_gives_threshold_zero():
    # impostors all within distance 2 (cos >= 0): FAR reaches 1 well before t = 4 and stays there, so
    # interpolating at FAR = 1 hits a repeated maximum -> t* = 0 (SciPy 1.8.1) -> nothing accepted
    left = np.tile([1.0, 0.0], (20, 1))
    right = np.array([[0.8, 0.6] if i % 2 == 0 else [0.6, 0.8] for i in range(20)])
    issame = np.array([i % 2 == 0 for i in range(20)])
    result = tar_at_far(left, right, issame, far=1.0)
    assert result["thresholds"] == [0.0] * 10
    assert result["tar"] == 0.0 and result["far"] == 0.0
    assert naive_val(left, right, issame, far_target=1.0) == (0.0, 0.0)


def test_tar_at_far_unreachable_far_gives_threshold_zero():
    # impostors exactly opposite (distance 4): FAR is 0 on the whole grid [0, 4) -> t* = 0
    left = np.tile([1.0, 0.0], (20, 1))
    right = np.array([[0.8, 0.6] if i % 2 == 0 else [-1.0, 0.0] for i in range(20)])
    issame = np.array([i % 2 == 0 for i in range(20)])
    result = tar_at_far(left, right, issame)
    assert result["thresholds"] == [0.0] * 10 and result["tar"] == 0.0


def test_tar_at_far_fold_without_genuine_pairs_is_skipped():
    emb1, emb2, issame = random_pairs(5, n=40, noise=0.1)
    issame = issame.copy()
    issame[:4] = False  # fold 0 (pairs 0..3) has no genuine pair: no TAR there, no crash
    emb2[:4] = np.random.default_rng(6).normal(size=(4, 12))
    result = tar_at_far(emb1, emb2, issame, far=0.1)
    assert result["fold_tar"][0] is None
    defined = [v for v in result["fold_tar"] if v is not None]
    assert len(defined) == 9 and result["tar"] == pytest.approx(np.mean(defined))


# ----------------------------------------------------------------------------------------------
# ROC
# ----------------------------------------------------------------------------------------------
def test_roc_curve_points_by_hand():
    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    issame = np.array([True, True, False, True, False])
    fpr, tpr, thresholds = roc_curve_points(scores, issame)
    # thresholds +inf, 0.9, 0.8, 0.3, 0.1; "same" iff score >= t
    assert thresholds[0] == np.inf and list(thresholds[1:]) == [0.9, 0.8, 0.3, 0.1]
    assert list(tpr) == pytest.approx([0, 1 / 3, 2 / 3, 1, 1])
    assert list(fpr) == pytest.approx([0, 0, 0.5, 0.5, 1])


def test_pair_scores_and_plot(tmp_path):
    left, right, issame = insightface_example()
    scores = pair_scores(left, right)
    assert scores[0] == pytest.approx(0.6) and scores[1] == pytest.approx(0.0) and scores[2] == pytest.approx(0.8)
    fpr, tpr, _ = roc_curve_points(scores, issame)
    path = plot_roc({"112 px": (fpr, tpr), "14 px": (fpr, tpr * 0.5)}, tmp_path / "roc" / "lfw.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("protocol", ["insightface", "skd"])
def test_per_pair_decisions_add_up_to_each_folds_accuracy(protocol):
    rng = np.random.default_rng(3)
    n = 203  # folds of 21 and 20 pairs
    issame = np.arange(n) % 2 == 0
    emb1 = rng.normal(size=(n, 8))
    emb2 = np.where(issame[:, None], emb1 + rng.normal(scale=1.0, size=(n, 8)), rng.normal(size=(n, 8)))
    result = verification_accuracy(emb1, emb2, issame, protocol=protocol)
    correct = np.asarray(result["correct"])
    assert correct.shape == (n,) and correct.dtype == bool
    stops = np.cumsum([21] * 3 + [20] * 7)
    for fold, (start, stop) in enumerate(zip(np.r_[0, stops[:-1]], stops)):
        assert correct[start:stop].mean() == pytest.approx(result["fold_accuracies"][fold], abs=1e-12)


def test_per_pair_decisions_by_hand():
    # same pairs identical (squared distance 0), different ones orthogonal (2), except same pair 7,
    # orthogonal too: every fold's threshold lies in (0, 2], so pair 7 alone is judged "different"
    n = 20
    issame = np.arange(n) % 2 == 1
    emb1 = np.tile(np.eye(4)[0], (n, 1))
    emb2 = np.where(issame[:, None], emb1, np.eye(4)[1])
    emb2[7] = np.eye(4)[2]
    correct = verification_accuracy(emb1, emb2, issame)["correct"]
    assert correct == [i != 7 for i in range(n)]
