"""Backends behind one interface: PyTorch eager, ONNX Runtime (CPU, CUDA, TensorRT EP), TensorRT engines.

Every backend maps an N x 3 x H x W float32 NumPy batch to N x classes logits and can say what it is::

    backend = create_backend("ort-cpu", model_path="model.eca.onnx")
    logits, stages = backend.run_timed(batch)   # stages: host-to-device, compute, device-to-host seconds
    backend.describe()                          # versions, device, precision, provider

Backend names (``--backend NAME[=FILE]`` on the command line):

========================  ==========================================================
``torch-cpu``             PyTorch eager FP32 on the CPU (the module from the checkpoint)
``torch-cuda``            PyTorch eager FP32 on the GPU (CUDA events; CUDA graphs optional)
``torch-cuda-fp16``       PyTorch eager, module and input in FP16 on the GPU
``ort-cpu=FILE``          ONNX Runtime, CPU execution provider
``ort-cuda=FILE``         ONNX Runtime, CUDA execution provider (onnxruntime-gpu)
``ort-trt=FILE``          ONNX Runtime, TensorRT execution provider with our plugin library
``trt=FILE``              a serialized TensorRT engine (native or with EcaAttention plugin layers)
``trt-rtx=FILE``          a TensorRT-RTX engine
========================  ==========================================================

A backend whose runtime is missing raises :class:`~eca_deploy.errors.EcaDeployError` with one
sentence saying what to install; :func:`available_backends` lists what this machine can run.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from eca_deploy.errors import EcaDeployError, first_line
from eca_deploy.harness.environment import cpu_name, cuda_device_name
from eca_deploy.serving.spec import InputSpec

TORCH_BACKENDS = ("torch-cpu", "torch-cuda", "torch-cuda-fp16")
ONNXRUNTIME_BACKENDS = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
                        "ort-trt": "TensorrtExecutionProvider"}
TENSORRT_BACKENDS = {"trt": "tensorrt", "trt-rtx": "tensorrt_rtx"}
BACKEND_NAMES = (*TORCH_BACKENDS, *ONNXRUNTIME_BACKENDS, *TENSORRT_BACKENDS)
CUDA_GRAPH_BACKENDS = ("torch-cuda", "torch-cuda-fp16", *TENSORRT_BACKENDS)  # --cuda-graphs applies to these
PLUGIN_BACKENDS = ("ort-trt", *TENSORRT_BACKENDS)  # --plugin (or $ECA_PLUGIN_LIBRARY) applies to these


@dataclass
class StageTimes:
    """Seconds spent in each stage of one inference call; transfers are 0 where there is no device."""

    preprocess: float = 0.0
    host_to_device: float = 0.0
    compute: float = 0.0
    device_to_host: float = 0.0
    postprocess: float = 0.0

    @property
    def total(self) -> float:
        return self.preprocess + self.host_to_device + self.compute + self.device_to_host + self.postprocess

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class Backend(Protocol):
    """What the harness needs of a backend. Implement it to validate or benchmark anything else."""

    name: str
    precision: str
    onnx_path: Path | None  # the ONNX model it runs, for first-diverging-layer localisation

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits (float32, N x classes) of a float32 N x C x H x W batch."""

    def run_timed(self, batch: np.ndarray) -> tuple[np.ndarray, StageTimes]:
        """``run`` with the time of each stage (device stages measured on the device where there is one)."""

    def describe(self) -> dict[str, Any]:
        """Name, runtime and versions, device, precision, provider: for reports."""

    def close(self) -> None:
        """Release sessions, engines and device memory."""


