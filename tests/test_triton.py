"""Triton model repository: the generated tree and configs, and a real Triton serving it on loopback.

The server is the ``tritonserver`` binary that nvidia-pytriton ships (the only Triton on PyPI that runs
here; the ``tritonserver`` package on PyPI is a placeholder). It has the Python backend but no
onnxruntime or TensorRT backend, so it serves the ``<name>_python`` model (the fused ONNX through
``eca_deploy.serving``); the ONNX Runtime variant is served when the server has that backend and
skipped with the server's reason otherwise. Queries go through tritonclient's HTTP client.

Configs are parsed with Triton's own schema (``tritonclient.grpc.model_config_pb2``). A real engine
built by TensorRT-RTX from the fused ONNX on the CPU shows that RTX plans are never written as
``tensorrt_plan`` models; the plan variant itself is written from a file with TensorRT's plan tag (the
writer reads only the tag, and full TensorRT cannot be installed here). The server is started with the
command line of the generated README.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from cli_checks import read_only_dir, required, tree
from plugin_build import PLUGIN_LIBRARY, plugin_build
from test_runtime import INPUT_SHAPE, NUM_CLASSES, build_rtx_engine, export_demo_64

from eca_deploy.errors import EcaDeployError
from eca_deploy.onnx_files import save_onnx
from eca_deploy.passes.fused_node import without_fallback_function
from eca_deploy.serving.triton_repo import format_pbtxt, validate_model_config, write_triton_repository

MAX_BATCH = 8
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """ECA-MobileNetV2 at 64 x 64 with 10 classes: the PyTorch module and its fused ONNX file."""
    module, _, fused_path = export_demo_64(tmp_path_factory.getbasetemp())
    return module, fused_path


def _config(path: Path):
    config = validate_model_config(path.read_text(), expected_name=path.parent.name)
    if config is None:
        required("tritonclient")
    return config


def _reference(module, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(batch)).numpy()


def _rows(readme: str) -> dict[str, str]:
    """The README's model table: model name -> its row."""
    return {match.group(1): match.group(0) for match in re.finditer(r"^\| `([\w.-]+)` \|.*$", readme, re.MULTILINE)}


def _serve_command(readme: str) -> list[str]:
    """The README's ``tritonserver`` command line as arguments."""
    match = re.search(r"^```bash\n(tritonserver .*?)\n```", readme, re.MULTILINE | re.DOTALL)
    assert match, readme
    return shlex.split(match.group(1).replace("\\\n", " "))


@pytest.fixture
def tensorrt_plan(rtx_engine, tmp_path) -> Path:
    """The RTX engine's bytes under TensorRT's plan tag: what the writer sees of a TensorRT engine."""
    plan = tmp_path / "mnv2.engine"
    plan.write_bytes(b"ftrt" + rtx_engine.read_bytes()[4:])
    return plan


