"""`test.py RUN_DIR --export-onnx PATH`: the trained backbone as ONNX, checked by onnxruntime on the CPU.

A deployer needs the network and three facts that are not in the graph: the input size, the colour
order and the normalisation. The export writes the backbone alone (what `model(x)` returns: the
face embedding or the class logits; no margin head, no distiller extras) with a dynamic batch axis,
runs the same batch through onnxruntime and PyTorch, and refuses a file that disagrees by more than
1e-4 relative to the largest output magnitude.

onnx and onnxruntime are optional (`pip install -r requirements-onnx.txt`). The TorchScript-based
exporter is used (`dynamo=False`): it needs no further package and handles every backbone here.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utility.errors import CheckpointError, ConfigError

TOLERANCE = 1e-4  # max |onnx - torch| / max |torch|


def _require_onnx() -> Any:
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise ConfigError("--export-onnx needs onnx and onnxruntime: "
                          "python3 -m pip install -r requirements-onnx.txt") from None
    return onnxruntime


def export_onnx(network: torch.nn.Module, path: str | Path, image_size: int, output_name: str,
                check_batch: int = 3, seed: int = 0) -> float:
    """Write `network` (N x 3 x S x S in, one tensor out) to `path`; the relative max difference to torch.

    The check batch size differs from the export's (1), so a batch axis that was not made dynamic
    fails here rather than in deployment.
    """
    onnxruntime = _require_onnx()
    network = network.eval().cpu()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, by choice (see above)
        torch.onnx.export(network, (example,), str(path), input_names=["image"], output_names=[output_name],
                          dynamic_axes={"image": {0: "batch"}, output_name: {0: "batch"}}, opset_version=17,
                          dynamo=False)
    import onnx

    onnx.checker.check_model(onnx.load(str(path)))
    generator = torch.Generator().manual_seed(seed)
    batch = torch.randn(check_batch, 3, image_size, image_size, generator=generator)
    with torch.no_grad():
        expected = network(batch).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run([output_name], {"image": batch.numpy()})
    if got.shape != expected.shape:
        raise CheckpointError(f"{path}: onnxruntime returned shape {got.shape}, PyTorch {expected.shape}")
    return float(np.abs(got - expected).max() / max(float(np.abs(expected).max()), 1e-12))


def export_run(run_dir: str, config: str, overrides: list[str], path: str, checkpoint: str = "",
               teacher: bool = False) -> int:
    """Export a run's (or a config's) trained network and print what a deployer needs."""
    from engine.session import load_for_test, load_run_config
    from utility.config import load_config

    trained_teacher = False
    if run_dir:
        cfg, role = load_run_config(run_dir, overrides)
        trained_teacher = teacher = teacher or role == "teacher"
    else:
        cfg = load_config(config, list(overrides))
    folder = Path(cfg.EXPERIMENT.OUTPUT_DIR)
    if checkpoint:
        source = Path(checkpoint)
    elif teacher and not trained_teacher:
        if not cfg.TEACHER.CHECKPOINT:
            raise ConfigError("--teacher --export-onnx: set TEACHER.CHECKPOINT or pass --checkpoint")
        source = Path(cfg.TEACHER.CHECKPOINT)
    else:
        candidates = [folder / name for name in ("best.pt", "last.pt") if (folder / name).is_file()]
        if not candidates:
            raise CheckpointError(f"no checkpoint in {folder} (best.pt / last.pt); train first or pass --checkpoint")
        source = candidates[0]
    _require_onnx()
    network = load_for_test(cfg, cfg.TEACHER if teacher else cfg.STUDENT, source, torch.device("cpu"))
    face = cfg.EXPERIMENT.TASK == "face"
    size = int(cfg.DATA.IMAGE_SIZE)
    difference = export_onnx(network, path, size, "embedding" if face else "logits", seed=int(cfg.EXPERIMENT.SEED))
    if difference > TOLERANCE:
        raise CheckpointError(f"{path}: onnxruntime differs from PyTorch by {difference:.2e} (relative), "
                              f"more than {TOLERANCE:g}; do not deploy this file")
    mean = ", ".join(f"{v:g}" for v in cfg.DATA.MEAN)
    std = ", ".join(f"{v:g}" for v in cfg.DATA.STD)
    order = str(cfg.DATA.COLOR).upper()
    print(f"wrote {path} from {source}")
    print(f"input 'image': float32 N x 3 x {size} x {size} (N dynamic), channels in {order} order, "
          f"pixels scaled to [0, 1] then (x - mean) / std with mean [{mean}], std [{std}]")
    with torch.no_grad():
        width = int(network(torch.zeros(1, 3, size, size)).shape[1])
    if face:
        print(f"output 'embedding': N x {width} (not normalised: L2-normalise and compare by cosine; "
              "evaluation also adds the embedding of the horizontally flipped image)")
    else:
        print(f"output 'logits': N x {width} classes (softmax for probabilities)")
    print(f"onnxruntime (CPU) vs PyTorch on a batch of 3: max difference {difference:.2e} relative "
          f"(tolerance {TOLERANCE:g})")
    return 0
