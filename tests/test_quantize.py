"""INT8 post-training quantization to explicit Q/DQ, with ECA blocks kept in floating point, on real photographs.

Calibration and agreement use the photographs scikit-image ships (tests/real_images.py), preprocessed as the
authors did. Fusion and quantization compose both ways: eca-export quantizes the FP32 model and fuses the result;
a fused model quantizes with its EcaAttention nodes untouched; a model quantized by another tool, with Q/DQ inside
its ECA blocks, fuses with those dropped and the boundary ones kept.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from cli_checks import assert_refused, run_cli, tree
from ecanets import EcaStack, SeBlock
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from plugin_build import PLUGIN_LIBRARY, plugin_build
from real_images import write_photographs

from eca_deploy.checkpoints import save_authors_checkpoint
from eca_deploy.onnx_export import export_onnx
from eca_deploy.harness.report import table_rows
from eca_deploy.models import create_demo_model, get_architecture
from eca_deploy.onnx_files import save_onnx
from eca_deploy.parity import DEFAULT_TOLERANCES, compare_outputs
from eca_deploy.passes import count_fused_nodes, fuse_eca
from eca_deploy.preprocess import Preprocessing
from eca_deploy.quantize import (CalibrationImages, qdq_inside_eca_blocks, quantize_int8, random_calibration)

SIZE = 64  # input size of the quick models; the authors' checkpoint test runs at 224


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photographs(tmp_path_factory.mktemp("photos") / "images")[0].parent


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    module = create_demo_model("eca_resnet18")
    path = tmp_path_factory.mktemp("r18") / "r18.onnx"
    export_onnx(module, path, input_shape=(3, SIZE, SIZE), exporter="legacy")
    return module, path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _photo_batch(photos: Path, size: int) -> np.ndarray:
    return Preprocessing.from_zoo().for_input_size(size).batch(sorted(photos.iterdir()))


def test_quantized_model_is_int8_where_tensorrt_wants_it_and_float_in_eca(tmp_path, resnet18, photos):
    module, plain = resnet18
    report = quantize_int8(plain, tmp_path / "r18.int8.onnx", CalibrationImages(photos, Preprocessing.from_zoo().for_input_size(SIZE)).load(10))
    model = onnx.load(str(tmp_path / "r18.int8.onnx"))
    onnx.checker.check_model(model, full_check=True)
    nodes = model.graph.node
    assert report.quantize_linear == sum(n.op_type == "QuantizeLinear" for n in nodes) > 0
    assert report.quantized_ops == {"Add": 8, "Conv": 20, "Gemm": 1}  # every conv, the classifier, residual adds
    assert report.eca_blocks_in_float == 8 and qdq_inside_eca_blocks(model) == []
    read = {name for node in nodes for name in node.input}  # ONNX Runtime warns about each unused initializer
    assert [init.name for init in model.graph.initializer if init.name not in read] == []
    inputs, outputs = model.graph.input[0], model.graph.output[0]
    assert inputs.type.tensor_type.elem_type == outputs.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    for node in nodes:  # symmetric: every zero point is 0
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zero = next(i for i in model.graph.initializer if i.name == node.input[2])
            assert not onnx.numpy_helper.to_array(zero).any()
    dequantized = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    readers = {n.op_type for n in nodes if dequantized.intersection(n.input)}
    assert readers == {"Conv", "Gemm", "Add"}, "Q/DQ only on the inputs of the layers TensorRT runs in INT8"
    producers = {o: n.op_type for n in nodes for o in n.output}
    assert all(producers.get(n.input[0]) != "Conv" for n in nodes if n.op_type == "QuantizeLinear"), \
        "a Conv output read by a residual Add stays float: TensorRT folds the Add into that Conv"
    x = _photo_batch(photos, SIZE)
    with torch.no_grad():
        reference = module(torch.from_numpy(x)).numpy()
    metrics = compare_outputs(reference, _run(tmp_path / "r18.int8.onnx", x))
    assert metrics.passes(DEFAULT_TOLERANCES["int8"]) and not metrics.passes(DEFAULT_TOLERANCES["fp32"])


def _blind(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` computing on zeros whatever its input: its logits are a constant."""
    blind = onnx.ModelProto()
    blind.CopyFrom(model)
    graph = blind.graph
    graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((), np.float32), "blind_zero"))
    for node in graph.node:
        node.input[:] = ["blind_input" if name == graph.input[0].name else name for name in node.input]
    graph.node.insert(0, onnx.helper.make_node("Mul", [graph.input[0].name, "blind_zero"], ["blind_input"]))
    return blind


