"""Batched device transforms, the resumable sampler and the loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data.loader import (
    ResumableSampler,
    SampleIndex,
    build_dataset,
    build_eval_loader,
    build_train_loader,
    infer_format,
    to_device,
)
from data.recordio import encode_image, write_face_rec
from data.requests import BatchRequest
from data.transforms import EvalTransform, TrainTransform, normalize
from utility.config import get_defaults
from utility.errors import DataError


def _cfg(**data):
    cfg = get_defaults()
    cfg.DATA.WORKERS = 0
    for key, value in data.items():
        node = cfg.DATA
        parts = key.split("__")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return cfg


def _batch(count: int = 12, size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, size, size, 3), generator=generator, dtype=torch.uint8)
    return {"image": images, "label": torch.arange(count) % 3, "index": torch.arange(count) + 100}


def _norm(hwc_uint8: torch.Tensor) -> torch.Tensor:
    """Hand-written ToTensor + Normalize(0.5, 0.5) of one H x W x 3 uint8 image -> 3 x H x W."""
    return (hwc_uint8.permute(2, 0, 1).float() / 255.0 - 0.5) / 0.5


def _nearest_lr(hwc: torch.Tensor, size: int, out: int = 32) -> torch.Tensor:
    """Floor-index nearest down to `size` and back, written with explicit index lists."""
    down = [i * hwc.shape[0] // size for i in range(size)]
    up = [i * size // out for i in range(out)]
    small = hwc[down][:, down]
    return small[up][:, up]


def test_normalize_layouts_and_values() -> None:
    images = torch.tensor([[[[0, 255, 51]]]], dtype=torch.uint8)  # 1 x 1 x 1 x 3
    out = normalize(images, [0.5, 0.5, 0.2], [0.5, 0.25, 0.1])
    assert out.shape == (1, 3, 1, 1) and out.dtype == torch.float32
    assert torch.allclose(out.flatten(), torch.tensor([-1.0, 2.0, 0.0]))
    as_float = normalize(images.permute(0, 3, 1, 2).float(), [0.5, 0.5, 0.2], [0.5, 0.25, 0.1])
    assert torch.equal(out, as_float)


def _flip_flags(teacher: torch.Tensor, images: torch.Tensor) -> list[bool]:
    flags = []
    for n in range(images.shape[0]):
        plain, mirrored = _norm(images[n]).float(), _norm(images[n].flip(1)).float()
        if torch.allclose(teacher[n], plain, atol=1e-5):
            flags.append(False)
        else:
            assert torch.allclose(teacher[n], mirrored, atol=1e-5)
            flags.append(True)
    return flags


@pytest.mark.parametrize("flip_first", [False, True])
def test_face_views_share_the_flip_and_only_the_student_is_degraded(flip_first: bool) -> None:
    cfg = _cfg(IMAGE_SIZE=32, LOWRES__SIZES=[6], LOWRES__FLIP_FIRST=flip_first)
    batch = _batch()
    out = TrainTransform(cfg)(batch, torch.Generator().manual_seed(0))
    flags = _flip_flags(out["image_teacher"], batch["image"])
    assert any(flags) and not all(flags)
    for n, flipped in enumerate(flags):
        hr = batch["image"][n]
        if flip_first:  # A-SKD: degrade the flipped HR image
            expected = _nearest_lr(hr.flip(1) if flipped else hr, 6)
        else:  # F-SKD: degrade, then flip both views
            lr = _nearest_lr(hr, 6)
            expected = lr.flip(1) if flipped else lr
        assert torch.allclose(out["image"][n], _norm(expected).float(), atol=1e-5)
    assert out["lowres_size"].tolist() == [6] * 12
    assert torch.equal(out["label"], batch["label"]) and torch.equal(out["index"], batch["index"])


def test_flip_order_matters_under_nearest() -> None:
    batch = _batch()
    first = TrainTransform(_cfg(IMAGE_SIZE=32, LOWRES__SIZES=[6], LOWRES__FLIP_FIRST=True))(
        batch, torch.Generator().manual_seed(4))
    after = TrainTransform(_cfg(IMAGE_SIZE=32, LOWRES__SIZES=[6]))(batch, torch.Generator().manual_seed(4))
    assert torch.equal(first["image_teacher"], after["image_teacher"])  # same flips drawn
    assert not torch.equal(first["image"], after["image"])


def test_full_resolution_student_is_the_teacher_view_and_runs_are_repeatable() -> None:
    transform = TrainTransform(_cfg(IMAGE_SIZE=32))
    batch = _batch()
    a = transform(batch, torch.Generator().manual_seed(7))
    b = transform(batch, torch.Generator().manual_seed(7))
    assert a["image"] is a["image_teacher"]
    assert torch.equal(a["image"], b["image"])
    no_flip = TrainTransform(_cfg(IMAGE_SIZE=32, FLIP=False))(batch, torch.Generator().manual_seed(7))
    assert not any(_flip_flags(no_flip["image"], batch["image"]))


def test_opencv_views_are_flipped_with_the_hr_view() -> None:
    batch = _batch()
    batch["image_lr"] = torch.flip(batch["image"], dims=[1]) // 2  # any distinct uint8 view
    out = TrainTransform(_cfg(IMAGE_SIZE=32, LOWRES__SIZES=[6], LOWRES__BACKEND="opencv"))(batch, torch.Generator().manual_seed(1))
    flags = _flip_flags(out["image_teacher"], batch["image"])
    for n, flipped in enumerate(flags):
        lr = batch["image_lr"][n]
        assert torch.allclose(out["image"][n], _norm(lr.flip(1) if flipped else lr).float(), atol=1e-5)
    assert "image_lr" not in out


def test_table_partner_flips_independently() -> None:
    batch = _batch(count=16)
    batch["partner"] = _batch(count=16, seed=9)["image"]
    batch["partner_index"] = torch.arange(16).flip(0)
    transform = TrainTransform(_cfg(IMAGE_SIZE=32, LOWRES__SIZES=[8]), BatchRequest(partner="table"))
    out = transform(batch, torch.Generator().manual_seed(2))
    own = _flip_flags(out["image_teacher"], batch["image"])
    partner = _flip_flags(out["image_partner_teacher"], batch["partner"])
    assert own != partner
    assert torch.equal(out["partner_index"], batch["partner_index"])
    for n, flipped in enumerate(partner):
        lr = _nearest_lr(batch["partner"][n], 8)
        assert torch.allclose(out["image_partner"][n], _norm(lr.flip(1) if flipped else lr).float(), atol=1e-5)


def test_shuffle_partner_is_an_in_batch_permutation() -> None:
    batch = _batch(count=10)
    transform = TrainTransform(_cfg(IMAGE_SIZE=32, LOWRES__SIZES=[8]), BatchRequest(partner="shuffle"))
    out = transform(batch, torch.Generator().manual_seed(3))
    perm = out["partner_perm"]
    assert sorted(perm.tolist()) == list(range(10))
    assert torch.equal(out["image_partner"], out["image"][perm])
    assert torch.equal(out["image_partner_teacher"], out["image_teacher"][perm])
    assert torch.equal(out["partner_index"], batch["index"][perm])


def test_cifar_crop_pads_with_black_and_varies() -> None:
    cfg = _cfg(IMAGE_SIZE=32, CROP_PADDING=4, FLIP=False, MEAN=[0.0, 0.0, 0.0], STD=[1.0, 1.0, 1.0])
    batch = _batch(count=24, size=32)
    out = TrainTransform(cfg)(batch, torch.Generator().manual_seed(5))["image"] * 255.0
    offsets = set()
    for n in range(24):
        padded = torch.zeros(40, 40, 3)
        padded[4:36, 4:36] = batch["image"][n].float()
        found = [
            (top, left) for top in range(9) for left in range(9)
            if torch.allclose(out[n].permute(1, 2, 0), padded[top : top + 32, left : left + 32], atol=1e-3)
        ]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 10


def test_oversized_scene_images_are_cropped() -> None:
    batch = _batch(count=4, size=40)
    out = TrainTransform(_cfg(IMAGE_SIZE=32, FLIP=False))(batch, torch.Generator().manual_seed(0))
    assert torch.allclose(out["image"][0], _norm(batch["image"][0][4:36, 4:36]).float(), atol=1e-5)


def test_eval_ten_crop() -> None:
    batch = _batch(count=2, size=40)
    out = EvalTransform(_cfg(IMAGE_SIZE=32, TEN_CROP=True))(batch)
    assert out["image"].shape == (20, 3, 32, 32) and out["num_crops"] == 10
    image = batch["image"][1]
    assert torch.allclose(out["image"][10], _norm(image[:32, :32]).float(), atol=1e-5)  # sample 1, top-left
    assert torch.allclose(out["image"][13], _norm(image[8:, 8:]).float(), atol=1e-5)  # bottom-right
    assert torch.allclose(out["image"][14], _norm(image[4:36, 4:36]).float(), atol=1e-5)  # centre
    assert torch.allclose(out["image"][15], _norm(image.flip(1)[:32, :32]).float(), atol=1e-5)  # mirrored
    single = EvalTransform(_cfg(IMAGE_SIZE=32))(batch)
    assert single["image"].shape == (2, 3, 32, 32) and torch.equal(single["image"][1], out["image"][14])


# --- sampler -------------------------------------------------------------------------------------


def _epoch(sampler: ResumableSampler) -> list[list[int]]:
    return [[int(i) for i in batch] for batch in sampler]


def test_sampler_epochs_ranks_and_resume() -> None:
    sampler = ResumableSampler(100, 8, seed=1)
    assert len(sampler) == 12
    first = _epoch(sampler)
    assert all(len(b) == 8 for b in first) and len({i for b in first for i in b}) == 96
    sampler.set_epoch(1)
    second = _epoch(sampler)
    assert second != first
    sampler.set_epoch(0)
    assert _epoch(sampler) == first  # an epoch's order is a function of (seed, epoch) only
    sampler.set_start(5)
    assert _epoch(sampler) == first[5:]
    sampler.set_epoch(2)
    assert len(_epoch(sampler)) == 12  # set_epoch resets the start

    ranks = [ResumableSampler(100, 8, seed=1, rank=r, world_size=3) for r in range(3)]
    shards = [{i for b in _epoch(s) for i in b} for s in ranks]
    assert all(len(s) == 32 for s in shards) and len(set.union(*shards)) == 96
    assert all(not (a & b) for n, a in enumerate(shards) for b in shards[n + 1 :])

    keep_all = [ResumableSampler(10, 4, seed=0, rank=r, world_size=3, drop_last=False) for r in range(3)]
    covered = [i for s in keep_all for b in _epoch(s) for i in b]
    assert set(covered) == set(range(10)) and len(covered) == 12  # padded by wrapping to 12
    assert [len(s) for s in keep_all] == [1, 1, 1]


def test_sampler_indices_carry_the_epoch() -> None:
    sampler = ResumableSampler(10, 5, seed=0)
    sampler.set_epoch(3)
    index = next(iter(sampler))[0]
    assert isinstance(index, SampleIndex) and index.epoch == 3
    import pickle

    clone = pickle.loads(pickle.dumps(index))
    assert clone == index and clone.epoch == 3
    with pytest.raises(DataError, match="fewer than one global batch"):
        ResumableSampler(10, 8, seed=0, world_size=2)


# --- loaders -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_rec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rec")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(24)]
    write_face_rec(folder / "train.rec", [encode_image(image) for image in images], [n // 6 for n in range(24)])
    return folder / "train.rec"


def _face_cfg(rec: Path, workers: int = 0, **data):
    cfg = _cfg(TRAIN=str(rec), IMAGE_SIZE=32, LOWRES__SIZES=[8, 16], LOWRES__BACKEND="opencv", LOWRES__DOWN="random",
               LOWRES__UP="random", **data)
    cfg.DATA.WORKERS = workers
    cfg.EXPERIMENT.DEVICE = "cpu"
    return cfg


def test_train_loader_resumes_and_is_worker_independent(small_rec: Path) -> None:
    cfg = _face_cfg(small_rec)
    dataset = build_dataset(cfg)
    loader = build_train_loader(cfg, dataset, batch_size_per_rank=4, seed=5)
    assert loader.batches_per_epoch == 6
    loader.set_epoch(1)
    full = list(loader)
    assert full[0]["image"].dtype == torch.uint8 and full[0]["image"].shape == (4, 32, 32, 3)
    assert {"image", "image_lr", "label", "index", "lowres_size"} <= set(full[0])
    loader.set_epoch(1)
    loader.set_start(4)
    resumed = list(loader)
    assert len(resumed) == 2
    for a, b in zip(resumed, full[4:]):
        assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)

    workers = build_train_loader(_face_cfg(small_rec, workers=2), build_dataset(cfg), 4, seed=5)
    workers.set_epoch(1)
    parallel = list(workers)
    for a, b in zip(parallel, full):
        assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)  # LR views seeded per (seed, epoch, index)
    loader.set_epoch(2)
    assert not torch.equal(list(loader)[0]["index"], full[0]["index"])


def test_on_device_loader_gathers_resident_tensors() -> None:
    class Resident(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.images = torch.randint(0, 256, (20, 8, 8, 3), dtype=torch.uint8)
            self.labels = np.arange(20) % 4

        def __len__(self) -> int:
            return 20

    cfg = _cfg(ON_DEVICE=True)
    cfg.EXPERIMENT.DEVICE = "cpu"
    dataset = Resident()
    loader = build_train_loader(cfg, dataset, 5, seed=0)
    batches = list(loader)
    assert len(batches) == 4
    seen = torch.cat([b["index"] for b in batches])
    assert sorted(seen.tolist()) == list(range(20))
    for batch in batches:
        assert torch.equal(batch["image"], dataset.images[batch["index"]])
        assert batch["label"].tolist() == [i % 4 for i in batch["index"].tolist()]


def test_eval_loader_and_to_device(small_rec: Path) -> None:
    cfg = _cfg(TRAIN=str(small_rec), IMAGE_SIZE=32)
    dataset = build_dataset(cfg)
    batches = list(build_eval_loader(cfg, dataset, 10))
    assert [len(b["index"]) for b in batches] == [10, 10, 4]
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(24))
    moved = to_device({"a": torch.ones(2), "b": 3}, "cpu")
    assert torch.equal(moved["a"], torch.ones(2)) and moved["b"] == 3


def test_format_inference(small_rec: Path, tmp_path: Path) -> None:
    assert infer_format(small_rec) == "face_recordio"
    assert infer_format(small_rec.parent) == "face_recordio"
    (tmp_path / "faces" / "image").mkdir(parents=True)
    assert infer_format(tmp_path / "faces") == "face_folder"
    assert infer_format(tmp_path / "train.list") == "face_image_list"
    cifar = tmp_path / "cifar"
    cifar.mkdir()
    for name in ("train", "test", "meta"):
        (cifar / name).write_bytes(b"")
    assert infer_format(cifar) == "cifar100"
    assert infer_format(tmp_path / "ade20k_train.txt") == "scene_list"
    with pytest.raises(DataError, match="cannot tell the dataset format"):
        infer_format(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(_cfg(TRAIN=str(tmp_path / "nothing.rec")))