@pytest.fixture
def autoreg_library(tmp_path) -> Path:
    """A self-registering library (a constructor, no getCreators) as Triton's TensorRT backend wants one."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build a stand-in self-registering library")
    source, library = tmp_path / "autoreg.c", tmp_path / "libeca_plugin_autoreg.so"
    source.write_text("__attribute__((constructor)) static void registration(void) {}\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library


# ---------------------------------------------------------------------------------------------------------------
# The repository


def test_onnx_and_python_variants_tree_and_configs(exported, tmp_path):
    _, fused_path = exported
    names = [f"n{i}" for i in range(NUM_CLASSES)]
    repo = write_triton_repository(tmp_path / "repo", fused_path, max_batch_size=MAX_BATCH, preferred_batch_sizes=(4,),
                                   max_queue_delay_us=500, class_names=names)
    assert repo.models == {"onnx": "mnv2_onnx", "python": "mnv2_python"}
    assert set(repo.files) == {
        "mnv2.README.md", "mnv2_onnx/config.pbtxt", "mnv2_onnx/labels.txt", "mnv2_onnx/1/model.onnx",
        "mnv2_python/config.pbtxt", "mnv2_python/labels.txt", "mnv2_python/1/model.onnx", "mnv2_python/1/model.py"}
    assert not [p for p in (tmp_path / "repo").iterdir() if p.name.startswith(".")]  # no staging left behind
    assert (tmp_path / "repo/mnv2_onnx/1/model.onnx").read_bytes() == fused_path.read_bytes()
    assert (tmp_path / "repo/mnv2_onnx/labels.txt").read_text().splitlines() == names

    onnx_config = _config(tmp_path / "repo/mnv2_onnx/config.pbtxt")
    from tritonclient.grpc import model_config_pb2 as pb

    assert repo.schema_validated
    assert onnx_config.platform == "onnxruntime_onnx" and onnx_config.max_batch_size == MAX_BATCH
    (inp,), (out,) = onnx_config.input, onnx_config.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("input", pb.TYPE_FP32, list(INPUT_SHAPE))
    assert (out.name, out.data_type, list(out.dims), out.label_filename) == ("logits", pb.TYPE_FP32, [NUM_CLASSES],
                                                                              "labels.txt")
    assert list(onnx_config.dynamic_batching.preferred_batch_size) == [4]
    assert onnx_config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.kind, g.count) for g in onnx_config.instance_group] == [(pb.ModelInstanceGroup.KIND_CPU, 1)]
    assert not onnx_config.HasField("optimization")

    python_config = _config(tmp_path / "repo/mnv2_python/config.pbtxt")
    assert python_config.backend == "python" and not python_config.platform
    assert python_config.parameters["model_file"].string_value == "model.onnx"
    assert python_config.input == onnx_config.input and python_config.output == onnx_config.output
    assert "from eca_deploy.serving import EcaRuntime" in (tmp_path / "repo/mnv2_python/1/model.py").read_text()

    readme = repo.readme.read_text()
    rows = _rows(readme)
    assert "fused ONNX (17 EcaAttention nodes, each with its fallback function" in rows["mnv2_onnx"]
    assert "run by ONNX Runtime CPU" in rows["mnv2_onnx"] and "CPU" in rows["mnv2_python"]
    assert "tritonclient" in readme and repo.to_dict()["skipped"] == {}

    # Writing again replaces our models and keeps other models of the repository.
    (tmp_path / "repo/other_model").mkdir()
    write_triton_repository(tmp_path / "repo", fused_path, max_batch_size=4, variants=["onnx"])
    assert _config(tmp_path / "repo/mnv2_onnx/config.pbtxt").max_batch_size == 4
    assert not (tmp_path / "repo/mnv2_onnx/labels.txt").exists()
    assert (tmp_path / "repo/other_model").is_dir()


def test_onnx_gpu_variant_uses_the_tensorrt_execution_provider(exported, tmp_path):
    _, fused_path = exported
    repo = write_triton_repository(tmp_path / "repo", fused_path, variants=["onnx"], onnx_device="gpu",
                                   onnx_trt_precision="FP16", max_batch_size=16, opt_batch=4, serving_root="/models")
    config = _config(tmp_path / "repo/mnv2_onnx/config.pbtxt")
    from tritonclient.grpc import model_config_pb2 as pb

    assert [g.kind for g in config.instance_group] == [pb.ModelInstanceGroup.KIND_GPU]
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert dict(accelerator.parameters) == {"precision_mode": "FP16", "trt_profile_min_shapes": "input:1x3x64x64",
                                            "trt_profile_opt_shapes": "input:4x3x64x64",
                                            "trt_profile_max_shapes": "input:16x3x64x64"}
    assert "/models" in repo.readme.read_text()


@pytest.fixture(scope="module")
def rtx_engine(exported, tmp_path_factory):
    """A real engine: TensorRT-RTX builds the fused ONNX on the CPU (EcaAttention inlined from its function)."""
    return build_rtx_engine(exported[1], tmp_path_factory.mktemp("rtx") / "mnv2.plan", max_batch=MAX_BATCH)


def test_tensorrt_plan_variant(exported, tensorrt_plan, tmp_path):
    _, fused_path = exported
    repo = write_triton_repository(tmp_path / "repo", fused_path, engine_path=tensorrt_plan, max_batch_size=MAX_BATCH,
                                   variants=["tensorrt"])
    assert set(repo.files) == {"mnv2.README.md", "mnv2_tensorrt/config.pbtxt", "mnv2_tensorrt/1/model.plan"}
    assert (tmp_path / "repo/mnv2_tensorrt/1/model.plan").read_bytes() == tensorrt_plan.read_bytes()
    config = _config(tmp_path / "repo/mnv2_tensorrt/config.pbtxt")
    from tritonclient.grpc import model_config_pb2 as pb

    assert config.platform == "tensorrt_plan" and config.max_batch_size == MAX_BATCH
    assert [(i.name, list(i.dims)) for i in config.input] == [("input", list(INPUT_SHAPE))]
    assert [(o.name, list(o.dims)) for o in config.output] == [("logits", [NUM_CLASSES])]
    assert config.HasField("dynamic_batching")
    assert [g.kind for g in config.instance_group] == [pb.ModelInstanceGroup.KIND_GPU]
    readme = repo.readme.read_text()
    row = _rows(readme)["mnv2_tensorrt"]
    assert "`tensorrt_plan`" in row and "not TensorRT-RTX" in row and "no plugin library was given" in row
    assert "version-compatible=true" in readme  # how plans that embed the plugin are served
    assert _serve_command(readme) == ["tritonserver", f"--model-repository={(tmp_path / 'repo').resolve()}"]


def test_tensorrt_plan_with_plugin_gets_a_complete_server_command(exported, tensorrt_plan, autoreg_library, tmp_path):
    _, fused_path = exported
    repo = write_triton_repository(tmp_path / "repo", fused_path, engine_path=tensorrt_plan,
                                   plugin_library=autoreg_library, serving_root="/models")
    assert repo.models == {"tensorrt": "mnv2_tensorrt", "onnx": "mnv2_onnx", "python": "mnv2_python"}
    assert (tmp_path / "repo/mnv2_tensorrt/libeca_plugin_autoreg.so").read_bytes() == autoreg_library.read_bytes()
    readme = repo.readme.read_text()
    assert "run on `libeca_plugin_autoreg.so` (copied beside the config)" in _rows(readme)["mnv2_tensorrt"]
    assert _serve_command(readme) == [
        "tritonserver", "--model-repository=/models",
        "--backend-config=tensorrt,plugins=/models/mnv2_tensorrt/libeca_plugin_autoreg.so"]


def test_tensorrt_rtx_plans_are_never_tensorrt_plan_models(exported, rtx_engine, tmp_path):
    """Triton's TensorRT backend cannot load TensorRT-RTX plans: left out with the reason, or refused when asked for."""
    _, fused_path = exported
    repo = write_triton_repository(tmp_path / "repo", fused_path, engine_path=rtx_engine, max_batch_size=MAX_BATCH)
    assert repo.models == {"onnx": "mnv2_onnx", "python": "mnv2_python"}
    assert not (tmp_path / "repo/mnv2_tensorrt").exists()
    reason = repo.to_dict()["skipped"]["tensorrt"]
    assert reason.startswith("mnv2.plan is a TensorRT-RTX plan, which Triton's TensorRT backend cannot load")
    readme = repo.readme.read_text()
    assert f"- `mnv2_tensorrt`: {reason}." in readme and "tensorrt_plan" not in readme
    with pytest.raises(EcaDeployError, match=r"^cannot write the tensorrt variant: mnv2.plan is a TensorRT-RTX plan"):
        write_triton_repository(tmp_path / "other", fused_path, engine_path=rtx_engine, variants=["tensorrt"])
    assert not (tmp_path / "other").exists()


