"""Data under faults: undecodable samples skipped and counted deterministically up to a ceiling, and
numbers read from files (RecordIO headers and parts, .bin pickles) checked before they size
anything (issue 11 items 5 and 6)."""

from __future__ import annotations

import json
import math
import pickle
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from data.bad_samples import BadSampleCounter, SkipBadSamples
from data.face import FaceRecordIO
from data.loader import ResumableSampler, build_train_loader
from data.recordio import RecordIOWriter, encode_image, write_face_rec
from data.synthetic import face_training_images, write_faces
from engine.cli import run_cli
from engine.trainer import Trainer
from utility.config import load_config
from utility.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
IDENTITIES, PER_IDENTITY = 4, 4


def write_damaged_faces(root: Path, bad: set[int]) -> Path:
    """Synthetic faces (and lfw.bin) whose image records `bad` (0-based sample indices) hold garbage."""
    write_faces(root, identities=IDENTITIES, images_per_identity=PER_IDENTITY, pairs=10, seed=1, sets=("lfw",))
    images, labels = face_training_images(IDENTITIES, PER_IDENTITY, 1)
    payloads = [b"\xff\xd8 not a jpeg" if i in bad else encode_image(image) for i, image in enumerate(images)]
    write_face_rec(root / "train.rec", payloads, labels)
    return root


def face_cfg(root: Path, out: Path, *extra: str):
    return load_config(str(ROOT / "configs/demo/face_teacher.yaml"), [
        "EXPERIMENT.DEVICE", "cpu", "EXPERIMENT.OUTPUT_DIR", str(out), "DATA.ROOT", str(root),
        "DATA.TRAIN", "train.rec", "DATA.WORKERS", "0", "EVAL.SETS", "['lfw.bin']", "EVAL.FOLDS", "2",
        "EVAL.RESOLUTIONS", "[112]", "EVAL.ROC", "False", "SOLVER.BATCH_SIZE", "4", "SOLVER.MAX_ITERS", "3",
        "LOG.PROGRESS", "False", "LOG.TENSORBOARD", "False", "LOG.PERIOD", "1", *extra])


# -- item 5: bad samples ------------------------------------------------------------------------------
def test_bad_sample_is_replaced_by_the_next_good_one(tmp_path):
    root = write_damaged_faces(tmp_path, {5, 6})
    dataset = FaceRecordIO(face_cfg(root, tmp_path / "o"))
    with pytest.raises(DataError, match="record 6"):  # the fault: one bad record is fatal
        dataset[5]
    wrapped = SkipBadSamples(dataset)
    item = wrapped[5]
    assert item["index"] == 7 and item["skipped"] == 2 and "record 6" in item["skipped_records"]
    assert np.array_equal(item["image"], dataset[7]["image"])
    assert wrapped[4]["skipped"] == 0 and wrapped[4]["index"] == 4


def test_training_skips_and_counts_bad_samples(tmp_path):
    """Two workers (the batches are the same with none: the next test); counted in run.json."""
    bad, workers = 9, 2
    root = write_damaged_faces(tmp_path / "data", {bad})
    cfg = face_cfg(root, tmp_path / f"run{workers}", "DATA.WORKERS", str(workers))
    trainer = Trainer(cfg, role="teacher")
    trainer.train()
    # expected count from the sampler's own order: every draw of the bad index is one skip
    sampler = ResumableSampler(IDENTITIES * PER_IDENTITY, 4, int(cfg.EXPERIMENT.SEED))
    drawn = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        drawn += [int(i) for batch in sampler for i in batch]
    expected = drawn[:3 * 4].count(bad)
    assert expected, "the seed must draw the bad index within the run"
    info = json.loads((tmp_path / f"run{workers}" / "run.json").read_text())
    assert info["skipped_samples"]["count"] == expected and info["skipped_samples"]["seen"] == 12
    assert f"record {bad + 1}" in info["skipped_samples"]["records"][0]  # image keys start at 1


def test_batches_with_skips_are_the_same_for_0_and_2_workers_and_after_a_restart(tmp_path):
    root = write_damaged_faces(tmp_path, {2, 9, 10})

    def batches(workers: int, start: int = 0) -> list[dict]:
        cfg = face_cfg(root, tmp_path / "o", "DATA.WORKERS", str(workers))
        dataset = FaceRecordIO(cfg)
        loader = build_train_loader(cfg, dataset, 4, 0, device="cpu")
        loader.set_epoch(0)
        loader.set_start(start)
        return list(loader)

    zero, two, restarted = batches(0), batches(2), batches(2, start=2)
    # one epoch draws each index once: 2 -> skips 2; 9 -> skips 9 and 10; 10 -> skips 10
    assert sum(int(b["skipped"].sum()) for b in zero) == 4
    for a, b in zip(zero, two):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["skipped"], b["skipped"])
        assert a["skipped_records"] == b["skipped_records"]
    for a, b in zip(zero[2:], restarted):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["index"], b["index"])


