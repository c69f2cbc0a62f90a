"""Deterministic procedural data in the real file formats, for the demo and the tests.

Faces: each identity is a smooth pattern (a face-shaped ellipse whose skin tone and dark "eye/mouth"
blob layout come from one of a few shared *families*, plus identity-specific blob offsets, face
shape and tone) overlaid with an identity-specific fine texture (oriented sinusoids of 8-22 cycles
per image) that carries most of the identity. At 14 px the texture is gone (Nyquist is 7 cycles;
nearest downsampling aliases it into pose-dependent noise) and only the family and the small coarse
offsets remain, so low resolution is genuinely harder than 112 px, as it is for real faces. Each
sample varies by pose jitter (shift, rotation, scale), background colour, lighting (gain, bias,
linear gradient) and pixel noise.

Written as insightface lays them out: `train.rec`/`train.idx`/`property` (BGR JPEG q95, header
record 0 and identity records), `lfw.bin`, `cfp_fp.bin`, `agedb_30.bin` (protocol-2 pickles, half
same / half different pairs per fold, identities disjoint from training) and, with `--extracted`,
the conversion script's `image/<label>/<key>.jpg` + `train.list` + `evaluation/<name>/` + `.txt`.

    python -m data.synthetic faces --out DIR [--identities N] [--images-per-identity M] [--pairs P] [--seed S]
    python -m data.synthetic cifar --out DIR [...]    (data.synthetic_classification.write_cifar100)
    python -m data.synthetic scene --out DIR [...]    (data.synthetic_classification.write_scene)
    python -m data.synthetic ijb --out DIR [...]      (data.synthetic_face_eval.write_ijb)
    python -m data.synthetic tinyface --out DIR [...] (data.synthetic_face_eval.write_tinyface)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data.lists import write_image, write_image_list
from data.pairs import write_bin, write_pair_folder
from data.recordio import encode_image, write_face_rec

FACE_SIZE = 112
EVAL_SETS = ("lfw", "cfp_fp", "agedb_30")
_FAMILY, _IDENTITY, _TRAIN, _EVAL = 1, 2, 3, 4
# per-set nuisance strength: (pose, lighting); CFP-FP is the pose-heavy set, AgeDB the appearance-heavy one
_SET_NUISANCE = {"lfw": (1.0, 1.0), "cfp_fp": (1.6, 1.0), "agedb_30": (1.0, 1.6)}
_BLOBS = 5
# Where identity lives: a strong fine texture (8-22 cycles per image: above the 7-cycle Nyquist limit
# of a 14 px view, which aliases it into pose-dependent noise) against small identity-specific
# changes of the coarse family layout (blob offsets, skin tone) that survive at 14 px.
_TEXTURE = 26.0  # amplitude of the fine texture (grey levels per sinusoid)
_CYCLES = (8.0, 22.0)
_OFFSET = 0.03  # std of the identity's blob offsets from its family layout (face half-widths)
_TONE = 5.0  # identity skin-tone spread around the family's (grey levels)


@dataclass(frozen=True)
class _Identity:
    template: np.ndarray  # FACE_SIZE x FACE_SIZE x 4 float32: mask-premultiplied BGR face, then the mask


def _grid() -> tuple[np.ndarray, np.ndarray]:
    axis = (np.arange(FACE_SIZE, dtype=np.float32) + 0.5) / FACE_SIZE * 2.0 - 1.0
    return np.meshgrid(axis, axis, indexing="ij")  # y, x in [-1, 1]


def _families(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Shared coarse face layouts: (count x _BLOBS x 4 blobs (y, x, radius, darkness), count x 3 skin tones)."""
    rng = np.random.default_rng([seed, _FAMILY])
    layout = np.empty((count, _BLOBS, 4), dtype=np.float32)
    layout[..., 0] = rng.uniform(-0.5, 0.6, (count, _BLOBS))
    layout[..., 1] = rng.uniform(-0.55, 0.55, (count, _BLOBS))
    layout[..., 2] = rng.uniform(0.08, 0.22, (count, _BLOBS))
    layout[..., 3] = rng.uniform(40, 110, (count, _BLOBS))
    skin = rng.uniform(100, 220, (count, 3)).astype(np.float32)
    return layout, skin


