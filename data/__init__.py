"""Datasets (registered by name), readers of the real file formats, and batched transforms.

Contract of every registered dataset (`DATASETS.build(name, cfg=cfg, split="train"|"val", request=...)`):
`ds[i]` returns a dict with `image` (H x W x 3 uint8 NumPy array in `cfg.DATA.COLOR` order),
`label` (int) and `index` (int), plus the extras the `data.requests.BatchRequest` asks for
(`partner`, `contrast_index`, ...);
`ds.num_classes` and `ds.labels` (int64 NumPy array, one per sample) are attributes.
Images travel as uint8; normalisation, augmentation and low-resolution degradation run batched
on the training device (`data/transforms.py`, `data/lowres.py`).
"""

from utility.registry import Registry

DATASETS = Registry("dataset")

# Importing the dataset modules registers them (face_recordio, face_image_list, face_folder,
# cifar100, scene_list).
from data import cifar, face, scene  # noqa: E402,F401,I001

__all__ = ["DATASETS"]
