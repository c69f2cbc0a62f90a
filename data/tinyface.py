"""TinyFace's identification test set as AdaFace reads it (`spec/face_eval.md` §2.1).

    <root>/tinyface/Testing_Set/{Probe,Gallery_Match,Gallery_Distractor}/...   the original images
    <root>/aligned_pad_0.1_pad_high/{Probe,Gallery_Match,Gallery_Distractor}/... AdaFace's aligned 112 px copies

The lists come from the original folders (walked recursively; `.jpg`, `.png`, `.jpeg`); each entry
is replaced by its aligned copy (same file stem) when the aligned folders exist. Labels are the
number before the first `_` of the file name (`17_3.jpg` is identity 17); every distractor is -100.
TinyFace faces are natively about 20 px: images are upsampled to the network input with bilinear
`cv2.resize` (F-SKD's TinyFace script), which leaves the aligned 112 px copies unchanged at 112.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from utility.errors import DataError

FOLDERS = ("Probe", "Gallery_Match", "Gallery_Distractor")
ALIGNED = "aligned_pad_0.1_pad_high"
EXTENSIONS = (".jpg", ".png", ".jpeg")
DISTRACTOR_LABEL = -100


@dataclass
class TinyFaceSet:
    """Probe and gallery (matches, then distractors) image paths and labels."""

    probe_paths: list[Path]
    probe_labels: np.ndarray
    gallery_paths: list[Path]
    gallery_labels: np.ndarray
    aligned: bool  # the images are AdaFace's aligned copies


def _images(folder: Path) -> list[Path]:
    found = []
    for directory, _, files in os.walk(folder):
        found += [Path(directory) / name for name in files if os.path.splitext(name)[1] in EXTENSIONS]
    return sorted(found)


def _label(path: Path) -> int:
    try:
        return int(path.name.split("_")[0])
    except ValueError:
        raise DataError(f"{path}: TinyFace probe and match names start with the identity number "
                        "(e.g. 17_3.jpg)") from None


def testing_folder(root: str | Path) -> Path:
    """`<root>/tinyface/Testing_Set` (AdaFace's data root), or `<root>/Testing_Set`."""
    root = Path(root)
    for candidate in (root / "tinyface" / "Testing_Set", root / "Testing_Set"):
        if candidate.is_dir():
            return candidate
    raise DataError(f"{root}: no tinyface/Testing_Set folder; point EVAL.TINYFACE.ROOT at the folder holding "
                    "tinyface/ (and optionally aligned_pad_0.1_pad_high/)")


def load_tinyface(root: str | Path) -> TinyFaceSet:
    """The probe and gallery lists, checked before any embedding: every folder present and
    non-empty, every probe/match name labelled, every image with an aligned copy when those exist."""
    testing = testing_folder(root)
    aligned_root = testing.parent.parent / ALIGNED if testing.parent.name == "tinyface" else testing.parent / ALIGNED
    use_aligned = aligned_root.is_dir()
    lists: dict[str, list[Path]] = {}
    for name in FOLDERS:
        folder = testing / name
        if not folder.is_dir():
            raise DataError(f"{folder} does not exist; TinyFace's Testing_Set holds {', '.join(FOLDERS)}")
        paths = _images(folder)
        if not paths:
            raise DataError(f"{folder} holds no .jpg/.png/.jpeg images")
        if use_aligned:
            copies = {path.stem: path for path in _images(aligned_root / name)}
            missing = [path for path in paths if path.stem not in copies]
            if missing:
                raise DataError(f"{missing[0]} has no aligned copy in {aligned_root / name}; complete the aligned "
                                f"folders or remove {aligned_root} to use the original images")
            paths = [copies[path.stem] for path in paths]
        lists[name] = paths
    probe_labels = np.asarray([_label(path) for path in lists["Probe"]], dtype=np.int64)
    match_labels = [_label(path) for path in lists["Gallery_Match"]]
    gallery_labels = np.asarray(match_labels + [DISTRACTOR_LABEL] * len(lists["Gallery_Distractor"]), dtype=np.int64)
    if not np.isin(probe_labels, match_labels).any():
        raise DataError(f"{testing}: no probe identity has a Gallery_Match image; check the folders")
    return TinyFaceSet(lists["Probe"], probe_labels, lists["Gallery_Match"] + lists["Gallery_Distractor"],
                       gallery_labels, use_aligned)


class TinyFaceImages(Dataset):
    """{"image": uint8 size x size x 3 in `color` order, "index": i} of a list of image files."""

    def __init__(self, paths: list[Path], size: int = 112, color: str = "bgr"):
        self.paths, self.size, self.color = list(paths), int(size), color

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, object]:
        path = self.paths[index]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DataError(f"{path}: not a readable image")
        if image.shape[:2] != (self.size, self.size):
            image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        if self.color == "rgb":
            image = image[:, :, ::-1]
        return {"image": torch.from_numpy(np.ascontiguousarray(image)), "index": index}