def _identity(seed: int, stream: int, number: int, families: tuple[np.ndarray, np.ndarray]) -> _Identity:
    """One identity: its family's layout and skin tone, its own offsets and shape, its fine texture."""
    rng = np.random.default_rng([seed, _IDENTITY, stream, number])
    layouts, skins = families
    family = int(rng.integers(len(layouts)))
    y, x = _grid()
    face_h, face_w = rng.uniform(0.78, 0.92), rng.uniform(0.6, 0.76)
    mask = np.clip((1.0 - (y / face_h) ** 2 - (x / face_w) ** 2) * 6.0, 0.0, 1.0)
    skin = skins[family] + rng.uniform(-_TONE, _TONE, 3).astype(np.float32)
    face = np.broadcast_to(skin, (FACE_SIZE, FACE_SIZE, 3)).copy()
    layout = layouts[family].copy()
    layout[:, :2] += rng.normal(0, _OFFSET, (_BLOBS, 2))
    layout[:, 2] *= rng.uniform(0.8, 1.25, _BLOBS)
    for cy, cx, radius, darkness in layout:
        face -= (darkness * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2)))[..., None]
    texture = np.zeros_like(y)
    for _ in range(6):
        cycles = rng.uniform(*_CYCLES)
        angle = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        texture += np.sin(np.pi * cycles * (np.cos(angle) * x + np.sin(angle) * y) + phase)
    face += (_TEXTURE * texture)[..., None] * rng.uniform(0.5, 1.0, 3).astype(np.float32)
    # BGR face premultiplied by its mask, plus the mask: one 4-channel image warps both at once
    template = np.concatenate([face * mask[..., None], mask[..., None]], axis=2)
    return _Identity(np.ascontiguousarray(template, dtype=np.float32))


def _samples(templates: Sequence[np.ndarray], rng: np.random.Generator, pose: float = 1.0,
             lighting: float = 1.0) -> np.ndarray:
    """One uint8 BGR view per template (N x 112 x 112 x 3) under pose, lighting and noise jitter."""
    count = len(templates)
    centre = (FACE_SIZE / 2.0, FACE_SIZE / 2.0)
    angles = rng.uniform(-6, 6, count) * pose
    scales = 1 + rng.uniform(-0.05, 0.05, count) * pose
    shifts = rng.uniform(-3.5, 3.5, (count, 2)) * pose
    backgrounds = rng.uniform(30, 220, (count, 1, 1, 3)).astype(np.float32)
    views = np.empty((count, FACE_SIZE, FACE_SIZE, 3), dtype=np.float32)
    for n, template in enumerate(templates):
        matrix = cv2.getRotationMatrix2D(centre, float(angles[n]), float(scales[n]))
        matrix[:, 2] += shifts[n]
        warped = cv2.warpAffine(template, matrix, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT)
        views[n] = warped[..., :3] + backgrounds[n] * (1.0 - warped[..., 3:])
    y, x = _grid()
    gain = (1 + rng.uniform(-0.2, 0.2, (count, 1, 1, 1)) * lighting).astype(np.float32)
    bias = (rng.uniform(-15, 15, (count, 1, 1, 1)) * lighting).astype(np.float32)
    direction = rng.uniform(0, 2 * np.pi, (count, 1, 1)).astype(np.float32)
    strength = (rng.uniform(0, 18, (count, 1, 1)) * lighting).astype(np.float32)
    views *= gain
    views += bias
    views += ((np.cos(direction) * x + np.sin(direction) * y) * strength)[..., None]
    views += rng.standard_normal(views.shape, dtype=np.float32) * np.float32(3.0)
    np.rint(views, out=views)
    np.clip(views, 0, 255, out=views)
    return views.astype(np.uint8)


