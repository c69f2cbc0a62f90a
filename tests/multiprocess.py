"""Run a test worker in two gloo ranks, as torchrun would, and collect what each rank saved.

Ranks are *spawned* (fresh interpreters), not forked: forking a pytest process that already runs
torch's thread pools or earlier tests' background threads can leave a child blocked on a lock it
inherited mid-use, which hangs the suite. A deadline turns any hang into a failure.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

WORLD = 2


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(worker, out: Path, *args, timeout: float = 240.0, weights_only: bool = False) -> list:
    """`worker(rank, port, out, *args)` in WORLD spawned processes; returns each rank's `rank{r}.pt`."""
    context = mp.start_processes(worker, args=(free_port(), str(out), *args), nprocs=WORLD, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=1.0):  # raises if a rank raised or exited non-zero
            if time.monotonic() > deadline:
                raise TimeoutError(f"{worker.__name__}: ranks still running after {timeout:.0f} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    return [torch.load(Path(out) / f"rank{r}.pt", weights_only=weights_only) for r in range(WORLD)]
