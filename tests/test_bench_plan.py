"""The kernel benchmark's plan and bookkeeping (scripts/bench_eca_kernel.py), checked without a GPU."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eca_deploy.models import get_architecture

SCRIPT = Path(__file__).parents[1] / "scripts" / "bench_eca_kernel.py"
spec = importlib.util.spec_from_file_location("bench_eca_kernel", SCRIPT)
bench = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(bench)


def test_resnet50_shapes_are_its_four_stages_with_k3557():
    shapes = bench.eca_layer_shapes("eca_resnet50")
    assert len(shapes) == get_architecture("eca_resnet50").num_eca_layers == 16
    assert sorted(set(shapes), key=lambda s: s.channels) == [
        bench.LayerShape(256, 56, 56, 3), bench.LayerShape(512, 28, 28, 5),
        bench.LayerShape(1024, 14, 14, 5), bench.LayerShape(2048, 7, 7, 7)]


def test_mobilenet_shapes_are_every_block():
    arch = get_architecture("eca_mobilenet_v2")
    shapes = bench.eca_layer_shapes("eca_mobilenet_v2")
    assert [s.channels for s in shapes] == list(arch.eca_channels)
    assert [s.kernel_size for s in shapes] == arch.kernel_sizes("k13")
    assert (shapes[0].height, shapes[-1].height) == (112, 7)
    assert min(s.channels for s in shapes) == 16 and max(s.channels for s in shapes) == 320


def test_plan_is_the_deduplicated_product():
    plan = bench.build_plan()
    shapes = {case.shape: case.layers for case in plan}
    assert len(shapes) == 11 and sum(shapes.values()) == 16 + 17
    assert len(plan) == 11 * len(bench.BATCHES) * len(bench.DTYPES) * len(bench.LAYOUTS)
    assert shapes[bench.LayerShape(1024, 14, 14, 5)] == 6           # ResNet-50 stage 3
    assert shapes[bench.LayerShape(64, 14, 14, 1)] == 4             # MobileNetV2 64-channel blocks
    assert {case.batch for case in plan} == {1, 8, 64, 256}


def test_byte_model_and_rates():
    case = bench.Case(bench.LayerShape(256, 56, 56, 3), batch=64, dtype="fp16", layout="nchw", layers=3,
                      models=("eca_resnet50",))
    elements = 64 * 256 * 56 * 56
    assert case.bytes_moved() == 3 * elements * 2            # read x twice, write y once
    assert case.bytes_moved(reads_of_x=1) == 2 * elements * 2
    assert bench.gigabytes_per_second(3_000_000_000, 0.001) == pytest.approx(3000.0)
    assert bench.ratio(reference=30e-6, ours=10e-6) == pytest.approx(3.0)


def test_markdown_table():
    table = bench.markdown_table(("a", "b"), [(1, 0.123456), ("x", 12.0)])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.123 |", "| x | 12 |"]


def test_dry_run_prints_the_plan():
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--quick"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "| 2048 | 7x7 | 7 |" in result.stdout
    assert "22 cases: 11 distinct layer shapes covering 33 ECA layers" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run")
def test_without_a_gpu_the_timed_run_refuses():
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True)
    assert result.returncode == 2 and "no CUDA GPU visible" in result.stderr
