"""TensorRT backend: a serialized engine, our plugin library, and a pool of execution contexts.

Loading: the plugin library goes into the runtime's plugin registry (``load_library`` for
``libeca_plugin.so``; the self-registering ``libeca_plugin_autoreg.so`` is simply loaded into the
process), engines that carry their plugin inside (version-compatible plans built with
``plugins_to_serialize``) load with ``allow_engine_host_code=True`` and no library.

Concurrency: each worker owns an execution context, a non-blocking CUDA stream, device buffers and
pinned host buffers sized for the profile's largest batch; ``run`` borrows a free worker, so
threads never share a context. TensorRT requires concurrently used contexts of a dynamic-shape
engine to use different optimization profiles, so the pool has one worker per profile (build the
engine with several identical profiles to serve several threads at once); extra callers wait.

NumPy batches are staged through the worker's pinned buffer; torch CUDA tensors are bound in place
(no copies) and run on the worker's stream ordered after the caller's current stream, and the
logits come back as a CUDA tensor ordered before it.

CUDA calls go through cuda-python (``pip install cuda-python``), as in TensorRT's own samples.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import math
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from eca_deploy.errors import EcaDeployError, first_line
from eca_deploy.serving.spec import InputSpec, is_torch_tensor
from eca_deploy.tensorrt.backend import tensorrt_logger
from eca_deploy.tensorrt.plugin_library import (
    PLUGIN_ENV,
    load_plugin_library,
    resolve_plugin_library,
)


def import_tensorrt(module: str = "tensorrt"):
    """Import TensorRT's Python package (``tensorrt``, or ``tensorrt_rtx`` for TensorRT-RTX engines)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise EcaDeployError(
            f"running TensorRT engines needs the {module} Python package, which cannot be imported here "
            f"({first_line(error)}): pip install {module.replace('_', '-')} (on Jetson: JetPack's "
            f"python3-libnvinfer); ONNX models run without it on ONNX Runtime") from error


PLAN_TAGS = {b"ftrt": "tensorrt", b"vtrt": "tensorrt_rtx"}  # first four bytes of a plan -> its runtime


def engine_flavour(path: Path) -> str:
    """The TensorRT package that runs the plan ``path`` (``tensorrt`` or ``tensorrt_rtx``), read from its
    four-byte tag before any TensorRT call; files that are not plans are refused here.

    TensorRT plans open with ``ftrt``, TensorRT-RTX plans with ``vtrt`` (seen with tensorrt-rtx 1.7);
    other tags ending in ``trt`` are left to TensorRT.
    """
    with path.open("rb") as file:
        head = file.read(4)
    if len(head) < 4 or head[1:] != b"trt":
        raise EcaDeployError(f"{path.name} is not a serialized TensorRT engine (it starts with {head!r}, plans "
                             f"start with b'ftrt'); build one with eca-deploy build MODEL.onnx")
    return PLAN_TAGS.get(head, "tensorrt")


def import_cudart():
    """cuda-python's CUDA runtime bindings (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as error:
            raise EcaDeployError("the TensorRT runtime needs cuda-python for streams and buffers: "
                                 "pip install cuda-python") from error
    return cudart


def _check(result) -> Any:
    """Unwrap a cuda-python call's ``(error, *values)`` tuple, raising on errors."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        cudart = import_cudart()
        _, name = cudart.cudaGetErrorName(error)
        raise EcaDeployError(f"CUDA error {int(error)} ({name.decode() if isinstance(name, bytes) else name})")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def _pinned_array(cudart, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, np.ndarray]:
    nbytes = math.prod(shape) * dtype.itemsize
    pointer = int(_check(cudart.cudaMallocHost(nbytes)))
    buffer = (ctypes.c_byte * nbytes).from_address(pointer)
    return pointer, np.frombuffer(buffer, dtype=dtype).reshape(shape)


