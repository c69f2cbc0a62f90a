"""Every face recipe loads; every face distiller trains one step from its YAML recipe.

The recipes name iResNet50 / MobileFaceNet; the step tests swap in `face.tiny_test`, a small stand-in
with the same `forward_features` contract (4 stride-2 stages, CBAM-style maps, F-SKD-style hints),
so a step takes milliseconds. The same steps with the real face backbones are marked slow.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from engine.partners import main as partners_main
from kd import DISTILLERS, build_distiller
from models import BACKBONES, build_network
from models.features import Features
from utility.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "face"
ALL_CONFIGS = sorted(CONFIGS.rglob("*.yaml"))
NUM_CLASSES = 6


class TinyFaceNet(nn.Module):
    """Stand-in face backbone: stem, four stride-2 stages (widths 4, 8, 8, 16), optional CBAM-style
    channel/spatial maps per stage, optional hint layers, a linear embedding of the pooled map."""

    widths = (4, 8, 8, 16)

    def __init__(self, num_features: int = 512, dropout: float = 0.0, attention: str = "none",
                 pooling: str = "E", hints: bool = False, hint_bn: bool = True) -> None:
        super().__init__()
        del dropout, pooling  # part of the face-backbone keywords; not needed here
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        inputs = (4,) + self.widths[:-1]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                          nn.PReLU(c_out))
            for c_in, c_out in zip(inputs, self.widths))
        self.attention = attention != "none"
        if self.attention:
            self.channel = nn.ModuleList(nn.Conv2d(w, w, 1, bias=False) for w in self.widths)
            self.spatial = nn.ModuleList(nn.Conv2d(2, 1, 3, padding=1, bias=False) for _ in self.widths)
        self.hints = hints
        if hints:
            self.hint_layers = nn.ModuleList(
                nn.Sequential(nn.Conv2d(w, w, 1, bias=False), *([nn.BatchNorm2d(w)] if hint_bn else []))
                for w in self.widths)
        self.fc = nn.Linear(self.widths[-1], num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).out

    def forward_features(self, x: torch.Tensor) -> Features:
        x = self.stem(x)
        stages, raw, gates, logits = [], [], [], []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if self.attention:
                a = self.channel[index](x.mean(dim=(2, 3), keepdim=True))
                x = x * torch.sigmoid(a)
                b = self.spatial[index](torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1))
                x = x * torch.sigmoid(b)
                logits.append((a, b))
                gates.append((torch.sigmoid(a), torch.sigmoid(b)))
            raw.append(x)
            stages.append(self.hint_layers[index](x) if self.hints else x)
        pooled = x.mean(dim=(2, 3))
        self.last_raw_stages = raw  # the stages before the hints, for the tests to compare against
        return Features(out=self.fc(pooled), stages=stages, pooled=pooled, attention=gates,
                        attention_logits=logits)


if "face.tiny_test" not in BACKBONES:
    BACKBONES.register("face.tiny_test")(TinyFaceNet)

TINY = ["STUDENT.BACKBONE", "face.tiny_test", "TEACHER.BACKBONE", "face.tiny_test", "DATA.IMAGE_SIZE", "32"]


# -- every recipe --------------------------------------------------------------------------------
def test_there_are_face_recipes():
    assert len(ALL_CONFIGS) >= 50


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_face_config_loads_and_names_known_components(path):
    cfg = load_config(path)
    methods = [n.strip() for n in cfg.DISTILL.TYPE.split("+")]
    for name in methods:
        DISTILLERS.get(name)
    assert cfg.EXPERIMENT.TASK == "face"
    if path.stem.startswith("teacher"):
        assert cfg.TEACHER.CHECKPOINT == ""  # a teacher run would otherwise load weights into itself
    elif any(DISTILLERS.get(n).uses_teacher for n in methods):
        assert cfg.TEACHER.CHECKPOINT.endswith("last.pt")


@pytest.mark.parametrize("config, key, value", [
    # A-SKD (face.md §1.1, §3.1, §4, §5, §9 #2 #3 #4)
    ("a_skd/student_14.yaml", "TEACHER.ATTENTION", "cbam_a_skd"),
    ("a_skd/student_14.yaml", "STUDENT.DROPOUT", 0.4),
    ("a_skd/student_14.yaml", "STUDENT.HEAD_M", 0.5),
    ("a_skd/student_14.yaml", "SOLVER.MILESTONES", [5, 10, 14, 16]),
    ("a_skd/student_14.yaml", "SOLVER.EPOCHS", 20),
    ("a_skd/student_14.yaml", "SOLVER.BATCH_SIZE", 128),
    ("a_skd/student_14.yaml", "SOLVER.NESTEROV", True),
    ("a_skd/student_14.yaml", "DATA.LOWRES.BLUR_SIGMA", [0.1, 2.0]),
    ("a_skd/student_14.yaml", "EVAL.DEGRADE_FLIPS_SEPARATELY", True),
    ("a_skd/student_14.yaml", "DISTILL.A_SKD.WEIGHT", 5.0),
    ("a_skd/student_24_tinyface.yaml", "DATA.LOWRES.SIZES", [24]),
    ("a_skd/teacher.yaml", "DATA.LOWRES.SIZES", []),
    # FSKD-v1 (§3.3, §5)
    ("f_skd_v1/student.yaml", "STUDENT.POOLING", "A"),
    ("f_skd_v1/student.yaml", "STUDENT.HEAD_S", 30.0),
    ("f_skd_v1/student.yaml", "STUDENT.HEAD_M", 0.25),
    ("f_skd_v1/student.yaml", "SOLVER.MAX_ITERS", 47001),
    ("f_skd_v1/student.yaml", "SOLVER.MILESTONES", [18000, 28000, 36000, 44000]),
    # F-SKD (§2, §3.4, §5, §9 #5)
    ("f_skd/student_cosface.yaml", "SOLVER.MAX_ITERS", 46009),
    ("f_skd/student_arcface.yaml", "SOLVER.MILESTONES", [19170, 26838, 34506, 42174]),
    ("f_skd/student_adaface.yaml", "SOLVER.MAX_ITERS", 49843),
    ("f_skd/student_adaface.yaml", "SOLVER.MILESTONES", [23004, 30672, 38340, 46008]),
    ("f_skd/student_cosface.yaml", "STUDENT.HEAD_M", 0.2),
    ("f_skd/teacher_cosface.yaml", "TEACHER.HEAD_M", 0.4),
    ("f_skd/student_cosface.yaml", "DATA.LOWRES.SIZES", [14, 28, 56, 112]),
    ("f_skd/student_cosface.yaml", "EVAL.RESOLUTIONS", [112, 56, 28, 14]),
    ("f_skd/student_cosface.yaml", "EVAL.DOWN", "bilinear"),
    ("f_skd/student_cosface.yaml", "EVAL.CROSS_RESOLUTION", True),
    ("f_skd/student_cosface_opencv.yaml", "DATA.LOWRES.BACKEND", "opencv"),
    ("f_skd/student_r18_cosface.yaml", "STUDENT.BACKBONE", "face.iresnet18"),
    ("f_skd/baselines/at_cosface.yaml", "DISTILL.AT.WEIGHT", 250.0),
    ("f_skd/baselines/a_skd_arcface.yaml", "DISTILL.A_SKD.REDUCTION", "mean"),
    # AdaDistill (adadistill.md §3, §7 #10)
    ("adadistill/adaarcdistill_ms1mv2.yaml", "DATA.COLOR", "rgb"),
    ("adadistill/adaarcdistill_ms1mv2.yaml", "SOLVER.LR_REFERENCE_BATCH", 512),
    ("adadistill/adaarcdistill_ms1mv2.yaml", "SOLVER.MILESTONES", [7, 13, 19, 24]),
    ("adadistill/adaarcdistill_ms1mv2.yaml", "SOLVER.GRAD_CLIP", 5.0),
    ("adadistill/adaarcdistill_ms1mv2.yaml", "STUDENT.HEAD", ""),
    ("adadistill/adacosdistill_ms1mv2.yaml", "DISTILL.ADADISTILL.M", 0.35),
    ("adadistill/adaarcdistill_alpha_ms1mv2.yaml", "DISTILL.ADADISTILL.WEIGHTED_ALPHA", False),
    ("adadistill/adaarcdistill_casia.yaml", "SOLVER.EPOCHS", 60),
    ("adadistill/adaarcdistill_casia.yaml", "SOLVER.MILESTONES", [39, 47, 51]),
])
def test_recipe_values_follow_the_spec(config, key, value):
    node = load_config(CONFIGS / config)
    for part in key.split("."):
        node = node[part]
    assert node == value


# -- one training step per distiller ------------------------------------------------------------------
STEP_CASES = {
    # id: (config, extra overrides, expected loss names, student has hints)
    "a_skd": ("a_skd/student_14.yaml", [], {"ce", "a_skd"}, False),
    "a_skd_fskd_gates": ("f_skd/baselines/a_skd_cosface.yaml", [], {"ce", "a_skd"}, False),
    "f_skd_table": ("f_skd/student_cosface.yaml", [], {"ce", "f_skd_point", "f_skd_cross"}, True),
    "f_skd_shuffle": ("f_skd/student_arcface.yaml", ["DATA.PARTNER", "shuffle"],
                      {"ce", "f_skd_point", "f_skd_cross"}, True),
    "f_skd_logit_adaface": ("f_skd/student_adaface.yaml", ["DISTILL.F_SKD.LOGIT_WEIGHT", "1.0"],
                            {"ce", "f_skd_point", "f_skd_cross", "f_skd_logit"}, True),
    "f_skd_r18_logit": ("f_skd/student_r18_cosface.yaml", [], {"ce", "f_skd_point", "f_skd_cross", "f_skd_logit"},
                        True),
    "f_skd_v1": ("f_skd_v1/student.yaml", [], {"ce", "f_skd_point"}, False),
    "fitnet": ("f_skd/baselines/fitnet_cosface.yaml", [], {"ce", "fitnet"}, True),
    "at": ("f_skd/baselines/at_cosface.yaml", [], {"ce", "at"}, False),
    "rkd": ("f_skd/baselines/rkd_cosface.yaml", [], {"ce", "rkd"}, False),
    "naive": ("f_skd/baselines/naive_cosface.yaml", [], {"ce"}, False),
    "adadistill": ("adadistill/adaarcdistill_ms1mv2.yaml", [], {"adadistill"}, False),
    "adacosdistill_alpha": ("adadistill/adacosdistill_alpha_ms1mv2.yaml", [], {"adadistill"}, False),
    "arcdistill": ("adadistill/arcdistill_ms1mv2.yaml", [], {"arcdistill"}, False),
    "cosdistill": ("adadistill/cosdistill_ms1mv2.yaml", [], {"cosdistill"}, False),
}


def _build(config: str, overrides: list[str]):
    cfg = load_config(CONFIGS / config, overrides)
    methods = [n.strip() for n in cfg.DISTILL.TYPE.split("+")]
    student = build_network(cfg.STUDENT, NUM_CLASSES)
    teacher = build_network(cfg.TEACHER, NUM_CLASSES) if DISTILLERS.get(methods[0]).uses_teacher else None
    return cfg, build_distiller(cfg, student, teacher, NUM_CLASSES)


def _batch(size: int, image_size: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    image = lambda: torch.randn(size, 3, image_size, image_size, generator=generator)  # noqa: E731
    index = torch.arange(10, 10 + size)
    partner_index = index + 100
    partner_index[1] = index[1]  # sample 1 has no same-identity partner
    return {"image": image(), "image_teacher": image(), "label": torch.tensor([0, 1, 1, 5])[:size],
            "index": index, "image_partner": image(), "image_partner_teacher": image(),
            "partner_index": partner_index, "partner_perm": torch.tensor([2, 0, 3, 1])[:size]}


def _train_one_step(distiller, batch, expected_names, hints):
    teacher_before = ({k: v.clone() for k, v in distiller.teacher.state_dict().items()}
                      if distiller.teacher is not None else {})
    student_before = {k: v.clone() for k, v in distiller.student.state_dict().items()}
    distiller.train()
    _, losses = distiller(batch)
    assert set(losses) == expected_names
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    total = sum(losses.values())
    optimizer = torch.optim.SGD(list(distiller.trainable_parameters()), lr=0.1, momentum=0.9)
    optimizer.zero_grad()
    total.backward()
    backbone_grads = [p.grad for n, p in distiller.student.named_parameters() if n.startswith("backbone.stem")]
    assert backbone_grads and all(g is not None and g.abs().sum() > 0 for g in backbone_grads)
    if hints:
        hint_grads = [p.grad for n, p in distiller.student.named_parameters() if "hint" in n]
        assert hint_grads and all(g is not None and g.abs().sum() > 0 for g in hint_grads)
    if distiller.teacher is not None:
        assert all(p.grad is None for p in distiller.teacher.parameters())
        teacher_ids = {id(p) for p in distiller.teacher.parameters()}
        assert not any(id(p) in teacher_ids for p in distiller.trainable_parameters())
    optimizer.step()
    for name, value in distiller.teacher.state_dict().items() if distiller.teacher is not None else ():
        assert torch.equal(value, teacher_before[name]), f"teacher {name} changed"
    assert not torch.equal(distiller.student.state_dict()["backbone.stem.weight"],
                           student_before["backbone.stem.weight"])
    return losses


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_one_training_step_from_the_recipe(case):
    config, overrides, names, hints = STEP_CASES[case]
    torch.manual_seed(0)
    cfg, distiller = _build(config, TINY + overrides)
    if case in ("arcdistill", "cosdistill"):  # AMLDistill never runs the teacher backbone
        def refuse(_):
            raise AssertionError("the teacher backbone ran")
        distiller.teacher.network.backbone.forward_features = refuse
    centres_before = distiller.criterion.weight.clone() if case.startswith("ada") else None
    _train_one_step(distiller, _batch(4, 32), names, hints)
    if centres_before is not None:
        changed = (distiller.criterion.weight != centres_before).any(dim=1)
        assert changed.tolist() == [True, True, False, False, False, True]  # labels 0, 1, 5 only
        assert "criterion.weight" in distiller.state_dict()


def test_amldistill_uses_the_teacher_head_centres():
    torch.manual_seed(0)
    _, distiller = _build("adadistill/cosdistill_ms1mv2.yaml", TINY)
    batch = _batch(4, 32)
    _, losses = distiller(batch)
    emb = distiller.student.forward_features(batch["image"]).out.double()
    centres = distiller.teacher.network.head.weight.double()
    cosine = (emb / emb.norm(dim=1, keepdim=True)) @ (centres / centres.norm(dim=1, keepdim=True)).t()
    logits = 64.0 * (cosine - 0.35 * torch.nn.functional.one_hot(batch["label"], NUM_CLASSES).double())
    expected = torch.nn.functional.cross_entropy(logits, batch["label"])
    assert losses["cosdistill"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_f_skd_distils_the_hinted_student_stages():
    torch.manual_seed(0)
    _, distiller = _build("f_skd/student_cosface.yaml", TINY)
    distiller.train()
    batch = _batch(4, 32)
    _, losses = distiller(batch)
    with torch.no_grad():
        student = distiller.student.forward_features(batch["image"])  # train-mode BN: same batch, same maps
        raw_stages = distiller.student.backbone.last_raw_stages
        teacher = distiller.teacher.network.forward_features(batch["image_teacher"])

    def point(stages):
        total = 0.0
        for s, t in zip(stages, teacher.stages):
            s, t = s.flatten(1).double(), t.flatten(1).double()
            total += (1 - (s * t).sum(1) / (s.norm(dim=1) * t.norm(dim=1))).mean().item()
        return 20.0 * total / len(stages)

    assert losses["f_skd_point"].item() == pytest.approx(point(student.stages), rel=1e-4)
    assert losses["f_skd_point"].item() != pytest.approx(point(raw_stages), rel=1e-3)


# -- F-SKD logit term (quirk #16) --------------------------------------------------------------------------
@pytest.mark.parametrize("teacher_head", [False, True])
def test_logit_term_uses_student_margin_with_teacher_weights(teacher_head):
    overrides = TINY + ["DISTILL.F_SKD.LOGIT_WEIGHT", "1.0", "DISTILL.F_SKD.CROSS_WEIGHT", "0.0",
                        "DISTILL.F_SKD.LOGIT_TEACHER_HEAD", str(teacher_head)]
    torch.manual_seed(0)
    _, distiller = _build("f_skd/student_cosface.yaml", overrides)
    labels = torch.tensor([0, 3, 4])
    images = torch.randn(3, 3, 32, 32)
    step = distiller.student_step({"image": images, "image_teacher": images, "label": labels})
    emb_t = step.teacher.out.double()
    weight_t = distiller.teacher.network.head.weight.double()
    assert not torch.allclose(weight_t, distiller.student.head.weight.double())
    cosine = (emb_t / emb_t.norm(dim=1, keepdim=True)) @ (weight_t / weight_t.norm(dim=1, keepdim=True)).t()
    margin = 0.4 if teacher_head else 0.2  # the teacher's own CosFace m, or the student's (quirk #16)
    expected_t = 32.0 * (cosine - margin * torch.nn.functional.one_hot(labels, NUM_CLASSES).double())
    assert torch.allclose(step.extra["logits_t_distill"].double(), expected_t, atol=1e-4)
    p_t = torch.softmax(expected_t / 4, dim=1)  # T^2 * batch mean of KL(p_t || p_s) at T = 4
    log_p_s = torch.log_softmax(step.logits_s.double() / 4, dim=1)
    expected_kl = 16.0 * (p_t * (p_t.log() - log_p_s)).sum(dim=1).mean()
    assert distiller.distill_losses(step)["f_skd_logit"].item() == pytest.approx(expected_kl.item(), rel=1e-4)


# -- the partner-table command end to end ----------------------------------------------------------------------
def test_partners_command_writes_a_same_identity_table(tmp_path):
    from data.recordio import build_index, encode_image, write_face_rec
    from engine.checkpoint import save_checkpoint

    rng = np.random.default_rng(0)
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 3]
    bases = rng.integers(0, 255, size=(4, 32, 32, 3))
    images = [np.clip(bases[label] + rng.integers(-40, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
              for label in labels]
    rec = tmp_path / "train.rec"
    write_face_rec(rec, [encode_image(cv2.GaussianBlur(image, (3, 3), 0)) for image in images], labels)
    build_index(rec)
    torch.manual_seed(0)
    config = CONFIGS / "f_skd/student_cosface.yaml"
    teacher = build_network(load_config(config, TINY).TEACHER, 4)
    checkpoint = tmp_path / "teacher" / "last.pt"
    save_checkpoint({"model": {f"student.{k}": v for k, v in teacher.state_dict().items()}}, checkpoint)
    code = partners_main(["--config", str(config), *TINY, "DATA.ROOT", str(tmp_path),
                       "DATA.TRAIN", "train.rec", "DATA.PARTNER_TABLE", "partners.npy", "DATA.WORKERS", "0",
                       "TEACHER.CHECKPOINT", str(checkpoint), "EXPERIMENT.DEVICE", "cpu",
                       "DISTILL.F_SKD.PARTNER_MARGIN", "-1.0"])
    assert code == 0
    partners = np.load(tmp_path / "partners.npy")
    assert partners.dtype == np.int64 and partners.shape == (9,)
    assert all(labels[p] == labels[i] for i, p in enumerate(partners))  # same identity
    assert partners[8] == 8  # a singleton identity has no partner: stored as itself


def test_partners_command_reports_a_missing_teacher(capsys):
    code = partners_main(["--config", str(CONFIGS / "f_skd/student_cosface.yaml"),
                       "TEACHER.CHECKPOINT", ""])
    assert code == 2
    assert "TEACHER.CHECKPOINT" in capsys.readouterr().err


# -- the same steps with the real face backbones ------------------------------------------------------------------
REAL = {
    "a_skd": ("a_skd/student_14.yaml", ["STUDENT.BACKBONE", "face.iresnet18", "TEACHER.BACKBONE", "face.iresnet18",
                                        "STUDENT.POOLING", "A", "TEACHER.POOLING", "A", "DATA.IMAGE_SIZE", "32"]),
    "f_skd": ("f_skd/student_cosface.yaml", ["STUDENT.BACKBONE", "face.iresnet18", "TEACHER.BACKBONE",
                                             "face.iresnet18", "STUDENT.POOLING", "A", "TEACHER.POOLING", "A",
                                             "DATA.IMAGE_SIZE", "32"]),
    "adadistill": ("adadistill/adaarcdistill_ms1mv2.yaml", ["TEACHER.BACKBONE", "face.iresnet18",
                                                            "TEACHER.POOLING", "A"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(REAL))
def test_one_training_step_with_the_real_backbones(case):
    config, overrides = REAL[case]
    torch.manual_seed(0)
    cfg, distiller = _build(config, overrides)
    _, losses = distiller(_batch(2, int(cfg.DATA.IMAGE_SIZE)))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    student_grads = [p.grad for p in distiller.student.parameters() if p.requires_grad]
    assert sum(g is not None for g in student_grads) > 0.9 * len(student_grads)
    if cfg.STUDENT.HINTS:
        assert all(p.grad is not None for n, p in distiller.student.named_parameters() if "hint_layer" in n)
    assert all(p.grad is None for p in distiller.teacher.parameters())
