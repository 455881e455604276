"""The inference runtime: ONNX Runtime CPU against PyTorch, concurrency, input checks, TensorRT error paths.

One ECA-MobileNetV2 (64 x 64, 10 classes, seeded weights) is exported once per session, plain and
fused; tests/test_triton.py and tests/test_harness.py reuse ``export_demo_64``.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from cli_checks import required

from eca_deploy.errors import EcaDeployError
from eca_deploy.onnx_export import export_onnx
from eca_deploy.models import create_demo_model, get_architecture
from eca_deploy.onnx_files import save_onnx
from eca_deploy.passes import count_fused_nodes, fuse_eca
from eca_deploy.preprocess import Preprocessing, center_crop, normalize, resized_size
from eca_deploy.serving import EcaRuntime, decode_topk, load_class_names, softmax
from eca_deploy.passes.fused_node import without_fallback_function
from eca_deploy.serving.trt import engine_flavour

INPUT_SHAPE = (3, 64, 64)
NUM_CLASSES = 10


@functools.cache
def export_demo_64(directory: Path, arch: str = "eca_mobilenet_v2",
                   stem: str = "mnv2") -> tuple[torch.nn.Module, Path, Path]:
    """(module, plain ONNX ``<stem>.onnx``, fused ``<stem>.eca.onnx``) of a 64 x 64, 10-class demo model,
    exported once per directory."""
    directory = Path(directory) / f"{stem}_64"
    directory.mkdir(parents=True, exist_ok=True)
    module = create_demo_model(arch, num_classes=NUM_CLASSES)
    plain = export_onnx(module, directory / f"{stem}.onnx", input_shape=INPUT_SHAPE, exporter="legacy").path
    fused, report = fuse_eca(onnx.load(str(plain)))
    assert report.num_fused == get_architecture(arch).num_eca_layers
    fused_path = directory / f"{stem}.eca.onnx"
    save_onnx(fused, fused_path)
    return module, plain, fused_path


def build_rtx_engine(onnx_path: Path, engine_path: Path, max_batch: int = 8) -> Path:
    """A real serialized engine without plugin layers: TensorRT-RTX builds the ONNX model on the CPU."""
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed")
    from eca_deploy.tensorrt.engine import build_engine

    return build_engine(onnx_path, engine_path, batch=(1, 4, max_batch), backend="tensorrt_rtx", cache_dir=None).path


@pytest.fixture(scope="session")
def mnv2(tmp_path_factory):
    return export_demo_64(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def runtime(mnv2):
    _, _, fused = mnv2
    with EcaRuntime(fused, intra_op_threads=1) as loaded:
        yield loaded


def _batch(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng([seed, size]).standard_normal((size, *INPUT_SHAPE), dtype=np.float32)


def _reference(module, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(batch)).numpy()


# ---------------------------------------------------------------------------------------------------------------
# ONNX Runtime


@pytest.mark.parametrize("variant", ["plain", "fused"])
def test_onnxruntime_matches_pytorch(mnv2, variant):
    module, plain, fused = mnv2
    path = fused if variant == "fused" else plain
    assert count_fused_nodes(onnx.load(str(path))) == (17 if variant == "fused" else 0)
    with EcaRuntime(path) as loaded:
        assert loaded.backend == "onnxruntime" and loaded.num_classes == NUM_CLASSES
        assert loaded.spec.sample_shape == INPUT_SHAPE and loaded.spec.max_batch is None
        assert loaded.describe()["providers"] == ["CPUExecutionProvider"]
        for size in (1, 3, 16):
            batch = _batch(size)
            logits = loaded.predict(batch)
            assert logits.shape == (size, NUM_CLASSES) and logits.dtype == np.float32
            np.testing.assert_allclose(logits, _reference(module, batch), atol=1e-4, rtol=1e-4)


def test_concurrent_predictions_equal_sequential_ones(runtime):
    """8 threads x 50 requests of batch 1-4 at once give exactly what one thread computes."""
    requests = {(thread, i): _batch(1 + (thread + i) % 4, seed=100 * thread + i)
                for thread in range(8) for i in range(50)}
    expected = {key: runtime.predict(batch) for key, batch in requests.items()}
    results: dict = {}
    errors: list = []
    barrier = threading.Barrier(8)

    def worker(thread: int) -> None:
        try:
            barrier.wait()
            for i in range(50):
                results[thread, i] = runtime.predict(requests[thread, i])
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert results.keys() == expected.keys()
    for key, logits in results.items():
        np.testing.assert_array_equal(logits, expected[key], err_msg=str(key))


def test_torch_tensors_in_torch_logits_out(mnv2, runtime):
    module, _, _ = mnv2
    batch = _batch(2)
    logits = runtime.predict(torch.from_numpy(batch))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, NUM_CLASSES)
    np.testing.assert_allclose(logits.numpy(), _reference(module, batch), atol=1e-4, rtol=1e-4)


def _with(batch: np.ndarray, index: tuple, value: float) -> np.ndarray:
    batch = batch.copy()
    batch[index] = value
    return batch


@pytest.mark.parametrize("make, message", [
    (lambda: _batch(2)[0], r"must be 4-D .* got a 3-D array of shape \(3, 64, 64\); add a batch axis"),
    (lambda: _batch(2)[None], "must be 4-D"),
    (lambda: np.zeros((2, 1, 64, 64), np.float32), "must have 3 channels on axis 1 .*got 1$"),
    (lambda: np.ascontiguousarray(_batch(2).transpose(0, 2, 3, 1)), "channels-last input"),
    (lambda: np.zeros((2, 3, 32, 64), np.float32), "must be 64 x 64 pixels, got 32 x 64"),
    (lambda: _batch(2).astype(np.float64), r"must be float32, got float64; convert with x.astype\(np.float32\)"),
    (lambda: _batch(2).astype(np.float16), "must be float32, got float16"),
    (lambda: np.zeros((2, 3, 64, 64), np.uint8), "must be float32, got uint8"),
    (lambda: torch.zeros((2, 3, 64, 64), dtype=torch.float64), r"got float64; convert with x.to\(torch.float32\)"),
    (lambda: np.zeros((0, 3, 64, 64), np.float32), "batch of 0 is below the minimum 1"),
    (lambda: _with(_batch(2), (1, 2, 3, 4), np.nan), "holds 1 non-finite value \\(NaN or Inf\\), for which"),
    (lambda: _with(_with(_batch(2), (0, 0, 0, 0), np.inf), (1, 0, 0, 0), -np.inf), "holds 2 non-finite values"),
    (lambda: _batch(2).tolist(), "takes a NumPy array or a torch tensor .* got list"),
])
def test_bad_inputs_are_refused_with_the_reason(runtime, make, message):
    with pytest.raises(EcaDeployError, match=message):
        runtime.predict(make())


def test_batch_limit_and_finite_check_are_configurable(mnv2):
    _, _, fused = mnv2
    with EcaRuntime(fused, max_batch=4, check_finite=False) as loaded:
        assert loaded.spec.max_batch == 4
        with pytest.raises(EcaDeployError, match="batch of 5 exceeds the maximum 4 .* batches of at most 4"):
            loaded.predict(_batch(5))
        logits = loaded.predict(_with(_batch(2), (0, 0, 0, 0), np.nan))  # allowed through: NaN logits for sample 0
        assert np.isnan(logits[0]).all() and np.isfinite(logits[1]).all()
    with pytest.raises(EcaDeployError, match="max_batch must be at least 1"):
        EcaRuntime(fused, max_batch=0)


def test_non_contiguous_batches_are_accepted(mnv2, runtime):
    module, _, _ = mnv2
    wide = _batch(4)
    strided = wide[::2]
    assert not strided.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(runtime.predict(strided), _reference(module, np.ascontiguousarray(strided)),
                               atol=1e-4, rtol=1e-4)


def test_loading_errors(mnv2, tmp_path):
    _, _, fused = mnv2
    with pytest.raises(EcaDeployError, match="does not exist"):
        EcaRuntime(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(EcaDeployError, match="ONNX Runtime cannot load broken.onnx"):
        EcaRuntime(broken)
    with pytest.raises(EcaDeployError, match="cannot tell the backend of model.bin"):
        EcaRuntime(tmp_path / "model.bin")
    with pytest.raises(EcaDeployError, match="backend must be one of"):
        EcaRuntime(fused, backend="tvm")
    with pytest.raises(EcaDeployError, match="execution provider NoSuchExecutionProvider is not in this onnxruntime"):
        EcaRuntime(fused, providers=["NoSuchExecutionProvider"])
    closed = EcaRuntime(fused)
    closed.close()
    with pytest.raises(EcaDeployError, match="closed"):
        closed.predict(_batch(1))


def test_auto_providers_include_cpu(mnv2):
    _, _, fused = mnv2
    with EcaRuntime(fused, providers="auto") as loaded:
        assert loaded.describe()["providers"][-1] == "CPUExecutionProvider"


# ---------------------------------------------------------------------------------------------------------------
# TensorRT (CPU: the loading error paths; engines only run on a GPU)


@pytest.fixture(scope="module")
def rtx_engine(mnv2, tmp_path_factory):
    _, _, fused = mnv2
    return build_rtx_engine(fused, tmp_path_factory.mktemp("rtx") / "mnv2.plan")


def test_tensorrt_missing_engine_and_plugin_files(tmp_path, monkeypatch):
    with pytest.raises(EcaDeployError, match="TensorRT engine .*missing.engine does not exist"):
        EcaRuntime(tmp_path / "missing.engine")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 16)  # never read: the plugin check comes first
    with pytest.raises(EcaDeployError, match="plugin library .*libeca_plugin.so does not exist; build it"):
        EcaRuntime(engine, plugin_library=tmp_path / "libeca_plugin.so")
    with pytest.raises(EcaDeployError, match="workers must be at least 1"):
        EcaRuntime(engine, workers=0)
    monkeypatch.setenv("ECA_PLUGIN_LIBRARY", str(tmp_path / "from_env.so"))
    with pytest.raises(EcaDeployError, match=r"from_env.so \(from \$ECA_PLUGIN_LIBRARY\) does not exist"):
        EcaRuntime(engine)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_tensorrt_missing_package_is_explained(rtx_engine, tmp_path):
    """A TensorRT plan (tag ftrt) needs the tensorrt package; a TensorRT-RTX plan (vtrt) does not."""
    plan = tmp_path / "model.engine"
    plan.write_bytes(b"ftrt" + rtx_engine.read_bytes()[4:])
    with pytest.raises(EcaDeployError, match="needs the tensorrt Python package.*pip install tensorrt"):
        EcaRuntime(plan)
    assert engine_flavour(rtx_engine) == "tensorrt_rtx"


@pytest.mark.parametrize("module", ["auto", "tensorrt_rtx"])
def test_tensorrt_rtx_engine_loads_on_a_gpu_or_explains_why_not(mnv2, rtx_engine, module):
    """The real deserialization path (TensorRT-RTX's runtime, chosen from the plan's tag by default): runs on
    a GPU, a clear error without one."""
    module_name = module
    module, _, _ = mnv2
    try:
        loaded = EcaRuntime(rtx_engine, tensorrt_module=module_name)
    except EcaDeployError as error:
        assert "cannot deserialize mnv2.plan" in str(error) or "cuda-python" in str(error)
        return
    with loaded:  # a machine with a GPU and driver
        assert loaded.backend == "tensorrt" and loaded.spec.max_batch == 8
        batch = _batch(3)
        np.testing.assert_allclose(loaded.predict(batch), _reference(module, batch), atol=1e-3, rtol=1e-3)
        with pytest.raises(EcaDeployError, match="batch of 9 exceeds the maximum 8"):
            loaded.predict(_batch(9))


def test_tensorrt_refuses_a_library_that_is_not_a_plugin(rtx_engine):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed")
    candidates = (Path("/lib/x86_64-linux-gnu/libm.so.6"), Path("/usr/lib64/libm.so.6"))
    libm = next((path for path in candidates if path.exists()), None)
    if libm is None:
        pytest.skip("no libm.so.6 to offer as a non-plugin library")
    with pytest.raises(EcaDeployError, match="libm.so.6 loaded but registered no EcaAttention version 1 creator"):
        EcaRuntime(rtx_engine, plugin_library=libm)


@pytest.mark.gpu
def test_tensorrt_engine_on_a_gpu(mnv2, tmp_path):
    """On a GPU with TensorRT and cuda-python: PyTorch's logits, two contexts in parallel, torch CUDA in place.

    Builds the fused model with two identical profiles (one per concurrent context), its EcaAttention nodes on our
    plugin (built here from plugins/eca; the model without its fallback function, so every TensorRT version uses
    the plugin): the network must hold one plugin layer per fused node.
    """
    trt = pytest.importorskip("tensorrt", reason="tensorrt is not installed")
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    from plugin_build import PLUGIN_LIBRARY, plugin_build

    module, _, fused = mnv2
    plugin = plugin_build() / PLUGIN_LIBRARY
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    assert builder.get_plugin_registry().load_library(str(plugin)) is not None
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    model = without_fallback_function(onnx.load(str(fused)))
    assert parser.parse(model.SerializeToString()), parser.get_error(0).desc()
    plugin_layers = sum(network.get_layer(i).type.name.startswith("PLUGIN") for i in range(network.num_layers))
    assert plugin_layers == count_fused_nodes(model) == get_architecture("eca_mobilenet_v2").num_eca_layers
    config = builder.create_builder_config()
    for _ in range(2):
        profile = builder.create_optimization_profile()
        profile.set_shape("input", (1, *INPUT_SHAPE), (4, *INPUT_SHAPE), (8, *INPUT_SHAPE))
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        pytest.skip("TensorRT could not build an engine here (no GPU?)")
    engine = tmp_path / "mnv2.engine"
    engine.write_bytes(plan)
    with EcaRuntime(engine, plugin_library=plugin) as loaded:
        assert loaded.backend == "tensorrt" and loaded.describe()["workers"] == 2 and loaded.spec.max_batch == 8
        for size in (1, 3, 8):
            batch = _batch(size)
            np.testing.assert_allclose(loaded.predict(batch), _reference(module, batch), atol=1e-3, rtol=1e-3)
        requests = [_batch(1 + i % 8, seed=i) for i in range(64)]
        expected = [loaded.predict(batch) for batch in requests]
        results: list = [None] * len(requests)

        def worker(offset: int) -> None:
            for i in range(offset, len(requests), 4):
                results[i] = loaded.predict(requests[i])

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        for got, want in zip(results, expected):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
        if torch.cuda.is_available():
            batch = torch.from_numpy(_batch(3)).cuda()
            logits = loaded.predict(batch)
            assert logits.is_cuda and logits.shape == (3, NUM_CLASSES)
            np.testing.assert_allclose(logits.cpu().numpy(), _reference(module, _batch(3)), atol=1e-3, rtol=1e-3)
        with pytest.raises(EcaDeployError, match="batch of 9 exceeds the maximum 8"):
            loaded.predict(_batch(9))


@pytest.mark.gpu
def test_tensorrt_worker_survives_a_failed_graph_capture_and_close_waits_for_calls(mnv2, tmp_path):
    """A failure while a CUDA graph is captured leaves the stream usable (the capture is ended); close()
    waits for calls in flight and synchronizes before freeing."""
    pytest.importorskip("tensorrt", reason="tensorrt is not installed")
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    from eca_deploy.serving.trt import TensorRTBackend, _Worker
    from eca_deploy.tensorrt.engine import build_engine

    module, plain, _ = mnv2
    engine = build_engine(plain, tmp_path / "mnv2.engine", batch=(1, 4, 8), cache_dir=None).path
    backend = TensorRTBackend(engine, workers=1)
    (worker,) = backend.workers
    enqueues = {"count": 0}
    enqueue = _Worker._enqueue

    def failing_in_capture(self, *args):
        enqueues["count"] += 1
        if enqueues["count"] == 2:  # the first call settles allocations, the second one is captured
            raise EcaDeployError("enqueue failed while capturing")
        return enqueue(self, *args)

    worker._enqueue = failing_in_capture.__get__(worker)
    with pytest.raises(EcaDeployError, match="enqueue failed while capturing"):
        backend.run_profiled(_batch(2), {}, cuda_graph=True)
    status, capturing = worker.cudart.cudaStreamIsCapturing(worker.stream)
    assert int(status) == 0 and capturing == worker.cudart.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone
    np.testing.assert_allclose(backend.run(_batch(2)), _reference(module, _batch(2)), atol=1e-3, rtol=1e-3)

    outcomes: list = []

    def predictions() -> None:
        for i in range(20):
            try:
                outcomes.append((i, backend.run(_batch(8, seed=i))))
            except EcaDeployError as error:
                outcomes.append((i, error))
                return

    thread = threading.Thread(target=predictions)
    thread.start()
    backend.close()  # waits for the worker the thread holds, then synchronizes its stream
    thread.join(timeout=120)
    assert not backend.workers and outcomes
    for i, outcome in outcomes[:-1]:  # every call that ran before close() finished with the right logits
        np.testing.assert_allclose(outcome, _reference(module, _batch(8, seed=i)), atol=1e-3, rtol=1e-3)
    assert isinstance(outcomes[-1][1], np.ndarray) or "closed" in str(outcomes[-1][1])
    with pytest.raises(EcaDeployError, match="the TensorRT backend is closed"):
        backend.run(_batch(1))


# ---------------------------------------------------------------------------------------------------------------
# Decoding and preprocessing


def test_classify_and_topk(runtime, tmp_path):
    names_file = tmp_path / "labels.txt"
    names_file.write_text("".join(f"class {i}\n" for i in range(NUM_CLASSES)) + "\n")
    names = load_class_names(names_file)
    assert names[3] == "class 3" and len(names) == NUM_CLASSES
    batch = _batch(2)
    top = runtime.classify(batch, k=3, class_names=names)
    logits = runtime.predict(batch)
    for row, ranked in zip(logits, top):
        assert [t.index for t in ranked] == list(np.argsort(-row, kind="stable")[:3])
        assert ranked[0].label == names[ranked[0].index]
        assert ranked[0].score >= ranked[1].score >= ranked[2].score
        assert ranked[0].score == pytest.approx(softmax(row[None])[0, ranked[0].index])
    assert decode_topk(np.array([[1.0, 3.0, 3.0]]), k=2)[0][0].index == 1  # ties: lower index first
    assert decode_topk(np.zeros((1, 3)), k=1)[0][0].label == "class_0"
    assert softmax(np.array([[1000.0, 0.0]]))[0, 0] == pytest.approx(1.0)  # no overflow
    with pytest.raises(EcaDeployError, match="k must be between 1 and 10"):
        decode_topk(logits, k=11)
    with pytest.raises(EcaDeployError, match="2 class names for 10 classes"):
        decode_topk(logits, class_names=["a", "b"])
    empty = tmp_path / "empty.txt"
    empty.write_text("a\n\nb\n")
    with pytest.raises(EcaDeployError, match="one non-empty class name per line"):
        load_class_names(empty)


def test_preprocessing_follows_the_authors_transforms():
    required("PIL")
    from PIL import Image

    zoo = Preprocessing.from_zoo()
    assert (zoo.resize, zoo.crop, zoo.mean, zoo.std) == (256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert zoo.for_input_size(64) == Preprocessing(resize=73, crop=64)
    # torchvision's Resize(256): shorter side 256, longer int(256 * long / short); CenterCrop rounds its offsets.
    assert resized_size(400, 300, 256) == (341, 256) and resized_size(300, 500, 256) == (256, 426)
    ramp = np.arange(10)[:, None, None].repeat(3, axis=2).repeat(5, axis=1)  # H=10 x W=5, value = row
    assert center_crop(ramp, 3)[:, 0, 0].tolist() == [4, 5, 6]  # round((10 - 3) / 2) = 4 (rounds half to even)
    padded = center_crop(np.ones((2, 2, 3), np.uint8), 4)
    assert padded.shape == (4, 4, 3) and padded[1:3, 1:3].all() and padded.sum() == 12
    # ToTensor + Normalize on a constant colour, channel order RGB.
    constant = np.zeros((300, 400, 3), np.uint8) + np.array([255, 128, 0], np.uint8)
    x = zoo(constant)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    expected = (np.array([255, 128, 0]) / 255 - np.array(zoo.mean)) / np.array(zoo.std)
    np.testing.assert_allclose(x[:, 100, 100], expected, rtol=1e-6)
    # A real photo-like image: same pixels as Pillow's own resize + the crop window.
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    resized = np.asarray(image.resize((341, 256), Image.Resampling.BILINEAR))
    top, left = round((256 - 224) / 2), round((341 - 224) / 2)
    np.testing.assert_array_equal(zoo(image), normalize(resized[top:top + 224, left:left + 224], zoo.mean, zoo.std))
    gray = image.convert("L")  # converted to RGB like the authors' loader
    assert zoo(gray).shape == (3, 224, 224)
    with pytest.raises(EcaDeployError, match="RGB uint8"):
        zoo(np.zeros((10, 10), np.float32))


def test_runtime_preprocess_fits_the_model(runtime, tmp_path):
    required("PIL")
    from PIL import Image

    path = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(path)
    batch = runtime.preprocess([path, np.asarray(Image.open(path))])
    assert batch.shape == (2, *INPUT_SHAPE)
    np.testing.assert_array_equal(batch[0], batch[1])
    assert len(runtime.classify(batch, k=1)) == 2
    with pytest.raises(EcaDeployError, match="cannot read image"):
        runtime.preprocess([tmp_path / "missing.png"])

