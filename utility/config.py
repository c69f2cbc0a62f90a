"""The configuration schema (every key, its default, one line on what it means) and its loader.

`load_config(path, overrides)` resolves `_BASE_` chains (paths relative to the including file),
merges each file over the defaults with yacs's strict key checking, applies `KEY VALUE` overrides
from the command line, validates and freezes. Mistakes raise `ConfigError` naming the file, the key
and the closest valid key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import logging
from pathlib import Path
from typing import Any

import yaml
from yacs.config import CfgNode as CN

from utility.errors import ConfigError

log = logging.getLogger(__name__)

_C = CN()

# ---------------------------------------------------------------------------------------------
_C.EXPERIMENT = CN()
_C.EXPERIMENT.NAME = ""  # free-form run name, used in tables; defaults to the config file's stem
_C.EXPERIMENT.TASK = "face"  # "face" (verification) or "classification" (top-1/top-5)
_C.EXPERIMENT.OUTPUT_DIR = "outputs/default"  # checkpoints, logs, config.yaml, run.json, results
_C.EXPERIMENT.SEED = 0  # seeds Python, NumPy, torch and every data worker
_C.EXPERIMENT.DEVICE = "auto"  # "auto" (cuda if available), "cpu" or "cuda" ("cuda:N" also accepted)
_C.EXPERIMENT.DETERMINISTIC = False  # ask torch for deterministic kernels (slower on CUDA)
_C.EXPERIMENT.THREADS = 0  # CPU threads of torch's kernels; >0 fixes it (CPU reductions depend on the count); 0 = torch's default

# ---------------------------------------------------------------------------------------------
_C.DATA = CN()
_C.DATA.ROOT = ""  # folder that relative data paths below are resolved against
_C.DATA.TRAIN = ""  # training set: .rec file, train.list, image folder, CIFAR folder or list file
_C.DATA.VAL = ""  # classification evaluation split (CIFAR test folder or list file)
_C.DATA.FORMAT = "auto"  # dataset registry name, or "auto" to infer it from DATA.TRAIN
_C.DATA.NUM_CLASSES = 0  # 0 = read from the data (RecordIO header, list labels, CIFAR meta)
_C.DATA.COLOR = "bgr"  # channel order the network sees: "bgr" (A-SKD/F-SKD) or "rgb" (insightface)
_C.DATA.IMAGE_SIZE = 112  # network input side (face 112, CIFAR 32, scene 224)
_C.DATA.MEAN = [0.5, 0.5, 0.5]  # per-channel mean on [0, 1] pixels, in DATA.COLOR order
_C.DATA.STD = [0.5, 0.5, 0.5]  # per-channel std on [0, 1] pixels
_C.DATA.FLIP = True  # random horizontal flip (p=0.5), the same for teacher and student views
_C.DATA.CROP_PADDING = 0  # random crop after zero padding by this many pixels (CIFAR: 4)
_C.DATA.RESIZE = 0  # scene: resize the shorter side to this before cropping (0 = off)
_C.DATA.RANDOM_CROP = False  # scene: random crop of IMAGE_SIZE for training (centre crop for eval)
_C.DATA.TEN_CROP = False  # scene evaluation: average logits over ten crops
_C.DATA.ON_DEVICE = False  # keep the whole (small) training set on the device as uint8 (CIFAR)
_C.DATA.WORKERS = 2  # DataLoader worker processes (each opens its own file handles)
_C.DATA.PIN_MEMORY = True  # pinned host memory for faster copies to CUDA
_C.DATA.PARTNER = ""  # F-SKD partner view: "" none, "shuffle" (in batch), "table" (same identity)
_C.DATA.PARTNER_TABLE = ""  # partner table written by `python -m engine.partners`
_C.DATA.TEACHER_CACHE = ""  # folder of precomputed teacher outputs (engine/teacher_cache.py); "" = run the teacher
_C.DATA.LOWRES = CN()
_C.DATA.LOWRES.SIZES = []  # low-resolution sides for the student view; empty = full resolution
_C.DATA.LOWRES.HR_PROB = 0.0  # probability that a sample keeps full resolution (F-SKD equal=False: 0.5)
_C.DATA.LOWRES.DOWN = "nearest"  # nearest | bilinear | bicubic | area | random (per sample)
_C.DATA.LOWRES.UP = "nearest"  # same choices, for upsampling back to IMAGE_SIZE
_C.DATA.LOWRES.RANDOM_CHOICES = ["nearest", "bilinear", "bicubic", "area"]  # pool for "random"
_C.DATA.LOWRES.BLUR_SIGMA = []  # [sigma_x, sigma_y] of a 5x5 Gaussian after upsampling; [] = none
_C.DATA.LOWRES.BACKEND = "device"  # "device" (batched torch) or "opencv" (per sample in workers, exact F-SKD)
_C.DATA.LOWRES.FLIP_FIRST = False  # True: flip HR, then degrade (A-SKD); False: degrade, then flip both (F-SKD)

# ---------------------------------------------------------------------------------------------
_C.EVAL = CN()
_C.EVAL.SETS = []  # face verification sets: .bin files or extracted folders (relative to DATA.ROOT)
_C.EVAL.RESOLUTIONS = [112]  # probe resolutions; 112 = full resolution
_C.EVAL.CROSS_RESOLUTION = False  # also report HR-gallery vs LR-probe (left image kept at full res)
_C.EVAL.PROTOCOL = "insightface"  # "insightface" (flip-sum, L2) or "skd" (A-SKD/F-SKD flip-concat)
_C.EVAL.DOWN = "nearest"  # interpolation used to degrade evaluation images
_C.EVAL.UP = "nearest"  # interpolation back up to DATA.IMAGE_SIZE
_C.EVAL.BLUR_SIGMA = []  # blur of degraded evaluation images (A-SKD: [0.1, 2.0])
_C.EVAL.DEGRADE_FLIPS_SEPARATELY = False  # A-SKD: degrade each flipped image on its own
_C.EVAL.FOLDS = 10  # verification folds
_C.EVAL.FAR = 1e-3  # false-accept rate at which TAR is reported
_C.EVAL.ROC = True  # write an ROC plot PNG per set and resolution
_C.EVAL.PERIOD = 0  # evaluate every N iterations; 0 = only at the end
_C.EVAL.BATCH_SIZE = 128  # evaluation batch size
_C.EVAL.TOPK = [1, 5]  # classification accuracies reported
_C.EVAL.IJB = CN()
_C.EVAL.IJB.ROOT = ""  # folder holding IJBB/ and/or IJBC/ as insightface ships them; "" = no IJB evaluation
_C.EVAL.IJB.TARGETS = ["IJBC"]  # IJB targets evaluated: IJBB, IJBC
_C.EVAL.IJB.USE_FLIP_TEST = True  # F1: image feature = f(x) + f(flip x) (F0: f(x))
_C.EVAL.IJB.USE_NORM_SCORE = True  # N1: keep the raw feature norm as a quality weight (N0: L2-normalise images)
_C.EVAL.IJB.USE_DETECTOR_SCORE = True  # D1: scale image features by the detector's faceness score
_C.EVAL.IJB.FARS = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]  # FARs at which 1:1 TAR is reported
_C.EVAL.IJB.ONE_TO_N = False  # also 1:N identification (needs the 1N gallery/probe csvs)
_C.EVAL.IJB.PERIODIC = False  # also at EVAL.PERIOD evaluations during training (False: final one only, when EVAL.SETS exist)
_C.EVAL.IJB.FEATURES_DIR = ""  # keep the raw N x 2D image features (.npy) here; "" = temporary, deleted
_C.EVAL.TINYFACE = CN()
_C.EVAL.TINYFACE.ROOT = ""  # folder holding tinyface/Testing_Set (and aligned_pad_0.1_pad_high); "" = none
_C.EVAL.TINYFACE.RANKS = [1, 5, 10, 20]  # closed-set identification ranks reported
_C.EVAL.TINYFACE.PERIODIC = False  # also at EVAL.PERIOD evaluations during training (False: final one only, when EVAL.SETS exist)
_C.EVAL.TINYFACE.USE_FLIP_TEST = True  # feature = l2normalize(f(x) + f(flip x)) (AdaFace); False: l2normalize(f(x))

# ---------------------------------------------------------------------------------------------
_MODEL = CN()
_MODEL.BACKBONE = ""  # registry name, e.g. face.iresnet50, cifar.resnet8x4, imagenet.resnet18
_MODEL.ATTENTION = "none"  # face iResNet attention: none | cbam (F-SKD) | cbam_a_skd (A-SKD)
_MODEL.POOLING = "E"  # face iResNet head: E (BN-FC-BN, insightface) or A (global average pooling)
_MODEL.DROPOUT = 0.0  # dropout before the embedding FC (A-SKD: 0.4)
_MODEL.EMBEDDING_SIZE = 512  # face embedding size
_MODEL.HINTS = False  # F-SKD student hint layers (1x1 conv per stage), part of the student
_MODEL.HINT_BN = True  # batch norm after each hint conv
_MODEL.HEAD = ""  # margin/linear head: arcface | cosface | adaface | magface | linear | "" (none)
_MODEL.HEAD_S = 32.0  # margin head scale s
_MODEL.HEAD_M = 0.5  # margin head margin m
_MODEL.HEAD_EASY_MARGIN = False  # ArcFace easy margin (off in every seed)
_MODEL.HEAD_H = 0.333  # AdaFace h
_MODEL.HEAD_T_ALPHA = 1.0  # AdaFace batch-statistics momentum (1.0 = overwrite each batch, as F-SKD)
_MODEL.CHECKPOINT = ""  # weights to load: a Distillery checkpoint or a published state dict
_MODEL.CHECKPOINT_SOURCE = "auto"  # key layout of CHECKPOINT: auto | distillery | a_skd | f_skd | ...
_MODEL.HEAD_CHECKPOINT = ""  # separate margin-head weights (published heads are separate files)
_MODEL.PRETRAINED = ""  # initial backbone weights (e.g. torchvision ImageNet file), then trained
_MODEL.WIDTH = 64  # face iResNet base width (64 = the published networks; smaller for quick demos)
_C.TEACHER = _MODEL.clone()
_C.STUDENT = _MODEL.clone()

# ---------------------------------------------------------------------------------------------
_C.DISTILL = CN()
_C.DISTILL.TYPE = "none"  # registry name; several joined by "+" add their terms, e.g. "dct+kd"
_C.DISTILL.CE_WEIGHT = 1.0  # weight of the student's own classification loss

# Each method's own keys (DISTILL.<NAME>.*) are declared on its class in kd/<name>.py and join this
# schema when `kd` is imported (`register_method_keys`); `load_config` imports it first.

# ---------------------------------------------------------------------------------------------
_C.SOLVER = CN()
_C.SOLVER.OPTIMIZER = "sgd"  # sgd | adamw
_C.SOLVER.LR = 0.1  # base learning rate
_C.SOLVER.LR_REFERENCE_BATCH = 0  # >0: lr = LR * global batch / this (AdaDistill: 512)
_C.SOLVER.MOMENTUM = 0.9  # SGD momentum
_C.SOLVER.NESTEROV = False  # Nesterov momentum (A-SKD, F-SKD)
_C.SOLVER.WEIGHT_DECAY = 5e-4  # L2 weight decay on every trainable parameter
_C.SOLVER.BETAS = [0.9, 0.999]  # AdamW betas
_C.SOLVER.BATCH_SIZE = 128  # global batch size (split across DDP ranks)
_C.SOLVER.EPOCHS = 1  # training length in epochs (converted to iterations)
_C.SOLVER.MAX_ITERS = 0  # >0 overrides EPOCHS: train exactly this many iterations
_C.SOLVER.SCHEDULE = "multistep"  # multistep | cosine | poly | constant
_C.SOLVER.MILESTONES = []  # multistep decay points, in MILESTONE_UNIT
_C.SOLVER.MILESTONE_UNIT = "epoch"  # "epoch" (decay at epoch boundaries) or "iter"
_C.SOLVER.GAMMA = 0.1  # multistep decay factor
_C.SOLVER.MIN_LR = 0.0  # floor of cosine / poly schedules
_C.SOLVER.WARMUP_ITERS = 0  # linear warm-up from 0 over this many iterations
_C.SOLVER.WARMUP_EPOCHS = 0.0  # the same in epochs (the larger of the two wins)
_C.SOLVER.GRAD_CLIP = 0.0  # max gradient norm; 0 = off
_C.SOLVER.PRECISION = "auto"  # fp32 | bf16 | auto (bf16 autocast on CUDA, fp32 on CPU)
_C.SOLVER.COMPILE = False  # torch.compile the student and teacher forward passes
_C.SOLVER.CHANNELS_LAST = False  # channels_last memory format
_C.SOLVER.FUSED = False  # fused optimizer kernels (CUDA)
_C.SOLVER.FAST_PATH = "auto"  # auto: COMPILE + CHANNELS_LAST + FUSED on for CUDA; all: on anywhere; switches: the three keys alone
_C.SOLVER.CHECKPOINT_PERIOD = 1000  # write last.pt every N iterations (and at the end)
_C.SOLVER.SYNC_BN = False  # convert student BN to SyncBatchNorm under DDP
_C.SOLVER.PARTIAL_FC = False  # face margin head as Partial FC: class centres sharded over ranks, distributed softmax
_C.SOLVER.SAMPLE_RATE = 1.0  # Partial FC: fraction of each rank's centres used per step (positives always kept)

# ---------------------------------------------------------------------------------------------
_C.LOG = CN()
_C.LOG.PERIOD = 20  # iterations between loss logs (losses are synced to the host only then)
_C.LOG.TENSORBOARD = True  # write TensorBoard scalars into OUTPUT_DIR/tb
_C.LOG.PROGRESS = True  # tqdm progress bar


#: packages whose import contributes schema sections (the distillers' DISTILL.<NAME> keys); imported
#: by `get_defaults`, so every config is validated against every discovered method
SCHEMA_PLUGINS = ("kd",)
#: one-line docs of the keys added by `register_method_keys` (full key -> doc), for `--list`
METHOD_KEY_DOCS: dict[str, str] = {}
#: old full key -> new full key; a file or override naming the old key sets the new one, with a warning
RENAMED_KEYS: dict[str, str] = {}
_METHOD_OWNERS: dict[str, str] = {}


def register_method_keys(node: str, defaults: dict[str, tuple], owner: str) -> None:
    """Add `DISTILL.<node>` with its keys: `defaults` maps KEY -> (default, one-line doc[, choices]).

    Called by `kd` when it discovers a method; a second method sharing the node (arcdistill reads
    ADADISTILL) declares no keys of its own. Two owners declaring different keys for one node is a bug.
    """
    if node in _METHOD_OWNERS and _METHOD_OWNERS[node] != owner:
        if defaults:
            raise ValueError(f"DISTILL.{node} is declared by both {_METHOD_OWNERS[node]} and {owner}")
        return
    if node in _C.DISTILL and node not in _METHOD_OWNERS:
        raise ValueError(f"DISTILL.{node} clashes with a built-in DISTILL key")
    _METHOD_OWNERS[node] = owner
    section = CN()
    for key, spec in defaults.items():
        default, doc, *choices = spec
        section[key] = list(default) if isinstance(default, tuple) else default
        METHOD_KEY_DOCS[f"DISTILL.{node}.{key}"] = doc
        if choices:
            _CHOICES[f"DISTILL.{node}.{key}"] = tuple(choices[0])
    if node in _C.DISTILL:
        if set(_C.DISTILL[node]) != set(section):
            raise ValueError(f"DISTILL.{node} is declared twice with different keys by {owner}")
        return
    _C.DISTILL[node] = section


def register_renamed_key(old: str, new: str) -> None:
    """Accept a retired key: YAML files and overrides that name `old` set `new`, with a warning."""
    RENAMED_KEYS[old] = new


def get_defaults() -> CN:
    """A fresh, mutable copy of the defaults, every discovered method's section included."""
    for package in SCHEMA_PLUGINS:
        importlib.import_module(package)
    return _C.clone()


