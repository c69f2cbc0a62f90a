"""bench/gpu_check.sh and its Python parts on the CPU: the quick path of a workload writes its figures,
the profile verdict follows the kind of work, the datasheet peaks, and the script's time budget."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from bench import bench_cifar_kd
from bench.common import datasheet_peak_tflops, profile_step

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def test_quick_cpu_workload_writes_json_and_markdown(tmp_path):
    assert bench_cifar_kd.main(["--device", "cpu", "--quick", "--profile", "1", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "kd_resnet32x4_resnet8x4_b2.json").read_text())
    assert record["batch"] == 2 and record["steps"] == 1 and record["peak_tflops_datasheet"] is None
    assert [v["name"] for v in record["variants"]] == ["baseline (fp32, per-sample)", "baseline, model only",
                                                       "distillery train_step"]
    for variant in record["variants"]:
        assert variant["items_per_s"] == pytest.approx(2 / (variant["ms_per_step"] / 1e3))
        assert variant["tflops"] == pytest.approx(record["flops_per_image"] * variant["items_per_s"] / 1e12)
    # resnet8x4 fwd+bwd (3x its forward) plus a resnet32x4 forward: about 3 * 0.18 + 1.08 GMAC * 2 FLOPs
    assert 2.5e9 < record["flops_per_image"] < 4.5e9
    profile = record["profile"]
    assert profile["top"] and "bound" in profile["bound"] and profile["device_busy"] is None
    assert "distillery train_step" in (tmp_path / "kd_resnet32x4_resnet8x4_b2.md").read_text()


def test_profile_verdict_follows_the_kind_of_work():
    a, b = torch.randn(384, 384), torch.randn(384, 384)
    matrix = profile_step(lambda: [a @ b for _ in range(4)], torch.device("cpu"), steps=2)
    assert matrix["matrix_share"] > 0.6 and matrix["bound"].startswith("matrix-bound")
    x = torch.randn(200_000)
    elementwise = profile_step(lambda: [(x * 1.5 + 2.0).exp().sin() for _ in range(4)], torch.device("cpu"), steps=2)
    assert elementwise["matrix_share"] < 0.1 and elementwise["bound"].startswith("memory/elementwise-bound")
    assert abs(sum(k["share"] for k in elementwise["top"]) - 1.0) < 0.2


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                        ("NVIDIA H200", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                        ("Some Future GPU", None)])
def test_datasheet_peak_of_the_detected_gpu(name, peak, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert datasheet_peak_tflops(torch.device("cuda")) == peak
    assert datasheet_peak_tflops(torch.device("cpu")) is None


def test_gpu_check_parts_fit_in_eight_minutes():
    text = SCRIPT.read_text()
    defaults = dict(re.findall(r"t_(\w+)=\$\{T_\w+:-(\d+)\}", text))
    benchmarks = len(re.findall(r"^part (?:\"\$workload\"|bench_\w+) \"\$t_bench\"", text, re.M))
    loop = re.search(r"for workload in ([\w ]+); do", text).group(1).split()
    total = int(defaults["tests"]) + int(defaults["recipes"]) + int(defaults["bench"]) * (len(loop) + benchmarks - 1)
    assert total + 5 * (len(loop) + benchmarks + 1) <= 480  # each timeout plus its 5 s kill grace
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    for module in loop + ["bench_cache", "bench_data"]:
        assert (ROOT / "bench" / f"{module}.py").is_file()