def test_readme_says_what_each_model_holds_and_how_to_install(exported, tmp_path_factory, tmp_path):
    """Plain, fused and plugin-only ONNX are told apart; eca-deploy is installed from its repository."""
    _, plain, _ = export_demo_64(tmp_path_factory.getbasetemp())
    readme = write_triton_repository(tmp_path / "plain", plain).readme.read_text()
    assert "plain ONNX (no EcaAttention nodes" in _rows(readme)["mnv2_onnx"]
    assert "pip install eca-deploy" not in readme
    assert f"pip install {REPO_ROOT}    # or: pip install -e {REPO_ROOT}" in readme  # the checkout writing it
    assert "not on the package index" in readme

    plugin_only = tmp_path / "mnv2.eca.plugin.onnx"
    save_onnx(without_fallback_function(onnx.load(str(exported[1]))), plugin_only)
    with pytest.raises(EcaDeployError, match=r"^Triton could load none of the models: ONNX Runtime CPU cannot run "
                                             r"EcaAttention nodes without their fallback function"):
        write_triton_repository(tmp_path / "plugin_only", plugin_only)
    with pytest.raises(EcaDeployError, match=r"^cannot write the onnx variant: ONNX Runtime without the plugin"):
        write_triton_repository(tmp_path / "plugin_only", plugin_only, variants=["onnx"], onnx_device="gpu")
    assert not (tmp_path / "plugin_only").exists()


