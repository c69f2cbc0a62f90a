"""Synthetic IJB-B/C and TinyFace folders in the real layouts, for the tests and the demo.

The faces are `data.synthetic`'s procedural identities (112 px, BGR), drawn from a seed stream of their
own, so they are disjoint from the synthetic training identities.

IJB: each subject has several templates, each template one to three media of one to three frames.
Every frame is pasted into a larger loose crop under a random rotation, scale and shift; its five
landmarks are the ArcFace points moved by the same transform, so `data.align.align_face` undoes it.
Faceness scores lie in [0.3, 1.0). Pairs: every genuine template pair plus as many impostor pairs
as `impostor_ratio` asks; 1:N: each subject's first template in gallery 1 (even subjects) or 2 (odd),
the rest are probes.

TinyFace: per identity probes and gallery matches named `<id>_<n>.jpg`, plus distractors of other
identities, all shrunk to 14-26 px (TinyFace's faces are about 20 px); with `aligned` also 112 px
copies in `aligned_pad_0.1_pad_high/`.

    python -m data.synthetic ijb --out DIR [--subjects N] [--targets IJBB,IJBC] [--seed S]
    python -m data.synthetic tinyface --out DIR [--identities N] [--distractors M] [--aligned] [--seed S]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from data.align import ARCFACE_DST
from data.lists import write_image
from data.synthetic import face_training_images

_IJB_STREAM, _TINYFACE_STREAM = 7001, 7002
LOOSE_SIZE = 160
_IJB_FRAMES = 8  # views drawn per subject; its templates take their frames from these
_GALLERY_NAMES = {"IJBB": ("S1", "S2"), "IJBC": ("G1", "G2")}


def _faces(seed: int, stream: int, identities: int, per_identity: int) -> np.ndarray:
    """identities x per_identity x 112 x 112 x 3 uint8 BGR views."""
    images, _ = face_training_images(identities, per_identity, seed=seed * 100003 + stream)
    return images.reshape(identities, per_identity, *images.shape[1:])


def ijb_faces(target: str, subjects: int, seed: int = 0) -> np.ndarray:
    """The aligned 112 px views (subjects x 8 x 112 x 112 x 3) that a target's loose crops are made from."""
    return _faces(seed, _IJB_STREAM + sum(map(ord, target)), subjects, _IJB_FRAMES)


