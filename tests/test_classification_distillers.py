"""The at / crd / dct / askd distillers end to end: build from a config, forward, backward, combine.

Tiny stand-in backbones keep this fast; one test also runs the real CIFAR zoo (resnet8 <- resnet14).
Also loads every YAML under configs/cifar100 and configs/scene.
"""

from pathlib import Path

import pytest
import torch
from torch import nn

import models
from data.requests import BatchRequest
from kd import DISTILLERS, batch_request, build_distiller, method_names
from models.features import Features
from models.network import Network
from utility.config import load_config
from utility.errors import ConfigError

NUM_CLASSES = 5
ROOT = Path(__file__).resolve().parents[1]


class TinyNet(nn.Module):
    """Three conv stages (halving the size after the first), pooled vector and a linear classifier."""

    def __init__(self, widths=(4, 6, 8), strides=(1, 2, 2)):
        super().__init__()
        layers, channels = [], 3
        for width, stride in zip(widths, strides):
            layers.append(nn.Sequential(nn.Conv2d(channels, width, 3, stride, 1), nn.ReLU()))
            channels = width
        self.layers = nn.ModuleList(layers)
        self.fc = nn.Linear(channels, NUM_CLASSES)

    def forward_features(self, x):
        stages = []
        for layer in self.layers:
            x = layer(x)
            stages.append(x)
        pooled = x.mean(dim=(2, 3))
        return Features(out=self.fc(pooled), stages=stages, pooled=pooled)

    def forward(self, x):
        return self.forward_features(x).out


def _cfg(kind, **overrides):
    cfg = load_config(None, freeze=False)
    cfg.DATA.IMAGE_SIZE = 8
    cfg.DISTILL.TYPE = kind
    cfg.DISTILL.CRD.N_DATA = 20
    cfg.DISTILL.CRD.NCE_K = 4
    cfg.DISTILL.CRD.FEAT_DIM = 8
    for key, value in overrides.items():
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return cfg


def _batch(size=8, batch=4):
    generator = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(batch, 3, size, size, generator=generator),
        "label": torch.tensor([0, 1, 2, 3])[:batch],
        "index": torch.tensor([0, 5, 9, 13])[:batch],
        "contrast_index": torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 10], [9, 11, 12, 14, 15],
                                        [13, 16, 17, 18, 19]])[:batch],
    }


def _build(kind, student=None, teacher=None, **overrides):
    torch.manual_seed(0)
    student = student or Network(TinyNet(widths=(4, 6, 8)))
    teacher = teacher or Network(TinyNet(widths=(5, 7, 12)))
    return build_distiller(_cfg(kind, **overrides), student, teacher, NUM_CLASSES)


def _check_gradients(distiller, extra_modules, switch_mode=True):
    if switch_mode:
        distiller.train()
    _, losses = distiller(_batch())
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.student.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert not distiller.teacher.network.training
    for module in extra_modules:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    trainable = {id(p) for p in distiller.trainable_parameters()}
    assert not trainable & {id(p) for p in distiller.teacher.parameters()}
    for module in extra_modules:
        assert {id(p) for p in module.parameters()} <= trainable
    return losses


@pytest.mark.parametrize("kind,name", [("at", "at"), ("crd", "crd"), ("dct", "dct"), ("askd", "askd")])
def test_each_distiller_trains_student_and_extras_not_teacher(kind, name):
    distiller = _build(kind)
    extras = {"crd": [distiller.crd.embed_s, distiller.crd.embed_t] if kind == "crd" else [],
              "askd": [distiller.connector] if kind == "askd" else []}.get(kind, [])
    losses = _check_gradients(distiller, extras)
    assert set(losses) == {"ce", name}


def test_at_weight_and_stage_choice():
    distiller = _build("at", **{"DISTILL.AT.STAGES": [2], "DISTILL.AT.WEIGHT": 10.0})
    assert distiller.pairs == [(2, 2)]
    step = distiller.student_step(_batch())
    from kd.at import at_loss

    expected = 10.0 * at_loss(step.student.stages[2], step.teacher.stages[2])
    assert torch.allclose(distiller.distill_losses(step)["at"], expected)


def test_askd_connector_maps_student_last_stage_to_teacher_channels():
    distiller = _build("askd")
    assert distiller.connector.in_channels == 8 and distiller.connector.out_channels == 12
    assert distiller.connector.bias is not None and distiller.connector.kernel_size == (1, 1)


def test_dct_mask_comes_from_teacher_argmax():
    distiller = _build("dct")
    step = distiller.student_step(_batch())
    step.logits_t = torch.zeros(4, NUM_CLASSES)
    step.logits_t[torch.arange(4), torch.tensor([0, 4, 2, 4])] = 1.0  # teacher right on samples 0 and 2
    from kd.dct import dct_attention_loss

    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    expected = dct_attention_loss(step.student.stages, step.teacher.stages, mask)
    assert torch.allclose(distiller.distill_losses(step)["dct"], expected)


