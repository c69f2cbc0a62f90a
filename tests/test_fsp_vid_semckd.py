"""fsp, vid, semckd (alias ckd): each loss against formulas written out here in double precision (spec
classification.md 2.11, 2.12, 2.12b), the state-dict names the originals use, gradients into the extras,
the clear errors for degenerate input, and one real Trainer run per method on tiny synthetic CIFAR.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kd
import models
from data.synthetic_classification import write_cifar100
from kd import build_distiller
from kd.base import Probe, Step
from kd.fsp import fsp_loss
from kd.semckd import SemanticCalibrationDistillation, SemCKDLoss
from kd.vid import VIDLoss
from models.features import Features
from models.network import Network
from utility.config import load_config
from utility.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """Average of k x k blocks (the integer-ratio case of adaptive average pooling)."""
    b, c, h, _ = x.shape
    k = h // size
    return x.reshape(b, c, size, k, size, k).mean(dim=(3, 5))


# -- FSP -------------------------------------------------------------------------------------------
def test_fsp_hand_value_one_channel():
    # student: bottom 2 everywhere (2x2, pooled to 1x1: 2), top 3 -> G = 6; teacher: 1 and 1 -> G = 1
    s = [torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 1, 1), 3.0)]
    t = [torch.ones(1, 1, 2, 2), torch.ones(1, 1, 1, 1)]
    assert fsp_loss(s, t).item() == pytest.approx(25.0)


def _fsp_reference(feats_s, feats_t):
    def grams(feats):
        out = []
        for bottom, top in zip(feats[:-1], feats[1:]):
            size = min(bottom.shape[2], top.shape[2])
            bottom, top = _pool(bottom, size), _pool(top, size)
            out.append(torch.einsum("bthw,bchw->btc", top, bottom) / (size * size))
        return out

    return sum(((gs - gt) ** 2).mean() for gs, gt in zip(grams(feats_s), grams(feats_t)))


def test_fsp_matches_the_formula_with_pooling_and_sums_pairs():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4, 8, 8), (3, 5, 8, 8), (3, 6, 4, 4), (3, 7, 2, 2)]
    feats_s = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]
    feats_t = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]
    expected = _fsp_reference(feats_s, feats_t)
    assert fsp_loss(feats_s, feats_t).item() == pytest.approx(expected.item(), rel=1e-5)


def test_fsp_is_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    feats_s = [torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 6, 4, 4, generator=g)]
    feats_t = [torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 6, 4, 4, generator=g)]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the bmm would otherwise run in bf16
        loss = fsp_loss(feats_s, feats_t)
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, fsp_loss(feats_s, feats_t), rtol=1e-6)


def test_fsp_channel_mismatch_is_a_clear_error():
    with pytest.raises(ConfigError, match="fsp.*channels"):
        fsp_loss([torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 2, 2)], [torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 2, 2)])
    torch.manual_seed(0)
    student = Network(models.BACKBONES.build("cifar.resnet8", num_classes=5))
    teacher = Network(models.BACKBONES.build("cifar.resnet8x4", num_classes=5))
    cfg = load_config(None, ["DISTILL.TYPE", "fsp", "DATA.IMAGE_SIZE", "32"])
    with pytest.raises(ConfigError, match="DISTILL.TYPE 'fsp'"):
        build_distiller(cfg, student, teacher, 5)


# -- VID -------------------------------------------------------------------------------------------
def test_vid_state_dict_names_and_initial_variance():
    vid = VIDLoss(3, 4, 5)
    shapes = {k: tuple(v.shape) for k, v in vid.state_dict().items()}
    assert shapes == {"log_scale": (5,), "regressor.0.weight": (4, 3, 1, 1), "regressor.2.weight": (4, 4, 1, 1),
                      "regressor.4.weight": (5, 4, 1, 1)}
    var = torch.log(1 + torch.exp(vid.log_scale.double())) + 1e-5
    assert torch.allclose(var, torch.full((5,), 5.0, dtype=torch.float64), atol=1e-6)


def test_vid_hand_value_with_zero_regressor():
    vid = VIDLoss(2, 3, 3).double()
    for conv in (vid.regressor[0], vid.regressor[2], vid.regressor[4]):
        torch.nn.init.zeros_(conv.weight)
    target = torch.arange(3 * 4, dtype=torch.float64).reshape(1, 3, 2, 2)
    # mean 0, variance 5: 0.5 * (t^2 / 5 + ln 5) averaged over the 12 entries
    expected = sum(0.5 * (t * t / 5 + math.log(5)) for t in range(12)) / 12
    assert vid(torch.randn(1, 2, 2, 2, dtype=torch.float64), target).item() == pytest.approx(expected, rel=1e-6)


def test_vid_matches_the_formula_and_trains_log_scale():
    g = torch.Generator().manual_seed(1)
    vid = VIDLoss(3, 4, 4).double()
    with torch.no_grad():
        vid.log_scale.copy_(torch.randn(4, generator=g, dtype=torch.float64))
    feat_s = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)  # pooled to the teacher's 4x4
    feat_t = torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64)
    w0, w2, w4 = (vid.regressor[i].weight.detach()[:, :, 0, 0] for i in (0, 2, 4))
    x = _pool(feat_s, 4)
    mean = torch.einsum("oi,bihw->bohw", w4, torch.relu(torch.einsum("oi,bihw->bohw", w2,
                        torch.relu(torch.einsum("oi,bihw->bohw", w0, x)))))
    var = (torch.log(1 + torch.exp(vid.log_scale.detach())) + 1e-5).view(1, -1, 1, 1)
    expected = (0.5 * ((mean - feat_t) ** 2 / var + torch.log(var))).mean()
    loss = vid(feat_s, feat_t)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
    loss.backward()
    assert vid.log_scale.grad is not None and vid.log_scale.grad.abs().sum() > 0
    assert all(vid.regressor[i].weight.grad.abs().sum() > 0 for i in (0, 2, 4))


# -- SemCKD ----------------------------------------------------------------------------------------
def _spec_semckd_keys(num_s: int, num_t: int, batch: int, s_channels, t_channels, factor: int = 4):
    """Key -> shape from spec 2.12b's names and 2.12's layer sizes."""
    d = batch // factor
    keys = {}
    for kind, count in (("query", num_s), ("key", num_t)):
        for n in range(count):
            prefix = f"self_attention.{kind}_weight{n}"
            keys.update({f"{prefix}.linear1.weight": (2 * d, batch), f"{prefix}.linear1.bias": (2 * d,),
                         f"{prefix}.linear2.weight": (d, 2 * d), f"{prefix}.linear2.bias": (d,)})
    for i in range(num_s):
        for j in range(num_t):
            prefix, mid, out = f"self_attention.regressor{i}{j}.regressor", 2 * t_channels[j], t_channels[j]
            keys[f"{prefix}.0.weight"] = (mid, s_channels[i], 1, 1)
            keys[f"{prefix}.3.weight"] = (mid, mid, 3, 3)
            keys[f"{prefix}.6.weight"] = (out, mid, 1, 1)
            for bn in (1, 4):
                for name in ("weight", "bias", "running_mean", "running_var"):
                    keys[f"{prefix}.{bn}.{name}"] = (mid,)
                keys[f"{prefix}.{bn}.num_batches_tracked"] = ()
    return keys


def test_semckd_state_dict_is_the_original_modules():
    loss = SemCKDLoss([3, 5], [4, 6], batch_size=8)
    shapes = {k: tuple(v.shape) for k, v in loss.state_dict().items()}
    assert len(shapes) == 68
    assert shapes == _spec_semckd_keys(2, 2, 8, [3, 5], [4, 6])


def _bn_train(x, weight, bias):
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def _semckd_reference(module: SemCKDLoss, feats_s, feats_t):
    """Spec 2.12 / 2.12b written out: Gram rows -> MLPs -> softmax attention; regressors; weighted MSE."""
    p = {k: v.detach() for k, v in module.state_dict().items()}
    batch, n_s, n_t = feats_s[0].shape[0], len(feats_s), len(feats_t)

    def mlp(name, x):
        h = torch.relu(x @ p[f"self_attention.{name}.linear1.weight"].t() + p[f"self_attention.{name}.linear1.bias"])
        h = h @ p[f"self_attention.{name}.linear2.weight"].t() + p[f"self_attention.{name}.linear2.bias"]
        return h / h.norm(dim=1, keepdim=True)

    def gram(f):
        flat = f.reshape(batch, -1)
        return flat @ flat.t()

    q = [mlp(f"query_weight{i}", gram(f)) for i, f in enumerate(feats_s)]
    k = [mlp(f"key_weight{j}", gram(f)) for j, f in enumerate(feats_t)]
    total = 0.0
    for b in range(batch):
        for i in range(n_s):
            energy = torch.stack([q[i][b] @ k[j][b] for j in range(n_t)])
            weights = torch.exp(energy) / torch.exp(energy).sum()
            for j in range(n_t):
                r = f"self_attention.regressor{i}{j}.regressor"
                s, t = feats_s[i], feats_t[j]
                if s.shape[2] > t.shape[2]:
                    s = _pool(s, t.shape[2])
                else:
                    t = _pool(t, s.shape[2])
                x = torch.relu(_bn_train(F.conv2d(s, p[f"{r}.0.weight"]), p[f"{r}.1.weight"], p[f"{r}.1.bias"]))
                x = torch.relu(_bn_train(F.conv2d(x, p[f"{r}.3.weight"], padding=1), p[f"{r}.4.weight"],
                                         p[f"{r}.4.bias"]))
                x = F.conv2d(x, p[f"{r}.6.weight"])
                total = total + weights[j] * ((x[b] - t[b]) ** 2).mean()
    return total / (batch * n_s)


def test_semckd_matches_the_formula():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    module = SemCKDLoss([3, 5], [4, 6], batch_size=8).double().train()
    feats_s = [torch.randn(8, 3, 8, 8, generator=g, dtype=torch.float64),
               torch.randn(8, 5, 4, 4, generator=g, dtype=torch.float64)]
    feats_t = [torch.randn(8, 4, 4, 4, generator=g, dtype=torch.float64),
               torch.randn(8, 6, 2, 2, generator=g, dtype=torch.float64)]
    expected = _semckd_reference(module, feats_s, feats_t)
    loss = module(feats_s, feats_t)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def _probe(batch_channels=((3, 8), (5, 4)), teacher=((4, 4), (6, 2))):
    def features(spec):
        return Features(out=torch.zeros(2, 5), stages=[torch.zeros(2, c, h, h) for c, h in spec])

    return Probe(student=features(batch_channels), teacher=features(teacher), num_classes=5)


def test_semckd_short_batch_gives_a_zero_term_that_reaches_every_extra():
    cfg = load_config(None, ["DISTILL.TYPE", "semckd", "SOLVER.BATCH_SIZE", "8"])
    method = SemanticCalibrationDistillation.companion(cfg, _probe())
    assert method.semckd.batch_size == 8
    short = Features(out=torch.zeros(4, 5), stages=[torch.randn(4, 3, 8, 8), torch.randn(4, 5, 4, 4)])
    teacher = Features(out=torch.zeros(4, 5), stages=[torch.randn(4, 4, 4, 4), torch.randn(4, 6, 2, 2)])
    term = method.distill_losses(Step(batch={"label": torch.zeros(4, dtype=torch.long)}, student=short,
                                      logits_s=None, teacher=teacher))["semckd"]
    assert term.item() == 0.0
    term.backward()
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in method.semckd.parameters())


def test_semckd_batch_of_one_is_a_clear_error_and_ckd_is_the_same_method():
    cfg = load_config(None, ["DISTILL.TYPE", "ckd", "SOLVER.BATCH_SIZE", "1"])
    with pytest.raises(ConfigError, match="SOLVER.BATCH_SIZE"):
        SemanticCalibrationDistillation.companion(cfg, _probe())
    assert kd.DISTILLERS.get("ckd") is kd.DISTILLERS.get("semckd")
    assert kd.base.config_node("ckd") == "SEMCKD"


# -- YAMLs and real training runs ------------------------------------------------------------------
MY_FOLDERS = [*(f"configs/cifar100/{m}" for m in ("fsp", "vid", "semckd")),
              *(f"configs/scene/{ds}/{m}{kd_}" for ds in ("ade20k", "sun397", "mit67")
                for m in ("pkt", "vid", "semckd", "crd") for kd_ in ("", "_kd"))]


def _my_yamls():
    return sorted(p for folder in MY_FOLDERS for p in (ROOT / folder).glob("*.yaml"))


@pytest.mark.parametrize("path", _my_yamls(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_new_yaml_loads_with_its_method_and_backbones(path):
    cfg = load_config(path)
    folder = path.parent.name
    expected = folder[:-3] + "+kd" if folder.endswith("_kd") else folder
    assert cfg.DISTILL.TYPE == expected
    assert kd.method_names(cfg) == expected.split("+")
    assert cfg.EXPERIMENT.TASK == "classification"
    if path.name != "base.yaml":
        for backbone in (cfg.STUDENT.BACKBONE, cfg.TEACHER.BACKBONE):
            assert backbone in models.BACKBONES._entries, backbone
        assert path.stem == f"{cfg.TEACHER.BACKBONE.split('.')[1]}_{cfg.STUDENT.BACKBONE.split('.')[1]}"
        assert cfg.EXPERIMENT.OUTPUT_DIR.endswith(f"{path.parent.relative_to(ROOT / 'configs')}/{path.stem}")
    if "scene" in path.parts and folder.startswith(("vid", "semckd")):
        assert list(cfg.DISTILL[kd.base.config_node(folder.split("_")[0])].STAGES) == [1, 2, 3]


def test_scene_semckd_yaml_builds_on_four_stage_models_with_the_last_three_stages():
    cfg = load_config(ROOT / "configs/scene/ade20k/semckd_kd/resnet50_resnet18.yaml",
                      ["DATA.IMAGE_SIZE", "32", "SOLVER.BATCH_SIZE", "4"])
    torch.manual_seed(0)
    student = Network(models.BACKBONES.build("imagenet.resnet18", num_classes=5))
    teacher = Network(models.BACKBONES.build("imagenet.resnet18", num_classes=5))
    distiller = build_distiller(cfg, student, teacher, 5).train()
    assert distiller.stages_s == [1, 2, 3] and distiller.stages_t == [1, 2, 3]
    _, losses = distiller({"image": torch.randn(4, 3, 32, 32), "label": torch.arange(4), "index": torch.arange(4)})
    assert set(losses) == {"ce", "semckd", "kd"} and all(torch.isfinite(v) for v in losses.values())


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    """Synthetic CIFAR (4 classes, 48 training images) and a resnet14 teacher checkpoint (one step)."""
    from engine.trainer import Trainer

    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(root, num_classes=4, train_per_class=12, test_per_class=2, seed=5)
    teacher_dir = root / "teacher"
    Trainer(load_config(ROOT / "configs/cifar100/base.yaml", _tiny(root, teacher_dir, "TEACHER.BACKBONE", "cifar.resnet14")),
            role="teacher").train()
    return root, teacher_dir / "last.pt"


def _tiny(root: Path, out: Path, *extra: str) -> list[str]:
    return ["EXPERIMENT.TASK", "classification", "EXPERIMENT.OUTPUT_DIR", str(out), "EXPERIMENT.SEED", "3",
            "EXPERIMENT.DEVICE", "cpu", "DATA.ROOT", str(root), "DATA.NUM_CLASSES", "4", "DATA.WORKERS", "0",
            "SOLVER.BATCH_SIZE", "8", "SOLVER.MAX_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "100", "LOG.PERIOD", "1",
            "LOG.PROGRESS", "False", "LOG.TENSORBOARD", "False", "EVAL.BATCH_SIZE", "8", "EVAL.PERIOD", "100", *extra]


EXTRAS = {"vid": "regressors", "semckd": "semckd"}


@pytest.mark.parametrize("method", ["fsp", "vid", "semckd"])
def test_each_cifar_yaml_trains_with_the_real_trainer(cifar_run, tmp_path, method):
    from engine.trainer import Trainer

    root, teacher = cifar_run
    path = ROOT / f"configs/cifar100/{method}/resnet32x4_resnet8x4.yaml"
    extra = ["TEACHER.BACKBONE", "cifar.resnet14", "TEACHER.CHECKPOINT", str(teacher),
             "STUDENT.BACKBONE", "cifar.resnet8"]
    if method == "fsp":
        extra += ["DISTILL.FSP.INIT_EPOCHS", "0.34"]  # 6 batches per epoch: a 2-iteration init stage
    trainer = Trainer(load_config(path, _tiny(root, tmp_path, *extra)), role="student")
    extras = [] if method == "fsp" else list(getattr(trainer.distiller, EXTRAS[method]).parameters())
    before = [p.detach().clone() for p in extras]
    trainer.train()
    terms = [set(k for k in h if k.startswith("loss/") and k != "loss/total") for h in trainer.history if any(k.startswith("loss/") for k in h)]
    if method == "fsp":
        assert trainer.plan.init_iters == 2 and trainer.plan.total_iters == 4
        assert terms[:2] == [{"loss/fsp"}] * 2 and all("loss/fsp" not in t and "loss/ce" in t for t in terms[2:])
    else:
        assert all(f"loss/{method}" in t and "loss/ce" in t for t in terms) and terms
        assert any(not torch.equal(b, p.detach()) for b, p in zip(before, extras))
    if method != "fsp":  # the extras travel with the checkpoint
        saved = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
        assert any(k.startswith(f"{EXTRAS[method]}.") for k in saved), sorted(saved)[:5]


def test_semckd_mlps_take_the_per_rank_batch(monkeypatch):
    import kd.semckd as semckd

    monkeypatch.setattr(semckd.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(semckd.dist, "get_world_size", lambda: 4)
    cfg = load_config(None, ["DISTILL.TYPE", "semckd", "SOLVER.BATCH_SIZE", "32"])
    method = SemanticCalibrationDistillation.companion(cfg, _probe())
    assert method.semckd.batch_size == 8  # 32 over 4 processes
    assert method.semckd.self_attention.key_weight0.linear1.weight.shape == (4, 8)  # 8 -> 2 * (8 // 4)
