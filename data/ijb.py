"""IJB-B / IJB-C as insightface distributes them: loose crops, landmarks, templates, pairs (`spec/face_eval.md` §1.1).

    <root>/IJBC/loose_crop/<image_name>
    <root>/IJBC/meta/ijbc_face_tid_mid.txt          image_name tid mid                  (one line per image)
    <root>/IJBC/meta/ijbc_name_5pts_score.txt       image_name x1 y1 ... x5 y5 faceness (same order)
    <root>/IJBC/meta/ijbc_template_pair_label.txt   tid1 tid2 label
    <root>/IJBC/meta/ijbc_1N_gallery_G1.csv, ..._G2.csv, ijbc_1N_probe_mixed.csv   (1:N; IJB-B: S1, S2)

Everything is read and checked before any embedding starts, so a bad line fails in seconds with the
file and line named, not after an hour of IJB-C features. Image i of both per-image files is feature
row i (the original code relies on that order; here the names are also checked to agree).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from data.align import align_face
from utility.errors import DataError

TARGETS = ("IJBB", "IJBC")
_GALLERIES = {"IJBB": ("S1", "S2"), "IJBC": ("G1", "G2")}


@dataclass
class IJBSet:
    """One IJB target's metadata; per-image arrays share the row order of the meta files."""

    target: str
    folder: Path
    names: list[str]
    templates: np.ndarray  # int64, per image
    medias: np.ndarray  # int64, per image
    landmarks: np.ndarray  # float32 N x 5 x 2, loose-crop pixels
    faceness: np.ndarray  # float32 N, detector scores
    pair_t1: np.ndarray  # int64 P
    pair_t2: np.ndarray  # int64 P
    pair_labels: np.ndarray  # int64 P, 1 genuine, 0 impostor
    gallery_templates: np.ndarray | None = None  # 1:N: both gallery sets, in file order
    gallery_subjects: np.ndarray | None = None
    probe_templates: np.ndarray | None = None
    probe_subjects: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)


def meta_paths(root: str | Path, target: str) -> dict[str, Path]:
    """The files of one target under `root` (the folder holding IJBB/ and IJBC/)."""
    if target not in TARGETS:
        raise DataError(f"IJB target {target!r} is unknown; choose from {list(TARGETS)}")
    folder = Path(root) / target
    meta, prefix = folder / "meta", target.lower()
    first, second = _GALLERIES[target]
    return {
        "loose_crop": folder / "loose_crop",
        "face_tid_mid": meta / f"{prefix}_face_tid_mid.txt",
        "name_5pts_score": meta / f"{prefix}_name_5pts_score.txt",
        "template_pair_label": meta / f"{prefix}_template_pair_label.txt",
        "gallery_1": meta / f"{prefix}_1N_gallery_{first}.csv",
        "gallery_2": meta / f"{prefix}_1N_gallery_{second}.csv",
        "probe": meta / f"{prefix}_1N_probe_mixed.csv",
    }


def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{path} does not exist ({what}); lay out insightface's IJB release under EVAL.IJB.ROOT")