def _all_keys(node: CN, prefix: str = "") -> list[str]:
    keys = []
    for name, value in node.items():
        full = f"{prefix}{name}"
        keys.append(full)
        if isinstance(value, CN):
            keys.extend(_all_keys(value, full + "."))
    return keys


def _closest_key(key: str) -> str:
    close = difflib.get_close_matches(key, _all_keys(_C), n=1, cutoff=0.4)
    return f" Did you mean '{close[0]}'?" if close else ""


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read one YAML file and, recursively, its `_BASE_` (merged underneath it)."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: _BASE_ chain loops back to itself")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    base = data.pop("_BASE_", None)
    if base is None:
        return {"__file__": str(path), "data": data, "base": None}
    return {"__file__": str(path), "data": data, "base": _read_yaml(path.parent / base, chain + (path,))}


def _merge_file(cfg: CN, layer: dict[str, Any]) -> None:
    if layer["base"] is not None:
        _merge_file(cfg, layer["base"])
    _merge_dict(cfg, layer["data"], layer["__file__"], "")


def _merge_dict(node: CN, data: dict[str, Any], source: str, prefix: str, root: CN | None = None) -> None:
    root = node if root is None else root
    for key, value in data.items():
        full = f"{prefix}{key}"
        if full in RENAMED_KEYS:
            _set_renamed(root, full, value, source)
            continue
        if key not in node:
            raise ConfigError(f"{source}: unknown key '{full}'.{_closest_key(full)}")
        current = node[key]
        if isinstance(current, CN):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{full}' is a section; give it a mapping, not {value!r}")
            _merge_dict(current, value, source, full + ".", root)
        else:
            node[key] = _coerce(full, value, current, source)