@contextlib.contextmanager
def ieee_fp32(torch) -> Iterator[None]:
    """Turn TF32 off for convolutions and matmuls inside the block (FP32 means IEEE FP32 here)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class TorchBackend:
    """PyTorch eager on CPU or CUDA; optional FP16 and CUDA graphs (one graph per batch size).

    FP32 on CUDA runs with TF32 off (PyTorch enables it for cuDNN convolutions by default), so
    ``torch-cuda`` is an FP32 reference on the GPU. ``threads`` sets PyTorch's intra-op threads on the
    CPU (``torch.set_num_threads``, which holds for the whole process), as ``--threads`` does for
    ONNX Runtime's CPU sessions.
    """

    def __init__(self, module, *, device: str = "cpu", precision: str = "fp32", cuda_graphs: bool = False,
                 threads: int | None = None) -> None:
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise EcaDeployError("torch-cuda needs a CUDA GPU and a CUDA build of PyTorch; this torch "
                                 f"{torch.__version__} sees no GPU")
        if precision == "fp16" and device != "cuda":
            raise EcaDeployError("PyTorch FP16 runs on CUDA only: use torch-cuda-fp16")
        if cuda_graphs and device != "cuda":
            raise EcaDeployError("CUDA graphs need a CUDA device")
        if threads is not None and device == "cpu":
            torch.set_num_threads(threads)
        self.torch, self.device, self.precision, self.cuda_graphs = torch, torch.device(device), precision, cuda_graphs
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        if device != "cpu" or precision != "fp32":  # .to() moves modules in place: leave the caller's alone
            module = copy.deepcopy(module)
        self.module = module.to(device=self.device, dtype=self.dtype).eval()
        self.name = f"torch-{device}" + ("-fp16" if precision == "fp16" else "")
        self.onnx_path = None
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.run_timed(batch)[0]

    def _forward(self, x):
        if not self.cuda_graphs:
            return self.module(x)
        torch = self.torch
        key = tuple(x.shape)
        if key not in self._graphs:  # warm up on a side stream, then capture (PyTorch's documented recipe)
            static_input = x.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.module(static_input)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_output = self.module(static_input)
            self._graphs[key] = (graph, static_input, static_output)
        graph, static_input, static_output = self._graphs[key]
        static_input.copy_(x)
        graph.replay()
        return static_output

    def run_timed(self, batch: np.ndarray) -> tuple[np.ndarray, StageTimes]:
        torch = self.torch
        with torch.inference_mode():
            if self.device.type == "cpu":
                start = time.perf_counter()
                logits = self.module(torch.from_numpy(batch))
                return logits.numpy(), StageTimes(compute=time.perf_counter() - start)
            events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
            host = torch.from_numpy(batch).pin_memory()
            events[0].record()
            x = host.to(self.device, non_blocking=True).to(self.dtype)
            events[1].record()
            with ieee_fp32(torch) if self.precision == "fp32" else contextlib.nullcontext():
                logits = self._forward(x)
            events[2].record()
            result = logits.float().to("cpu")
            events[3].record()
            torch.cuda.synchronize()
        h2d, compute, d2h = (events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(3))
        return result.numpy(), StageTimes(host_to_device=h2d, compute=compute, device_to_host=d2h)

    def describe(self) -> dict[str, Any]:
        torch = self.torch
        device = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else cpu_name()
        return {"name": self.name, "runtime": "pytorch", "version": torch.__version__, "device": device,
                "precision": self.precision, "provider": "eager", "cuda_graphs": self.cuda_graphs,
                "threads": torch.get_num_threads() if self.device.type == "cpu" else None}

    def close(self) -> None:
        self._graphs.clear()


class OnnxRuntimeBackend:
    """ONNX Runtime with one execution provider.

    On the CPU provider one ``run`` is the compute stage. On the CUDA and TensorRT providers the
    stages are split with I/O binding: the input is copied into a device ``OrtValue``
    (host-to-device), the session runs on bound device buffers (compute) and the logits are copied
    back (device-to-host); each is a synchronous call timed on the host clock.
    """

    def __init__(self, path: str | Path, *, provider: str = "CPUExecutionProvider",
                 plugin_library: str | Path | None = None, threads: int | None = None,
                 max_batch: int | None = None) -> None:
        from eca_deploy.onnx_files import load_graph, onnx_precision
        from eca_deploy.serving.onnxrt import OnnxRuntimeBackend as Session

        self.onnx_path, self.threads = Path(path), threads
        self._session = Session(self.onnx_path, providers=[provider],
                                plugin_library=plugin_library if provider == "TensorrtExecutionProvider" else None,
                                max_batch=max_batch, intra_op_threads=threads)
        self.provider = provider
        self.io_device = None if provider == "CPUExecutionProvider" else "cuda"
        self.precision = onnx_precision(load_graph(self.onnx_path))
        self.name = {value: key for key, value in ONNXRUNTIME_BACKENDS.items()}.get(provider, provider)
        self.input_dtype = self._session.spec.dtype

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.run_timed(batch)[0]

    def run_timed(self, batch: np.ndarray) -> tuple[np.ndarray, StageTimes]:
        batch = self._session.spec.validate(batch.astype(self.input_dtype, copy=False), check_finite=False)
        if self.io_device is None:
            start = time.perf_counter()
            logits = self._session.run(batch)
            return np.asarray(logits, dtype=np.float32), StageTimes(compute=time.perf_counter() - start)
        import onnxruntime as ort

        session, spec = self._session.session, self._session.spec
        times = [time.perf_counter()]
        device_input = ort.OrtValue.ortvalue_from_numpy(batch, self.io_device, 0)
        times.append(time.perf_counter())
        binding = session.io_binding()
        binding.bind_ortvalue_input(spec.input_name, device_input)
        binding.bind_output(spec.output_name, self.io_device, 0)
        session.run_with_iobinding(binding)
        times.append(time.perf_counter())
        (logits,) = binding.copy_outputs_to_cpu()
        times.append(time.perf_counter())
        h2d, compute, d2h = (times[i + 1] - times[i] for i in range(3))
        return (np.asarray(logits, dtype=np.float32),
                StageTimes(host_to_device=h2d, compute=compute, device_to_host=d2h))

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"name": self.name, "runtime": "onnxruntime", "version": ort.__version__,
                "device": ort.get_device(), "precision": self.precision, "provider": self.provider,
                "providers_in_session": self._session.providers, "model": self.onnx_path.name,
                "threads": self.threads}  # intra-op threads; None: ONNX Runtime's default (one per physical core)

    def close(self) -> None:
        self._session.close()


class TensorRTBackend:
    """A serialized TensorRT engine; CUDA events time the copies and the engine; CUDA graphs optional."""

    def __init__(self, path: str | Path, *, plugin_library: str | Path | None = None,
                 tensorrt_module: str = "tensorrt", cuda_graphs: bool = False) -> None:
        from eca_deploy.serving.trt import TensorRTBackend as Engine

        self.engine_path = Path(path)
        self._engine = Engine(self.engine_path, plugin_library=plugin_library, workers=1,
                              tensorrt_module=tensorrt_module)
        self.cuda_graphs = cuda_graphs
        self.name = {value: key for key, value in TENSORRT_BACKENDS.items()}[tensorrt_module]
        spec = self._engine.spec
        self.precision = engine_precision(self.engine_path.name, spec.dtype)
        self.onnx_path = None

    @property
    def spec(self) -> InputSpec:
        """The engine's input and output: per-sample shape, class count, batch range."""
        return self._engine.spec

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.run_timed(batch)[0]

    def run_timed(self, batch: np.ndarray) -> tuple[np.ndarray, StageTimes]:
        spec = self._engine.spec
        batch = spec.validate(batch.astype(spec.dtype, copy=False), check_finite=False)
        stage_seconds: dict[str, float] = {}
        logits = self._engine.run_profiled(batch, stage_seconds, cuda_graph=self.cuda_graphs)
        return np.asarray(logits, dtype=np.float32), StageTimes(**stage_seconds)

    def describe(self) -> dict[str, Any]:
        info = self._engine.describe()
        return {"name": self.name, "runtime": info["module"], "version": info["version"],
                "device": cuda_device_name(),
                "precision": self.precision, "provider": "engine", "engine": self.engine_path.name,
                "plugin_library": info["plugin_library"], "cuda_graphs": self.cuda_graphs}

    def close(self) -> None:
        self._engine.close()


