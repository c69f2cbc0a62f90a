"""sp / cc / pkt / nst / dkd: each loss against an independent NumPy computation of the spec's formula
(classification.md 2.4, 2.6, 2.7, 2.9, 2.10, 2.12b) and against values the original code (RepDistiller
@b84f547, mdistiller @a08d46f) gives on the same fixed inputs; then the distillers: weights, stage
taps, warm-up, trainable extras, combinations and degenerate input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_classification_distillers import TinyNet  # the same two-network stand-in

from kd import build_distiller
from kd.cc import cc_loss
from kd.dkd import dkd_loss
from kd.nst import nst_loss
from kd.pkt import pkt_loss
from kd.sp import sp_loss
from models.features import Features
from models.network import Network
from utility.config import load_config
from utility.errors import ConfigError

NUM_CLASSES = 5


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(array, dtype=torch.float64)


# -- independent formulas (plain loops over samples / channels) ------------------------------------
def _sp_numpy(fs: np.ndarray, ft: np.ndarray) -> float:
    batch = fs.shape[0]

    def gram(f):
        q = f.reshape(batch, -1)
        g = np.array([[np.dot(q[i], q[j]) for j in range(batch)] for i in range(batch)])
        return np.array([row / max(np.linalg.norm(row), 1e-12) for row in g])

    return float(np.sum((gram(ft) - gram(fs)) ** 2) / batch ** 2)


def _pkt_numpy(fs: np.ndarray, ft: np.ndarray, eps: float = 1e-7) -> float:
    def probabilities(x):
        x = np.array([row / (np.sqrt(np.sum(row ** 2)) + eps) for row in x])
        b = x.shape[0]
        s = np.array([[(np.dot(x[i], x[j]) + 1) / 2 for j in range(b)] for i in range(b)])
        return np.array([row / row.sum() for row in s])

    p_s, p_t = probabilities(fs), probabilities(ft)
    return float(np.mean(p_t * np.log((p_t + eps) / (p_s + eps))))


def _block_average(feat: np.ndarray, size: int) -> np.ndarray:
    factor = feat.shape[2] // size
    out = np.zeros(feat.shape[:2] + (size, size))
    for y in range(size):
        for x in range(size):
            out[:, :, y, x] = feat[:, :, y * factor:(y + 1) * factor, x * factor:(x + 1) * factor].mean(axis=(2, 3))
    return out


def _nst_numpy(fs: np.ndarray, ft: np.ndarray) -> float:
    size = min(fs.shape[2], ft.shape[2])
    fs, ft = _block_average(fs, size), _block_average(ft, size)

    def channels(f):
        v = f.reshape(f.shape[0], f.shape[1], -1)
        return v / np.maximum(np.linalg.norm(v, axis=2, keepdims=True), 1e-12)

    s, t = channels(fs), channels(ft)

    def kernel_mean(a, b):
        values = [np.dot(a[n, i], b[n, j]) ** 2 for n in range(a.shape[0])
                  for i in range(a.shape[1]) for j in range(b.shape[1])]
        return np.mean(values)

    return float(kernel_mean(t, t) + kernel_mean(s, s) - 2 * kernel_mean(s, t))


def _cc_numpy(es: np.ndarray, et: np.ndarray) -> float:
    delta = np.abs(es - et)
    return float(np.mean([np.sum(delta[b] * delta[b + 1]) for b in range(len(delta) - 1)]))


def _dkd_numpy(zs: np.ndarray, zt: np.ndarray, target: np.ndarray, alpha: float, beta: float, t: float) -> float:
    """TCKD and NCKD written from their definitions: the non-target distribution renormalised over k != y."""
    def softmax(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    tckd = nckd = 0.0
    for b, y in enumerate(target):
        p_s, p_t = softmax(zs[b] / t), softmax(zt[b] / t)
        bin_s, bin_t = np.array([p_s[y], 1 - p_s[y]]), np.array([p_t[y], 1 - p_t[y]])
        tckd += np.sum(bin_t * np.log(bin_t / bin_s))
        others = [k for k in range(len(p_s)) if k != y]
        q_s, q_t = p_s[others] / p_s[others].sum(), p_t[others] / p_t[others].sum()
        nckd += np.sum(q_t * np.log(q_t / q_s))
    batch = len(target)
    return float(alpha * tckd * t * t / batch + beta * nckd * t * t / batch)


# -- the pure losses -------------------------------------------------------------------------------
def test_sp_loss_matches_formula_for_any_shapes():
    rng = np.random.default_rng(0)
    fs, ft = rng.normal(size=(4, 3, 4, 4)), rng.normal(size=(4, 7))  # only B x B Grams meet
    got = sp_loss(_t(fs), _t(ft))
    assert got.dim() == 0 and got.dtype == torch.float64
    assert got.item() == pytest.approx(_sp_numpy(fs, ft), rel=1e-12)


def test_pkt_loss_matches_formula_and_survives_a_zero_row():
    rng = np.random.default_rng(1)
    fs, ft = rng.normal(size=(5, 6)), rng.normal(size=(5, 9))
    assert pkt_loss(_t(fs), _t(ft)).item() == pytest.approx(_pkt_numpy(fs, ft), rel=1e-12)
    fs[2] = 0.0  # an all-zero student row: cosines 0, finite loss
    got = pkt_loss(_t(fs), _t(ft))
    assert math.isfinite(got.item()) and got.item() == pytest.approx(_pkt_numpy(fs, ft), rel=1e-12)


@pytest.mark.parametrize("shape_s,shape_t", [((2, 3, 4, 4), (2, 5, 4, 4)), ((2, 3, 8, 8), (2, 4, 4, 4)),
                                             ((2, 3, 2, 2), (2, 4, 4, 4))])
def test_nst_loss_matches_formula_and_pools_the_larger_map(shape_s, shape_t):
    rng = np.random.default_rng(2)
    fs, ft = rng.normal(size=shape_s), rng.normal(size=shape_t)
    assert nst_loss(_t(fs), _t(ft)).item() == pytest.approx(_nst_numpy(fs, ft), rel=1e-10)


def test_cc_loss_pairs_consecutive_samples():
    rng = np.random.default_rng(3)
    es, et = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    assert cc_loss(_t(es), _t(et)).item() == pytest.approx(_cc_numpy(es, et), rel=1e-12)
    order = [4, 0, 3, 1, 2]  # the loss depends on batch order (reproduced, spec pitfall 5)
    assert cc_loss(_t(es[order]), _t(et[order])).item() == pytest.approx(_cc_numpy(es[order], et[order]), rel=1e-12)
    assert _cc_numpy(es[order], et[order]) != pytest.approx(_cc_numpy(es, et), rel=1e-3)


def test_cc_loss_batch_of_one_is_a_config_error_naming_the_batch_size():
    with pytest.raises(ConfigError, match="SOLVER.BATCH_SIZE"):
        cc_loss(torch.ones(1, 4), torch.zeros(1, 4))


@pytest.mark.parametrize("alpha,beta,temperature", [(1.0, 8.0, 4.0), (1.0, 2.0, 4.0), (0.5, 6.0, 1.0)])
def test_dkd_loss_matches_tckd_plus_nckd(alpha, beta, temperature):
    rng = np.random.default_rng(4)
    zs, zt = 3 * rng.normal(size=(6, 7)), 3 * rng.normal(size=(6, 7))
    target = np.array([0, 3, 6, 2, 2, 5])
    got = dkd_loss(_t(zs), _t(zt), torch.tensor(target), alpha, beta, temperature)
    assert got.dim() == 0
    assert got.item() == pytest.approx(_dkd_numpy(zs, zt, target, alpha, beta, temperature), rel=1e-10)


def test_dkd_equal_logits_give_zero_and_teacher_gets_no_gradient():
    z = torch.randn(3, 5, dtype=torch.float64)
    assert dkd_loss(z, z.clone(), torch.tensor([0, 1, 4])).item() == pytest.approx(0.0, abs=1e-12)
    zs = torch.randn(3, 5, requires_grad=True)
    zt = torch.randn(3, 5, requires_grad=True)
    dkd_loss(zs, zt, torch.tensor([0, 1, 4])).backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0 and zt.grad is None


def test_losses_equal_the_original_code_on_fixed_inputs():
    """Values printed by RepDistiller's Similarity / NSTLoss / PKT / Correlation and mdistiller's dkd_loss
    (run outside the project, float64) on these inputs."""
    fs = torch.arange(2 * 3 * 4 * 4, dtype=torch.float64).reshape(2, 3, 4, 4).sin()
    ft = torch.arange(2 * 2 * 2 * 2, dtype=torch.float64).reshape(2, 2, 2, 2).cos()
    assert sp_loss(fs, ft).item() == pytest.approx(0.04916699020021864, rel=1e-12)
    assert nst_loss(fs, ft).item() == pytest.approx(0.8303270515261915, rel=1e-12)
    ps = torch.arange(12, dtype=torch.float64).reshape(3, 4).sin()
    pt = torch.arange(15, dtype=torch.float64).reshape(3, 5).cos()
    assert pkt_loss(ps, pt).item() == pytest.approx(0.09774938390100939, rel=1e-12)
    es = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    assert cc_loss(es.sin(), es.cos()).item() == pytest.approx(2.227208492049254, rel=1e-12)
    ls = torch.arange(15, dtype=torch.float64).reshape(3, 5)
    got = dkd_loss(3 * ls.sin(), 3 * ls.cos(), torch.tensor([0, 2, 4]), 1.0, 8.0, 4.0)
    assert got.item() == pytest.approx(25.597916899260106, rel=1e-12)


def test_teacher_side_is_not_differentiated():
    fs = torch.randn(3, 2, 4, 4, requires_grad=True)
    ft = torch.randn(3, 4, 2, 2, requires_grad=True)
    for loss in (sp_loss, nst_loss):
        loss(fs, ft).backward()
    pkt_loss(fs.flatten(1), ft.flatten(1)).backward()
    assert fs.grad.abs().sum() > 0 and ft.grad is None


# -- the distillers ----------------------------------------------------------------------------------
def _build(kind, **overrides):
    cfg = load_config(None, freeze=False)
    cfg.DATA.IMAGE_SIZE = 8
    cfg.DISTILL.TYPE = kind
    for key, value in overrides.items():
        node = cfg
        for part in key.split(".")[:-1]:
            node = node[part]
        node[key.split(".")[-1]] = value
    torch.manual_seed(0)
    return build_distiller(cfg, Network(TinyNet((4, 6, 8))), Network(TinyNet((5, 7, 12))), NUM_CLASSES)


def _batch(batch=4, epoch=1):
    generator = torch.Generator().manual_seed(0)
    return {"image": torch.randn(batch, 3, 8, 8, generator=generator), "label": torch.tensor([0, 1, 2, 3, 4, 0])[:batch],
            "index": torch.arange(batch), "epoch": epoch}


@pytest.mark.parametrize("kind,weight_key,weight", [("sp", "DISTILL.SP.WEIGHT", 3000.0),
                                                    ("pkt", "DISTILL.PKT.WEIGHT", 30000.0),
                                                    ("nst", "DISTILL.NST.WEIGHT", 50.0)])
def test_feature_distillers_tap_the_documented_features(kind, weight_key, weight):
    distiller = _build(kind)
    assert distiller.weight == weight  # the RepDistiller beta is the default
    distiller = _build(kind, **{weight_key: 2.0})
    distiller.train()
    step = distiller.student_step(_batch())
    s, t = step.student, step.teacher
    expected = {"sp": lambda: sp_loss(s.stages[-1], t.stages[-1]),
                "pkt": lambda: pkt_loss(s.pooled, t.pooled),
                "nst": lambda: sum(nst_loss(a, b) for a, b in zip(s.stages, t.stages))}[kind]()
    assert torch.allclose(distiller.distill_losses(step)[kind], 2.0 * expected)
    _, losses = distiller(_batch())
    assert set(losses) == {"ce", kind}
    sum(losses.values()).backward()
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert distiller.student.backbone.layers[0][0].weight.grad.abs().sum() > 0


def test_cc_embeddings_train_live_in_the_state_dict_and_default_to_128():
    distiller = _build("cc")
    assert distiller.embed_s.out_features == distiller.embed_t.out_features == 128
    assert (distiller.embed_s.in_features, distiller.embed_t.in_features) == (8, 12)
    distiller.train()
    _, losses = distiller(_batch())
    assert set(losses) == {"ce", "cc"}
    sum(losses.values()).backward()
    trainable = {id(p) for p in distiller.trainable_parameters()}
    for module in (distiller.embed_s, distiller.embed_t):
        for p in module.parameters():
            assert id(p) in trainable and p.grad is not None and p.grad.abs().sum() > 0
    keys = set(distiller.state_dict())
    assert {"embed_s.weight", "embed_s.bias", "embed_t.weight", "embed_t.bias"} <= keys
    step = distiller.student_step(_batch())
    emb_s = distiller.embed_s(step.student.pooled)
    emb_t = distiller.embed_t(step.teacher.pooled)
    assert torch.allclose(distiller.distill_losses(step)["cc"], 0.02 * cc_loss(emb_s, emb_t))
    with pytest.raises(ConfigError, match="SOLVER.BATCH_SIZE"):
        distiller(_batch(batch=1))


@pytest.mark.parametrize("epoch,factor", [(1, 1 / 20), (10, 0.5), (20, 1.0), (200, 1.0)])
def test_dkd_warm_up_uses_the_one_based_epoch(epoch, factor):
    distiller = _build("dkd", **{"DISTILL.DKD.BETA": 2.0})
    distiller.train()
    step = distiller.student_step(_batch(epoch=epoch))
    expected = dkd_loss(step.logits_s, step.logits_t, step.labels, 1.0, 2.0, 4.0)
    assert torch.allclose(distiller.distill_losses(step)["dkd"], factor * expected)
    _, losses = distiller(_batch(epoch=epoch))
    assert set(losses) == {"ce", "dkd"}


def test_dkd_without_warm_up_and_bad_keys():
    distiller = _build("dkd", **{"DISTILL.DKD.WARMUP": 0})
    assert distiller.warmup_factor(1) == 1.0
    with pytest.raises(ConfigError, match="DISTILL.DKD.WARMUP"):
        _build("dkd", **{"DISTILL.DKD.WARMUP": -1})
    with pytest.raises(ConfigError, match="DISTILL.DKD.TEMPERATURE"):
        _build("dkd", **{"DISTILL.DKD.TEMPERATURE": 0.0})


@pytest.mark.parametrize("kind", ["pkt+kd", "sp+kd", "nst+kd", "cc+kd", "dkd+pkt", "sp+cc+nst"])
def test_methods_combine_with_distinct_loss_names(kind):
    distiller = _build(kind)
    distiller.train()
    _, losses = distiller(_batch())
    assert set(losses) == {"ce", *kind.split("+")}
    assert all(torch.isfinite(v) for v in losses.values())
    if "cc" in kind:  # a companion's embeddings are trained too
        sum(losses.values()).backward()
        owner = next(m for m in (distiller, *distiller.companions) if hasattr(m, "embed_t"))
        assert owner.embed_t.weight.grad is not None and owner.embed_t.weight.grad.abs().sum() > 0


def test_missing_teacher_features_are_config_errors():
    class NoStages(TinyNet):
        def forward_features(self, x):
            out = super().forward_features(x)
            return Features(out=out.out)

    cfg = load_config(None, freeze=False)
    cfg.DATA.IMAGE_SIZE = 8
    for kind in ("sp", "pkt", "nst", "cc"):
        cfg.DISTILL.TYPE = kind
        with pytest.raises(ConfigError, match=f"'{kind}'"):
            build_distiller(cfg, Network(TinyNet((4, 6, 8))), Network(NoStages((5, 7, 12))), NUM_CLASSES)
