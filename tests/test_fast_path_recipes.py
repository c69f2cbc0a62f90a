"""Every recipe family on the fast path: bf16 autocast + torch.compile (+ channels_last where the CPU
allows it), two real steps.

For each method (face: A-SKD, F-SKD with both partner modes, FitNet, AT, RKD, KD, AdaDistill and
AMLDistill, with Partial FC where the method trains a margin head; CIFAR: every classification
distiller in `kd.DISTILLERS` and combinations; scene: DCT, DCT+KD) two `Trainer`s are built from the
recipe at tiny widths on synthetic data read through the real readers: a plain fp32 eager one and one
with `SOLVER.PRECISION bf16` and `SOLVER.FAST_PATH all`. Both take the same two batches from the same
initial weights, and the checks are:

- no error, and no recompilation after the first step (torch.compile frames counted by a counting
  backend; graph breaks counted by dynamo), also after an evaluation has switched to eval mode and back;
- every loss term within bf16 tolerance of the fp32 eager step, and returned as float32;
- margin heads compute in fp32 under autocast: each head call during the step equals the head
  recomputed in fp32 from the same input to fp32 precision (a bf16 margin is off by ~1e-2);
- evaluation runs outside autocast: every backbone call during `Trainer.evaluate` sees autocast off
  and returns float32.

The default (CI) run takes two cases (A-SKD on a stand-in face network, CIFAR KD); the rest are `slow`. The backend defaults to
`aot_eager` (dynamo + AOTAutograd: graph breaks, recompilations and autocast dtypes are decided there;
inductor's C++ code generation takes over a minute per network on a 2-core CPU);
`DISTILLERY_COMPILE_BACKEND=inductor` runs the real backend and `DISTILLERY_TEST_DEVICE=cuda` runs on a
GPU (`bench/gpu_check.sh` sets both).
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from test_face_distillers import TinyFaceNet  # noqa: F401  (registers face.tiny_test)
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import kd
from data.synthetic import write_faces
from data.synthetic_classification import write_cifar100, write_scene
from engine.checkpoint import save_checkpoint
from engine.fast_path import cpu_bf16_channels_last_is_unsafe
from engine.trainer import Trainer
from models import build_network
from models.partial_fc import PartialFC
from utility.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DEVICE = os.environ.get("DISTILLERY_TEST_DEVICE", "cpu")
BACKEND = os.environ.get("DISTILLERY_COMPILE_BACKEND", "aot_eager")

#: registered methods that need face data (margin heads, CBAM maps, hints, partners, class centres);
#: every other registered distiller is run on CIFAR, so methods added later are picked up here
FACE_ONLY = {"a_skd", "f_skd", "adadistill", "arcdistill", "cosdistill", "fitnet"}  # fitnet: hinted face stages
#: bf16 tolerance of a loss term against the fp32 eager step on the same weights (8 mantissa bits, a few
#: layers deep). Both runs use a small SOLVER.LR (LR below; a case may set its own): at the recipes'
#: rates one update on a loss of ~100 (RKD, A-SKD) amplifies bf16 gradient rounding into 20-60 %
#: differences at step 2 (fp32 compiled vs eager alone already differ by 0.3 % there), which would
#: measure the recipe's chaos, not the fast path. The second step gets a slightly wider band for the
#: update made with bf16 gradients. Face cases use 1e-4, not 1e-3: their margin heads (s = 64) give
#: gradient norms of ~200 at the stem, so even there one step moves CE from 17.3 to 11.3; at 1e-3
#: bf16's 10-30 % gradient rounding in the first layers left the FitNet + Partial FC step-2 CE at 9.56
#: against fp32's 6.01.
TOLERANCES = [(5e-2, 1e-2), (8e-2, 2e-2)]
LR = {"face": ["SOLVER.LR", "0.0001"], "cifar": ["SOLVER.LR", "0.001"], "scene": ["SOLVER.LR", "0.001"]}

COMMON = ["EXPERIMENT.DEVICE", DEVICE, "EXPERIMENT.SEED", "3", "DATA.WORKERS", "0", "SOLVER.MAX_ITERS", "3",
          "SOLVER.CHECKPOINT_PERIOD", "1000", "LOG.PROGRESS", "False", "LOG.TENSORBOARD", "False",
          "EVAL.PERIOD", "0", "SOLVER.WARMUP_ITERS", "0"]
FACE_NET = ["BACKBONE", "face.iresnet18", "WIDTH", "8", "EMBEDDING_SIZE", "32"]
FACE = ([f"STUDENT.{k}" if i % 2 == 0 else k for i, k in enumerate(FACE_NET)]
        + [f"TEACHER.{k}" if i % 2 == 0 else k for i, k in enumerate(FACE_NET)]
        + ["SOLVER.BATCH_SIZE", "4", "EVAL.SETS", "[lfw.bin]", "EVAL.BATCH_SIZE", "20", "EVAL.ROC", "False",
           "EVAL.IJB.ROOT", "", "DATA.TRAIN", "train.rec", "DATA.NUM_CLASSES", "6", "STUDENT.DROPOUT", "0.0"])
CIFAR = ["TEACHER.BACKBONE", "cifar.resnet8x4", "STUDENT.BACKBONE", "cifar.resnet8", "DATA.NUM_CLASSES", "4",
         "SOLVER.BATCH_SIZE", "8", "EVAL.BATCH_SIZE", "16", "DATA.TRAIN", "cifar-100-python"]
SCENE = ["TEACHER.BACKBONE", "imagenet.resnet18", "STUDENT.BACKBONE", "imagenet.resnet18", "DATA.NUM_CLASSES", "3",
         "DATA.IMAGE_SIZE", "64", "DATA.RESIZE", "72", "SOLVER.BATCH_SIZE", "4", "EVAL.BATCH_SIZE", "6",
         "TEACHER.PRETRAINED", ""]
#: channels_last stays off where oneDNN's AVX-512 bf16 kernels would corrupt memory (the engine refuses it)
CHANNELS_LAST = not (DEVICE == "cpu" and cpu_bf16_channels_last_is_unsafe())
FAST = ["SOLVER.PRECISION", "bf16", "SOLVER.FAST_PATH", "all"] if CHANNELS_LAST else \
    ["SOLVER.PRECISION", "bf16", "SOLVER.FAST_PATH", "switches", "SOLVER.COMPILE", "True"]
PLAIN = ["SOLVER.PRECISION", "fp32", "SOLVER.FAST_PATH", "switches", "SOLVER.COMPILE", "False",
         "SOLVER.CHANNELS_LAST", "False"]


@dataclass(frozen=True)
class Case:
    domain: str  # face | cifar | scene
    config: str  # recipe, relative to configs/
    overrides: tuple[str, ...] = ()
    quick: bool = False  # part of the default (CI) run


PFC = ("SOLVER.PARTIAL_FC", "True")
#: the default run's face case: the stand-in face backbone of the face-distiller tests (four stages,
#: CBAM-style maps) instead of iResNet-18, whose tracing alone takes ~40 s on 2 cores
TINY_FACE = ("STUDENT.BACKBONE", "face.tiny_test", "TEACHER.BACKBONE", "face.tiny_test", "DATA.IMAGE_SIZE", "32",
             "STUDENT.WIDTH", "64", "TEACHER.WIDTH", "64")  # 64: no width keyword
FACE_CASES = {
    "a_skd_tiny": Case("face", "face/a_skd/student_14.yaml", TINY_FACE, quick=True),
    "a_skd": Case("face", "face/a_skd/student_14.yaml"),
    "a_skd_partial_fc": Case("face", "face/a_skd/student_14.yaml", PFC),
    "f_skd_table_partial_fc": Case("face", "face/f_skd/student_cosface.yaml", PFC),
    "f_skd_shuffle": Case("face", "face/f_skd/student_arcface.yaml", ("DATA.PARTNER", "shuffle")),
    "f_skd_shuffle_partial_fc": Case("face", "face/f_skd/student_arcface.yaml", ("DATA.PARTNER", "shuffle", *PFC)),
    "fitnet_partial_fc": Case("face", "face/f_skd/baselines/fitnet_cosface.yaml", PFC),
    "at_partial_fc": Case("face", "face/f_skd/baselines/at_cosface.yaml", PFC),
    # RKD's mean-normalised distances over a batch of 4 are bf16-sensitive: 3.4 % off at the first step;
    # at the second, after a 1e-4 update 10 %, after a 1e-5 update 2 % (fp32 compiled = fp32 eager exactly)
    "rkd_partial_fc": Case("face", "face/f_skd/baselines/rkd_arcface.yaml", (*PFC, "SOLVER.LR", "0.00001")),
    "kd_face": Case("face", "demo/face_student.yaml"),
    "adadistill": Case("face", "face/adadistill/adaarcdistill_ms1mv2.yaml"),
    "adacosdistill": Case("face", "face/adadistill/adacosdistill_ms1mv2.yaml"),
    "arcdistill": Case("face", "face/adadistill/arcdistill_ms1mv2.yaml"),
    "cosdistill": Case("face", "face/adadistill/cosdistill_ms1mv2.yaml"),
}


def _cifar_case(method: str) -> Case:
    """The method's own resnet32x4 -> resnet8x4 recipe when it has one, else the KD recipe retyped."""
    if method == "none":
        return Case("cifar", "cifar100/baseline/resnet8x4.yaml")
    own = ROOT / "configs" / "cifar100" / method / "resnet32x4_resnet8x4.yaml"
    if own.is_file():
        return Case("cifar", str(own.relative_to(ROOT / "configs")), quick=method == "kd")
    return Case("cifar", "cifar100/kd/resnet32x4_resnet8x4.yaml", ("DISTILL.TYPE", method))


