"""`test.py RUN_DIR --export-onnx PATH`: the backbone as ONNX with a dynamic batch, checked by onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.export import export_onnx
from models import BACKBONES

onnxruntime = pytest.importorskip("onnxruntime")


def test_round_trip_with_another_batch_size(tmp_path):
    torch.manual_seed(0)
    network = BACKBONES.build("face.iresnet18", width=8, num_features=16, attention="cbam_a_skd").eval()
    path = tmp_path / "student.onnx"
    relative = export_onnx(network, path, 112, "embedding")
    assert relative <= 1e-4
    # independently of the export's own check: a batch of 5 (exported with 1) through a fresh session
    images = torch.rand(5, 3, 112, 112) * 2 - 1
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["embedding"], {"image": images.numpy()})
    with torch.no_grad():
        expected = network(images).numpy()
    assert got.shape == (5, 16)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_missing_onnx_is_one_clear_error(monkeypatch, tmp_path):
    import builtins

    from engine import export
    from utility.errors import ConfigError

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name in ("onnx", "onnxruntime"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ConfigError, match="requirements-onnx.txt"):
        export._require_onnx()