def test_an_unwritable_repository_is_one_sentence_and_leaves_nothing(exported, tmp_path):
    _, fused_path = exported
    in_the_way = tmp_path / "file"
    in_the_way.write_text("keep me")
    with pytest.raises(EcaDeployError, match=r"^cannot write to .*file: Not a directory$"):
        write_triton_repository(in_the_way, fused_path)
    with read_only_dir(tmp_path / "read_only") as read_only:
        with pytest.raises(EcaDeployError,
                           match=r"^cannot write to .*read_only/repo: (Read-only file system|Permission denied)$"):
            write_triton_repository(read_only / "repo", fused_path)
        assert tree(read_only) == set()
    assert in_the_way.read_text() == "keep me"


def test_plugin_library_must_be_loadable_by_triton(exported, tensorrt_plan, tmp_path):
    """Triton's TensorRT backend only dlopen()s plugins: the loadLibrary-style libeca_plugin.so (told by its
    exported getCreators, whatever its file is called) is refused with the reason."""
    _, fused_path = exported
    renamed = tmp_path / "libeca_plugin_autoreg.so"  # a name proves nothing
    shutil.copyfile(plugin_build() / PLUGIN_LIBRARY, renamed)
    with pytest.raises(EcaDeployError, match="needs the self-registering libeca_plugin_autoreg.so"):
        write_triton_repository(tmp_path / "repo", fused_path, engine_path=tensorrt_plan, plugin_library=renamed)
    assert not (tmp_path / "repo" / "mnv2_tensorrt").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_batch_size=0), "max_batch_size must be at least 1"),
    (dict(preferred_batch_sizes=(64,)), "preferred batch sizes"),
    (dict(variants=["tensorrt"]), "needs engine_path"),
    (dict(variants=["tflite"]), "variants must be some of"),
    (dict(onnx_device="tpu"), "onnx_device must be one of"),
    (dict(class_names=["a", "b"]), "2 class names for 10 classes"),
    (dict(engine_path="missing.plan"), "does not exist"),
])
def test_repository_argument_errors(exported, tmp_path, kwargs, message):
    _, fused_path = exported
    with pytest.raises(EcaDeployError, match=message):
        write_triton_repository(tmp_path / "repo", fused_path, **kwargs)


def test_model_without_dynamic_batch_is_refused(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["input"], ["logits"])], "fixed",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 3, 8, 8])])
    onnx.save(onnx.helper.make_model(graph), tmp_path / "fixed.onnx")
    with pytest.raises(EcaDeployError, match="dynamic batch axis"):
        write_triton_repository(tmp_path / "repo", tmp_path / "fixed.onnx")


def test_schema_rejects_what_triton_rejects():
    required("tritonclient.grpc")
    good = ('name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
            'input { name: "input" data_type: TYPE_FP32 dims: [ 3 ] }\n'
            'output { name: "logits" data_type: TYPE_FP32 dims: [ 2 ] }\n')
    assert validate_model_config(good, expected_name="m").max_batch_size == 4
    with pytest.raises(EcaDeployError, match="name must match"):
        validate_model_config(good, expected_name="other")
    with pytest.raises(EcaDeployError, match="schema"):
        validate_model_config(good + "max_batch: 4\n")
    with pytest.raises(EcaDeployError, match="schema"):
        validate_model_config(good.replace("TYPE_FP32", "FLOAT32", 1))
    with pytest.raises(EcaDeployError, match="max_batch_size"):
        validate_model_config(good.replace("max_batch_size: 4", "max_batch_size: 0"))
    assert format_pbtxt({"name": "m", "dims": [1, 2], "flag": True}) == 'name: "m"\ndims: [ 1, 2 ]\nflag: true'