CIFAR_CASES = {f"cifar_{name}": _cifar_case(name) for name in kd.DISTILLERS.names() if name not in FACE_ONLY}
#: FSP compares stem + stage maps channel by channel, so it needs a pair of equal widths (the recipe's
#: resnet32x4 -> resnet8x4); CIFAR's tiny resnet8x4 -> resnet8 pair differs ([32, 64, 128, 256] vs
#: [16, 16, 32, 64]) and is refused with a ConfigError. resnet14 -> resnet8 has equal widths.
CIFAR_CASES["cifar_fsp"] = Case("cifar", "cifar100/fsp/resnet32x4_resnet8x4.yaml",
                                ("TEACHER.BACKBONE", "cifar.resnet14"))
CIFAR_CASES["cifar_dct+kd"] = Case("cifar", "cifar100/kd/resnet32x4_resnet8x4.yaml", ("DISTILL.TYPE", "dct+kd"))
CIFAR_CASES["cifar_crd+kd"] = Case("cifar", "cifar100/crd/resnet32x4_resnet8x4.yaml", ("DISTILL.TYPE", "crd+kd"))
SCENE_CASES = {
    "scene_dct": Case("scene", "scene/mit67/dct/resnet50_resnet18.yaml"),
    "scene_dct+kd": Case("scene", "scene/mit67/dct_kd/resnet50_resnet18.yaml"),
}
CASES = {**FACE_CASES, **CIFAR_CASES, **SCENE_CASES}


