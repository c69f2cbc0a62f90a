"""CUDA-only code paths, checked where a CPU allows (and for real with DISTILLERY_TEST_DEVICE=cuda):

- no host synchronisation inside a training step, for every recipe family (on the CPU an emulation of
  `torch.cuda.set_sync_debug_mode("error")`: a dispatch mode that flags the ops that make CUDA wait
  for the host; on CUDA the real mode), and in the loop losses are read only every LOG.PERIOD;
- batches copied with `non_blocking=True` from pinned memory when the device is CUDA;
- CUDA RNG states in checkpoints (packing tested with a fake CUDA; a resumed run with GPU-drawn dropout
  continues exactly on the device under test);
- SyncBN conversion, NCCL selection, and cuDNN's autotuner on by default with a determinism switch.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import pytest
import torch
from test_fast_path_recipes import (
    CASES,
    PLAIN,
    TINY_FACE,
    Case,
    _config,
    _step,
    _two_batches,
    data_roots,  # noqa: F401  (the shared synthetic-data fixture)
)
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import engine.distributed as distributed
from data.loader import build_train_loader, to_device
from engine.checkpoint import load_checkpoint, pack_rng, save_checkpoint, unpack_rng
from engine.fast_path import apply_fast_path
from engine.trainer import Trainer
from utility import seed
from utility.config import load_config

ROOT = Path(__file__).resolve().parents[1]
aten = torch.ops.aten

#: ops whose result size or value the host must know: on CUDA each one waits for the device
_SYNCING = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
            aten.equal.default, aten.is_nonzero.default, aten._unique2.default, aten.unique_dim.default,
            aten.unique_consecutive.default, aten.repeat_interleave.Tensor, aten.masked_scatter.default}
_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


class HostSyncs(TorchDispatchMode):
    """Records each op that would synchronise a CUDA stream with the host (`.item()`, `bool(t)`,
    `nonzero`, boolean-mask indexing, `unique`, ...), with where it was called from."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        syncing = func in _SYNCING or (func in _INDEXING and any(
            torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8) for i in args[1]))
        if syncing:
            caller = [f for f in traceback.extract_stack()[:-1] if str(ROOT) in f.filename][-1:]
            self.calls.append(f"{func} at {caller[0].filename}:{caller[0].lineno}" if caller else str(func))
        return func(*args, **(kwargs or {}))


def _tiny(case: Case) -> Case:
    """Face cases on the stand-in face network: what is checked is the step's code, not the backbone."""
    if case.domain != "face":
        return case
    return Case(case.domain, case.config, (*case.overrides, *TINY_FACE), case.quick)


# every case; the default run takes those whose code has had host syncs (Partial FC, F-SKD's table
# partners, AdaDistill's centre update, RKD/ASKD's positive means) and plain KD
QUICK_SYNC = {"f_skd_table_partial_fc", "adadistill", "rkd_partial_fc", "cifar_askd", "cifar_kd"}


@pytest.mark.parametrize("case_id", [pytest.param(c, marks=() if c in QUICK_SYNC else pytest.mark.slow)
                                     for c in CASES if not c.endswith("_tiny")])
def test_a_training_step_never_waits_for_the_host(case_id, data_roots, tmp_path):  # noqa: F811
    trainer = Trainer(_config(_tiny(CASES[case_id]), data_roots, tmp_path / "run", PLAIN), role="student")
    first, second = _two_batches(trainer)
    _step(trainer, first, seed=1)  # first-step set-up (CRD's normaliser, lazy state) is allowed to sync
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            _step(trainer, second, seed=2)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    else:
        with HostSyncs() as syncs:
            _step(trainer, second, seed=2)
        assert not syncs.calls, syncs.calls