def parse_backend_spec(spec: str) -> tuple[str, Path | None]:
    """``ort-cpu=model.onnx`` -> (``ort-cpu``, Path); ``torch-cpu`` -> (``torch-cpu``, None)."""
    name, _, file = spec.partition("=")
    if name not in BACKEND_NAMES:
        raise EcaDeployError(f"unknown backend {name!r}; choose from {', '.join(BACKEND_NAMES)}")
    if name in TORCH_BACKENDS:
        if file:
            raise EcaDeployError(f"{name} runs the PyTorch model itself and takes no file: write {name}")
        return name, None
    if not file:
        kind = "engine" if name in TENSORRT_BACKENDS else "ONNX model"
        raise EcaDeployError(f"{name} needs a file: write {name}=PATH_TO_{kind.upper().replace(' ', '_')}")
    path = Path(file)
    if not path.is_file():
        raise EcaDeployError(f"{name}: {path} does not exist")
    return name, path


def engine_precision(file_name: str, input_dtype: np.dtype) -> str:
    """What an engine computes in, as far as its file tells: strongly typed engines keep float32 I/O
    whatever they compute in, so the precision tag eca-export and eca-deploy build put in file names
    (``.fp16.``, ``.int8.``) decides; an FP16 input means FP16."""
    for precision in ("int8", "fp16"):
        if f".{precision}." in file_name:
            return precision
    return "fp16" if input_dtype == np.float16 else "fp32"


