"""F-SKD's same-identity partner table: `python -m engine.partners --config CONFIG [--output PATH]`.

Embeds every training sample with the trained HR teacher (TEACHER.CHECKPOINT) and applies the
selection rule `kd.f_skd.select_partners` (DISTILL.F_SKD.PARTNER_MARGIN); the table is what
`DATA.PARTNER: table` reads. It lives in the engine because it loads checkpoints and runs a
network over the data, which a method file may not do.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.loader import build_dataset, default_device
from engine.checkpoint import load_network_weights
from kd.f_skd import select_partners
from models import build_network
from utility.config import load_config, resolve_data_path
from utility.errors import ConfigError, DistilleryError

log = logging.getLogger(__name__)


def default_table_path(cfg: Any) -> Path:
    """Where the partner table goes: DATA.PARTNER_TABLE (resolved like every data path), else beside
    the teacher checkpoint as `partners_m<margin>.npy` (the reference's `cross_dict_<data>.pkl` spot)."""
    if cfg.DATA.PARTNER_TABLE:
        return resolve_data_path(cfg, cfg.DATA.PARTNER_TABLE)
    margin = float(cfg.DISTILL.F_SKD.PARTNER_MARGIN)
    return Path(cfg.TEACHER.CHECKPOINT).expanduser().parent / f"partners_m{margin:.1f}.npy"


class _StackImages:
    """DataLoader collate: the uint8 images of a list of indices, stacked N x H x W x 3."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __call__(self, indices: list[int]) -> np.ndarray:
        return np.stack([self.dataset[i]["image"] for i in indices])


@torch.no_grad()
def teacher_embeddings(network: torch.nn.Module, dataset: Any, cfg: Any, device: torch.device) -> np.ndarray:
    """HR teacher embeddings of every training sample, in dataset order, with the training flip
    active (as the reference's `train_embed.py`, quirk #23) but seeded by EXPERIMENT.SEED."""
    network.eval().to(device)
    generator = torch.Generator().manual_seed(int(cfg.EXPERIMENT.SEED))
    mean = torch.tensor(cfg.DATA.MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.DATA.STD, device=device).view(1, 3, 1, 1)
    loader = torch.utils.data.DataLoader(
        range(len(dataset)), batch_size=int(cfg.EVAL.BATCH_SIZE), shuffle=False,
        num_workers=int(cfg.DATA.WORKERS), collate_fn=_StackImages(dataset),
    )
    chunks = []
    for images in loader:
        x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        if cfg.DATA.FLIP:
            flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        chunks.append(network((x - mean) / std).float().cpu())
    return torch.cat(chunks).numpy()


def write_partner_table(cfg: Any, output: Path | None = None) -> Path:
    """Load the teacher (TEACHER.CHECKPOINT), embed the training set, select and save the partners.

    The file is a 1-D int64 `.npy` with one partner index per training sample. The data reader
    accepts only valid indices, so a sample without a partner stores its own index; the distiller
    drops such samples from the cross term (the reference's `correct_index = 0`).
    """
    if not cfg.TEACHER.BACKBONE or not cfg.TEACHER.CHECKPOINT:
        raise ConfigError("partners: set TEACHER.BACKBONE and TEACHER.CHECKPOINT (the trained HR teacher)")
    plain = cfg.clone()  # the HR images alone: no partner table (it is being written), no LR view
    plain.defrost()
    plain.DATA.PARTNER = ""
    plain.DATA.LOWRES.SIZES = []
    plain.freeze()
    dataset = build_dataset(plain, split="train")
    labels = np.asarray(dataset.labels, dtype=np.int64)
    network = build_network(cfg.TEACHER, int(cfg.DATA.NUM_CLASSES or dataset.num_classes))
    load_network_weights(network, cfg.TEACHER.CHECKPOINT, cfg.TEACHER.CHECKPOINT_SOURCE)
    embeddings = teacher_embeddings(network, dataset, cfg, default_device(cfg))
    partners = select_partners(embeddings, labels, float(cfg.DISTILL.F_SKD.PARTNER_MARGIN),
                               seed=int(cfg.EXPERIMENT.SEED))
    missing = int((partners < 0).sum())
    partners = np.where(partners < 0, np.arange(len(partners)), partners)  # "no partner" = itself
    path = output or default_table_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, partners)
    log.info("partner table: %d samples, %d without a partner -> %s", len(partners), missing, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.partners",
                                     description="write F-SKD's same-identity partner table with the HR teacher")
    parser.add_argument("--config", required=True, help="the F-SKD student config (its TEACHER and DATA)")
    parser.add_argument("--output", default=None, help="table path (default: DATA.PARTNER_TABLE or beside "
                                                       "the teacher checkpoint)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        path = write_partner_table(cfg, Path(args.output) if args.output else None)
    except DistilleryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
