"""The output folder of a run: one run at a time, never overwritten by accident.

`RunDir.claim` is called before anything is written into EXPERIMENT.OUTPUT_DIR. It

- checks that the folder can be created and written (not a file, not under a file, not read-only),
  with a one-line ConfigError otherwise;
- takes an exclusive `fcntl.flock` on `OUTPUT_DIR/.lock`, held until the process ends: a second
  run launched into the same folder refuses, naming the holder's pid (the lock dies with its
  process, so a killed run never leaves the folder locked);
- refuses to start a fresh run in a folder that already holds one (a checkpoint or results),
  unless asked to continue it (`--resume`) or to replace it (`--overwrite`, which deletes the old
  run's files first so nothing of it mixes with the new one);
- resolves `--resume auto`: continue when a checkpoint exists, start fresh otherwise;
- removes temporary checkpoint files that a kill during a save left behind.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from engine.checkpoint import previous_path, remove_stale_temp_files
from utility.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
CHECKPOINTS = ("last.pt", "best.pt")
#: files a run writes; `--overwrite` removes them (and the TensorBoard folder) before starting
RUN_FILES = ("last.pt", "last.prev.pt", "best.pt", "results.json", "results.md", "config.yaml", "run.json",
             "log.txt", "curves.png")
RESUME_MODES = ("no", "yes", "auto")


def holds_run(folder: Path) -> bool:
    """Whether `folder` holds a previous run's work (a checkpoint or results)."""
    names = [*CHECKPOINTS, previous_path(folder / "last.pt").name, "results.json"]
    return any((folder / name).is_file() for name in names)


def has_checkpoint(folder: Path) -> bool:
    """Whether `--resume` has something to continue from."""
    return (folder / "last.pt").is_file() or previous_path(folder / "last.pt").is_file()


@dataclass
class RunDir:
    """A claimed output folder; keep the object alive for as long as the run lasts (it holds the lock)."""

    path: Path
    resume: bool
    _lock: IO[str] | None = None

    @classmethod
    def claim(cls, path: str | Path, resume: str = "no", overwrite: bool = False) -> RunDir:
        """Lock `path` for this run and decide whether it resumes (`resume`: no | yes | auto)."""
        if resume not in RESUME_MODES:
            raise ConfigError(f"--resume takes no value or 'auto', not {resume!r}")
        if resume != "no" and overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pass one of them")
        folder = Path(path)
        lock = _open_lock(folder)
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise ConfigError(
                f"EXPERIMENT.OUTPUT_DIR {folder} is in use by another run (pid {holder}); wait for it to "
                "finish or choose another EXPERIMENT.OUTPUT_DIR"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        try:
            resumes = _decide(folder, resume, overwrite)
        except BaseException:
            lock.close()
            raise
        remove_stale_temp_files(folder)
        return cls(folder, resumes, lock)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None


def _open_lock(folder: Path) -> IO[str]:
    """Create the folder and open its lock file, turning file-system faults into one line."""
    where = f"EXPERIMENT.OUTPUT_DIR {folder}"
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{where} is a file, not a folder; choose another EXPERIMENT.OUTPUT_DIR")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return open(folder / LOCK_NAME, "a+")  # noqa: SIM115 - held open for the run's lifetime
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"{where}: a parent of it is a file; choose another EXPERIMENT.OUTPUT_DIR") from None
    except OSError as exc:
        raise ConfigError(f"{where} cannot be written ({exc.strerror or exc}); "
                          "choose a writable EXPERIMENT.OUTPUT_DIR") from None


def _decide(folder: Path, resume: str, overwrite: bool) -> bool:
    if resume == "auto":
        resumes = has_checkpoint(folder)
        log.info("--resume auto: %s", f"continuing from the checkpoint in {folder}" if resumes
                 else f"no checkpoint in {folder}, starting fresh")
        return resumes
    if resume == "yes":
        return True
    if holds_run(folder):
        if not overwrite:
            raise ConfigError(
                f"EXPERIMENT.OUTPUT_DIR {folder} already holds a run (checkpoints or results); continue it "
                "with --resume, choose a new EXPERIMENT.OUTPUT_DIR, or replace it with --overwrite"
            )
        for name in RUN_FILES:
            (folder / name).unlink(missing_ok=True)
        shutil.rmtree(folder / "tb", ignore_errors=True)
        log.info("--overwrite: removed the previous run's files from %s", folder)
    return False