def _set_renamed(cfg: CN, old: str, value: Any, source: str) -> None:
    new = RENAMED_KEYS[old]
    log.warning("%s: '%s' is retired; its value now goes to '%s' (rename it there)", source, old, new)
    *parents, leaf = new.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = _coerce(new, value, node[leaf], source)


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Check `value` against the default's type; ints widen to floats, tuples become lists."""
    expected = type(default)
    if isinstance(value, tuple):
        value = list(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is list and isinstance(value, list):
        return value
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise ConfigError(
        f"{source}: '{key}' expects {expected.__name__} (default {default!r}), got "
        f"{type(value).__name__} {value!r}"
    )


def _parse_override(text: str) -> Any:
    """Command-line values are Python/YAML literals; anything else is a plain string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if parsed is None else parsed


def apply_overrides(cfg: CN, overrides: list[str]) -> None:
    """Apply `KEY VALUE` pairs such as `SOLVER.LR 0.05 EVAL.RESOLUTIONS [14,28]`."""
    if len(overrides) % 2:
        raise ConfigError(f"overrides come in KEY VALUE pairs; '{overrides[-1]}' has no value")
    for key, text in zip(overrides[0::2], overrides[1::2]):
        if key in RENAMED_KEYS:
            _set_renamed(cfg, key, _parse_override(text), "command line")
            continue
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], CN):
                raise ConfigError(f"command line: unknown key '{key}'.{_closest_key(key)}")
            node = node[part]
        leaf = parts[-1]
        if leaf not in node or isinstance(node[leaf], CN):
            raise ConfigError(f"command line: unknown key '{key}'.{_closest_key(key)}")
        node[leaf] = _coerce(key, _parse_override(text), node[leaf], "command line")


_CHOICES = {
    "EXPERIMENT.TASK": ("face", "classification"),
    "DATA.COLOR": ("bgr", "rgb"),
    "DATA.LOWRES.BACKEND": ("device", "opencv"),
    "DATA.PARTNER": ("", "shuffle", "table"),
    "EVAL.PROTOCOL": ("insightface", "skd"),
    "SOLVER.OPTIMIZER": ("sgd", "adamw"),
    "SOLVER.SCHEDULE": ("multistep", "cosine", "poly", "constant"),
    "SOLVER.MILESTONE_UNIT": ("epoch", "iter"),
    "SOLVER.PRECISION": ("auto", "fp32", "bf16"),
    "SOLVER.FAST_PATH": ("auto", "all", "switches"),
}


def _lookup(cfg: CN, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def validate(cfg: CN, source: str = "config") -> None:
    """Value checks that types alone cannot express; registry names are checked by the builders."""
    for key, choices in _CHOICES.items():
        value = _lookup(cfg, key)
        if value not in choices:
            raise ConfigError(f"{source}: '{key}' must be one of {list(choices)}, got {value!r}")
    device = cfg.EXPERIMENT.DEVICE
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise ConfigError(f"{source}: 'EXPERIMENT.DEVICE' must be auto, cpu, cuda or cuda:N, got {device!r}")
    if cfg.EXPERIMENT.THREADS < 0:
        raise ConfigError(f"{source}: 'EXPERIMENT.THREADS' must be 0 (torch's default) or a positive count")
    if cfg.SOLVER.BATCH_SIZE <= 0:
        raise ConfigError(f"{source}: 'SOLVER.BATCH_SIZE' must be positive")
    if cfg.SOLVER.MAX_ITERS <= 0 and cfg.SOLVER.EPOCHS <= 0:
        raise ConfigError(f"{source}: set 'SOLVER.EPOCHS' or 'SOLVER.MAX_ITERS' to a positive number")
    blur = list(cfg.DATA.LOWRES.BLUR_SIGMA)
    if blur and len(blur) != 2:
        raise ConfigError(f"{source}: 'DATA.LOWRES.BLUR_SIGMA' is [] or [sigma_x, sigma_y], got {blur}")
    unknown_targets = [t for t in cfg.EVAL.IJB.TARGETS if t not in ("IJBB", "IJBC")]
    if unknown_targets or not cfg.EVAL.IJB.TARGETS:
        raise ConfigError(f"{source}: 'EVAL.IJB.TARGETS' lists IJBB and/or IJBC, got {list(cfg.EVAL.IJB.TARGETS)}")
    if not cfg.EVAL.IJB.FARS or not all(isinstance(f, (int, float)) and 0 < f <= 1 for f in cfg.EVAL.IJB.FARS):
        raise ConfigError(f"{source}: 'EVAL.IJB.FARS' must be FARs in (0, 1], got {list(cfg.EVAL.IJB.FARS)}")
    if not cfg.EVAL.TINYFACE.RANKS or not all(isinstance(k, int) and k >= 1 for k in cfg.EVAL.TINYFACE.RANKS):
        raise ConfigError(f"{source}: 'EVAL.TINYFACE.RANKS' must be ranks >= 1, got {list(cfg.EVAL.TINYFACE.RANKS)}")
    if not 0.0 <= cfg.DATA.LOWRES.HR_PROB <= 1.0:
        raise ConfigError(f"{source}: 'DATA.LOWRES.HR_PROB' must lie in [0, 1]")


def load_config(path: str | Path | None, overrides: list[str] | None = None, freeze: bool = True) -> CN:
    """Defaults <- `_BASE_` chain <- file <- overrides, validated and (by default) frozen."""
    cfg = get_defaults()
    source = "defaults"
    if path is not None:
        path = Path(path)
        _merge_file(cfg, _read_yaml(path))
        source = str(path)
        if not cfg.EXPERIMENT.NAME:
            cfg.EXPERIMENT.NAME = path.stem
    apply_overrides(cfg, list(overrides or []))
    validate(cfg, source)
    if freeze:
        cfg.freeze()
    return cfg


def resolve_data_path(cfg: CN, path: str) -> Path:
    """A data path from the config: absolute as given, otherwise relative to DATA.ROOT."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or not cfg.DATA.ROOT:
        return candidate
    return Path(cfg.DATA.ROOT).expanduser() / candidate