def create_backend(name: str, *, model_path: Path | None = None, module_factory: Callable[[], Any] | None = None,
                   plugin_library: Path | None = None, cuda_graphs: bool = False,
                   threads: int | None = None) -> Backend:
    """Instantiate backend ``name`` (see the module docstring) on ``model_path`` or a fresh PyTorch module."""
    if name in TORCH_BACKENDS:
        if module_factory is None:
            raise EcaDeployError(f"{name} needs the PyTorch model (a checkpoint or zoo name)")
        device = "cpu" if name == "torch-cpu" else "cuda"
        return TorchBackend(module_factory(), device=device, precision="fp16" if name.endswith("fp16") else "fp32",
                            cuda_graphs=cuda_graphs, threads=threads)
    if name in ONNXRUNTIME_BACKENDS:
        if cuda_graphs:
            raise EcaDeployError("--cuda-graphs applies to torch-cuda and trt backends, not ONNX Runtime")
        return OnnxRuntimeBackend(model_path, provider=ONNXRUNTIME_BACKENDS[name], plugin_library=plugin_library,
                                  threads=threads)
    if name in TENSORRT_BACKENDS:
        return TensorRTBackend(model_path, plugin_library=plugin_library, tensorrt_module=TENSORRT_BACKENDS[name],
                               cuda_graphs=cuda_graphs)
    raise EcaDeployError(f"unknown backend {name!r}; choose from {', '.join(BACKEND_NAMES)}")


def available_backends() -> dict[str, str | None]:
    """Every backend name -> None when this machine can run it, else the one-sentence reason it cannot."""
    reasons: dict[str, str | None] = {}
    try:
        import torch

        cuda = None if torch.cuda.is_available() else f"torch {torch.__version__} sees no CUDA GPU"
    except ImportError as error:  # torch is a dependency, but say so plainly if it is broken
        cuda = f"torch cannot be imported ({first_line(error)})"
    reasons["torch-cpu"] = None
    reasons["torch-cuda"] = reasons["torch-cuda-fp16"] = cuda
    import onnxruntime as ort

    providers = ort.get_available_providers()
    for name, provider in ONNXRUNTIME_BACKENDS.items():
        reasons[name] = None if provider in providers else (
            f"{provider} is not in this onnxruntime build (pip install onnxruntime-gpu)")
    for name, module in TENSORRT_BACKENDS.items():
        reasons[name] = _tensorrt_reason(module, cuda)
    return reasons


def _tensorrt_reason(module: str, cuda_reason: str | None) -> str | None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return f"the {module} Python package is not installed (pip install {module.replace('_', '-')})"
    if cuda_reason is not None:
        return f"TensorRT engines run on an NVIDIA GPU and {cuda_reason}"
    return None