# ---------------------------------------------------------------------------------------------------------------
# A real Triton on loopback


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bundled_tritonserver(workdir: Path) -> tuple[Path, Path, dict]:
    """nvidia-pytriton's tritonserver laid out as pytriton does it: binary, backends, this Python's stub."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        required("pytriton")
    package = Path(next(iter(spec.submodule_search_locations)))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = package / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        pytest.skip(f"nvidia-pytriton has no Python backend stub for Python {version}")
    server = workdir / "tritonserver"
    shutil.copytree(package / "tritonserver", server, ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy2(stub, server / "backends" / "python" / "triton_python_backend_stub")
    # The stub links libpython: use this interpreter's (pyenv and venv builds are not the system one),
    # and the libraries bundled with the wheel.
    libraries = [sysconfig.get_config_var("LIBDIR"), str(package.parent / "nvidia_pytriton.libs"),
                 os.environ.get("LD_LIBRARY_PATH", "")]
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(p for p in libraries if p),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p))
    return server / "bin" / "tritonserver", server / "backends", env


class TritonProcess:
    """``command`` (a ``tritonserver`` command line) run with ``binary``, the bundled backends and loopback ports."""

    def __init__(self, binary: Path, backends: Path, command: list[str], env: dict, log_path: Path) -> None:
        self.http_port, self.grpc_port = _free_port(), _free_port()
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [str(binary), *command[1:], f"--backend-directory={backends}",
             "--model-control-mode=poll", "--repository-poll-secs=0", "--exit-on-error=false",
             "--strict-readiness=false", "--http-address=127.0.0.1", f"--http-port={self.http_port}",
             "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}", "--allow-metrics=false",
             "--exit-timeout-secs=20", "--log-info=true"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.url = f"127.0.0.1:{self.http_port}"

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture(scope="module")
def triton(exported, tmp_path_factory):
    """Triton serving the generated repository (all variants but the plan) on loopback, started with the
    README's command line."""
    httpclient = required("tritonclient.http")
    _, fused_path = exported
    workdir = tmp_path_factory.mktemp("triton_server")
    binary, backends, env = _bundled_tritonserver(workdir)
    repo = write_triton_repository(workdir / "models", fused_path, max_batch_size=MAX_BATCH,
                                   max_queue_delay_us=20_000)
    command = _serve_command(repo.readme.read_text())
    assert command == ["tritonserver", f"--model-repository={(workdir / 'models').resolve()}"]
    server = TritonProcess(binary, backends, command, env, workdir / "tritonserver.log")
    client = httpclient.InferenceServerClient(server.url, network_timeout=60.0)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and server.process.poll() is None:
            try:
                if client.is_model_ready(repo.models["python"]):
                    break
            except Exception:  # connection refused while the server starts
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"Triton did not serve {repo.models['python']} within 90 s:\n{server.log()[-4000:]}")
        yield server, client, repo
    finally:
        client.close()
        server.stop()


def _infer(client, model: str, batch: np.ndarray, datatype: str = "FP32"):
    import tritonclient.http as httpclient

    request = httpclient.InferInput("input", list(batch.shape), datatype)
    request.set_data_from_numpy(batch)
    return client.infer(model, [request], outputs=[httpclient.InferRequestedOutput("logits")]).as_numpy("logits")


def test_triton_serves_pytorch_logits(exported, triton):
    module, _ = exported
    server, client, repo = triton
    rng = np.random.default_rng(0)
    for batch_size in (1, 3, MAX_BATCH):
        batch = rng.standard_normal((batch_size, *INPUT_SHAPE), dtype=np.float32)
        np.testing.assert_allclose(_infer(client, repo.models["python"], batch), _reference(module, batch),
                                   atol=1e-4, rtol=1e-4)