def _miscalibrated(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the activation scale of its first QuantizeLinear/DequantizeLinear pair 16 times too small:
    the first layer's input saturates, as a calibration on the wrong images would leave it."""
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    quantize = next(node for node in broken.graph.node if node.op_type == "QuantizeLinear")
    scale = next(init for init in broken.graph.initializer if init.name == quantize.input[1])
    scale.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale) / 16, scale.name))
    return broken


def test_wrong_int8_models_fail_the_int8_tolerance(tmp_path, resnet18, photos):
    """The INT8 tolerance tells a working INT8 model from broken ones on real photographs. An output that ignores
    its input reaches 58 % top-1 agreement with these flat random-weight logits (the bar is 40 %: the INT8 zoo
    models measured 56-95 %, README), so its cosine (0.77 against >= 0.95) is what rejects it."""
    module, plain = resnet18
    int8 = tmp_path / "r18.int8.onnx"
    quantize_int8(plain, int8, CalibrationImages(photos, Preprocessing.from_zoo().for_input_size(SIZE)).load(10))
    x = _photo_batch(photos, SIZE)
    with torch.no_grad():
        reference = module(torch.from_numpy(x)).numpy()
    tolerance = DEFAULT_TOLERANCES["int8"]
    assert compare_outputs(reference, _run(int8, x)).passes(tolerance)
    for name, wrong in (("blind", _blind(onnx.load(str(int8)))), ("miscalibrated", _miscalibrated(onnx.load(str(int8))))):
        onnx.save(wrong, tmp_path / f"{name}.onnx")
        metrics = compare_outputs(reference, _run(tmp_path / f"{name}.onnx", x))
        assert not metrics.passes(tolerance), name
        assert metrics.cosine_similarity < tolerance.min_cosine, (name, metrics)
    blind = compare_outputs(reference, _run(tmp_path / "blind.onnx", x))
    assert blind.top1_agreement >= tolerance.min_top1_agreement  # why top-1 alone cannot be the criterion here


def test_fusion_and_quantization_compose_in_both_orders(tmp_path, resnet18, photos):
    _, plain = resnet18
    calibration = CalibrationImages(photos, Preprocessing.from_zoo().for_input_size(SIZE)).load(10)
    fused_fp32, _ = fuse_eca(onnx.load(str(plain)))
    save_onnx(fused_fp32, tmp_path / "fused.onnx")
    # fuse, then quantize: the EcaAttention nodes stay float, their weight un-quantized
    report = quantize_int8(tmp_path / "fused.onnx", tmp_path / "fused.int8.onnx", calibration)
    assert report.eca_blocks_in_float == 8  # blocks, not nodes: the EcaAttention nodes
    fuse_then_quantize = onnx.load(str(tmp_path / "fused.int8.onnx"))
    assert count_fused_nodes(fuse_then_quantize) == 8 and qdq_inside_eca_blocks(fuse_then_quantize) == []
    # quantize, then fuse: every block fuses, the Q/DQ at its boundary stay
    quantize_int8(plain, tmp_path / "plain.int8.onnx", calibration)
    quantized = onnx.load(str(tmp_path / "plain.int8.onnx"))
    fused, report = fuse_eca(quantized)
    assert report.num_fused == 8 and not report.near_misses
    assert Counter(n.op_type for n in fused.graph.node)["QuantizeLinear"] == Counter(
        n.op_type for n in quantized.graph.node)["QuantizeLinear"]
    x = _photo_batch(photos, SIZE)
    save_onnx(fused, tmp_path / "plain.int8.eca.onnx")
    np.testing.assert_allclose(_run(tmp_path / "plain.int8.eca.onnx", x), _run(tmp_path / "plain.int8.onnx", x),
                               atol=1e-4, rtol=1e-4)


def _quantize_everything(source: Path, target: Path, x: np.ndarray) -> None:
    """What another quantizer may do (NVIDIA ModelOpt and ONNX Runtime's defaults do not know ECA): Q/DQ on
    the pooled tensor, the conv1d input and weight, the sigmoid and the gated multiply too."""
    class Reader:
        def __init__(self) -> None:
            self.feeds = iter({"x": x[i:i + 1]} for i in range(len(x)))

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "Mul", "Sigmoid", "GlobalAveragePool", "ReduceMean", "Relu"],
                    calibrate_method=CalibrationMethod.MinMax, extra_options={"ActivationSymmetric": True})


