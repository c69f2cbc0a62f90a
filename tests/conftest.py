"""Test set-up: run from the repository root so `import models`, `import data` ... resolve."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared"


@pytest.fixture(autouse=True)
def _small_thread_pool():
    """Two cores: keep torch from oversubscribing them when tests run beside other work."""
    torch.set_num_threads(2)
    yield