class _Worker:
    """One execution context with its stream and buffers, bound to optimization profile ``profile``."""

    def __init__(self, backend: TensorRTBackend, profile: int) -> None:
        self.backend, self.cudart, self.spec = backend, backend.cudart, backend.spec
        self.events: list = []  # CUDA events for stage timing, created on first use
        self.graphs: dict[int, tuple] = {}  # batch size -> (graph, instantiated graph)
        try:
            self._allocate(profile)
        except BaseException:
            self.close()
            raise

    def _allocate(self, profile: int) -> None:
        backend, cudart, spec = self.backend, self.cudart, self.spec
        self.context = backend.engine.create_execution_context()
        if self.context is None:
            raise EcaDeployError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = _check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
        self.stream_handle = int(self.stream)
        if backend.engine.num_optimization_profiles > 1:
            if not self.context.set_optimization_profile_async(profile, self.stream_handle):
                raise EcaDeployError(f"TensorRT could not select optimization profile {profile}")
        capacity = backend.profile_max_batch
        in_shape, out_shape = (capacity, *spec.sample_shape), (capacity, spec.num_classes)
        self.in_bytes_per_sample = math.prod(spec.sample_shape) * spec.dtype.itemsize
        self.out_bytes_per_sample = spec.num_classes * backend.output_dtype.itemsize
        self.device_input = int(_check(cudart.cudaMalloc(capacity * self.in_bytes_per_sample)))
        self.device_output = int(_check(cudart.cudaMalloc(capacity * self.out_bytes_per_sample)))
        self.host_input_ptr, self.host_input = _pinned_array(cudart, in_shape, spec.dtype)
        self.host_output_ptr, self.host_output = _pinned_array(cudart, out_shape, backend.output_dtype)

    def _enqueue(self, count: int, input_address: int, output_address: int) -> None:
        spec, context, logger = self.spec, self.context, self.backend.logger
        mark = logger.mark()
        if not context.set_input_shape(spec.input_name, (count, *spec.sample_shape)):
            raise EcaDeployError(f"TensorRT rejected input shape {(count, *spec.sample_shape)}{logger.reason(mark)}")
        context.set_tensor_address(spec.input_name, input_address)
        context.set_tensor_address(spec.output_name, output_address)
        if not context.execute_async_v3(self.stream_handle):
            raise EcaDeployError(f"TensorRT execution failed{logger.reason(mark)}")

    def run_numpy(self, batch: np.ndarray, stage_seconds: dict | None = None, cuda_graph: bool = False) -> np.ndarray:
        """Stage ``batch`` through pinned memory, run, copy back. With ``stage_seconds``, CUDA events time
        the host-to-device copy, the engine and the device-to-host copy; ``cuda_graph`` replays the
        engine's launches from a graph captured once per batch size."""
        cudart, count = self.cudart, batch.shape[0]
        events = self._timing_events() if stage_seconds is not None else None
        np.copyto(self.host_input[:count], batch)
        self._record(events, 0)
        _check(cudart.cudaMemcpyAsync(self.device_input, self.host_input_ptr, count * self.in_bytes_per_sample,
                                      cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        self._record(events, 1)
        if cuda_graph:
            _check(cudart.cudaGraphLaunch(self._graph(count), self.stream))
        else:
            self._enqueue(count, self.device_input, self.device_output)
        self._record(events, 2)
        _check(cudart.cudaMemcpyAsync(self.host_output_ptr, self.device_output, count * self.out_bytes_per_sample,
                                      cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        self._record(events, 3)
        _check(cudart.cudaStreamSynchronize(self.stream))
        if events is not None:
            seconds = [_check(cudart.cudaEventElapsedTime(events[i], events[i + 1])) / 1e3 for i in range(3)]
            stage_seconds.update(host_to_device=seconds[0], compute=seconds[1], device_to_host=seconds[2])
        return self.host_output[:count].copy()

    def _timing_events(self) -> list:
        if not self.events:
            self.events = [_check(self.cudart.cudaEventCreate()) for _ in range(4)]
        return self.events

    def _record(self, events: list | None, index: int) -> None:
        if events is not None:
            _check(self.cudart.cudaEventRecord(events[index], self.stream))

    def _graph(self, count: int):
        """The instantiated CUDA graph of one engine launch at batch ``count`` (captured on first use)."""
        graphs = self.graphs
        if count not in graphs:
            cudart = self.cudart
            self._enqueue(count, self.device_input, self.device_output)  # settles shape-dependent allocations
            _check(cudart.cudaStreamSynchronize(self.stream))
            graph = self._capture(count)
            try:
                graphs[count] = (graph, _check(cudart.cudaGraphInstantiate(graph, 0)))
            except BaseException:
                cudart.cudaGraphDestroy(graph)
                raise
        return graphs[count][1]

    def _capture(self, count: int):
        """One engine launch at batch ``count`` captured into a CUDA graph. The capture is ended in any case
        (as trtexec does), so a failing enqueue cannot leave the stream in capture mode for the next caller."""
        cudart = self.cudart
        _check(cudart.cudaStreamBeginCapture(self.stream,
                                             cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
        captured = False
        try:
            self._enqueue(count, self.device_input, self.device_output)
            captured = True
        finally:
            status, graph = cudart.cudaStreamEndCapture(self.stream)
            if not captured and graph:
                cudart.cudaGraphDestroy(graph)
        return _check((status, graph))

    def run_torch_cuda(self, batch):
        import torch

        if batch.device.index != self.backend.device_id:
            raise EcaDeployError(f"input is on {batch.device}, the engine on cuda:{self.backend.device_id}")
        batch = batch.contiguous()
        logits = torch.empty((batch.shape[0], self.spec.num_classes), device=batch.device,
                             dtype=getattr(torch, self.backend.output_dtype.name))
        worker_stream = torch.cuda.ExternalStream(self.stream_handle, device=batch.device)
        caller_stream = torch.cuda.current_stream(batch.device)
        worker_stream.wait_stream(caller_stream)  # the input is ready when the caller's work is
        self._enqueue(batch.shape[0], batch.data_ptr(), logits.data_ptr())
        caller_stream.wait_stream(worker_stream)  # the caller sees the logits after the engine ran
        batch.record_stream(worker_stream)
        logits.record_stream(worker_stream)
        return logits

    def close(self) -> None:
        """Wait for the stream's work, then free graphs, events, buffers, the context and the stream."""
        cudart = self.cudart
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamSynchronize(self.stream)
        for graph, graph_exec in self.graphs.values():
            cudart.cudaGraphExecDestroy(graph_exec)
            cudart.cudaGraphDestroy(graph)
        for event in self.events:
            cudart.cudaEventDestroy(event)
        self.graphs, self.events = {}, []
        self.context = None
        for free, pointer in ((cudart.cudaFree, "device_input"), (cudart.cudaFree, "device_output"),
                              (cudart.cudaFreeHost, "host_input_ptr"), (cudart.cudaFreeHost, "host_output_ptr")):
            if getattr(self, pointer, None):
                free(getattr(self, pointer))
                setattr(self, pointer, 0)
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None


class TensorRTBackend:
    """Runs a serialized TensorRT engine with one float NCHW input and one N x classes output."""

    name = "tensorrt"

    def __init__(self, path: str | Path, *, plugin_library: str | Path | None = None, workers: int | None = None,
                 max_batch: int | None = None, allow_engine_host_code: bool = False,
                 tensorrt_module: str = "auto") -> None:
        path = Path(path)
        if not path.is_file():
            raise EcaDeployError(f"TensorRT engine {path} does not exist")
        plugin = resolve_plugin_library(plugin_library)
        if workers is not None and workers < 1:
            raise EcaDeployError(f"workers must be at least 1, got {workers}")
        flavour = engine_flavour(path)
        trt = import_tensorrt(flavour if tensorrt_module == "auto" else tensorrt_module)
        self.trt, self.path, self.workers = trt, path, []
        self.logger = tensorrt_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        self.plugin_handle = (load_plugin_library(trt, self.runtime.get_plugin_registry(), plugin,
                                                  reason=functools.partial(self.logger.reason, self.logger.mark()))
                              if plugin else None)
        if allow_engine_host_code:  # version-compatible plans run their embedded lean runtime and plugins
            self.runtime.engine_host_code_allowed = True
        mark = self.logger.mark()
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            reason = self.logger.reason(mark)
            hint = ""
            if "plugin" in reason.lower() and not plugin:
                hint = (f"; an engine with EcaAttention plugin layers needs plugin_library= (or ${PLUGIN_ENV}) "
                        f"unless it embeds the plugin (allow_engine_host_code=True)")
            elif "cuda" in reason.lower():
                hint = "; TensorRT engines need an NVIDIA GPU with a working driver"
            raise EcaDeployError(f"TensorRT cannot deserialize {path.name}{reason}{hint}")
        self.spec, self.output_dtype, self.profile_max_batch = self._read_spec(max_batch)
        self.cudart = import_cudart()
        self.device_id = int(_check(self.cudart.cudaGetDevice()))
        profiles = self.engine.num_optimization_profiles
        count = min(workers or profiles, profiles)
        self._pool: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        try:
            for profile in range(count):
                worker = _Worker(self, profile)
                self.workers.append(worker)
                self._pool.put(worker)
        except BaseException:
            self.close()
            raise

    def _read_spec(self, max_batch: int | None) -> tuple[InputSpec, np.dtype, int]:
        trt, engine = self.trt, self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EcaDeployError(f"{self.path.name} must have one input and one output, has "
                                 f"{len(inputs)} and {len(outputs)}")
        (inp,), (out,) = inputs, outputs
        shape, out_shape = tuple(engine.get_tensor_shape(inp)), tuple(engine.get_tensor_shape(out))
        if len(shape) != 4 or min(shape[1:]) < 1 or len(out_shape) != 2 or out_shape[1] < 1:
            raise EcaDeployError(f"{self.path.name} must map N x C x H x W to N x classes, maps {shape} to {out_shape}")
        # Every worker's profile must cover the same batch range (identical profiles).
        ranges = [engine.get_tensor_profile_shape(inp, p) for p in range(engine.num_optimization_profiles)]
        min_batch = max(int(r[0][0]) for r in ranges)
        profile_max = min(int(r[2][0]) for r in ranges)
        if max_batch is not None and not min_batch <= max_batch <= profile_max:
            raise EcaDeployError(f"max_batch {max_batch} is outside the engine profile's batch range "
                                 f"[{min_batch}, {profile_max}]")
        spec = InputSpec(input_name=inp, output_name=out, sample_shape=tuple(int(d) for d in shape[1:]),
                         dtype=np.dtype(trt.nptype(engine.get_tensor_dtype(inp))), num_classes=int(out_shape[1]),
                         min_batch=min_batch, max_batch=max_batch or profile_max)
        return spec, np.dtype(trt.nptype(engine.get_tensor_dtype(out))), profile_max

    @contextlib.contextmanager
    def _worker(self) -> Iterator[_Worker]:
        """Borrow a free worker for one call (waiting for one if all are busy)."""
        if not self.workers:
            raise EcaDeployError(f"{self.path.name}: the TensorRT backend is closed")
        worker = self._pool.get()
        try:
            yield worker
        finally:
            self._pool.put(worker)

    def run(self, batch: Any) -> Any:
        """Logits for a validated batch: NumPy in, NumPy out; torch CUDA in, torch CUDA out (no copies)."""
        with self._worker() as worker:
            if is_torch_tensor(batch):
                if batch.is_cuda:
                    return worker.run_torch_cuda(batch)
                import torch

                return torch.from_numpy(worker.run_numpy(np.ascontiguousarray(batch.numpy())))
            return worker.run_numpy(batch)

    def run_profiled(self, batch: np.ndarray, stage_seconds: dict, cuda_graph: bool = False) -> np.ndarray:
        """``run`` for a validated NumPy batch, filling ``stage_seconds`` from CUDA events (benchmarks)."""
        with self._worker() as worker:
            return worker.run_numpy(batch, stage_seconds, cuda_graph=cuda_graph)

    def close(self) -> None:
        """Free every worker once calls in flight on other threads have returned it to the pool."""
        workers, self.workers = self.workers, []
        for _ in workers:
            self._pool.get().close()
        self.engine = None
        self.runtime = None

    def describe(self) -> dict:
        return {"backend": self.name, "module": self.trt.__name__, "version": self.trt.__version__,
                "workers": len(self.workers), "device": self.device_id,
                "plugin_library": None if self.plugin_handle is None else "loaded"}
