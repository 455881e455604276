"""The kernel benchmark's plan and bookkeeping (scripts/bench_eca_kernel.py), checked without a GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from eca_deploy.models import EcaLayer, create_model, get_architecture

SCRIPT = Path(__file__).parents[1] / "scripts" / "bench_eca_kernel.py"
spec = importlib.util.spec_from_file_location("bench_eca_kernel", SCRIPT)
bench = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look the module up
spec.loader.exec_module(bench)

RESNET50_STAGES = [bench.LayerShape(256, 56, 56, 3), bench.LayerShape(512, 28, 28, 5),
                   bench.LayerShape(1024, 14, 14, 5), bench.LayerShape(2048, 7, 7, 7)]
# MobileNetV2 at 224: (output channels, spatial size) of its blocks, stem stride 2 then strides 1,2,2,2,1,2,1
MOBILENET_BLOCKS = [(16, 112), (24, 56), (24, 56), (32, 28), (32, 28), (32, 28), (64, 14), (64, 14), (64, 14),
                    (64, 14), (96, 14), (96, 14), (96, 14), (160, 7), (160, 7), (160, 7), (320, 7)]


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_resnet50_shapes_are_its_four_stages_with_the_models_kernel_sizes():
    arch = get_architecture("eca_resnet50")
    shapes = bench.eca_layer_shapes("eca_resnet50")
    model = create_model("eca_resnet50")
    assert len(shapes) == arch.num_eca_layers == sum(isinstance(m, EcaLayer) for m in model.modules()) == 16
    assert [s.channels for s in shapes] == list(arch.eca_channels)
    assert [s.kernel_size for s in shapes] == arch.kernel_sizes() == [
        m.k_size for m in model.modules() if isinstance(m, EcaLayer)]
    assert Counter(shapes) == dict(zip(RESNET50_STAGES, (3, 4, 6, 3)))


def test_mobilenet_shapes_are_every_block():
    arch = get_architecture("eca_mobilenet_v2")
    shapes = bench.eca_layer_shapes("eca_mobilenet_v2")
    assert len(shapes) == arch.num_eca_layers == 17
    assert [s.channels for s in shapes] == list(arch.eca_channels)
    assert [s.kernel_size for s in shapes] == arch.kernel_sizes() == [1 if c <= 96 else 3 for c in arch.eca_channels]
    assert [(s.channels, s.height) for s in shapes] == MOBILENET_BLOCKS
    assert all(s.height == s.width for s in shapes)


def test_plan_is_the_deduplicated_product():
    plan = bench.build_plan()
    shapes = {case.shape: case for case in plan}
    assert list(shapes)[:4] == RESNET50_STAGES
    assert len(shapes) == 4 + 7
    assert sum(case.layers for case in shapes.values()) == 16 + 17
    assert len(plan) == 11 * 4 * 2 * 2 == 176
    assert {(c.batch, c.dtype, c.layout) for c in plan} == {
        (b, d, lay) for b in (1, 8, 64, 256) for d in ("fp16", "fp32") for lay in ("nchw", "channels_last")}
    assert Counter(c.shape for c in plan) == {shape: 16 for shape in shapes}
    assert shapes[bench.LayerShape(1024, 14, 14, 5)].layers == 6                 # ResNet-50 stage 3
    assert shapes[bench.LayerShape(64, 14, 14, 1)].layers == 4                   # MobileNetV2's 64-channel blocks
    assert shapes[bench.LayerShape(320, 7, 7, 3)].models == ("eca_mobilenet_v2",)
    assert bench.plan_summary(plan, bench.MODELS) == [
        "eca_resnet50: 4 distinct ECA layer shapes covering 16 layers",
        "eca_mobilenet_v2: 7 distinct ECA layer shapes covering 17 layers",
        "176 cases: 11 distinct layer shapes covering 33 ECA layers, x 4 batches x 2 dtypes x 2 layouts"]


def test_plan_subsets():
    plan = bench.build_plan(["eca_mobilenet_v2"], [8], ["bf16"], ["channels_last"])
    assert len(plan) == 7 and {(c.batch, c.dtype, c.layout) for c in plan} == {(8, "bf16", "channels_last")}


def test_byte_model_on_a_hand_computed_case():
    case = bench.Case(bench.LayerShape(256, 56, 56, 3), batch=64, dtype="fp16", layout="nchw", layers=3,
                      models=("eca_resnet50",))
    assert case.elements == 51_380_224                       # 64 * 256 * 3136
    assert case.tensor_bytes == 102_760_448
    assert case.bytes_moved() == 205_520_896                 # one launch: x read once, y written once
    assert case.bytes_moved(reads_of_x=2) == 308_281_344     # the two-launch path reads x twice
    fp32 = bench.Case(bench.LayerShape(320, 7, 7, 3), 1, "fp32", "channels_last", 1, ("eca_mobilenet_v2",))
    assert fp32.bytes_moved(reads_of_x=2) == 3 * 320 * 49 * 4 == 188_160


def test_rates_ratios_and_fractions():
    assert bench.gigabytes_per_second(3_000_000_000, 0.001) == pytest.approx(3000.0)
    assert bench.ratio(reference=30e-6, ours=10e-6) == pytest.approx(3.0)
    metrics = bench.case_metrics(308_281_344, {"ours": 100e-6, "eager": 400e-6, "compile": 150e-6}, copy_gbps=3000.0)
    assert metrics == pytest.approx({"ours_us": 100.0, "eager_us": 400.0, "compile_us": 150.0,
                                     "speedup_vs_eager": 4.0, "speedup_vs_compile": 1.5,
                                     "achieved_gbps": 3082.81344, "copy_fraction": 3082.81344 / 3000})
    assert bench.case_metrics(2_000, {"ours": 1e-6, "eager": 2e-6}, 4.0)["speedup_vs_compile"] is None


def test_model_metrics():
    metrics = bench.model_metrics({"eager": 10e-3, "ours": 8e-3, "no_eca": 7e-3, "compile": 9e-3})
    assert metrics == pytest.approx({
        "eager_ms": 10.0, "ours_ms": 8.0, "no_eca_ms": 7.0, "compile_ms": 9.0,
        "eca_share_eager": 0.3, "eca_share_ours": 0.125, "eca_share_halved": True,
        "eca_time_saved": 2 / 3, "model_time_saved": 0.2, "speedup_vs_compile": 9 / 8})
    noisy = bench.model_metrics({"eager": 7e-3, "ours": 7.1e-3, "no_eca": 7.2e-3})
    assert noisy["eca_time_saved"] is None and noisy["speedup_vs_compile"] is None


def test_input_pool_exceeds_twice_the_l2():
    l2 = 50 * 2**20
    assert bench.pool_buffers(1_605_632, l2) == 66           # 66 * 1.6 MB > 100 MiB > 65 * 1.6 MB
    assert 66 * 1_605_632 > 2 * l2 > 65 * 1_605_632
    assert bench.pool_buffers(10 * l2, l2) == 2              # large tensors: still two distinct buffers
    assert bench.pool_buffers(8, l2) == bench.POOL_MAX_BUFFERS


def test_scaled_error_flags_unwritten_outputs():
    reference = torch.tensor([1.0, -3.0], dtype=torch.float64)
    assert bench.scaled_error(torch.tensor([1.002, -3.0]), reference) == pytest.approx(0.001, rel=1e-3)
    assert bench.scaled_error(torch.tensor([float("nan"), -3.0]), reference) != 0.0   # NaN fails every <=


def test_markdown_table():
    table = bench.markdown_table(("a", "b", "c"), [(1, 0.123456, None), ("x", 12.0, "42%"), (2, 2569.3, 0.5)])
    assert table.splitlines() == ["| a | b | c |", "|---|---|---|", "| 1 | 0.123 | - |", "| x | 12 | 42% |",
                                  "| 2 | 2569 | 0.5 |"]


def _layer_result(shape: tuple[int, int, int, int], batch: int, ours_us: float, eager_us: float, compile_us: float,
                  copy_gbps: float) -> dict:
    case = bench.Case(bench.LayerShape(*shape), batch, "fp16", "nchw", 1, ("eca_resnet50",))
    seconds = {"ours": ours_us * 1e-6, "eager": eager_us * 1e-6, "compile": compile_us * 1e-6}
    return {"shape": dict(zip(("channels", "height", "width", "kernel_size"), shape)), "batch": batch,
            "dtype": "fp16", "layout": "nchw", "layers": 1, "cuda_graphs": batch == 1, "correct": True,
            **bench.case_metrics(case.bytes_moved(reads_of_x=2), seconds, copy_gbps)}


def test_tables_and_targets_from_runs(tmp_path):
    env = {"device": "test device", "multiprocessors": 132, "l2_bytes": 50 * 2**20, "date": "2026-01-01",
           "commit": "abc", "torch": "2.11", "cuda": "13.0", "cudnn": 91000, "triton": "3.6",
           "copy_bandwidth_gbps": 3000.0, "iters": 200, "compile_mode": "max-autotune-no-cudagraphs",
           "reads_of_x": 2}
    layers = [_layer_result((2048, 7, 7, 7), 1, ours_us=4.0, eager_us=20.0, compile_us=5.0, copy_gbps=3000.0),
              _layer_result((256, 56, 56, 3), 64, ours_us=120.0, eager_us=400.0, compile_us=200.0, copy_gbps=3000.0)]
    model = {"model": "eca_resnet50", "layout": "channels_last", "batch": 64, "cuda_graphs": False, "correct": True,
             **bench.model_metrics({"eager": 10e-3, "ours": 8e-3, "no_eca": 7e-3})}
    targets = bench.target_rows(layers, [model], reads_of_x=2)
    assert [row[1:3] for row in targets] == [(1, 0), (1, 1), (1, 1), ("-", "no: the design reads x 2x"), (1, 1)]
    assert targets[0][3] == pytest.approx(1.25) and targets[0][4] == "C=2048 7x7 k=7 N=1 nchw"
    # 64*256*3136*2 bytes * 3 in 120 us = 2569 GB/s = 86 % of 3000
    assert targets[2][3] == pytest.approx(308_281_344 / 120e-6 / 1e9 / 3000)

    paths = []
    for index, run in enumerate(({"environment": env, "layers": layers[:1], "models": []},
                                 {"environment": env, "layers": layers[1:], "models": [model]})):
        paths.append(tmp_path / f"run{index}.json")
        paths[-1].write_text(json.dumps(run))
    markdown = tmp_path / "bench.md"
    result = run_script("--from-json", *map(str, paths), "--markdown", str(markdown))
    assert result.returncode == 0, result.stderr
    text = markdown.read_text()
    assert text == result.stdout
    assert text.count("- test device (50 MiB L2, 132 SMs), 2026-01-01, commit abc") == 2
    assert "| 2048 | 7x7 | 7 | 1 | 1 | fp16 | nchw | yes | 4 | 20 | 5 | 5 | 1.25 | 151 | 5% |" in text
    assert "| 256 | 56x56 | 3 | 1 | 64 | fp16 | nchw | no | 120 | 400 | 200 | 3.33 | 1.67 | 2569 | 86% |" in text
    assert "| eca_resnet50 | channels_last | 64 | no | 10 | 8 | 7 | - | 30% | 12% | 67% | 20% | - |" in text


def test_dry_run_prints_the_plan():
    result = run_script("--dry-run")
    assert result.returncode == 0, result.stderr
    assert "| 2048 | 7x7 | 7 | 3 | eca_resnet50 | 256 | fp32 | channels_last | 102.760 | 205.521 |" in result.stdout
    assert "| 16 | 112x112 | 1 | 1 | eca_mobilenet_v2 | 1 | fp16 | nchw | 0.401 | 0.803 |" in result.stdout
    assert "176 cases: 11 distinct layer shapes covering 33 ECA layers" in result.stdout
    assert "eca_mobilenet_v2: 7 distinct ECA layer shapes covering 17 layers" in result.stdout
    quick = run_script("--dry-run", "--quick", "--reads-of-x", "2")
    assert quick.returncode == 0, quick.stderr
    assert "22 cases: 11 distinct layer shapes covering 33 ECA layers, x 2 batches x 1 dtypes x 1 layouts" \
        in quick.stdout
    assert "| 16 | 112x112 | 1 | 1 | eca_mobilenet_v2 | 1 | fp16 | nchw | 0.401 | 1.204 |" in quick.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run")
def test_without_a_gpu_the_timed_run_refuses():
    result = run_script("--quick")
    assert result.returncode == 2
    assert "no CUDA GPU visible" in result.stderr and "--dry-run" in result.stderr
