"""Data paths: `.rec` reading + decoding, and the verification evaluation at four resolutions.

    python -m bench.bench_data [--device cpu|cuda] [--images N] [--workers 0,2,8] [--eval-images N]
                               [--network student|teacher] [--repeats N]

1. RecordIO (a synthetic `train.rec` written by `data.synthetic.write_faces`, real insightface layout):
   - `read + decode, 1 process`: `RecordIO.read` + `decode_image` in a loop: the rate of one worker;
   - `baseline, N workers`: a DataLoader over a seed-style dataset that decodes and then, per sample,
     turns the image into a float tensor, flips and normalises it (insightface's MXFaceDataset, PIL-free);
   - `distillery, N workers`: the registered `face_recordio` dataset through `build_train_loader`
     (uint8 batches, pinned on CUDA) and `TrainTransform` on the device.
2. Verification (a synthetic `.bin` of `--eval-images` images, 14/28/56/112 px, flip-fused embeddings):
   - `baseline`: per image on the CPU, normalise, degrade with per-sample `F.interpolate`, flip; stack,
     copy, fp32 eager forward;
   - `distillery`: `engine.evaluate.extract_pair_embeddings`, degradation batched on the device (fp32,
     as Distillery evaluates).
CPU defaults: 512 training images, workers 0 and 2, 64 evaluation images with MobileFaceNet
(`--network student`); CUDA defaults: 8,192 training images, workers 0, 4, 8 and 16, the issue's 12,000
evaluation images with iResNet50 (`--network teacher`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bench.common import (
    ROOT,
    Variant,
    format_table,
    interpolate_sample,
    normalise_sample,
    pick_device,
    synchronize,
)
from bench.common import device_name as describe_device
from data.loader import build_dataset, build_train_loader, to_device
from data.pairs import write_bin
from data.recordio import RecordIO, decode_image, encode_image, write_face_rec
from data.synthetic import face_pairs, face_training_images
from data.transforms import TrainTransform
from engine.evaluate import extract_pair_embeddings
from models import build_network
from utility.config import load_config

RESOLUTIONS = (14, 28, 56, 112)
CONFIG = "configs/face/adadistill/adaarcdistill_ms1mv2.yaml"  # RGB, insightface protocol, 112 px


class SeedStyleRecordDataset(Dataset):
    """The seeds' training dataset: decode, then per-sample float conversion, flip, normalisation."""

    def __init__(self, rec_path: Path, keys: np.ndarray, labels: np.ndarray) -> None:
        self.record = RecordIO(rec_path)
        self.keys = keys
        self.labels = labels

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        _, payload = self.record.read(int(self.keys[index]))
        image = torch.from_numpy(decode_image(payload, "rgb")).permute(2, 0, 1).float()
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        return normalise_sample(image, (0.5,) * 3, (0.5,) * 3), int(self.labels[index])