def test_the_cases_cover_every_registered_method():
    covered = set()
    for case_id, case in CASES.items():
        cfg = load_config(ROOT / "configs" / case.config, list(case.overrides))
        covered |= {n.strip() for n in cfg.DISTILL.TYPE.split("+")}
        assert case_id.startswith("cifar_") or case.domain != "cifar"
    assert covered == set(kd.DISTILLERS.names())
    assert sum(case.quick for case in CASES.values()) == 2  # face and CIFAR in the default run


# -- data and teacher checkpoints ------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_roots(tmp_path_factory) -> dict[str, Path]:
    """Tiny synthetic sets in the real formats: faces (.rec/.idx + .bin), CIFAR-100 pickles, a scene list."""
    roots = {name: tmp_path_factory.mktemp(name) for name in ("face", "cifar", "scene")}
    write_faces(roots["face"], identities=6, images_per_identity=4, pairs=20, seed=1, sets=("lfw",))
    labels = np.repeat(np.arange(6), 4)  # same-identity partner: the next image of the identity
    np.save(roots["face"] / "partners.npy", np.array([i + 1 if i % 4 < 3 else i - 3 for i in range(24)]))
    assert (labels[np.load(roots["face"] / "partners.npy")] == labels).all()
    write_cifar100(roots["cifar"], num_classes=4, train_per_class=8, test_per_class=4, seed=3)
    roots["scene_lists"] = write_scene(roots["scene"], num_classes=3, train_per_class=4, val_per_class=2,
                                       seed=1, image_size=72, style="mit67")
    return roots