def test_the_emulation_flags_what_cuda_would_wait_for():
    x = torch.arange(6.0)
    with HostSyncs() as syncs:
        _ = x * 2, x.sum(), torch.where(x > 2, x, 0.0), x.scatter(0, torch.tensor([1]), torch.tensor([5.0]))
    assert syncs.calls == []
    for op in (lambda: x.sum().item(), lambda: bool(x.sum() > 1), lambda: x[x > 2], lambda: torch.unique(x),
               lambda: x.nonzero(), lambda: float(x.max())):
        with HostSyncs() as syncs:
            op()
        assert syncs.calls, op


def test_the_loop_reads_losses_only_every_log_period(data_roots, tmp_path, monkeypatch):  # noqa: F811
    case = CASES["cifar_kd"]
    cfg = _config(case, data_roots, tmp_path / "run", [*PLAIN, "LOG.PERIOD", "3", "SOLVER.MAX_ITERS", "7"])
    trainer = Trainer(cfg, role="student")
    trainer.sync_every_step = False  # the CUDA loop (on the CPU, reading a loss costs nothing)
    syncs = HostSyncs()
    after_step: list[int] = []
    real_step = trainer.train_step

    def step(batch):
        result = real_step(batch)
        after_step.append(len(syncs.calls))
        return result

    monkeypatch.setattr(trainer, "train_step", step)
    real_tolist = torch.Tensor.tolist  # reads device memory on the host, without a dispatched op on the CPU

    def tolist(tensor):
        caller = traceback.extract_stack()[-2].filename
        if not caller.startswith(str(ROOT / "data")):  # the sampler's index tensors are host tensors anyway
            syncs.calls.append(f"tolist at {caller}")
        return real_tolist(tensor)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    with syncs:
        trainer.train()
    # syncs between the end of step k and the end of step k + 1 (bookkeeping, logging, the next batch)
    between = [b - a for a, b in zip(after_step, after_step[1:])]
    assert len(between) == 6, syncs.calls
    assert [n > 0 for n in between] == [False, False, True, False, False, True]  # after steps 3 and 6
    assert after_step[0] == 0 and len(trainer.history) >= 2


def test_batches_are_copied_without_blocking(monkeypatch):
    calls = []
    real_to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: calls.append(k) or real_to(self, *a, **k))
    to_device({"image": torch.zeros(2, 4, 4, 3, dtype=torch.uint8), "label": torch.tensor([1, 2]), "name": "x"},
              "cpu")
    assert len(calls) == 2 and all(k.get("non_blocking") is True for k in calls)


@pytest.mark.parametrize("device, pin, expected", [("cuda", True, True), ("cuda", False, False), ("cpu", True, False)])
def test_the_loader_pins_host_memory_for_cuda(device, pin, expected, data_roots, tmp_path, monkeypatch):  # noqa: F811
    cfg = _config(CASES["a_skd_tiny"], data_roots, tmp_path, [*PLAIN, "DATA.PIN_MEMORY", str(pin)])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    from data.loader import build_dataset

    loader = build_train_loader(cfg, build_dataset(cfg, split="train"), 4, 0, device=torch.device(device))
    assert loader._loader.pin_memory is expected


# -- RNG state ---------------------------------------------------------------------------------------
class FakeCuda:
    """torch.cuda's RNG calls on a machine without CUDA: `devices` states, restores recorded."""

    def __init__(self, monkeypatch, devices: int) -> None:
        self.states = [torch.randint(0, 255, (16,), dtype=torch.uint8) for _ in range(devices)]
        self.restored: dict[int, torch.Tensor] = {}
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: self.restored.__setitem__(device, state))


def test_cuda_rng_states_travel_through_a_checkpoint(tmp_path, monkeypatch):
    fake = FakeCuda(monkeypatch, devices=2)
    torch.manual_seed(5)
    path = tmp_path / "last.pt"
    save_checkpoint({"rng": pack_rng(seed.rng_state())}, path)
    expected_cpu = torch.rand(3)
    torch.manual_seed(99)
    seed.set_rng_state(unpack_rng(load_checkpoint(path)["rng"]))
    assert sorted(fake.restored) == [0, 1]
    for index, state in fake.restored.items():
        assert state.device.type == "cpu" and torch.equal(state, fake.states[index])
    assert torch.equal(torch.rand(3), expected_cpu)  # and the CPU stream continues where it was saved


