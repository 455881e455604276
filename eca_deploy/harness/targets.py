"""Which backends a run uses: the ones named on the command line, or everything this machine can run.

With no ``--backend``, the model is exported (plain and ECA-fused ONNX) and every backend this
machine has is used: PyTorch CPU, ONNX Runtime CPU on both models and, on a GPU, PyTorch CUDA,
ONNX Runtime CUDA and TensorRT engines built from the plain model (native layers) and from the
fused model with the plugin library (EcaAttention plugin layers). What cannot run here is listed
with the reason, so the same command adds the GPU backends on a GPU without changes.

A run goes in three steps, so that every mistake in the arguments is found before a model loads:
:func:`plan_backends` reads the names, files and plugin library (nothing is loaded or written); the
pipeline writes what the automatic plan runs (exports, engines, with the steps ``export`` uses);
:func:`instantiate` opens the backends. Files named on the command line must take the reference model's input and give its
classes (:class:`ReferenceShape`): ONNX files are checked from the file before any backend opens,
engines once they are open (deserializing one needs its GPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from eca_deploy.errors import EcaDeployError
from eca_deploy.harness.backends import (CUDA_GRAPH_BACKENDS, ONNXRUNTIME_BACKENDS, PLUGIN_BACKENDS, Backend,
                                         TensorRTBackend, available_backends, create_backend)
from eca_deploy.onnx_files import load_graph
from eca_deploy.tensorrt.plugin_library import resolve_plugin_library


@dataclass(frozen=True)
class ReferenceShape:
    """What every backend must accept and give: the reference model's per-sample input and class count.

    ``source`` names the reference model in messages (``eca_mobilenet_v2 (the default SOURCE)``);
    ``num_classes`` is None when the checkpoint does not say.
    """

    sample_shape: tuple[int, int, int]
    num_classes: int | None
    source: str

    def check(self, label: str, sample_shape: Sequence[int | None], num_classes: int | None) -> None:
        """Refuse ``label`` when a fixed dimension of its input, or its class count, differs from the reference's
        (None stands for a symbolic dimension, which fits anything)."""
        input_differs = len(sample_shape) != len(self.sample_shape) or any(
            dim is not None and dim != expected for dim, expected in zip(sample_shape, self.sample_shape))
        classes_differ = None not in (num_classes, self.num_classes) and num_classes != self.num_classes
        if input_differs or classes_differ:
            raise EcaDeployError(
                f"{label} maps {_shape(sample_shape)} to {_classes(num_classes)}, but the reference model "
                f"{self.source} maps {_shape(self.sample_shape)} to {_classes(self.num_classes)}: pass the model the "
                f"file was exported from as SOURCE (and its --input-size, --num-classes) so both run the same model")


def _shape(sample_shape: Sequence[int | None]) -> str:
    return " x ".join(["N", *("?" if dim is None else str(dim) for dim in sample_shape)])


def _classes(num_classes: int | None) -> str:
    return "an unknown number of classes" if num_classes is None else f"{num_classes} classes"


def onnx_io_shape(path: Path) -> tuple[list[int | None], int | None]:
    """The per-sample input shape and the class count of an ONNX classifier, read from the file
    (weights not loaded); None for a symbolic dimension."""
    graph = load_graph(path).graph
    weights = {initializer.name for initializer in graph.initializer}
    inputs = [value for value in graph.input if value.name not in weights]

    def dims(value) -> list[int | None]:
        return [dim.dim_value if dim.HasField("dim_value") else None for dim in value.type.tensor_type.shape.dim]

    input_dims = dims(inputs[0])[1:] if inputs else []
    output_dims = dims(graph.output[0]) if graph.output else []
    return input_dims, output_dims[-1] if len(output_dims) == 2 else None


@dataclass(frozen=True)
class EngineToBuild:
    """A TensorRT engine the automatic plan builds: native layers, or plugin layers with the library."""

    kind: str  # "native" or "plugin"
    onnx_path: Path
    engine_path: Path
    plugin_library: Path | None


@dataclass
class BackendPlan:
    """Backends to instantiate as (name, file), the ones left out with their reasons, and the files the
    automatic plan writes before it runs (eca_deploy.pipeline.session)."""

    backends: list[tuple[str, Path | None]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    exports: dict[str, Path] = field(default_factory=dict)  # "onnx", "fused_onnx" -> where the export goes
    engines: list[EngineToBuild] = field(default_factory=list)
    plugin_library: Path | None = None  # --plugin, else $ECA_PLUGIN_LIBRARY

    @property
    def files(self) -> dict[str, Path]:
        """Every file the plan writes, by role (``onnx``, ``fused_onnx``, ``native_engine``, ``plugin_engine``)."""
        return self.exports | {f"{engine.kind}_engine": engine.engine_path for engine in self.engines}


def plan_backends(specs: Sequence[tuple[str, Path | None]], *, work_dir: Path | None, precision: str,
                  include_torch_cpu: bool, plugin_library: Path | None) -> BackendPlan:
    """The parsed ``specs`` (``parse_backend_spec``), or with none the automatic plan described above, whose
    files go to ``work_dir``. Loads and writes nothing."""
    plan = BackendPlan()
    if specs:
        plan.backends = list(specs)
        if any(name in PLUGIN_BACKENDS for name, _ in plan.backends):
            plan.plugin_library = resolve_plugin_library(plugin_library)
        return plan
    if work_dir is None:
        raise ValueError("the automatic plan exports the model: give work_dir")
    plan.plugin_library = resolve_plugin_library(plugin_library)
    available = available_backends()
    tag = f"model.{precision}" if precision == "fp16" else "model"
    plain, fused = work_dir / f"{tag}.onnx", work_dir / f"{tag}.eca.onnx"
    plan.exports = {"onnx": plain, "fused_onnx": fused}
    torch_gpu = "torch-cuda-fp16" if precision == "fp16" else "torch-cuda"
    wanted: list[tuple[str, Path | None]] = [("torch-cpu", None)] if include_torch_cpu else []
    wanted += [("ort-cpu", plain), ("ort-cpu", fused), (torch_gpu, None), ("ort-cuda", fused), ("ort-trt", fused)]
    no_plugin = None if plan.plugin_library is not None else "no plugin library: pass --plugin or set $ECA_PLUGIN_LIBRARY"
    for name, path in wanted:
        # The first thing that stops a backend: the runtime and the GPU before the plugin library.
        reason = available[name] or (no_plugin if name in PLUGIN_BACKENDS else None)
        if reason is None:
            plan.backends.append((name, path))
        else:
            plan.skipped[name] = reason
    if available["trt"] is not None:
        plan.skipped["trt"] = available["trt"]
        return plan
    plan.engines.append(EngineToBuild("native", plain, work_dir / f"{tag}.engine", None))
    if plan.plugin_library is not None:
        plan.engines.append(EngineToBuild("plugin", fused, work_dir / f"{tag}.eca.engine", plan.plugin_library))
    else:
        plan.skipped["trt (plugin engine)"] = no_plugin
    plan.backends += [("trt", engine.engine_path) for engine in plan.engines]
    return plan


def check_files(plan: BackendPlan, reference: ReferenceShape) -> None:
    """Refuse a named ONNX file whose input or class count differs from the reference model's."""
    written = set(plan.files.values())
    for name, path in plan.backends:
        if name in ONNXRUNTIME_BACKENDS and path not in written:
            reference.check(f"{name}={path}", *onnx_io_shape(path))


def instantiate(plan: BackendPlan, *, module_factory: Callable[[], nn.Module], cuda_graphs: bool,
                threads: int | None, reference: ReferenceShape | None = None) -> list[Backend]:
    """Create the planned backends (engines checked against ``reference``); on any failure close the ones
    already created."""
    backends: list[Backend] = []
    try:
        for name, path in plan.backends:
            backend = create_backend(name, model_path=path, module_factory=module_factory,
                                     plugin_library=plan.plugin_library,
                                     cuda_graphs=cuda_graphs and name in CUDA_GRAPH_BACKENDS, threads=threads)
            backends.append(backend)
            backend.name = name if path is None else f"{name}:{path.name}"
            if reference is not None and isinstance(backend, TensorRTBackend):
                reference.check(f"{name}={path}", backend.spec.sample_shape, backend.spec.num_classes)
    except BaseException:
        for backend in backends:
            backend.close()
        raise
    if not backends:
        raise EcaDeployError("no backend can run here: " + "; ".join(f"{k}: {v}" for k, v in plan.skipped.items()))
    return backends