def _config(case: Case, roots: dict, out: Path, mode: list[str]):
    path = ROOT / "configs" / case.config
    if case.domain == "face":
        data = [*FACE, "DATA.ROOT", str(roots["face"]), "DATA.PARTNER_TABLE", "partners.npy"]
    elif case.domain == "cifar":
        data = [*CIFAR, "DATA.ROOT", str(roots["cifar"]), "DISTILL.CRD.NCE_K", "8"]
    else:
        lists = roots["scene_lists"]
        data = [*SCENE, "DATA.ROOT", str(lists["root"]), "DATA.TRAIN", str(lists["train"]),
                "DATA.VAL", str(lists["val"])]
    overrides = [*COMMON, *data, *LR[case.domain], *case.overrides,
                 "EXPERIMENT.OUTPUT_DIR", str(out), *mode]
    cfg = load_config(path, overrides)
    if cfg.TEACHER.BACKBONE and cfg.DISTILL.TYPE != "none":  # a teacher checkpoint in the trainer's layout
        torch.manual_seed(11)
        teacher = build_network(cfg.TEACHER, int(cfg.DATA.NUM_CLASSES))
        checkpoint = out.parent / "teacher.pt"
        save_checkpoint({"model": {f"student.{k}": v for k, v in teacher.state_dict().items()}}, checkpoint)
        cfg = load_config(path, [*overrides, "TEACHER.CHECKPOINT", str(checkpoint)])
    return cfg


# -- observation -------------------------------------------------------------------------------------
def _watch_heads(distiller, failures: list[str]) -> list:
    """Hooks asserting that every margin head computes in fp32 under autocast: its output equals the same
    head (a copy taken before the call) run in fp32 without autocast on the same input."""
    handles = []
    networks = [distiller.student, getattr(distiller.teacher, "network", None)]
    for network in networks:
        head = getattr(network, "head", None)
        if head is None or isinstance(head, PartialFC):
            continue
        saved = {"reference": copy.deepcopy(head)}  # taken before any hook is attached

        def before(module, args, saved=saved):
            saved["reference"].load_state_dict(module.state_dict())  # AdaFace's batch statistics too
            saved["args"] = [a.detach().clone() if torch.is_tensor(a) else a for a in args]

        def after(module, args, output, saved=saved):
            reference_head, (embedding, *rest) = saved["reference"], saved["args"]
            with torch.autocast(embedding.device.type, enabled=False), torch.no_grad():
                expected = reference_head(embedding.float(), *rest)
            if output.dtype != torch.float32:
                failures.append(f"{type(module).__name__} returned {output.dtype}")
            elif not torch.allclose(output.detach(), expected, rtol=1e-4, atol=1e-4 * getattr(module, "s", 1.0)):
                failures.append(f"{type(module).__name__} differs from its fp32 computation by "
                                f"{(output.detach() - expected).abs().max().item():.3g}")

        handles += [head.register_forward_pre_hook(before), head.register_forward_hook(after)]
    return handles