def _lines(path: Path) -> list[list[str]]:
    """Each non-empty line split on whitespace."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read ({error})") from None
    return [line.split() for line in text.splitlines()]


def _read_tid_mid(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    names, templates, medias = [], [], []
    for number, fields in enumerate(_lines(path), 1):
        if len(fields) != 3:
            raise DataError(f"{path}:{number}: expected 3 fields (image_name tid mid), got {len(fields)}")
        try:
            templates.append(int(fields[1]))
            medias.append(int(fields[2]))
        except ValueError:
            raise DataError(f"{path}:{number}: template and media ids must be integers, got {fields[1:]}") from None
        names.append(fields[0])
    if not names:
        raise DataError(f"{path} lists no images")
    return names, np.asarray(templates, dtype=np.int64), np.asarray(medias, dtype=np.int64)


def _read_5pts(path: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    rows = _lines(path)
    if len(rows) != len(names):
        raise DataError(f"{path}: {len(rows)} lines but the face_tid_mid file lists {len(names)} images; "
                        "line i of both files must describe the same image")
    values = np.empty((len(rows), 11), dtype=np.float32)
    for number, (fields, name) in enumerate(zip(rows, names), 1):
        if len(fields) != 12:
            raise DataError(f"{path}:{number}: expected 12 fields (image_name, 10 landmark coordinates, "
                            f"faceness), got {len(fields)}")
        if fields[0] != name:
            raise DataError(f"{path}:{number}: names image {fields[0]} but line {number} of the face_tid_mid "
                            f"file names {name}; both files must list the images in the same order")
        try:
            values[number - 1] = [float(value) for value in fields[1:]]
        except ValueError:
            raise DataError(f"{path}:{number}: landmarks and faceness must be numbers, got {fields[1:]}") from None
    return values[:, :10].reshape(-1, 5, 2), values[:, 10].copy()


def _read_pairs(path: Path) -> np.ndarray:
    """P x 3 int64 (tid1, tid2, label); NumPy's C parser for speed (IJB-C has 15.7 M lines), a line
    scan only to name the culprit when it fails."""
    try:
        pairs = np.loadtxt(path, dtype=np.int64, ndmin=2, comments=None)
    except ValueError:
        for number, fields in enumerate(_lines(path), 1):
            if len(fields) != 3:
                raise DataError(f"{path}:{number}: expected 3 fields (tid1 tid2 label), got {len(fields)}") from None
            if not all(field.lstrip("-").isdigit() for field in fields):
                raise DataError(f"{path}:{number}: template ids and label must be integers, got {fields}") from None
        raise DataError(f"{path}: not a table of three integers per line") from None
    if pairs.size == 0:
        raise DataError(f"{path} lists no template pairs")
    if pairs.shape[1] != 3:
        raise DataError(f"{path}:1: expected 3 fields (tid1 tid2 label), got {pairs.shape[1]}")
    bad = ~np.isin(pairs[:, 2], (0, 1))
    if bad.any():
        raise DataError(f"{path}:{int(np.argmax(bad)) + 1}: label must be 1 (genuine) or 0 (impostor), "
                        f"got {int(pairs[np.argmax(bad), 2])}")
    return pairs


def _read_subject_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """TEMPLATE_ID and SUBJECT_ID (columns 0, 1) of a 1:N csv, header line skipped."""
    templates, subjects = [], []
    with path.open(newline="") as handle:
        for number, row in enumerate(csv.reader(handle), 1):
            if number == 1 or not row:
                continue
            if len(row) < 2:
                raise DataError(f"{path}:{number}: expected TEMPLATE_ID,SUBJECT_ID,..., got {len(row)} field(s)")
            try:
                templates.append(int(row[0]))
                subjects.append(int(row[1]))
            except ValueError:
                raise DataError(f"{path}:{number}: TEMPLATE_ID and SUBJECT_ID must be integers, got {row[:2]}") from None
    if not templates:
        raise DataError(f"{path} lists no templates")
    return np.asarray(templates, dtype=np.int64), np.asarray(subjects, dtype=np.int64)


def load_ijb(root: str | Path, target: str, one_to_n: bool = False) -> IJBSet:
    """Read and check one target: every meta file, every image named in it, every pair's templates
    (and with `one_to_n` the 1:N csvs). Raises DataError naming the file and line."""
    paths = meta_paths(root, target)
    for key in ("loose_crop", "face_tid_mid", "name_5pts_score", "template_pair_label"):
        _require(paths[key], key.replace("_", " "))
    names, templates, medias = _read_tid_mid(paths["face_tid_mid"])
    landmarks, faceness = _read_5pts(paths["name_5pts_score"], names)
    present = set(os.listdir(paths["loose_crop"]))
    for number, name in enumerate(names, 1):
        if name not in present and not (paths["loose_crop"] / name).is_file():
            raise DataError(f"{paths['face_tid_mid']}:{number}: image {name} is not in {paths['loose_crop']}")
    pairs = _read_pairs(paths["template_pair_label"])
    known = np.unique(templates)
    for column in (0, 1):
        unknown = ~np.isin(pairs[:, column], known)
        if unknown.any():
            line = int(np.argmax(unknown))
            raise DataError(f"{paths['template_pair_label']}:{line + 1}: template id {int(pairs[line, column])} "
                            "has no image in the face_tid_mid file")
    ijb = IJBSet(target, paths["loose_crop"].parent, names, templates, medias, landmarks, faceness,
                 pairs[:, 0].copy(), pairs[:, 1].copy(), pairs[:, 2].copy())
    if one_to_n:
        parts = []
        for key in ("gallery_1", "gallery_2", "probe"):
            _require(paths[key], "1:N gallery/probe list (EVAL.IJB.ONE_TO_N)")
            ids, subjects = _read_subject_csv(paths[key])
            unknown = ~np.isin(ids, known)
            if unknown.any():
                line = int(np.argmax(unknown))
                raise DataError(f"{paths[key]}:{line + 2}: template id {int(ids[line])} has no image in the "
                                "face_tid_mid file")
            parts.append((ids, subjects))
        ijb.gallery_templates = np.concatenate([parts[0][0], parts[1][0]])
        ijb.gallery_subjects = np.concatenate([parts[0][1], parts[1][1]])
        ijb.probe_templates, ijb.probe_subjects = parts[2]
    return ijb


class IJBImages(Dataset):
    """Aligned faces of one IJB target, in meta-file order: {"image": uint8 size x size x 3 in
    `color` order, "index": row}. Decoding and the per-image warp run in the loader's workers."""

    def __init__(self, ijb: IJBSet, size: int = 112, color: str = "bgr"):
        self.ijb, self.size, self.color = ijb, int(size), color

    def __len__(self) -> int:
        return len(self.ijb)

    def __getitem__(self, index: int) -> dict[str, object]:
        path = self.ijb.folder / "loose_crop" / self.ijb.names[index]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DataError(f"{path}: not a readable image")
        face = align_face(image, self.ijb.landmarks[index], self.size)
        if self.color == "rgb":
            face = face[:, :, ::-1]
        return {"image": torch.from_numpy(np.ascontiguousarray(face)), "index": index}