def test_dct_rejects_stage_size_mismatch_unless_aligned():
    teacher = Network(TinyNet(widths=(5, 7, 12), strides=(2, 1, 2)))  # 4, 4, 2 vs 8, 4, 2
    with pytest.raises(ConfigError, match="DISTILL.DCT.ALIGN"):
        _build("dct", teacher=teacher)
    _check_gradients(_build("dct", teacher=teacher, **{"DISTILL.DCT.ALIGN": True}), [])


def test_crd_needs_n_data_and_declares_its_negatives():
    with pytest.raises(ConfigError, match="N_DATA"):
        _build("crd", **{"DISTILL.CRD.N_DATA": 0})
    cfg = _cfg("crd", **{"DISTILL.CRD.POOL": "dct_first_n"})
    assert batch_request(cfg) == BatchRequest(contrast_negatives=4, contrast_pool="dct_first_n", teacher_view=True)
    assert batch_request(_cfg("crd+kd")).contrast_negatives == 4  # one key per fact: DISTILL.CRD.NCE_K
    with pytest.raises(ConfigError, match="NCE_K"):
        batch_request(_cfg("crd", **{"DISTILL.CRD.NCE_K": 0}))


def test_crd_state_lives_in_the_distiller_state_dict():
    distiller = _build("crd")
    distiller.train()
    distiller(_batch())
    state = distiller.state_dict()
    assert {"crd.memory_s", "crd.memory_t", "crd.params"} <= set(state)
    assert state["crd.params"][2] > 0 and state["crd.params"][3] > 0  # Z was set by the first batch


def test_combined_dct_plus_kd_has_distinct_terms():
    distiller = _build("dct+kd", **{"DISTILL.CE_WEIGHT": 0.1})
    losses = _check_gradients(distiller, [], switch_mode=False)
    assert set(losses) == {"ce", "dct", "kd"}


def test_combined_crd_plus_kd_trains_the_companion_embeddings():
    distiller = _build("kd+crd")
    crd = distiller.companions[0].crd
    losses = _check_gradients(distiller, [crd.embed_s, crd.embed_t], switch_mode=False)
    assert set(losses) == {"ce", "kd", "crd"}


def test_combined_distiller_switches_train_eval_mode():
    distiller = _build("dct+kd")
    distiller.eval()
    distiller.train()
    assert distiller.training and not distiller.teacher.network.training


@pytest.mark.parametrize("kind", ["kd", "at", "crd", "askd", "dct"])
def test_real_cifar_models_one_step(kind):
    if "cifar.resnet8" not in models.BACKBONES._entries:
        pytest.skip("CIFAR zoo not available")
    torch.manual_seed(0)
    student = Network(models.BACKBONES.build("cifar.resnet8", num_classes=NUM_CLASSES))
    teacher = Network(models.BACKBONES.build("cifar.resnet14", num_classes=NUM_CLASSES))
    distiller = build_distiller(_cfg(kind, **{"DATA.IMAGE_SIZE": 32}), student, teacher, NUM_CLASSES)
    distiller.train()
    _, losses = distiller(_batch(size=32))
    assert kind in losses and torch.isfinite(losses[kind])
    sum(losses.values()).backward()
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert student.backbone.fc.weight.grad is not None


def _yaml_files():
    return sorted(p for folder in ("configs/cifar100", "configs/scene") for p in (ROOT / folder).rglob("*.yaml"))


def test_every_classification_yaml_loads():
    files = _yaml_files()
    assert len(files) > 60
    for path in files:
        cfg = load_config(path)
        assert cfg.EXPERIMENT.TASK == "classification", path
        for name in method_names(cfg):
            assert name in DISTILLERS, path
        backbones = [cfg.STUDENT.BACKBONE, cfg.TEACHER.BACKBONE]
        for backbone in filter(None, backbones):
            assert backbone in models.BACKBONES._entries, (path, backbone)


def test_every_classification_yaml_names_a_registered_dataset():
    import data.cifar  # noqa: F401  (registers the datasets)
    import data.scene  # noqa: F401
    from data import DATASETS

    for path in _yaml_files():
        assert load_config(path).DATA.FORMAT in DATASETS._entries, path


@pytest.mark.slow
def test_every_cifar_pair_config_builds_its_distiller_with_the_real_models():
    """Each CIFAR student YAML's teacher/student pair fits its method (stage counts, sizes, channels)."""
    cache = {}
    for path in sorted((ROOT / "configs/cifar100").rglob("*_*.yaml")):
        cfg = load_config(path, freeze=False)
        if not cfg.TEACHER.BACKBONE or not cfg.STUDENT.BACKBONE or cfg.DISTILL.TYPE == "none":
            continue
        cfg.DISTILL.CRD.N_DATA = 50000
        key = (cfg.TEACHER.BACKBONE, cfg.STUDENT.BACKBONE)
        if key not in cache:
            cache[key] = tuple(Network(models.BACKBONES.build(name, num_classes=100)) for name in key)
        teacher, student = cache[key]
        distiller = build_distiller(cfg, student, teacher, 100)
        assert distiller.teacher is not None, path
