"""The configuration schema (every key, its default, one line on what it means) and its loader.

`load_config(path, overrides)` resolves `_BASE_` chains (paths relative to the including file),
merges each file over the defaults with yacs's strict key checking, applies `KEY VALUE` overrides
from the command line, validates and freezes. Mistakes raise `ConfigError` naming the file, the key
and the closest valid key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import ast
import difflib
from pathlib import Path
from typing import Any

import yaml
from yacs.config import CfgNode as CN

from utility.errors import ConfigError

_C = CN()

# ---------------------------------------------------------------------------------------------
_C.EXPERIMENT = CN()
_C.EXPERIMENT.NAME = ""  # free-form run name, used in tables; defaults to the config file's stem
_C.EXPERIMENT.TASK = "face"  # "face" (verification) or "classification" (top-1/top-5)
_C.EXPERIMENT.OUTPUT_DIR = "outputs/default"  # checkpoints, logs, config.yaml, run.json, results
_C.EXPERIMENT.SEED = 0  # seeds Python, NumPy, torch and every data worker
_C.EXPERIMENT.DEVICE = "auto"  # "auto" (cuda if available), "cpu" or "cuda" ("cuda:N" also accepted)
_C.EXPERIMENT.DETERMINISTIC = False  # ask torch for deterministic kernels (slower on CUDA)

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
_C.DATA.CRD_NEGATIVES = 0  # >0: the dataset returns this many class-aware negative indices (CRD)
_C.DATA.CRD_POOL = "class"  # CRD negatives from all other-class samples, or "dct_first_n" (DCT scene quirk)
_C.DATA.PARTNER = ""  # F-SKD partner view: "" none, "shuffle" (in batch), "table" (same identity)
_C.DATA.PARTNER_TABLE = ""  # partner table written by `python -m kd.f_skd partners`
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

_C.DISTILL.KD = CN()
_C.DISTILL.KD.TEMPERATURE = 4.0  # softmax temperature T (loss scaled by T^2)
_C.DISTILL.KD.WEIGHT = 1.0  # weight of the KL term

_C.DISTILL.AT = CN()
_C.DISTILL.AT.WEIGHT = 1000.0  # beta (RepDistiller 1000)
_C.DISTILL.AT.P = 2  # power of the activation map
_C.DISTILL.AT.STAGES = []  # stage indices to distil (Features.stages); [] = all, paired from the first

_C.DISTILL.CRD = CN()
_C.DISTILL.CRD.WEIGHT = 0.8  # beta (RepDistiller 0.8)
_C.DISTILL.CRD.FEAT_DIM = 128  # embedding size of both heads
_C.DISTILL.CRD.NCE_K = 16384  # negatives per sample
_C.DISTILL.CRD.NCE_T = 0.07  # temperature
_C.DISTILL.CRD.NCE_M = 0.5  # memory-bank momentum
_C.DISTILL.CRD.N_DATA = 0  # memory-bank rows = training-set size; 0 = the engine fills it from the dataset

_C.DISTILL.DCT = CN()
_C.DISTILL.DCT.WEIGHT = 1.0  # weight of the DCT-attention term
_C.DISTILL.DCT.TRANSFORM = "dft_real"  # "dft_real" (what the reference computes) or "dct2" (extension)
_C.DISTILL.DCT.TEACHER_CORRECT = True  # PRED_GUIDE (reference default on): zero the term where the teacher is wrong
_C.DISTILL.DCT.EPS = 0.0  # added to the min-max denominators; 0 = as the reference (a constant map gives NaN)
_C.DISTILL.DCT.ALIGN = False  # extension: pool the larger map of a stage pair to the smaller (cross-arch CIFAR)

_C.DISTILL.ASKD = CN()
_C.DISTILL.ASKD.WEIGHT = 1.0  # beta on w_rs*RS + w_cs*CS (every released config: 1)
_C.DISTILL.ASKD.R = 2  # region side for the regional similarity
_C.DISTILL.ASKD.W_RS = 5.0  # regional-similarity weight
_C.DISTILL.ASKD.W_CS = 14.0  # class-similarity weight

_C.DISTILL.A_SKD = CN()
_C.DISTILL.A_SKD.WEIGHT = 5.0  # lambda (A-SKD 5.0 with sum; F-SKD baseline 80 with mean)
_C.DISTILL.A_SKD.REDUCTION = "sum"  # "sum" over maps (A-SKD) or "mean" (F-SKD re-implementation)
_C.DISTILL.A_SKD.MAPS = "logits"  # "logits" (pre-sigmoid, A-SKD) or "gates" (post-sigmoid, F-SKD)

_C.DISTILL.F_SKD = CN()
_C.DISTILL.F_SKD.POINT_WEIGHT = 20.0  # weight of the point (feature-similarity) term
_C.DISTILL.F_SKD.CROSS_WEIGHT = 4.0  # weight of the cross-sample relational term; 0 = off
_C.DISTILL.F_SKD.LOGIT_WEIGHT = 0.0  # weight of the optional logit (HKD) term; 0 = off
_C.DISTILL.F_SKD.LOGIT_TEMPERATURE = 4.0  # temperature of the logit term
_C.DISTILL.F_SKD.LOGIT_TEACHER_HEAD = False  # teacher logits from its own head (False: student margin with teacher weights, quirk #16)
_C.DISTILL.F_SKD.REQUIRE_HINTS = True  # the student must have hint layers (False: FSKD-v1, raw stages)
_C.DISTILL.F_SKD.PARTNER_MARGIN = 0.0  # partner table: same-identity samples with teacher cosine > this (< -2: any sample)

_C.DISTILL.ADADISTILL = CN()
_C.DISTILL.ADADISTILL.MARGIN = "arcface"  # margin inside the centre head: arcface | cosface
_C.DISTILL.ADADISTILL.S = 64.0  # scale
_C.DISTILL.ADADISTILL.M = 0.45  # margin
_C.DISTILL.ADADISTILL.WEIGHTED_ALPHA = True  # alpha' = alpha * cos(centre, teacher)

_C.DISTILL.FITNET = CN()
_C.DISTILL.FITNET.WEIGHT = 1.5  # weight of the hint MSE (F-SKD table)

_C.DISTILL.RKD = CN()
_C.DISTILL.RKD.WEIGHT = 40.0  # overall weight (F-SKD table)
_C.DISTILL.RKD.W_DIST = 25.0  # distance term weight
_C.DISTILL.RKD.W_ANGLE = 50.0  # angle term weight
_C.DISTILL.RKD.FEATURE = "out"  # vectors compared: "out" (face embedding, F-SKD) or "pooled" (penultimate, RepDistiller)

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
_C.SOLVER.CUDNN_BENCHMARK = True  # cuDNN autotuner on CUDA (training shapes are fixed); EXPERIMENT.DETERMINISTIC turns it off
_C.SOLVER.CHECKPOINT_PERIOD = 1000  # write last.pt every N iterations (and at the end)
_C.SOLVER.SYNC_BN = False  # convert student BN to SyncBatchNorm under DDP
_C.SOLVER.PARTIAL_FC = False  # face margin head as Partial FC: class centres sharded over ranks, distributed softmax
_C.SOLVER.SAMPLE_RATE = 1.0  # Partial FC: fraction of each rank's centres used per step (positives always kept)

# ---------------------------------------------------------------------------------------------
_C.LOG = CN()
_C.LOG.PERIOD = 20  # iterations between loss logs (losses are synced to the host only then)
_C.LOG.TENSORBOARD = True  # write TensorBoard scalars into OUTPUT_DIR/tb
_C.LOG.PROGRESS = True  # tqdm progress bar


REGISTRY_KEYS = {
    "TEACHER.BACKBONE": "backbone",
    "STUDENT.BACKBONE": "backbone",
    "TEACHER.HEAD": "head",
    "STUDENT.HEAD": "head",
    "DATA.FORMAT": "dataset",
}


def get_defaults() -> CN:
    """A fresh, mutable copy of the defaults."""
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


def _merge_dict(node: CN, data: dict[str, Any], source: str, prefix: str) -> None:
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in node:
            raise ConfigError(f"{source}: unknown key '{full}'.{_closest_key(full)}")
        current = node[key]
        if isinstance(current, CN):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{full}' is a section; give it a mapping, not {value!r}")
            _merge_dict(current, value, source, full + ".")
        else:
            node[key] = _coerce(full, value, current, source)


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
    "DISTILL.A_SKD.REDUCTION": ("sum", "mean"),
    "DISTILL.A_SKD.MAPS": ("logits", "gates"),
    "DISTILL.ADADISTILL.MARGIN": ("arcface", "cosface"),
    "DISTILL.DCT.TRANSFORM": ("dft_real", "dct2"),
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
    if cfg.SOLVER.BATCH_SIZE <= 0:
        raise ConfigError(f"{source}: 'SOLVER.BATCH_SIZE' must be positive")
    if cfg.SOLVER.MAX_ITERS <= 0 and cfg.SOLVER.EPOCHS <= 0:
        raise ConfigError(f"{source}: set 'SOLVER.EPOCHS' or 'SOLVER.MAX_ITERS' to a positive number")
    blur = list(cfg.DATA.LOWRES.BLUR_SIGMA)
    if blur and len(blur) != 2:
        raise ConfigError(f"{source}: 'DATA.LOWRES.BLUR_SIGMA' is [] or [sigma_x, sigma_y], got {blur}")
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