def _loose_crop(face: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(LOOSE_SIZE square loose crop, its 5 x 2 landmarks) of an aligned 112 px face."""
    angle, scale = rng.uniform(-12, 12), rng.uniform(0.95, 1.25)
    matrix = cv2.getRotationMatrix2D((56.0, 56.0), angle, scale)
    matrix[:, 2] += (LOOSE_SIZE - 112) / 2.0 + rng.uniform(-6, 6, 2)
    background = rng.uniform(20, 230, 3)
    crop = cv2.warpAffine(face, matrix, (LOOSE_SIZE, LOOSE_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(float(v) for v in background))
    landmarks = ARCFACE_DST.astype(np.float64) @ matrix[:, :2].T + matrix[:, 2]
    return crop, landmarks


def write_ijb_target(out_dir: str | Path, target: str = "IJBC", subjects: int = 12, templates_per_subject: int = 3,
                     impostor_ratio: int = 4, seed: int = 0) -> Path:
    """Write `<out_dir>/<target>/{loose_crop,meta}` and return the target folder."""
    folder = Path(out_dir) / target
    prefix = target.lower()
    rng = np.random.default_rng([seed, _IJB_STREAM, sum(map(ord, target))])
    faces = ijb_faces(target, subjects, seed)
    (folder / "meta").mkdir(parents=True, exist_ok=True)
    tid_mid, five_points, owners = [], [], []
    template_id, media_id, image_number = 1, 1000, 1
    for subject in range(subjects):
        for _ in range(templates_per_subject):
            for _ in range(int(rng.integers(1, 4))):
                for _ in range(int(rng.integers(1, 4))):
                    crop, landmarks = _loose_crop(faces[subject, int(rng.integers(_IJB_FRAMES))], rng)
                    name = f"{image_number}.jpg"
                    write_image(folder / "loose_crop" / name, crop)
                    tid_mid.append(f"{name} {template_id} {media_id}")
                    points = " ".join(f"{value:.3f}" for value in landmarks.reshape(-1))
                    five_points.append(f"{name} {points} {rng.uniform(0.3, 1.0):.3f}")
                    image_number += 1
                media_id += 1
            owners.append(subject)
            template_id += 1
    (folder / "meta" / f"{prefix}_face_tid_mid.txt").write_text("\n".join(tid_mid) + "\n")
    (folder / "meta" / f"{prefix}_name_5pts_score.txt").write_text("\n".join(five_points) + "\n")
    owners_array = np.asarray(owners)
    ids = np.arange(1, len(owners) + 1)
    first, second = np.triu_indices(len(owners), 1)
    genuine = owners_array[first] == owners_array[second]
    impostors = np.flatnonzero(~genuine)
    chosen = rng.choice(impostors, size=min(impostors.size, impostor_ratio * int(genuine.sum())), replace=False)
    keep = np.sort(np.r_[np.flatnonzero(genuine), chosen])
    pairs = [f"{ids[first[k]]} {ids[second[k]]} {int(genuine[k])}" for k in keep]
    (folder / "meta" / f"{prefix}_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME"
    galleries: list[list[str]] = [[header], [header]]
    probes = [header]
    seen: set[int] = set()
    for template, subject in zip(ids, owners):
        if subject not in seen:
            seen.add(subject)
            galleries[subject % 2].append(f"{template},{subject + 1},img/{template}.jpg")
        else:
            probes.append(f"{template},{subject + 1},img/{template}.jpg")
    for name, lines in zip(_GALLERY_NAMES[target], galleries):
        (folder / "meta" / f"{prefix}_1N_gallery_{name}.csv").write_text("\n".join(lines) + "\n")
    (folder / "meta" / f"{prefix}_1N_probe_mixed.csv").write_text("\n".join(probes) + "\n")
    return folder


def write_ijb(out_dir: str | Path, subjects: int = 12, targets: Sequence[str] = ("IJBB", "IJBC"),
              seed: int = 0) -> list[Path]:
    """Both targets (by default) under `out_dir`, the folder EVAL.IJB.ROOT names."""
    return [write_ijb_target(out_dir, target, subjects, seed=seed) for target in targets]


def _shrink(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = int(rng.integers(16, 27)), int(rng.integers(14, 23))
    return cv2.resize(face, (width, height), interpolation=cv2.INTER_AREA)


def write_tinyface(out_dir: str | Path, identities: int = 20, probes_per_identity: int = 2,
                   matches_per_identity: int = 2, distractors: int = 60, aligned: bool = False,
                   seed: int = 0) -> Path:
    """Write `<out_dir>/tinyface/Testing_Set/{Probe,Gallery_Match,Gallery_Distractor}` (and with
    `aligned` the 112 px copies); returns `out_dir`, the folder EVAL.TINYFACE.ROOT names."""
    out = Path(out_dir)
    testing = out / "tinyface" / "Testing_Set"
    rng = np.random.default_rng([seed, _TINYFACE_STREAM])
    per_identity = probes_per_identity + matches_per_identity
    faces = _faces(seed, _TINYFACE_STREAM, identities, per_identity)
    others = _faces(seed, _TINYFACE_STREAM + 1, distractors, 1)[:, 0]
    entries = []
    for identity in range(identities):
        for n in range(per_identity):
            folder = "Probe" if n < probes_per_identity else "Gallery_Match"
            entries.append((folder, f"{identity + 1}_{n + 1}.jpg", faces[identity, n]))
    entries += [("Gallery_Distractor", f"{n + 1}_d.jpg", face) for n, face in enumerate(others)]
    for folder, name, face in entries:
        write_image(testing / folder / name, _shrink(face, rng))
        if aligned:
            write_image(out / "aligned_pad_0.1_pad_high" / folder / name, face)
    return out


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The `ijb` and `tinyface` subcommands of `python -m data.synthetic`."""
    ijb = commands.add_parser("ijb", help="IJB-B/IJB-C folders: loose_crop/ and meta/ as insightface ships them")
    ijb.add_argument("--out", required=True, help="output folder (becomes EVAL.IJB.ROOT)")
    ijb.add_argument("--subjects", type=int, default=12)
    ijb.add_argument("--targets", default="IJBB,IJBC", help="comma-separated: IJBB, IJBC")
    ijb.add_argument("--seed", type=int, default=0)
    tiny = commands.add_parser("tinyface", help="TinyFace Testing_Set: Probe, Gallery_Match, Gallery_Distractor")
    tiny.add_argument("--out", required=True, help="output folder (becomes EVAL.TINYFACE.ROOT)")
    tiny.add_argument("--identities", type=int, default=20)
    tiny.add_argument("--distractors", type=int, default=60)
    tiny.add_argument("--aligned", action="store_true", help="also write 112 px aligned_pad_0.1_pad_high copies")
    tiny.add_argument("--seed", type=int, default=0)


def run_command(args: argparse.Namespace) -> list[Path]:
    """Write what an `ijb` / `tinyface` command asks for; returns the written folders."""
    if args.command == "ijb":
        targets = [name for name in args.targets.split(",") if name]
        return write_ijb(args.out, args.subjects, targets, args.seed)
    return [write_tinyface(args.out, args.identities, distractors=args.distractors, aligned=args.aligned,
                           seed=args.seed)]
