"""The accuracy and latency harness on CPU: ONNX Runtime and PyTorch, ECA-MobileNetV2 and ECA-ResNet-18.

Models are the 64 x 64, 10-class demo models of tests/test_runtime.py (seeded weights, calibrated
BatchNorm), so `eca-deploy validate eca_mobilenet_v2 --num-classes 10 --input-size 64` builds the
same reference the ONNX files were exported from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_checks import tree
from onnx import numpy_helper
from PIL import Image
from test_runtime import INPUT_SHAPE, NUM_CLASSES, build_rtx_engine, export_demo_64

from eca_deploy.cli.main import main
from eca_deploy.errors import EcaDeployError
from eca_deploy.onnx_export import export_onnx
from eca_deploy.harness.accuracy import LabelAccuracy, validate
from eca_deploy.harness.backends import (OnnxRuntimeBackend, StageTimes, TorchBackend, available_backends,
                                         create_backend, parse_backend_spec)
from eca_deploy.harness.data import RandomInputs
from eca_deploy.image_folders import ImageFolderInputs, load_class_index
from eca_deploy.harness.latency import LatencySettings, latency_statistics, measure_latency, scenario_summary
from eca_deploy.onnx_files import save_onnx
from eca_deploy.parity import DEFAULT_TOLERANCES, Tolerance
from eca_deploy.passes import count_fused_nodes, fuse_eca
from eca_deploy.preprocess import Preprocessing

MODELS = {"mnv2": "eca_mobilenet_v2", "resnet18": "eca_resnet18"}
FAST = LatencySettings(warmup_iterations=2, warmup_seconds=0.0, iterations=6, duration_seconds=0.0)


@pytest.fixture(scope="session", params=sorted(MODELS))
def model(request, tmp_path_factory):
    """(module, plain ONNX, fused ONNX) of each test architecture."""
    return export_demo_64(tmp_path_factory.getbasetemp(), MODELS[request.param], request.param)


@pytest.fixture(scope="session")
def resnet18(tmp_path_factory):
    return export_demo_64(tmp_path_factory.getbasetemp(), "eca_resnet18", "resnet18")


def write_images(folder: Path, classes: dict[str, int] | None, seed: int = 0) -> Path:
    """Small random RGB images of varied sizes: in class folders (``classes``: name -> count) or flat."""
    rng = np.random.default_rng(seed)
    layout = classes or {"": 4}
    for name, count in layout.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            size = (int(rng.integers(40, 120)), int(rng.integers(40, 120)))
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"img{index}.{'png' if index % 2 else 'jpg'}")
    return folder


class NoisyBackend:
    """A backend that adds ``offset`` to every logit of the PyTorch model: known, constructed error."""

    def __init__(self, module, offset: float) -> None:
        self.inner, self.offset = TorchBackend(module), offset
        self.name, self.precision, self.onnx_path = "noisy", "fp32", None

    def run(self, batch):
        return self.inner.run(batch) + np.float32(self.offset)

    def describe(self):
        return self.inner.describe() | {"name": self.name}

    def close(self):
        self.inner.close()


def _random(batch_size: int = 4, num_batches: int = 2) -> RandomInputs:
    return RandomInputs(INPUT_SHAPE, batch_size=batch_size, num_batches=num_batches, seed=3)


# Metrics on constructed cases


def test_identical_backends_give_zero_error(model):
    module = model[0]
    report = validate(TorchBackend(module), [TorchBackend(module)], _random())
    (result,) = report.candidates
    m = result.metrics
    assert (m.max_abs_error, m.max_elementwise_rel_error, m.max_rel_error_vs_ref_max) == (0.0, 0.0, 0.0)
    assert m.cosine_similarity == pytest.approx(1.0, abs=1e-12)
    assert (m.top1_agreement, m.top5_agreement, m.batch_size) == (1.0, 1.0, 8)
    assert result.passed and report.passed
    assert result.to_dict()["smallest_passing_tolerance"]["atol"] == 0.0


def test_a_backend_adding_known_noise_fails_by_exactly_that_much(resnet18):
    module = resnet18[0]
    inputs = _random()
    report = validate(TorchBackend(module), [NoisyBackend(module, 0.05)], inputs)
    (result,) = report.candidates
    m = result.metrics
    assert m.max_abs_error == pytest.approx(0.05, abs=1e-6)
    assert m.top1_agreement == 1.0 and m.top5_agreement == 1.0  # a constant offset keeps the ranking
    reference = np.concatenate([TorchBackend(module).run(b.images) for b in inputs]).astype(np.float64)
    expected_cosine = (reference * (reference + 0.05)).sum() / (np.linalg.norm(reference)
                                                               * np.linalg.norm(reference + 0.05))
    assert m.cosine_similarity == pytest.approx(expected_cosine, abs=1e-6)
    assert m.reference_max_abs == pytest.approx(np.abs(reference).max(), rel=1e-6)
    assert not result.passed and not report.passed  # 0.05 >> 1e-4 + 1e-4 * max|logit|
    assert result.localization is None and "-b ort-cpu=MODEL.onnx" in result.summary()  # no ONNX to bisect
    smallest = result.to_dict()["smallest_passing_tolerance"]
    assert smallest["atol"] == pytest.approx(0.05, abs=1e-6)
    assert smallest["rtol"] == pytest.approx(0.05 / m.reference_max_abs, rel=1e-4)
    observed = {"min_cosine": smallest["min_cosine"], "min_top1_agreement": smallest["min_top1_agreement"]}
    loose = {"fp32": Tolerance(atol=smallest["atol"] * 1.01, rtol=0.0, **observed)}
    assert validate(TorchBackend(module), [NoisyBackend(module, 0.05)], inputs, tolerances=loose).passed
    tight = {"fp32": Tolerance(atol=smallest["atol"] * 0.99, rtol=0.0, **observed)}
    assert not validate(TorchBackend(module), [NoisyBackend(module, 0.05)], inputs, tolerances=tight).passed


def test_label_accuracy_counts_top1_and_top5():
    logits = np.array([[9, 8, 7, 6, 5, 4], [0, 1, 2, 3, 4, 5], [5, 0, 0, 0, 0, 1]], dtype=np.float32)
    accuracy = LabelAccuracy()
    accuracy.update(logits, np.array([0, 1, -1]))  # hit; in the top 5 but not top 1; unlabelled
    assert accuracy.to_dict() == {"samples": 2, "top1": 0.5, "top5": 1.0}
    accuracy.update(logits[:1], np.array([5]))  # last of six: outside the top 5
    assert accuracy.to_dict() == {"samples": 3, "top1": pytest.approx(1 / 3), "top5": pytest.approx(2 / 3)}
    assert LabelAccuracy().to_dict() is None


# End to end on ONNX Runtime CPU and PyTorch CPU


def test_onnx_models_pass_on_random_inputs_and_on_images(model, tmp_path):
    module, plain, fused = model
    backends = [OnnxRuntimeBackend(plain), OnnxRuntimeBackend(fused)]
    report = validate(TorchBackend(module), backends, _random())
    assert report.passed, [c.summary() for c in report.candidates]
    for result in report.candidates:
        assert result.metrics.max_abs_error < 1e-4 and result.metrics.cosine_similarity > 0.99999

    folder = write_images(tmp_path / "images", {"n01440764": 3, "n01443537": 2})
    images = ImageFolderInputs(folder, Preprocessing.from_zoo().for_input_size(64), batch_size=4)
    assert (images.layout, len(images.samples), len(images)) == ("imagefolder", 5, 2)
    report = validate(TorchBackend(module), backends, images)
    assert report.passed
    assert report.reference_labels["samples"] == 5
    reference = np.concatenate([TorchBackend(module).run(batch.images) for batch in images])
    labels = np.array([0, 0, 0, 1, 1])
    assert report.reference_labels["top1"] == pytest.approx((reference.argmax(1) == labels).mean())
    assert all(result.labels["samples"] == 5 for result in report.candidates)

    flat = ImageFolderInputs(write_images(tmp_path / "flat", None), Preprocessing.from_zoo().for_input_size(64),
                             batch_size=3)
    assert flat.layout == "flat" and not flat.has_labels
    report = validate(TorchBackend(module), backends, flat)
    assert report.passed and report.reference_labels is None and report.candidates[0].labels is None


def _break_eca_weight(fused: Path, destination: Path, index: int) -> str:
    """Negate and scale the 1-D kernel of the ``index``-th EcaAttention node; return its weight name."""
    model = onnx.load(str(fused))
    node = [n for n in model.graph.node if n.op_type == "EcaAttention"][index]
    initializer = next(i for i in model.graph.initializer if i.name == node.input[1])
    initializer.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(initializer) * -5, initializer.name))
    onnx.save(model, str(destination))
    return node.input[1]


def test_a_broken_model_fails_and_the_first_diverging_layer_is_named(model, tmp_path):
    module, _, fused = model
    broken = tmp_path / "broken.onnx"
    weight = _break_eca_weight(fused, broken, index=3)
    expected_layer = weight.removesuffix(".conv.weight")  # e.g. layer2.1.eca / features.4.conv.4
    report = validate(TorchBackend(module), [OnnxRuntimeBackend(broken)], _random(),
                      module_factory=lambda: module)
    (result,) = report.candidates
    assert not result.passed
    assert result.localization["diverging_module"] == expected_layer
    assert result.localization["diverging_module_type"] == "EcaLayer"
    assert result.localization["onnx_op_type"] == "EcaAttention"
    assert expected_layer in result.summary()


def test_latency_end_to_end_on_ort_and_pytorch(model, tmp_path):
    module, _, fused = model
    inputs = _random(batch_size=4, num_batches=1)
    results = []
    for backend in (TorchBackend(module), OnnxRuntimeBackend(fused, threads=1)):
        for size in (1, 4):
            result = measure_latency(backend, size, lambda n, i: _batch(inputs, n, i), settings=FAST)
            assert result.iterations == 6 and result.batch_size == size
            stats = latency_statistics(result.latencies_s)
            assert 0 < stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p95"] <= stats["p99"] <= stats["max"]
            assert result.throughput == pytest.approx(size * 6 / result.elapsed_s)
            assert result.stages_mean_s["compute"] > 0 and result.stages_mean_s["postprocess"] > 0
            assert result.stages_mean_s["host_to_device"] == 0  # CPU backends: no transfers
            assert result.power is None and result.power_figures()["joules_per_image"] is None
            results.append(result)
    summary = scenario_summary(results)
    assert set(summary) == {"torch-cpu", "ort-cpu"}
    assert summary["ort-cpu"]["offline"]["batch_size"] in (1, 4)
    assert summary["torch-cpu"]["single_stream"]["p50_ms"] > 0

    images = ImageFolderInputs(write_images(tmp_path / "images", {"a": 3}), Preprocessing.from_zoo().for_input_size(64),
                               batch_size=2)
    with_images = measure_latency(OnnxRuntimeBackend(fused), 2, images.batch_of, settings=FAST)
    assert with_images.stages_mean_s["preprocess"] > 0


def _batch(inputs: RandomInputs, size: int, index: int):
    from eca_deploy.image_folders import Batch

    return Batch(inputs.batch(size, index % 2), None)


def test_latency_statistics_are_numpy_percentiles():
    seconds = [i / 1000 for i in range(1, 101)]  # 1 .. 100 ms
    stats = latency_statistics(seconds)
    assert stats["p50"] == pytest.approx(50.5) and stats["p99"] == pytest.approx(99.01)
    assert (stats["min"], stats["max"], stats["mean"]) == (pytest.approx(1.0), pytest.approx(100.0), pytest.approx(50.5))
    assert stats["std"] == pytest.approx(np.std(np.arange(1, 101)))
    assert StageTimes(preprocess=1, compute=2, postprocess=0.5).total == 3.5


# Backends: names, availability, errors


def test_backend_specs_and_availability(model, tmp_path):
    _, _, fused = model
    assert parse_backend_spec("torch-cpu") == ("torch-cpu", None)
    assert parse_backend_spec(f"ort-cpu={fused}") == ("ort-cpu", fused)
    for spec, message in (("tensorflow", "unknown backend 'tensorflow'"), ("ort-cpu", "needs a file"),
                          ("torch-cpu=x.onnx", "takes no file"), (f"trt={tmp_path / 'none.engine'}", "does not exist")):
        with pytest.raises(EcaDeployError, match=message):
            parse_backend_spec(spec)
    reasons = available_backends()
    assert reasons["torch-cpu"] is None and reasons["ort-cpu"] is None
    description = create_backend("ort-cpu", model_path=fused).describe()
    assert {"name", "runtime", "version", "device", "precision", "provider"} <= set(description)
    assert description["provider"] == "CPUExecutionProvider" and description["precision"] == "fp32"


@pytest.mark.skipif(available_backends()["torch-cuda"] is None, reason="a GPU is present")
def test_missing_runtimes_fail_with_one_sentence(model, tmp_path):
    module, _, fused = model
    with pytest.raises(EcaDeployError, match="torch-cuda needs a CUDA GPU"):
        create_backend("torch-cuda", module_factory=lambda: module)
    if available_backends()["ort-cuda"] is not None:
        with pytest.raises(EcaDeployError, match="CUDAExecutionProvider is not in this onnxruntime build"):
            create_backend("ort-cuda", model_path=fused)


def test_batches_are_checked_against_what_the_model_accepts(model):
    _, _, fused = model
    backend = OnnxRuntimeBackend(fused, max_batch=2)  # as a TensorRT engine profile caps it
    with pytest.raises(EcaDeployError, match="batch of 4 exceeds the maximum 2 of this model"):
        backend.run(_random().batch(4))
    with pytest.raises(EcaDeployError, match="input must be 64 x 64 pixels, got 32 x 32"):
        backend.run(RandomInputs((3, 32, 32), batch_size=1, num_batches=1).batch(1))


def test_class_index_files(tmp_path):
    (tmp_path / "names.txt").write_text("n01440764 tench\nn01443537 goldfish\n")
    assert load_class_index(tmp_path / "names.txt") == {"n01440764": 0, "n01443537": 1}
    (tmp_path / "index.json").write_text(json.dumps({"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"]}))
    assert load_class_index(tmp_path / "index.json") == {"n01440764": 0, "n01443537": 1}
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(EcaDeployError, match="is not a class index"):
        load_class_index(tmp_path / "bad.json")
    folder = write_images(tmp_path / "images", {"n01443537": 2})
    images = ImageFolderInputs(folder, Preprocessing(), batch_size=2, class_index=tmp_path / "index.json")
    assert [label for _, label in images.samples] == [1, 1]
    with pytest.raises(EcaDeployError, match="not in the class index"):
        ImageFolderInputs(write_images(tmp_path / "other", {"cats": 1}), Preprocessing(), batch_size=2,
                          class_index=tmp_path / "names.txt")


# The command line


def _zoo_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["eca_mobilenet_v2", "--num-classes", str(NUM_CLASSES), "--input-size", "64", "-q",
            "-o", str(tmp_path), *extra]


def test_cli_validate_and_bench_on_named_backends(tmp_path, capsys):
    _, plain, fused = export_demo_64(tmp_path.parent, "eca_mobilenet_v2", "mnv2")
    folder = write_images(tmp_path / "images", {"n01440764": 2, "n01443537": 2})
    assert main(["validate", *_zoo_args(tmp_path / "acc", "-b", f"ort-cpu={fused}", "-b", "torch-cpu",
                                        "--images", str(folder))]) == 0
    report = json.loads((tmp_path / "acc/accuracy.json").read_text())
    assert report["accuracy"]["passed"] and report["inputs"]["layout"] == "imagefolder"
    assert [c["backend"]["name"] for c in report["accuracy"]["candidates"]] == [f"ort-cpu:{fused.name}", "torch-cpu"]
    assert "PASS ort-cpu:mnv2.eca.onnx" in capsys.readouterr().out

    bench = ["bench", *_zoo_args(tmp_path / "lat", "-b", f"ort-cpu={plain}", "-b", f"ort-cpu={fused}",
                                 "--batch-sizes", "1", "2", "--iterations", "3", "--duration", "0",
                                 "--warmup-iterations", "1", "--warmup-seconds", "0", "--power", "none")]
    assert main(bench) == 0
    report = json.loads((tmp_path / "lat/latency.json").read_text())
    assert [(r["backend"]["name"], r["batch_size"]) for r in report["latency"]["results"]] == [
        (f"ort-cpu:{plain.name}", 1), (f"ort-cpu:{plain.name}", 2), (f"ort-cpu:{fused.name}", 1),
        (f"ort-cpu:{fused.name}", 2)]
    assert {p.name for p in (tmp_path / "lat").iterdir()} >= {"latency.json", "latency.csv", "latency.md",
                                                              "latency_distribution.png", "batch_sweep.png",
                                                              "backends.png"}
    assert f"ort-cpu:{fused.name}: single-stream p50" in capsys.readouterr().out


def test_cli_default_backends_export_the_model_and_say_what_they_skipped(tmp_path, capsys):
    """The one command on a CPU-only machine: export, validate every backend here, list the rest."""
    assert main(["validate", "eca_mobilenet_v2", "--input-size", "64", "--num-batches", "1",
                 "-o", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "accuracy.json").read_text())
    names = [c["backend"]["name"] for c in report["accuracy"]["candidates"]]
    assert names[:2] == ["ort-cpu:model.onnx", "ort-cpu:model.eca.onnx"]
    assert report["model"]["onnx"] == {"onnx": str(tmp_path / "models/model.onnx"),
                                       "fused_onnx": str(tmp_path / "models/model.eca.onnx")}
    assert {"models/model.onnx", "models/model.eca.onnx", "accuracy.json"} <= tree(tmp_path)
    assert not [path for path in tree(tmp_path) if ".eca-staging" in path]  # staged, then moved into place
    if available_backends()["trt"] is not None:
        assert "trt" in report["skipped_backends"]
        assert "skipped trt:" in capsys.readouterr().err


def test_cli_validate_exits_1_on_a_broken_model_and_localises_it(tmp_path, capsys):
    _, _, fused = export_demo_64(tmp_path.parent, "eca_mobilenet_v2", "mnv2")
    broken = tmp_path / "broken.onnx"
    layer = _break_eca_weight(fused, broken, index=5).removesuffix(".conv.weight")
    assert main(["validate", *_zoo_args(tmp_path / "out", "-b", f"ort-cpu={broken}", "--num-batches", "1")]) == 1
    captured = capsys.readouterr()
    assert "FAIL ort-cpu:broken.onnx" in captured.out and f"first diverging layer: {layer}" in captured.out
    assert "disagreed with PyTorch FP32 beyond tolerance" in captured.err
    report = json.loads((tmp_path / "out/accuracy.json").read_text())
    assert report["accuracy"]["candidates"][0]["localization"]["diverging_module"] == layer


def test_cli_engines_are_checked_against_the_reference_and_their_profile(tmp_path, capsys):
    """A real engine of the 64 x 64, 10-class model whose profile stops at batch 4 (TensorRT-RTX builds it on
    the CPU): refused for a larger batch, against a SOURCE of 224 x 224 and 1000 classes, and without SOURCE (the
    engine, built from a file without provenance, cannot say which model it came from)."""
    _, _, fused = export_demo_64(tmp_path.parent, "eca_mobilenet_v2", "mnv2")
    engine = build_rtx_engine(fused, tmp_path / "mnv2.plan", max_batch=4)
    # Without a GPU the engine cannot be deserialized, which is said; with one the checks speak.
    cannot_open = "cannot deserialize mnv2.plan|cuda-python"
    code = main(["validate", *_zoo_args(tmp_path / "out", "-b", f"trt-rtx={engine}", "--batch-size", "8")])
    assert code == 2
    assert re.search(f"batch of 8 exceeds the maximum 4|{cannot_open}", capsys.readouterr().err)
    code = main(["validate", "eca_mobilenet_v2", "-q", "-o", str(tmp_path / "other"), "-b", f"trt-rtx={engine}"])
    assert code == 2
    assert re.search(rf"maps N x 3 x 64 x 64 to 10 classes, but the reference model eca_mobilenet_v2 maps N x 3 x "
                     rf"224 x 224 to 1000 classes|{cannot_open}", capsys.readouterr().err)
    assert main(["validate", "-q", "-o", str(tmp_path / "default"), "-b", f"trt-rtx={engine}"]) == 2
    assert "mnv2.plan does not say which model it was made from" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("out", "other", "default"))


# GPU (skipped without one; `python -m pytest -m gpu` on a GPU machine)

needs_gpu = pytest.mark.skipif(available_backends()["torch-cuda"] is not None, reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpu
def test_torch_cuda_times_device_stages_and_graphs_replay_eager(model):
    module = model[0]
    inputs = _random(batch_size=4, num_batches=1)
    eager = create_backend("torch-cuda", module_factory=lambda: module)
    graphs = create_backend("torch-cuda", module_factory=lambda: module, cuda_graphs=True)
    batch = inputs.batch(4)
    np.testing.assert_allclose(graphs.run(batch), eager.run(batch), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(graphs.run(batch[::-1].copy()), eager.run(batch[::-1].copy()), rtol=1e-5, atol=1e-5)
    result = measure_latency(graphs, 4, lambda n, i: _batch(inputs, n, i), settings=FAST)
    stages = result.stages_mean_s
    assert stages["host_to_device"] > 0 and stages["compute"] > 0 and stages["device_to_host"] > 0
    assert graphs.describe()["device"] and graphs.describe()["cuda_graphs"] is True


@pytest.mark.gpu
@needs_gpu
def test_torch_cuda_fp16_passes_the_fp16_tolerance_only(model):
    module = model[0]
    report = validate(TorchBackend(module), [create_backend("torch-cuda-fp16", module_factory=lambda: module)],
                      _random())
    (result,) = report.candidates
    assert result.passed, result.summary()
    assert result.tolerance == DEFAULT_TOLERANCES["fp16"] and result.metrics.max_abs_error > 0


@pytest.mark.gpu
@needs_gpu
def test_torch_cuda_is_an_fp32_reference_with_tf32_off(model):
    module = model[0]
    report = validate(create_backend("torch-cuda", module_factory=lambda: module), [TorchBackend(module)], _random())
    assert report.passed, report.candidates[0].summary()


@pytest.mark.gpu
@needs_gpu
def test_tensorrt_engines_native_and_fused_validate_and_time_their_stages(model, tmp_path):
    """Real TensorRT: a native engine (plain ONNX) and a fused one on our plugin (built here from plugins/eca: one
    plugin layer per fused node), each validated and timed with and without CUDA graphs."""
    pytest.importorskip("tensorrt", reason="tensorrt is not installed")
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    from plugin_build import PLUGIN_LIBRARY, plugin_build

    from eca_deploy.tensorrt.engine import build_engine

    module, plain, fused = model
    plugin = plugin_build() / PLUGIN_LIBRARY
    inputs = _random(batch_size=4, num_batches=1)
    for onnx_path in (plain, fused):
        engine = tmp_path / f"{onnx_path.stem}.engine"
        built = build_engine(onnx_path, engine, batch=(1, 4, 8), plugin_library=plugin if onnx_path == fused else None,
                             backend="tensorrt", cache_dir=None)
        assert built.num_plugin_layers == built.num_fused_nodes == (
            count_fused_nodes(onnx.load(str(onnx_path))))  # 0 for the plain model, every block for the fused one
        for graphs in (False, True):
            backend = create_backend("trt", model_path=engine, plugin_library=plugin, cuda_graphs=graphs)
            assert validate(TorchBackend(module), [backend], _random()).passed
            result = measure_latency(backend, 4, lambda n, i: _batch(inputs, n, i), settings=FAST)
            stages = result.stages_mean_s
            assert stages["host_to_device"] > 0 and stages["compute"] > 0 and stages["device_to_host"] > 0
            with pytest.raises(EcaDeployError, match="batch of 9 exceeds the maximum 8"):
                backend.run(_random().batch(9))
            backend.close()


def test_cli_precision_and_tolerance_overrides(tmp_path):
    _, _, fused = export_demo_64(tmp_path.parent, "eca_mobilenet_v2", "mnv2")
    strict = ["-b", f"ort-cpu={fused}", "--num-batches", "1", "--atol", "0", "--rtol", "0"]
    assert main(["validate", *_zoo_args(tmp_path / "strict", *strict)]) == 1  # ORT is not bit-exact to PyTorch
    report = json.loads((tmp_path / "strict/accuracy.json").read_text())
    (candidate,) = report["accuracy"]["candidates"]
    assert candidate["tolerance"]["atol"] == 0 and candidate["metrics"]["max_abs_error"] > 0
    assert main(["validate", *_zoo_args(tmp_path / "fp16", "-b", f"ort-cpu={fused}", "--num-batches", "1",
                                        "--precision", "fp16", "--no-localize")]) == 0
    report = json.loads((tmp_path / "fp16/accuracy.json").read_text())
    assert report["accuracy"]["candidates"][0]["tolerance"] == {"atol": 1e-2, "rtol": 2e-2, "min_cosine": 0.999,
                                                                 "min_top1_agreement": 0.9}


@pytest.fixture(scope="session")
def resnet18_fp16(resnet18, tmp_path_factory):
    """The ResNet-18 demo model exported in FP16 (float32 I/O) and fused."""
    module = resnet18[0]
    directory = tmp_path_factory.mktemp("fp16")
    plain = export_onnx(module, directory / "resnet18.fp16.onnx", input_shape=INPUT_SHAPE, exporter="legacy",
                        precision="fp16").path
    fused, _ = fuse_eca(onnx.load(str(plain)))
    save_onnx(fused, directory / "resnet18.fp16.eca.onnx")
    return module, directory / "resnet18.fp16.eca.onnx"


def test_fp16_noise_passes_its_own_tolerance_and_a_broken_fp16_model_is_localised(resnet18_fp16, tmp_path):
    module, fused = resnet18_fp16
    backend = OnnxRuntimeBackend(fused)
    assert backend.precision == "fp16"
    (result,) = validate(TorchBackend(module), [backend], _random()).candidates
    assert result.passed and result.tolerance == DEFAULT_TOLERANCES["fp16"]
    assert not result.metrics.passes(DEFAULT_TOLERANCES["fp32"])  # FP16 noise: a failure only by FP32 standards
    assert 1e-4 < result.to_dict()["smallest_passing_tolerance"]["atol"] < DEFAULT_TOLERANCES["fp16"].atol

    broken = tmp_path / "broken.fp16.onnx"
    layer = _break_eca_weight(fused, broken, index=5).removesuffix(".conv.weight")
    (result,) = validate(TorchBackend(module), [OnnxRuntimeBackend(broken)], _random(),
                         module_factory=lambda: module).candidates
    assert not result.passed
    assert result.localization["diverging_module"] == layer
    assert result.localization["onnx_op_type"] == "EcaAttention"  # the first tensor computed after the last match


def test_io_binding_stage_split_gives_the_same_logits(model):
    """The I/O-binding path of ort-cuda/ort-trt, run here on the CPU device: same logits, three stages."""
    _, _, fused = model
    plain_run, bound = OnnxRuntimeBackend(fused), OnnxRuntimeBackend(fused)
    bound.io_device = "cpu"
    batch = _random().batch(3)
    logits, stages = bound.run_timed(batch)
    np.testing.assert_array_equal(logits, plain_run.run(batch))
    assert stages.host_to_device > 0 and stages.compute > 0 and stages.device_to_host > 0


def test_the_plugin_library_comes_from_the_environment_where_a_backend_needs_it(model, tmp_path, monkeypatch):
    from eca_deploy.harness.targets import plan_backends

    _, _, fused = model
    library = tmp_path / "libeca_plugin_autoreg.so"
    library.write_bytes(b"")
    monkeypatch.setenv("ECA_PLUGIN_LIBRARY", str(library))

    def plan(spec: str):
        return plan_backends([parse_backend_spec(spec)], work_dir=None, precision="fp32", include_torch_cpu=False,
                             plugin_library=None)

    assert plan(f"ort-trt={fused}").plugin_library == library
    assert plan(f"ort-cpu={fused}").plugin_library is None  # not needed, not resolved
    monkeypatch.setenv("ECA_PLUGIN_LIBRARY", str(tmp_path / "missing.so"))
    assert plan(f"ort-cpu={fused}").backends == [("ort-cpu", fused)]
    with pytest.raises(EcaDeployError, match=r"missing.so \(from \$ECA_PLUGIN_LIBRARY\) does not exist"):
        plan(f"trt={fused}")


def test_a_skipped_backend_names_the_first_thing_that_stops_it(tmp_path, monkeypatch):
    """The runtime and the GPU come before the plugin library: with no TensorRT execution provider, asking for
    a plugin library would send the user after the wrong thing."""
    from eca_deploy.harness import targets

    def plan(available: dict[str, str | None], plugin_library: Path | None = None):
        monkeypatch.setattr(targets, "available_backends", lambda: available)
        return targets.plan_backends([], work_dir=tmp_path, precision="fp32", include_torch_cpu=False,
                                     plugin_library=plugin_library)

    here = available_backends()
    monkeypatch.delenv("ECA_PLUGIN_LIBRARY", raising=False)
    no_provider = {**here, "ort-trt": "TensorrtExecutionProvider is not in this onnxruntime build"}
    assert plan(no_provider).skipped["ort-trt"] == no_provider["ort-trt"]
    assert plan({**here, "ort-trt": None}).skipped["ort-trt"].startswith("no plugin library")
    library = tmp_path / "libeca_plugin_autoreg.so"
    library.write_bytes(b"")
    with_library = plan({**here, "ort-trt": None}, library)
    assert "ort-trt" not in with_library.skipped and ("ort-trt", tmp_path / "model.eca.onnx") in with_library.backends
    if here["ort-trt"] is not None:  # this machine: the CLI says what is missing, not the plugin
        assert plan(here).skipped["ort-trt"] == here["ort-trt"]