def face_training_images(identities: int, images_per_identity: int, seed: int = 0,
                         families: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(N x 112 x 112 x 3 uint8 BGR, int64 labels sorted by identity) of the training identities."""
    layouts = _families(seed, families)
    images, labels = [], []
    for number in range(identities):
        identity = _identity(seed, _TRAIN, number, layouts)
        rng = np.random.default_rng([seed, _TRAIN, number, 1])
        images.append(_samples([identity.template] * images_per_identity, rng))
        labels.extend([number] * images_per_identity)
    return np.concatenate(images), np.asarray(labels, dtype=np.int64)


def face_pairs(pairs: int, seed: int = 0, name: str = "lfw", identities: int | None = None,
               families: int = 8, folds: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(2P x 112 x 112 x 3 uint8 BGR, bool issame of P): images 2k, 2k+1 form pair k.

    Identities come from a stream of their own per set (disjoint from training); every block of
    P / folds consecutive pairs is half same, half different, in shuffled order.
    """
    stream = _EVAL * 100 + (EVAL_SETS.index(name) if name in EVAL_SETS else len(EVAL_SETS) + sum(map(ord, name)))
    pose, lighting = _SET_NUISANCE.get(name, (1.0, 1.0))
    rng = np.random.default_rng([seed, stream])
    count = identities or max(8, pairs // 6)
    layouts = _families(seed, families)
    people = [_identity(seed, stream, number, layouts) for number in range(count)]
    issame = np.zeros(pairs, dtype=bool)
    for block in np.array_split(np.arange(pairs), max(1, min(folds, pairs))):
        flags = np.arange(len(block)) < (len(block) + 1) // 2
        issame[block] = rng.permutation(flags)
    first = rng.integers(count, size=pairs)
    second = np.where(issame, first, (first + 1 + rng.integers(count - 1, size=pairs)) % count)
    order = np.stack([first, second], axis=1).reshape(-1)
    return _samples([people[int(number)].template for number in order], rng, pose, lighting), issame


def write_faces(out_dir: str | Path, identities: int = 40, images_per_identity: int = 20, pairs: int = 300,
                seed: int = 0, sets: Sequence[str] = EVAL_SETS, extracted: bool = False) -> dict[str, Path]:
    """Write a synthetic face training set and verification sets; returns the written paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = face_training_images(identities, images_per_identity, seed)
    write_face_rec(out / "train.rec", [encode_image(image) for image in images], labels)
    (out / "property").write_text(f"{identities},{FACE_SIZE},{FACE_SIZE}")
    written = {"train.rec": out / "train.rec", "train.idx": out / "train.idx", "property": out / "property"}
    for name in sets:
        pair_images, issame = face_pairs(pairs, seed, name)
        write_bin(out / f"{name}.bin", list(pair_images), issame)
        written[f"{name}.bin"] = out / f"{name}.bin"
        if extracted:
            written[f"evaluation/{name}.txt"] = write_pair_folder(out / "evaluation" / name, list(pair_images), issame)
    if extracted:
        paths = []
        for key, (image, label) in enumerate(zip(images, labels), 1):
            path = out / "image" / f"{label:06d}" / f"{key:08d}.jpg"
            write_image(path, image)
            paths.append(path.resolve())
        write_image_list(out / "train.list", paths, labels)
        written["train.list"] = out / "train.list"
        written["image"] = out / "image"
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    faces = commands.add_parser("faces", help="face identities: train.rec/.idx, property, lfw/cfp_fp/agedb_30 .bin")
    faces.add_argument("--out", required=True, help="output folder")
    faces.add_argument("--identities", type=int, default=40, help="training identities")
    faces.add_argument("--images-per-identity", type=int, default=20, help="training images per identity")
    faces.add_argument("--pairs", type=int, default=300, help="pairs per verification set")
    faces.add_argument("--seed", type=int, default=0)
    faces.add_argument("--sets", default=",".join(EVAL_SETS), help="comma-separated verification set names")
    faces.add_argument("--extracted", action="store_true",
                       help="also write image/<label>/*.jpg, train.list and evaluation/<set>/ folders")

    cifar = commands.add_parser("cifar", help="CIFAR-100-format python pickles (train/test/meta)")
    cifar.add_argument("--out", required=True)
    cifar.add_argument("--classes", type=int, default=10)
    cifar.add_argument("--train-per-class", type=int, default=50)
    cifar.add_argument("--test-per-class", type=int, default=10)
    cifar.add_argument("--seed", type=int, default=0)

    scene = commands.add_parser("scene", help="scene-recognition image folders and list files")
    scene.add_argument("--out", required=True)
    scene.add_argument("--classes", type=int, default=5)
    scene.add_argument("--train-per-class", type=int, default=20)
    scene.add_argument("--val-per-class", type=int, default=10)
    scene.add_argument("--seed", type=int, default=0)
    scene.add_argument("--image-size", type=int, default=96)

    from data.synthetic_face_eval import add_commands

    add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "faces":
        sets = [name for name in args.sets.split(",") if name]
        written = write_faces(args.out, args.identities, args.images_per_identity, args.pairs, args.seed, sets,
                              args.extracted)
        for path in written.values():
            print(path)
    elif args.command in ("ijb", "tinyface"):
        from data.synthetic_face_eval import run_command

        for path in run_command(args):
            print(path)
    elif args.command == "cifar":
        from data.synthetic_classification import write_cifar100

        print(write_cifar100(args.out, args.classes, args.train_per_class, args.test_per_class, args.seed))
    else:
        from data.synthetic_classification import write_scene

        written = write_scene(args.out, args.classes, args.train_per_class, args.val_per_class, args.seed,
                              args.image_size)
        for path in (written.values() if isinstance(written, dict) else [written]):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