@pytest.mark.parametrize("style", ["authors", "timm"])
def test_blocks_quantized_by_another_tool_fuse_with_their_inner_qdq_dropped(tmp_path, style, photos):
    torch.manual_seed(0)
    stack = EcaStack(style, channels=(8, 16, 24), kernels=(3, 5, 7)).eval()
    source = tmp_path / "stack.onnx"
    torch.onnx.export(stack, (torch.randn(2, 3, 16, 16),), str(source), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    x = _photo_batch(photos, 16)
    _quantize_everything(source, tmp_path / "stack.qdq.onnx", x)
    quantized = onnx.load(str(tmp_path / "stack.qdq.onnx"))
    assert len(qdq_inside_eca_blocks(quantized)) >= 9  # around the pooled tensor, weight and gate of each block
    fused, report = fuse_eca(quantized)
    assert report.num_fused == 3 and not report.near_misses, report.summary_table()
    assert all(block.dropped_qdq >= 3 for block in report.fused)
    assert "dropped (ECA stays float)" in report.summary_table()
    assert qdq_inside_eca_blocks(fused) == []
    names = {n.name for n in fused.graph.node}
    assert all(f"{block.node}" in names for block in report.fused)
    save_onnx(fused, tmp_path / "stack.qdq.eca.onnx")
    # the fused blocks compute the float gate: close to the fake-quantized one, closer to float
    with torch.no_grad():
        reference = stack(torch.from_numpy(x)).numpy()
    quantized_error = np.abs(_run(tmp_path / "stack.qdq.onnx", x) - reference).max()
    fused_error = np.abs(_run(tmp_path / "stack.qdq.eca.onnx", x) - reference).max()
    assert fused_error <= quantized_error * 1.5 and fused_error < 0.3 * np.abs(reference).max()


def test_quantized_near_misses_are_still_reported(tmp_path, photos):
    source = tmp_path / "se.onnx"
    torch.onnx.export(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), SeBlock(8)).eval(), (torch.randn(2, 3, 16, 16),),
                      str(source), dynamo=False, opset_version=17, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    _quantize_everything(source, tmp_path / "se.qdq.onnx", _photo_batch(photos, 16))
    _, report = fuse_eca(onnx.load(str(tmp_path / "se.qdq.onnx")))
    assert report.num_fused == 0
    (miss,) = report.near_misses
    assert miss.reason.startswith("SE-style block: 2 convs/FCs")


