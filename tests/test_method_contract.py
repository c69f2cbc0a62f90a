"""The one-file method contract: declarations on the class are all the engine and data layer read.

A throwaway method written as one new file in a copy of `kd/` trains end to end with no other edit;
its keys join the strict schema; DISTILL.TYPE is parsed in one place; batch needs, teacher-cache
eligibility, data-filled keys and an init stage come from the class declarations.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from data.requests import BatchRequest
from data.synthetic_classification import write_cifar100
from engine.trainer import Trainer
from kd import DISTILLERS, batch_request, fill_data_keys, method_names, teacher_cache_refusal
from utility.config import METHOD_KEY_DOCS, load_config
from utility.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

MINE = '''
"""`mine`: a throwaway method used by tests/test_method_contract.py (pooled-feature MSE)."""
import torch
from kd import DISTILLERS
from kd.base import Distiller, InitStage


@DISTILLERS.register("mine")
class Mine(Distiller):
    """WEIGHT x MSE between the pooled vectors, after an INIT_EPOCHS stage on the same term."""

    defaults = {"WEIGHT": (1.0, "weight of the pooled-feature MSE"),
                "INIT_EPOCHS": (0.0, "epochs of the init stage")}
    uses_teacher_logits = False

    def setup(self, cfg, probe):
        self.weight = cfg.DISTILL.MINE.WEIGHT
        self.init_epochs = cfg.DISTILL.MINE.INIT_EPOCHS
        self.connector = torch.nn.Linear(probe.student.pooled.shape[1], probe.teacher.pooled.shape[1])

    def init_stage(self):
        if self.init_epochs <= 0:
            return None
        return InitStage(epochs=self.init_epochs, lr=0.5, parameters=list(self.connector.parameters()))

    def distill_losses(self, step):
        mse = (self.connector(step.student.pooled) - step.teacher.pooled).pow(2).mean()
        return {"mine": self.weight * mse}
'''


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(root, num_classes=4, train_per_class=12, test_per_class=4, seed=3)
    return root


def tiny(root: Path, out: Path, *extra: str) -> list[str]:
    return ["EXPERIMENT.TASK", "classification", "EXPERIMENT.OUTPUT_DIR", str(out), "EXPERIMENT.DEVICE", "cpu",
            "DATA.ROOT", str(root), "DATA.TRAIN", "cifar-100-python", "DATA.FORMAT", "cifar100",
            "DATA.COLOR", "rgb", "DATA.IMAGE_SIZE", "32", "DATA.WORKERS", "0",
            "TEACHER.BACKBONE", "cifar.resnet8", "STUDENT.BACKBONE", "cifar.resnet8",
            "SOLVER.BATCH_SIZE", "8", "SOLVER.MAX_ITERS", "4", "SOLVER.CHECKPOINT_PERIOD", "100",
            "LOG.PROGRESS", "False", "LOG.TENSORBOARD", "False", "EVAL.BATCH_SIZE", "16", *extra]


def test_a_new_method_is_one_file(tmp_path, cifar_root):
    """Copy kd/, add kd/mine.py, train a teacher and a `mine` student with the real CLIs: nothing else edited."""
    package = tmp_path / "code"
    shutil.copytree(ROOT / "kd", package / "kd", ignore=shutil.ignore_patterns("__pycache__"))
    (package / "kd" / "mine.py").write_text(MINE)
    (tmp_path / "mine.yaml").write_text(textwrap.dedent("""\
        DISTILL:
          TYPE: mine
          MINE:
            WEIGHT: 2.5
        """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package), str(ROOT)])}
    run = ("import sys, runpy; sys.path[:0] = [sys.argv[1], sys.argv[2]]; sys.argv = sys.argv[3:];"
           "runpy.run_path(sys.argv[0], run_name='__main__')")
    teacher = tmp_path / "teacher"
    base = [sys.executable, "-c", run, str(package), str(ROOT)]
    subprocess.run([*base, str(ROOT / "train_teacher.py"), "--config", str(tmp_path / "mine.yaml"),
                    *tiny(cifar_root, teacher)], check=True, capture_output=True, env=env, timeout=300)
    student = subprocess.run([*base, str(ROOT / "train_student.py"), "--config", str(tmp_path / "mine.yaml"),
                              *tiny(cifar_root, tmp_path / "student", "TEACHER.CHECKPOINT",
                                    str(teacher / "last.pt"), "DISTILL.MINE.INIT_EPOCHS", "0.5")],
                             capture_output=True, text=True, env=env, timeout=300)
    assert student.returncode == 0, student.stderr[-2000:]
    saved = (tmp_path / "student" / "config.yaml").read_text()
    assert "MINE:" in saved and "WEIGHT: 2.5" in saved  # the new keys are part of the resolved config
    state = torch.load(tmp_path / "student" / "last.pt", weights_only=True)
    assert "connector.weight" in state["model"]  # its trainable extra is checkpointed
    assert "init_optimizer" in state  # and its init stage ran through the trainer
    assert "mine" not in DISTILLERS  # the real kd/ was never touched
    typo = subprocess.run([*base, str(ROOT / "train_student.py"), "--config", str(tmp_path / "mine.yaml"),
                           "DISTILL.MINE.WEIHGT", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert typo.returncode == 2 and "DISTILL.MINE.WEIGHT" in typo.stderr  # validated like every other key


def test_method_keys_join_the_strict_schema():
    cfg = load_config(None)
    assert cfg.DISTILL.KD.TEMPERATURE == 4.0 and cfg.DISTILL.CRD.NCE_K == 16384
    assert METHOD_KEY_DOCS["DISTILL.KD.TEMPERATURE"].startswith("softmax temperature")
    with pytest.raises(ConfigError, match="Did you mean 'DISTILL.KD.TEMPERATURE'"):
        load_config(None, ["DISTILL.KD.TEMPRATURE", "2"])
    with pytest.raises(ConfigError, match="DISTILL.A_SKD.REDUCTION"):  # a method's own choices
        load_config(None, ["DISTILL.A_SKD.REDUCTION", "max"])
    assert load_config(None, ["DISTILL.TYPE", "arcdistill"]).DISTILL.ADADISTILL.S == 64.0  # shared node


def test_retired_data_keys_move_to_the_method(tmp_path, caplog):
    old = tmp_path / "old.yaml"
    old.write_text("DATA:\n  CRD_NEGATIVES: 4096\n  CRD_POOL: dct_first_n\nDISTILL:\n  TYPE: crd\n")
    cfg = load_config(old)
    assert cfg.DISTILL.CRD.NCE_K == 4096 and cfg.DISTILL.CRD.POOL == "dct_first_n"
    assert "DATA.CRD_NEGATIVES" in caplog.text and "DISTILL.CRD.NCE_K" in caplog.text
    assert "CRD_NEGATIVES" not in cfg.DATA
    assert load_config(None, ["DATA.CRD_NEGATIVES", "128"]).DISTILL.CRD.NCE_K == 128


def test_distill_type_is_parsed_once_with_spaces():
    cfg = load_config(None, ["DISTILL.TYPE", " crd + kd "])
    assert method_names(cfg) == ["crd", "kd"]
    assert batch_request(cfg) == BatchRequest(contrast_negatives=16384, teacher_view=True)
    with pytest.raises(ConfigError, match="unknown distiller 'kdd'"):
        method_names(load_config(None, ["DISTILL.TYPE", "kd+kdd"]))
    with pytest.raises(ConfigError, match="empty"):
        method_names(load_config(None, ["DISTILL.TYPE", "+"]))


def test_batch_requests_merge_and_conflict():
    assert batch_request(load_config(None)) == BatchRequest(teacher_view=False)  # plain training
    shuffle = load_config(None, ["DISTILL.TYPE", "f_skd", "DATA.PARTNER", "shuffle"])
    assert batch_request(shuffle).partner == "shuffle"
    no_cross = load_config(None, ["DISTILL.TYPE", "f_skd", "DATA.PARTNER", "table", "DISTILL.F_SKD.CROSS_WEIGHT", "0"])
    assert batch_request(no_cross).partner == ""  # no cross-sample term: no partner images are read
    with pytest.raises(ConfigError, match="contrast_negatives"):
        BatchRequest(contrast_negatives=4).merge(BatchRequest(contrast_negatives=8))


def test_teacher_cache_eligibility_is_declared():
    assert teacher_cache_refusal(load_config(None, ["DISTILL.TYPE", "kd"])) == ""
    assert teacher_cache_refusal(load_config(None, ["DISTILL.TYPE", "adadistill"])) == ""
    assert "DISTILL.RKD.FEATURE" in teacher_cache_refusal(
        load_config(None, ["DISTILL.TYPE", "rkd", "DISTILL.RKD.FEATURE", "pooled"]))
    assert "'crd'" in teacher_cache_refusal(load_config(None, ["DISTILL.TYPE", "kd+crd"]))
    assert "runs no teacher" in teacher_cache_refusal(load_config(None))


def test_data_filled_keys(cifar_root):
    class FortyEight:
        def __len__(self) -> int:
            return 48

    filled = fill_data_keys(load_config(None, ["DISTILL.TYPE", "kd + crd"]), FortyEight())
    assert filled.DISTILL.CRD.N_DATA == 48  # filled although TYPE has spaces
    kept = fill_data_keys(load_config(None, ["DISTILL.TYPE", "crd", "DISTILL.CRD.N_DATA", "7"]), FortyEight())
    assert kept.DISTILL.CRD.N_DATA == 7


def test_init_stage_trains_its_parameters_first_then_the_main_schedule(cifar_root, tmp_path, monkeypatch):
    """An init stage of 1 epoch (6 batches of 8 over 48 samples) runs before MAX_ITERS main steps:
    only its parameters move, at its constant lr, and the main schedule starts afterwards."""
    from kd.base import Distiller, InitStage

    class Staged(Distiller):
        uses_teacher_logits = False

        def setup(self, cfg, probe):
            self.connector = torch.nn.Linear(probe.student.pooled.shape[1], probe.teacher.pooled.shape[1])

        def init_stage(self):
            return InitStage(epochs=1.0, lr=0.3, parameters=list(self.connector.parameters()))

        def distill_losses(self, step):
            return {"staged": (self.connector(step.student.pooled) - step.teacher.pooled).pow(2).mean()}

    monkeypatch.setitem(DISTILLERS._entries, "staged_test", Staged)
    teacher = Trainer(load_config(None, tiny(cifar_root, tmp_path / "t")), role="teacher")
    teacher.train()
    cfg = load_config(None, tiny(cifar_root, tmp_path / "s", "DISTILL.TYPE", "staged_test", "TEACHER.CHECKPOINT",
                                 str(tmp_path / "t" / "last.pt"), "SOLVER.SCHEDULE", "constant"))
    trainer = Trainer(cfg, role="student")
    assert (trainer.plan.init_iters, trainer.plan.total_iters) == (6, 10)
    student_before = {k: v.detach().clone() for k, v in trainer.distiller.student.named_parameters()}
    connector_before = trainer.distiller.connector.weight.detach().clone()
    for batch in trainer.loader:
        trainer.train_step(batch)
        trainer.iteration += 1
        if trainer.iteration == 6:
            break
    student_after = dict(trainer.distiller.student.named_parameters())
    assert all(torch.equal(student_before[k], student_after[k]) for k in student_before)  # only the connector
    assert not torch.equal(connector_before, trainer.distiller.connector.weight)
    assert trainer.init_optimizer.param_groups[0]["lr"] == 0.3
    assert trainer.scheduler.last_epoch == 0  # the main schedule has not started
    json.dumps(trainer.init_optimizer.state_dict()["param_groups"])  # checkpointable