def test_cuda_rng_states_of_more_devices_restore_those_present(tmp_path, monkeypatch):
    saved = FakeCuda(monkeypatch, devices=2)
    state = seed.rng_state()
    fewer = FakeCuda(monkeypatch, devices=1)
    seed.set_rng_state(state)
    assert list(fewer.restored) == [0] and torch.equal(fewer.restored[0], saved.states[0])


@pytest.mark.slow
def test_resume_with_dropout_continues_exactly_on_the_device(data_roots, tmp_path):  # noqa: F811
    """Dropout draws from the device's global RNG (CUDA's on a GPU): 4 iterations straight equal 2, stop,
    --resume, 2 more, bit for bit, with deterministic kernels."""
    case = Case("face", "face/a_skd/student_14.yaml", ("STUDENT.DROPOUT", "0.4", "STUDENT.WIDTH", "4",
                                                        "TEACHER.WIDTH", "4", "EXPERIMENT.DETERMINISTIC", "True"))

    def trainer(name, resume=False, iters=4):
        cfg = _config(case, data_roots, tmp_path / name, [*PLAIN, "SOLVER.MAX_ITERS", str(iters)])
        return Trainer(cfg, role="student", resume=resume)

    straight = trainer("straight")
    straight.train()
    first = trainer("split")
    first.plan.total_iters = 2
    first.train()
    resumed = trainer("split", resume=True)
    resumed.train()
    a, b = straight.distiller.student.state_dict(), resumed.distiller.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- SyncBN, NCCL, cuDNN -----------------------------------------------------------------------------
def test_sync_bn_converts_every_student_batch_norm_under_ddp(monkeypatch):
    """On a non-CPU module (the meta device stands in for CUDA) under an active process group."""
    monkeypatch.setattr(distributed, "_active", lambda: True)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(4))).to("meta")
    converted = distributed.convert_sync_bn(model)
    assert [type(m) for m in converted.modules() if "Norm" in type(m).__name__] == [nn.SyncBatchNorm] * 2
    cpu_model = nn.Sequential(nn.BatchNorm2d(2))
    with pytest.raises(Exception, match="SYNC_BN"):
        distributed.convert_sync_bn(cpu_model)


@pytest.mark.parametrize("cuda, backend", [(True, "nccl"), (False, "gloo")])
def test_process_group_backend_follows_the_device(cuda, backend, monkeypatch):
    seen = {}
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: seen.setdefault("device", device))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: seen.update(kw))
    env = distributed.init_distributed("auto")
    assert seen["backend"] == backend and seen["rank"] == 1 and seen["world_size"] == 2
    assert env.device == (torch.device("cuda", 1) if cuda else torch.device("cpu"))
    if cuda:
        assert seen["device"] == torch.device("cuda", 1)


@pytest.mark.parametrize("overrides, expected", [
    ([], True),
    (["SOLVER.FAST_PATH", "switches"], True),  # whatever the fast path
    (["EXPERIMENT.DETERMINISTIC", "True"], False),
    (["SOLVER.CUDNN_BENCHMARK", "False"], False),
])
def test_cudnn_autotuner_is_on_for_cuda_unless_deterministic(overrides, expected, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", not expected)
    cfg = load_config(ROOT / "configs/cifar100/kd/resnet32x4_resnet8x4.yaml", overrides)
    apply_fast_path(cfg, torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is expected
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    apply_fast_path(cfg, "cpu")  # a CPU run leaves it alone
    assert torch.backends.cudnn.benchmark is False


def test_deterministic_seeding_turns_the_autotuner_off_and_sets_the_cublas_workspace(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on, warn_only=False: calls.append((on, warn_only)))
    seed.seed_everything(1, deterministic=True)
    assert torch.backends.cudnn.benchmark is False and calls == [(True, True)]
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