@pytest.mark.slow
def test_export_int8_from_the_authors_checkpoint_to_engines(tmp_path, photos):
    """eca-export eca_resnet50_k3557.pth.tar --int8 --calib DIR: plain and fused INT8 models that pass the full
    checker, agree with PyTorch FP32 on real images within the INT8 tolerance, have no Q/DQ inside any ECA block,
    and build into TensorRT-RTX engines with one plugin layer per ECA block."""
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 is not installed")
    checkpoint = save_authors_checkpoint(create_demo_model("eca_resnet50"), tmp_path / "eca_resnet50_k3557.pth.tar",
                                         "eca_resnet50")
    out = tmp_path / "out"
    result = run_cli("eca-export", checkpoint, "--int8", "--calib", photos, "--calib-size", "12", "--exporter",
                     "legacy", "--engine", "--plugin", plugin_build() / PLUGIN_LIBRARY, "--max-batch", "4",
                     "--opt-batch", "2", "-o", out, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    stem = "eca_resnet50_k3557.int8"
    assert {f"{stem}.onnx", f"{stem}.eca.onnx", f"{stem}.engine", f"{stem}.report.json"} <= tree(out)
    report = json.loads((out / f"{stem}.report.json").read_text())
    assert report["precision"] == "int8" and report["quantization"]["calibration"]["kind"] == "images"
    assert report["fusion"]["num_fused"] == get_architecture("eca_resnet50").num_eca_layers == 16
    assert all(parity["passed"] and parity["tolerance"] == {"atol": 0.05, "rtol": 0.3, "min_cosine": 0.95,
                                                             "min_top1_agreement": 0.4} for parity in report["parity"])
    for name in (f"{stem}.onnx", f"{stem}.eca.onnx"):
        model = onnx.load(str(out / name))
        onnx.checker.check_model(model, full_check=True)
        assert qdq_inside_eca_blocks(model) == []
    engine = report["engine"]
    assert engine["precision"] == "int8" and engine["num_plugin_layers"] == 16
    assert engine["quantization"]["int8_layers"] > 50  # 53 convs, the classifier and 16 residual adds
    assert "warning: no --calib folder" not in result.stderr


def test_export_int8_without_images_warns_and_uses_random_inputs(tmp_path):
    result = run_cli("eca-export", "eca_resnet18", "--int8", "--calib-size", "4", "--input-size", str(SIZE),
                     "--exporter", "legacy", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning: no --calib folder: calibrating on 4 seeded random inputs" in result.stderr
    quantizing = next(line for line in result.stderr.splitlines() if "Quantizing to INT8" in line)
    assert quantizing.endswith("s)") and "Collecting" not in result.stdout + result.stderr  # no quantizer chatter
    assert "Removing initializer" not in result.stderr  # no unused Q/DQ parameters for ONNX Runtime to warn about
    assert "8 ECA blocks kept in floating point" in result.stderr
    report = json.loads((tmp_path / "out" / "eca_resnet18.int8.report.json").read_text())
    assert report["quantization"]["calibration"] == {"kind": "random", "seed": 0, "samples": 4}


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
@pytest.mark.parametrize("samples", [4, 9])
def test_every_calibration_method_uses_every_sample(tmp_path, resnet18, method, samples):
    """ONNX Runtime's MinMax calibrator drops ranges when it merges partial results (onnxruntime#18893)."""
    _, plain = resnet18
    report = quantize_int8(plain, tmp_path / "q.onnx", random_calibration((3, SIZE, SIZE), samples), method=method)
    assert report.calibration["samples"] == samples and report.quantize_linear > 0


def test_random_calibration_is_seeded():
    first, second = random_calibration((3, 8, 8), 10, seed=3), random_calibration((3, 8, 8), 10, seed=3)
    assert [b.shape[0] for b in first.batches] == [8, 2] and first.samples == 10
    np.testing.assert_array_equal(np.concatenate(first.batches), np.concatenate(second.batches))


def test_bad_int8_requests_are_one_sentence_and_write_nothing(tmp_path, photos):

    empty, broken = tmp_path / "empty", tmp_path / "broken"
    empty.mkdir()
    broken.mkdir()
    (broken / "photo.jpg").write_bytes(b"not a jpeg")
    cases = [
        (("--int8", "--calib", empty), r"no images in .*empty"),
        (("--int8", "--calib", broken), r"no readable image in .*broken: skipped 1 unreadable file .*photo.jpg"),
        (("--strict",), r"--strict applies to a calibration folder: add --calib DIR"),
        (("--int8", "--calib", tmp_path / "missing"), r"missing does not exist"),
        (("--fp16", "--int8"), r"--int8: not allowed with argument --fp16"),
        (("--calib", photos), r"--calib calibrates INT8 quantization: add --int8"),
    ]
    for args, pattern in cases:
        before = tree(tmp_path)
        assert_refused(run_cli("eca-export", "eca_resnet50", *args, "-o", tmp_path / "out"), pattern)
        assert tree(tmp_path) == before


def test_validate_bench_and_compare_take_int8_models(tmp_path, resnet18, photos):
    """validate judges an INT8 model by the INT8 tolerance (its precision read from the Q/DQ graph), bench
    reports INT8 rows and compare sets FP16 against INT8."""
    from eca_deploy.cli.main import main

    _, plain = resnet18
    int8 = tmp_path / "r18.int8.onnx"
    quantize_int8(plain, int8, CalibrationImages(photos, Preprocessing.from_zoo().for_input_size(SIZE)).load(10))
    common = ["eca_resnet18", "--input-size", str(SIZE), "--images", str(photos), "-q"]
    assert main(["validate", *common, "-b", f"ort-cpu={int8}", "-o", str(tmp_path / "acc")]) == 0
    (row,) = json.loads((tmp_path / "acc" / "accuracy.json").read_text())["accuracy"]["candidates"]
    assert row["precision"] == "int8" and row["passed"] and row["tolerance"]["min_cosine"] == 0.95
    assert main(["validate", *common, "-b", f"ort-cpu={int8}", "--precision", "fp32",
                 "-o", str(tmp_path / "acc32")]) == 1  # INT8 noise fails the FP32 tolerance
    fp16 = tmp_path / "r18.fp16.onnx"
    export_onnx(create_demo_model("eca_resnet18"), fp16, input_shape=(3, SIZE, SIZE), exporter="legacy",
                precision="fp16")
    timing = ["--batch-sizes", "1", "--iterations", "2", "--duration", "0", "--warmup-seconds", "0", "--no-plots"]
    for name, model in (("fp16", fp16), ("int8", int8)):
        assert main(["bench", *common, "-b", f"ort-cpu={model}", *timing, "-o", str(tmp_path / name)]) == 0
    rows = table_rows(json.loads((tmp_path / "int8" / "latency.json").read_text()))
    assert {row["precision"] for row in rows} == {"int8"}
    compared = run_cli("eca-deploy", "compare", tmp_path / "fp16" / "latency.json", tmp_path / "int8" / "latency.json")
    assert compared.returncode == 0, compared.stderr
    assert "fp16 -> int8" in compared.stdout and "r18.fp16.onnx -> ort-cpu:r18.int8.onnx" in compared.stdout