def test_triton_batches_concurrent_requests(exported, triton):
    """16 single-image requests at once: Triton's dynamic batcher merges them, every answer is right."""
    import tritonclient.http as httpclient

    module, _ = exported
    server, _, repo = triton
    model = repo.models["python"]
    batches = [np.random.default_rng(i).standard_normal((1, *INPUT_SHAPE), dtype=np.float32) for i in range(16)]
    stats_client = httpclient.InferenceServerClient(server.url)
    before = stats_client.get_inference_statistics(model)["model_stats"][0]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(batches))

    def worker(index: int) -> None:
        client = httpclient.InferenceServerClient(server.url, network_timeout=60.0)
        try:
            start.wait()
            results[index] = _infer(client, model, batches[index])
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            client.close()

    began = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    elapsed = time.monotonic() - began
    assert not errors, errors
    assert elapsed < 30, f"16 concurrent requests took {elapsed:.1f} s"
    for index, batch in enumerate(batches):
        np.testing.assert_allclose(results[index], _reference(module, batch), atol=1e-4, rtol=1e-4)
    after = stats_client.get_inference_statistics(model)["model_stats"][0]
    stats_client.close()
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    assert inferences == len(batches)
    assert executions < inferences, f"no dynamic batching: {executions} executions for {inferences} requests"
    sizes = {int(s["batch_size"]) for s in after["batch_stats"]}
    assert max(sizes) > 1 and max(sizes) <= MAX_BATCH


def test_triton_answers_bad_requests_with_400_and_keeps_serving(exported, triton):
    """NaN is refused by eca_deploy.serving inside the model, the rest by Triton against config.pbtxt: all HTTP 400."""
    from tritonclient.utils import InferenceServerException

    module, _ = exported
    server, client, repo = triton
    model = repo.models["python"]
    good = np.random.default_rng(1).standard_normal((2, *INPUT_SHAPE), dtype=np.float32)
    bad_pixels = good.copy()
    bad_pixels[1, 0, 5, 5] = np.nan
    cases = [(bad_pixels, "FP32", "input holds 1 non-finite value"), (good[:, :, :32], "FP32", "(?i)shape"),
             (good.astype(np.float64), "FP64", "(?i)data ?type|FP64"),
             (np.zeros((MAX_BATCH + 1, *INPUT_SHAPE), dtype=np.float32), "FP32", "(?i)batch")]
    for batch, datatype, pattern in cases:
        with pytest.raises(InferenceServerException, match=pattern) as refused:
            _infer(client, model, batch, datatype=datatype)
        assert refused.value.status() == "400", (pattern, refused.value.status(), refused.value.message())
    assert server.process.poll() is None
    np.testing.assert_allclose(_infer(client, model, good), _reference(module, good), atol=1e-4, rtol=1e-4)


def test_triton_onnxruntime_backend_variant(exported, triton):
    """The onnxruntime_onnx model, where the server has that backend (the pytriton-bundled one has not)."""
    module, _ = exported
    server, client, repo = triton
    index = {entry["name"]: entry for entry in client.get_model_repository_index()}
    entry = index[repo.models["onnx"]]
    if entry.get("state") != "READY":
        pytest.skip(f"this Triton cannot load {repo.models['onnx']}: {entry.get('reason', entry.get('state'))}")
    batch = np.random.default_rng(2).standard_normal((3, *INPUT_SHAPE), dtype=np.float32)
    np.testing.assert_allclose(_infer(client, repo.models["onnx"], batch), _reference(module, batch),
                               atol=1e-4, rtol=1e-4)


def test_triton_shuts_down_cleanly(triton):
    """Last: SIGINT unloads the models and the server exits 0 within the exit timeout."""
    server, client, repo = triton
    assert client.is_server_live()
    client.close()  # Triton waits for open HTTP connections before it unloads models
    returncode = server.stop(timeout=40)
    log = server.log_path.read_text(errors="replace")
    assert returncode == 0, log[-3000:]
    assert f"successfully unloaded '{repo.models['python']}'" in log