def write_training_rec(folder: Path, count: int) -> Path:
    identities = max(2, count // 16)
    images, labels = face_training_images(identities, -(-count // identities))
    rec = folder / "train.rec"
    write_face_rec(rec, [encode_image(image) for image in images[:count]], labels[:count])
    (folder / "property").write_text(f"{identities},112,112")
    return rec


def time_loader(iterate, items: int, repeats: int, device: torch.device) -> list[float]:
    """Seconds per full pass (after one untimed pass that starts the workers)."""
    iterate()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        iterate()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def bench_recordio(folder: Path, args: argparse.Namespace, device: torch.device) -> str:
    rec = write_training_rec(folder, args.images)
    cfg = load_config(ROOT / CONFIG, ["DATA.ROOT", str(folder), "DATA.TRAIN", "train.rec", "DATA.NUM_CLASSES", "0",
                                      "EXPERIMENT.DEVICE", device.type, "SOLVER.BATCH_SIZE", str(args.loader_batch)])
    dataset = build_dataset(cfg, "train")
    record = RecordIO(rec)
    keys = np.asarray(dataset.keys)
    batches = len(dataset) // args.loader_batch
    variants = []

    def read_decode() -> None:
        for key in keys[: batches * args.loader_batch]:
            decode_image(record.read(int(key))[1], "rgb")

    variants.append(Variant("read + decode, 1 process", read_decode, batches * args.loader_batch))
    transform = TrainTransform(cfg)
    for workers in args.workers:
        seed_style = DataLoader(SeedStyleRecordDataset(rec, keys, dataset.labels), batch_size=args.loader_batch,
                                shuffle=True, drop_last=True, num_workers=workers, persistent_workers=workers > 0,
                                pin_memory=device.type == "cuda")

        def baseline_pass(loader=seed_style) -> None:
            for images, labels in loader:
                images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

        run_cfg = cfg.clone()
        run_cfg.defrost()
        run_cfg.DATA.WORKERS = workers
        run_cfg.freeze()
        ours = build_train_loader(run_cfg, dataset, args.loader_batch, 0, device=device)

        def distillery_pass(loader=ours) -> None:
            for batch in loader:
                transform(to_device(batch, device), None)

        variants.append(Variant(f"baseline, {workers} workers", baseline_pass, batches * args.loader_batch))
        variants.append(Variant(f"distillery, {workers} workers", distillery_pass, batches * args.loader_batch))
    for variant in variants:
        variant.times = time_loader(variant.step, variant.items_per_step, args.repeats, device)
    return format_table(f"RecordIO: {len(dataset)} synthetic 112px JPEG faces, batch {args.loader_batch}",
                        variants, device, None, None, reference="read + decode, 1 process",
                        step_label="ms/pass")


def baseline_embeddings(model: torch.nn.Module, images: np.ndarray, resolution: int, batch: int,
                        device: torch.device) -> np.ndarray:
    """Per-image CPU pre-processing (normalise, degrade, flip), then batched fp32 forward, flip-sum."""
    outputs = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            plain, flipped = [], []
            for image in images[start : start + batch]:
                x = normalise_sample(torch.from_numpy(image).permute(2, 0, 1).float(), (0.5,) * 3, (0.5,) * 3)
                if resolution < 112:
                    x = interpolate_sample(interpolate_sample(x, resolution, "nearest"), 112, "nearest")
                plain.append(x)
                flipped.append(x.flip(-1))
            views = torch.stack(plain + flipped).to(device)
            emb_plain, emb_flipped = model(views).float().cpu().chunk(2)
            outputs.append(emb_plain.double() + emb_flipped.double())
    return torch.cat(outputs).numpy()


def bench_verification(folder: Path, args: argparse.Namespace, device: torch.device) -> str:
    pairs = args.eval_images // 2
    images_bgr, issame = face_pairs(pairs, seed=0, name="lfw")
    write_bin(folder / "lfw.bin", list(images_bgr), issame)
    cfg = load_config(ROOT / CONFIG, ["EXPERIMENT.DEVICE", device.type, "EVAL.BATCH_SIZE", str(args.eval_batch)])
    node = cfg.TEACHER if args.network == "teacher" else cfg.STUDENT
    torch.manual_seed(0)
    model = build_network(node, 1).backbone.to(device).eval()
    images = images_bgr[:, :, :, ::-1].copy()  # the config's RGB order

    def baseline() -> None:
        for resolution in RESOLUTIONS:
            baseline_embeddings(model, images, resolution, args.eval_batch, device)

    def distillery() -> None:
        for resolution in RESOLUTIONS:
            extract_pair_embeddings(model, images, issame, cfg, resolution, device)

    variants = [Variant("baseline (per-image CPU)", baseline, len(images) * len(RESOLUTIONS)),
                Variant("distillery evaluate", distillery, len(images) * len(RESOLUTIONS))]
    for variant in variants:
        variant.times = time_loader(variant.step, variant.items_per_step, args.repeats, device)
    return format_table(f"Verification embeddings: {len(images)} images x {len(RESOLUTIONS)} resolutions "
                        f"(flip-fused), {node.BACKBONE}, batch {args.eval_batch}, fp32",
                        variants, device, None, None, reference="baseline (per-image CPU)",
                        step_label="ms/pass")


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--device", default="auto")
    cli.add_argument("--images", type=int, default=None, help="training images in the synthetic .rec")
    cli.add_argument("--workers", default=None, help="comma-separated DataLoader worker counts")
    cli.add_argument("--loader-batch", type=int, default=None)
    cli.add_argument("--eval-images", type=int, default=None, help="images in the synthetic .bin (even)")
    cli.add_argument("--eval-batch", type=int, default=None)
    cli.add_argument("--network", choices=("student", "teacher"), default=None,
                     help="evaluated network: MobileFaceNet (student) or iResNet50 (teacher)")
    cli.add_argument("--repeats", type=int, default=None, help="timed passes (median reported)")
    cli.add_argument("--threads", type=int, default=None, help="torch intra-op threads of the main process")
    cli.add_argument("--skip", choices=("recordio", "verification"), default=None)
    args = cli.parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    defaults = {"images": 8192 if cuda else 512, "workers": "0,4,8,16" if cuda else "0,2",
                "loader_batch": 256 if cuda else 64, "eval_images": 12000 if cuda else 64,
                "eval_batch": 256 if cuda else 32, "network": "teacher" if cuda else "student",
                "repeats": 3 if cuda else 2}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.workers = [int(w) for w in str(args.workers).split(",")]
    print(f"device {device} ({describe_device(device)}), torch {torch.__version__}, median of {args.repeats} passes")
    with tempfile.TemporaryDirectory() as tmp:
        if args.skip != "recordio":
            print(bench_recordio(Path(tmp), args, device))
        if args.skip != "verification":
            print(bench_verification(Path(tmp), args, device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