@pytest.mark.parametrize("workers", ["0", "2"])
def test_twenty_bad_records_in_a_row_stop_with_one_line_naming_file_and_records(tmp_path, capsys, workers):
    root = write_damaged_faces(tmp_path / "data", set(range(16)))  # every record: no good one within reach
    from train_teacher import main

    args = ["--config", str(ROOT / "configs/demo/face_teacher.yaml"), "EXPERIMENT.DEVICE", "cpu",
            "EXPERIMENT.OUTPUT_DIR", str(tmp_path / "run"), "DATA.ROOT", str(root), "DATA.TRAIN", "train.rec",
            "DATA.WORKERS", workers, "EVAL.SETS", "['lfw.bin']", "SOLVER.BATCH_SIZE", "4", "SOLVER.MAX_ITERS", "2",
            "LOG.PROGRESS", "False", "LOG.TENSORBOARD", "False"]
    capsys.readouterr()
    assert run_cli(main, args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err and "DataLoader worker" not in err, err
    assert "in a row" in lines[0] and "train.rec: record" in lines[0]


def test_ceiling_on_the_fraction_of_skipped_samples():
    """Stop past max(20, 0.1 % of the samples seen): hand-picked counts on both sides of it."""
    def fed(skipped: int, seen: int) -> BadSampleCounter:
        counter = BadSampleCounter()
        counts = torch.zeros(seen, dtype=torch.int64)
        counts[:skipped] = 1
        counter.take({"skipped": counts, "skipped_records": ["f.rec: record 3"] * skipped + [""] * (seen - skipped)})
        return counter

    assert not fed(20, 100).over_ceiling()  # 20 allowed whatever the fraction
    assert fed(21, 1000).over_ceiling()  # 21 > max(20, 1)
    assert not fed(30, 30000).over_ceiling()  # 30 = 0.1 % of 30000
    counter = fed(31, 30000)
    assert counter.over_ceiling()
    with pytest.raises(DataError, match=r"31 of 30000 samples .* more than 0.1%.*f.rec: record 3"):
        counter.check()
    restored = BadSampleCounter()
    restored.load_state_dict(counter.state_dict())  # checkpointed, so a resumed run keeps counting
    assert (restored.skipped, restored.seen) == (31, 30000)


# -- item 6: untrusted numbers ------------------------------------------------------------------
MEMORY_LIMITED = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (2000 * 2**20, 2000 * 2**20))
    sys.path.insert(0, sys.argv[1])
    from data.face import FaceRecordIO
    from data.pairs import load_bin
    from data.recordio import RecordIO
    from utility.config import load_config
    from utility.errors import DataError
    for call in sys.argv[2:]:
        try:
            eval(call)
            print("loaded")
        except DataError as exc:
            print("DataError", str(exc).replace(chr(10), " "))
""")


def run_limited(calls: list[str]) -> list[str]:
    """Each call in one process limited to 2000 MiB of address space (a declared 7 GiB must not be
    allocated); one output line per call."""
    result = subprocess.run([sys.executable, "-c", MEMORY_LIMITED, str(ROOT), *calls], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return result.stdout.strip().splitlines()


def _rec_with_header(path: Path, first_identity: float, end: float = 3.0) -> Path:
    with RecordIOWriter(path) as writer:
        writer.write(1, 0.0, encode_image(np.zeros((8, 8, 3), np.uint8)))
        writer.write(0, [first_identity, end])
        writer.write(2, [1.0, 2.0])
    return path


def test_numbers_read_from_files_are_checked_before_they_size_anything(tmp_path):
    calls, expected = [], []
    # .rec header record 0 with a NaN, infinite, huge, negative or fractional first-identity label
    for number, value in enumerate([math.nan, math.inf, 1e9, -5.0, 2.5]):
        rec = _rec_with_header(tmp_path / f"h{number}" / "train.rec", value)
        calls.append(f"FaceRecordIO(load_config(None, ['DATA.TRAIN', {str(rec)!r}]))")
        expected.append((str(rec), "header record 0"))
    good = _rec_with_header(tmp_path / "good" / "train.rec", 2.0)
    calls.append(f"FaceRecordIO(load_config(None, ['DATA.TRAIN', {str(good)!r}]))")
    expected.append(None)  # the same file with sane numbers loads
    # a part header declaring 512 MiB in a 72-byte file
    part = tmp_path / "x.rec"
    part.write_bytes(struct.pack("<II", 0xCED7230A, (1 << 29) - 1) + b"\0" * 64)
    (tmp_path / "x.idx").write_text("0\t0\n")
    calls.append(f"RecordIO({str(part)!r}).read(0)")
    expected.append((str(part), "file ends"))
    # .bin pickles declaring a 7 GiB frame or byte string, and an empty file
    body = pickle.dumps(([b"x", b"y"], [True]), protocol=4)
    for name, content in (("frame.bin", b"\x80\x04\x95" + struct.pack("<Q", 7 * 2**30) + body[11:]),
                          ("bytes.bin", b"\x80\x04\x8e" + struct.pack("<Q", 7 * 2**30) + b"tiny"),
                          ("empty.bin", b"")):
        (tmp_path / name).write_bytes(content)
        calls.append(f"load_bin({str(tmp_path / name)!r})")
        expected.append((str(tmp_path / name), "insightface .bin"))
    for call, line, want in zip(calls, run_limited(calls), expected):
        if want is None:
            assert line == "loaded", (call, line)
        else:
            assert line.startswith("DataError") and all(w in line for w in want), (call, line)