def _watch_evaluation(trainer, seen: list) -> object:
    def record(module, args, output):
        out = output.out if hasattr(output, "out") else output
        seen.append((torch.is_autocast_enabled(out.device.type), out.dtype))

    return trainer.distiller.student.backbone.register_forward_hook(record)


def _compile_with(monkeypatch) -> CompileCounterWithBackend:
    """Every torch.compile in the trainer goes through one counting backend."""
    counter = CompileCounterWithBackend(BACKEND)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counter))
    if BACKEND == "inductor":  # dropout masks from the eager RNG stream, as in the fp32 reference
        monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    return counter


def _two_batches(trainer) -> list[dict]:
    trainer.loader.set_epoch(0)
    trainer.loader.set_start(0)
    iterator = iter(trainer.loader)
    return [next(iterator), next(iterator)]


def _step(trainer, batch, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # the same dropout draws in both trainers
    total, terms = trainer.train_step(batch)
    trainer.iteration += 1
    return {**terms, "total": total}


def assert_fast_path_case(case_id: str, roots, tmp_path, monkeypatch) -> None:
    case = CASES[case_id]
    torch._dynamo.reset()
    counters.clear()
    plain = Trainer(_config(case, roots, tmp_path / "plain", PLAIN), role="student")
    counter = _compile_with(monkeypatch)
    fast = Trainer(_config(case, roots, tmp_path / "fast", FAST), role="student")
    assert fast.cfg.SOLVER.COMPILE and fast.cfg.SOLVER.CHANNELS_LAST == CHANNELS_LAST
    assert fast.autocast_dtype == torch.bfloat16
    assert plain.autocast_dtype is None and not plain.cfg.SOLVER.COMPILE
    for key, value in plain.distiller.state_dict().items():
        assert torch.equal(value, fast.distiller.state_dict()[key].to(value.device)), key

    batches = _two_batches(plain)
    head_failures: list[str] = []
    _watch_heads(fast.distiller, head_failures)
    frames = []
    for number, batch in enumerate(batches):
        expected = _step(plain, batch, seed=100 + number)
        got = _step(fast, batch, seed=100 + number)
        frames.append(counter.frame_count)
        assert got.keys() == expected.keys()
        for name, value in got.items():
            assert value.dtype == torch.float32, f"step {number}: loss {name} is {value.dtype}"
            assert torch.isfinite(value), f"step {number}: loss {name} = {value}"
            rtol, atol = TOLERANCES[number]
            assert float(value) == pytest.approx(float(expected[name]), rel=rtol, abs=atol), \
                f"step {number}: loss {name} bf16+compile {float(value):.5f} vs fp32 eager {float(expected[name]):.5f}"
    assert not head_failures, head_failures
    assert frames[0] > 0, "nothing was compiled"
    assert frames[1] == frames[0], f"step 2 recompiled: {frames[0]} -> {frames[1]} frames"
    assert not counters["graph_break"], f"graph breaks: {dict(counters['graph_break'])}"

    seen: list = []
    handle = _watch_evaluation(fast, seen)
    fast.evaluate()
    handle.remove()
    assert seen and all(not autocast and dtype == torch.float32 for autocast, dtype in seen), seen
    after_eval = counter.frame_count
    fast.model.train()
    _step(fast, batches[0], seed=102)
    assert counter.frame_count == after_eval, "training after an evaluation recompiled"


QUICK = [c for c, case in CASES.items() if case.quick]
SLOW = [c for c, case in CASES.items() if not case.quick]


@pytest.mark.parametrize("case_id", QUICK)
def test_fast_path_recipe_quick(case_id, data_roots, tmp_path, monkeypatch):
    assert_fast_path_case(case_id, data_roots, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("case_id", SLOW)
def test_fast_path_recipe(case_id, data_roots, tmp_path, monkeypatch):
    assert_fast_path_case(case_id, data_roots, tmp_path, monkeypatch)
