"""SOLVER.FAST_PATH: which switches it turns on where, and that the fast path trains the same numbers."""

from __future__ import annotations

import copy
import time

import pytest
import torch
import torch.nn.functional as F

from bench.common import distillery_trainer
from engine.fast_path import apply_fast_path, resolve_fast_path
from models import build_network
from utility.config import load_config
from utility.errors import ConfigError

RECIPE = "configs/cifar100/kd/resnet32x4_resnet8x4.yaml"
TINY = ["TEACHER.BACKBONE", "cifar.resnet8", "STUDENT.BACKBONE", "cifar.resnet8", "DATA.NUM_CLASSES", "10",
        "SOLVER.BATCH_SIZE", "4", "EXPERIMENT.DEVICE", "cpu"]


def _cfg(*overrides: str):
    return load_config(RECIPE, TINY + list(overrides))


def test_auto_turns_everything_on_for_cuda_only():
    cfg = _cfg()
    assert cfg.SOLVER.FAST_PATH == "auto"
    on_cuda = resolve_fast_path(cfg, torch.device("cuda"))
    assert (on_cuda.compile, on_cuda.channels_last, on_cuda.fused) == (True, True, True)
    on_cpu = resolve_fast_path(cfg, "cpu")
    assert (on_cpu.compile, on_cpu.channels_last, on_cpu.fused) == (False, False, False)


def test_on_forces_and_off_respects_the_individual_switches():
    forced = resolve_fast_path(_cfg("SOLVER.FAST_PATH", "all"), "cpu")
    assert (forced.compile, forced.channels_last, forced.fused) == (True, True, False)  # no fused CPU path here
    off = resolve_fast_path(_cfg("SOLVER.FAST_PATH", "switches", "SOLVER.CHANNELS_LAST", "true"), torch.device("cuda"))
    assert (off.compile, off.channels_last, off.fused) == (False, True, False)


def test_apply_writes_the_effective_switches_and_leaves_the_input_alone():
    cfg = _cfg("SOLVER.FAST_PATH", "all")
    resolved = apply_fast_path(cfg, "cpu")
    assert resolved.SOLVER.COMPILE and resolved.SOLVER.CHANNELS_LAST and not resolved.SOLVER.FUSED
    assert not cfg.SOLVER.COMPILE and not cfg.SOLVER.CHANNELS_LAST
    assert resolved.is_frozen()


@pytest.mark.parametrize("avx512, isa, refused", [(True, "", True), (True, "avx512_core", True),
                                                    (True, "AVX2", False), (True, "avx2", False), (False, "", False)])
def test_bf16_channels_last_is_refused_where_onednn_uses_avx512(monkeypatch, avx512, isa, refused):
    """oneDNN's AVX-512 bf16 convolution backward on channels_last inputs corrupted the heap (torch 2.13)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: avx512)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    for overrides in (["SOLVER.FAST_PATH", "all"], ["SOLVER.FAST_PATH", "switches", "SOLVER.CHANNELS_LAST", "true"]):
        cfg = _cfg("SOLVER.PRECISION", "bf16", *overrides)
        if refused:
            with pytest.raises(ConfigError, match="ONEDNN_MAX_CPU_ISA=AVX2"):
                apply_fast_path(cfg, "cpu")
        else:
            assert apply_fast_path(cfg, "cpu").SOLVER.CHANNELS_LAST
        assert apply_fast_path(cfg, torch.device("cuda")).SOLVER.CHANNELS_LAST  # GPUs are not affected
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "")
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: True)
    assert apply_fast_path(_cfg("SOLVER.FAST_PATH", "all"), "cpu").SOLVER.CHANNELS_LAST  # fp32 is fine
    assert not apply_fast_path(_cfg("SOLVER.PRECISION", "bf16", "SOLVER.FAST_PATH", "switches",
                                    "SOLVER.COMPILE", "true"), "cpu").SOLVER.CHANNELS_LAST


def test_bad_fast_path_value_is_a_config_error():
    with pytest.raises(ConfigError, match="SOLVER.FAST_PATH"):
        _cfg("SOLVER.FAST_PATH", "fast")


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=generator),
        "label": torch.randint(0, 10, (4,), generator=generator),
        "index": torch.arange(4),
    }


def _trainer(cfg):
    torch.manual_seed(0)
    student, teacher = build_network(cfg.STUDENT, 10), build_network(cfg.TEACHER, 10)
    return distillery_trainer(cfg, copy.deepcopy(student), copy.deepcopy(teacher), 10, torch.device("cpu"))


def _losses_after_steps(trainer, steps: int = 3) -> list[float]:
    losses = []
    for number in range(steps):
        total, _ = trainer.train_step(_batch(number))
        trainer.iteration += 1
        losses.append(float(total))
    return losses


def test_plain_step_feeds_contiguous_nchw_views():
    """The uint8 NHWC -> NCHW permute must not leak channels-last strides into a plain fp32 run."""
    trainer = _trainer(_cfg())
    seen = []
    trainer.distiller.student.backbone.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    trainer.train_step(_batch())
    assert seen and seen[0].is_contiguous()


def test_first_step_loss_is_ce_plus_kd_by_hand():
    """0.1 * CE + 0.9 * T^2 KL(T=4) on the very views the step saw, recomputed with plain formulas."""
    trainer = _trainer(_cfg("DATA.FLIP", "false", "DATA.CROP_PADDING", "0"))
    student = copy.deepcopy(trainer.distiller.student)
    teacher = copy.deepcopy(trainer.distiller.teacher.network)
    batch = _batch()
    total, _ = trainer.train_step(batch)
    mean = torch.tensor([0.5071, 0.4867, 0.4408]).view(1, 3, 1, 1)
    std = torch.tensor([0.2675, 0.2565, 0.2761]).view(1, 3, 1, 1)
    x = (batch["image"].permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        z_s, z_t = student(x), teacher(x)
        p_t = torch.softmax(z_t / 4, dim=1)
        kl = (p_t * (torch.log(p_t) - torch.log_softmax(z_s / 4, dim=1))).sum(1).mean() * 16
        expected = 0.1 * F.cross_entropy(z_s, batch["label"]) + 0.9 * kl
    assert float(total) == pytest.approx(float(expected), rel=1e-5)


def test_channels_last_trains_the_same_numbers():
    plain = _trainer(_cfg("SOLVER.FAST_PATH", "switches"))
    fast = _trainer(_cfg("SOLVER.FAST_PATH", "switches", "SOLVER.CHANNELS_LAST", "true"))
    conv = fast.distiller.student.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not plain.cfg.SOLVER.CHANNELS_LAST
    assert _losses_after_steps(fast) == pytest.approx(_losses_after_steps(plain), rel=1e-4)
    for (name, a), (_, b) in zip(plain.distiller.student.named_parameters(), fast.distiller.student.named_parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), name


@pytest.mark.slow
def test_compiled_fast_path_trains_the_same_numbers():
    """FAST_PATH on (compile + channels_last) on CPU; skipped where the CPU compiler is unusable."""
    plain = _trainer(_cfg("SOLVER.FAST_PATH", "switches"))
    fast = _trainer(_cfg("SOLVER.FAST_PATH", "all"))
    start = time.perf_counter()
    try:
        fast_losses = _losses_after_steps(fast)
    except Exception as exc:  # no C++ toolchain for inductor, etc.
        pytest.skip(f"torch.compile is not usable on this CPU: {type(exc).__name__}: {exc}")
    assert fast.cfg.SOLVER.COMPILE
    assert fast_losses == pytest.approx(_losses_after_steps(plain), rel=1e-3), f"compiled in {time.perf_counter() - start:.0f}s"
