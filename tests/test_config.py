"""Config loading: defaults, _BASE_ chains, overrides and the strict, helpful validation."""

from pathlib import Path

import pytest

from utility.config import get_defaults, load_config, resolve_data_path
from utility.errors import ConfigError
from utility.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_hold_the_keys_scripts_rely_on():
    cfg = get_defaults()
    for key in ["EXPERIMENT.OUTPUT_DIR", "EXPERIMENT.SEED", "EXPERIMENT.DEVICE", "DATA.ROOT", "DATA.TRAIN",
                "EVAL.SETS", "EVAL.RESOLUTIONS", "TEACHER.BACKBONE", "TEACHER.HEAD", "TEACHER.CHECKPOINT",
                "STUDENT.BACKBONE", "STUDENT.HEAD", "DISTILL.TYPE", "SOLVER.LR", "SOLVER.BATCH_SIZE",
                "SOLVER.EPOCHS", "SOLVER.MAX_ITERS", "SOLVER.CHECKPOINT_PERIOD", "EVAL.PERIOD"]:
        node = cfg
        for part in key.split("."):
            assert part in node, key
            node = node[part]
    assert cfg.EXPERIMENT.DEVICE == "auto"
    assert cfg.SOLVER.MAX_ITERS == 0


def test_base_chain_is_relative_to_the_including_file_and_later_files_win(tmp_path):
    write(tmp_path / "bases" / "root.yaml", "SOLVER:\n  LR: 0.3\n  BATCH_SIZE: 32\nDATA:\n  ROOT: /data\n")
    write(tmp_path / "bases" / "mid.yaml", "_BASE_: root.yaml\nSOLVER:\n  LR: 0.2\n")
    top = write(tmp_path / "exp" / "top.yaml", "_BASE_: ../bases/mid.yaml\nSOLVER:\n  BATCH_SIZE: 16\n")
    cfg = load_config(top)
    assert cfg.SOLVER.LR == 0.2  # mid overrides root
    assert cfg.SOLVER.BATCH_SIZE == 16  # top overrides both
    assert cfg.DATA.ROOT == "/data"  # inherited untouched
    assert cfg.EXPERIMENT.NAME == "top"
    assert cfg.is_frozen()


def test_command_line_overrides_are_typed(tmp_path):
    top = write(tmp_path / "a.yaml", "SOLVER:\n  LR: 0.1\n")
    cfg = load_config(top, ["SOLVER.LR", "0.05", "EVAL.RESOLUTIONS", "[14,28]", "DISTILL.TYPE", "kd",
                            "SOLVER.EPOCHS", "3"])
    assert cfg.SOLVER.LR == 0.05
    assert cfg.EVAL.RESOLUTIONS == [14, 28]
    assert cfg.DISTILL.TYPE == "kd"
    assert cfg.SOLVER.EPOCHS == 3


def test_unknown_key_names_the_file_and_the_closest_key(tmp_path):
    bad = write(tmp_path / "typo.yaml", "SOLVER:\n  LEARNING_RAT: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert "typo.yaml" in str(info.value) and "SOLVER.LEARNING_RAT" in str(info.value)
    bad2 = write(tmp_path / "typo2.yaml", "SOLVER:\n  BATCHSIZE: 3\n")
    with pytest.raises(ConfigError, match="SOLVER.BATCH_SIZE"):
        load_config(bad2)


def test_unknown_override_key_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'SOLVER.LR'"):
        load_config(None, ["SOLVER.LRR", "0.1"])


def test_wrong_type_names_key_expected_and_given(tmp_path):
    bad = write(tmp_path / "t.yaml", "SOLVER:\n  BATCH_SIZE: lots\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    message = str(info.value)
    assert "SOLVER.BATCH_SIZE" in message and "int" in message and "str" in message


def test_ints_widen_to_float_but_bools_are_not_ints(tmp_path):
    cfg = load_config(write(tmp_path / "w.yaml", "SOLVER:\n  LR: 1\n"))
    assert isinstance(cfg.SOLVER.LR, float) and cfg.SOLVER.LR == 1.0
    with pytest.raises(ConfigError):
        load_config(write(tmp_path / "b.yaml", "SOLVER:\n  BATCH_SIZE: true\n"))


def test_choice_validation(tmp_path):
    with pytest.raises(ConfigError, match="SOLVER.OPTIMIZER"):
        load_config(None, ["SOLVER.OPTIMIZER", "lamb"])
    with pytest.raises(ConfigError, match="EXPERIMENT.DEVICE"):
        load_config(None, ["EXPERIMENT.DEVICE", "tpu"])
    with pytest.raises(ConfigError, match="BLUR_SIGMA"):
        load_config(None, ["DATA.LOWRES.BLUR_SIGMA", "[1.0]"])


def test_missing_file_and_base_loop(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    write(tmp_path / "x.yaml", "_BASE_: y.yaml\n")
    write(tmp_path / "y.yaml", "_BASE_: x.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "x.yaml")


def test_section_given_a_scalar_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is a section"):
        load_config(write(tmp_path / "s.yaml", "SOLVER: 3\n"))


def test_resolve_data_path(tmp_path):
    cfg = load_config(None, ["DATA.ROOT", str(tmp_path)])
    assert resolve_data_path(cfg, "train.rec") == tmp_path / "train.rec"
    assert resolve_data_path(cfg, "/abs/train.rec") == Path("/abs/train.rec")


def test_registry_lists_known_names_on_a_typo():
    reg = Registry("widget")
    reg.register("alpha")(lambda: 1)
    reg.register("beta")(lambda: 2)
    assert reg.build("beta") == 2
    with pytest.raises(ConfigError) as info:
        reg.build("alpah")
    assert "Did you mean 'alpha'" in str(info.value) and "alpha, beta" in str(info.value)
    with pytest.raises(ValueError):
        reg.register("alpha")(lambda: 3)


def test_every_shipped_config_loads():
    configs = sorted((ROOT / "configs").rglob("*.yaml"))
    assert configs, "no configs shipped"
    for path in configs:
        load_config(path)
