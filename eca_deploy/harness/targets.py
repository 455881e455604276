"""Which backends a run uses: the ones named on the command line, or everything this machine can run.

With no ``--backend``, the model is exported (plain and ECA-fused ONNX) and every backend this
machine has is used: PyTorch CPU, ONNX Runtime CPU on both models and, on a GPU, PyTorch CUDA,
ONNX Runtime CUDA and TensorRT engines built from the plain model (native layers) and from the
fused model with the plugin library (EcaAttention plugin layers). What cannot run here is listed
with the reason, so the same command adds the GPU backends on a GPU without changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from torch import nn

from eca_deploy.errors import EcaDeployError
from eca_deploy.export import export_onnx
from eca_deploy.harness.backends import (CUDA_GRAPH_BACKENDS, PLUGIN_BACKENDS, Backend, available_backends, create_backend,
                                         parse_backend_spec)
from eca_deploy.onnx_files import save_onnx
from eca_deploy.passes import fuse_eca
from eca_deploy.progress import Progress
from eca_deploy.tensorrt.plugin_library import resolve_plugin_library


@dataclass
class BackendPlan:
    """Backends to instantiate as (name, file) and the ones left out with their reasons."""

    backends: list[tuple[str, Path | None]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    plugin_library: Path | None = None  # --plugin, else $ECA_PLUGIN_LIBRARY


def plan_backends(specs: Sequence[str], *, module: nn.Module, work_dir: Path, input_shape: tuple[int, int, int],
                  precision: str, include_torch_cpu: bool, plugin_library: Path | None,
                  engine_batch: tuple[int, int, int], progress: Progress) -> BackendPlan:
    """The explicit ``specs`` (``NAME[=FILE]``), or with none the automatic plan described above."""
    plan = BackendPlan()
    if specs:
        plan.backends = [parse_backend_spec(spec) for spec in specs]
        if any(name in PLUGIN_BACKENDS for name, _ in plan.backends):
            plan.plugin_library = resolve_plugin_library(plugin_library)
        return plan
    plan.plugin_library = resolve_plugin_library(plugin_library)
    available = available_backends()
    plain, fused = _export_models(module, work_dir, input_shape, precision, progress)
    plan.files = {"onnx": str(plain), "fused_onnx": str(fused)}
    torch_gpu = "torch-cuda-fp16" if precision == "fp16" else "torch-cuda"
    wanted: list[tuple[str, Path | None]] = [("torch-cpu", None)] if include_torch_cpu else []
    wanted += [("ort-cpu", plain), ("ort-cpu", fused), (torch_gpu, None), ("ort-cuda", fused)]
    if plan.plugin_library is not None:
        wanted.append(("ort-trt", fused))
    else:
        plan.skipped["ort-trt"] = "no plugin library: pass --plugin libeca_plugin_autoreg.so"
    for name, path in wanted:
        if available[name] is None:
            plan.backends.append((name, path))
        else:
            plan.skipped[name] = available[name]
    if available["trt"] is not None:
        plan.skipped["trt"] = available["trt"]
        return plan
    from eca_deploy.tensorrt.engine import build_engine

    engines = [("native", plain, None)]
    if plan.plugin_library is not None:
        engines.append(("plugin", fused, plan.plugin_library))
    else:
        plan.skipped["trt (plugin engine)"] = "no plugin library: pass --plugin or set $ECA_PLUGIN_LIBRARY"
    for kind, onnx_path, plugin in engines:
        engine_path = work_dir / f"{onnx_path.name.removesuffix('.onnx')}.engine"
        with progress.step(f"Building the {kind} TensorRT engine {engine_path.name}"):
            build_engine(onnx_path, engine_path, batch=engine_batch, plugin_library=plugin, backend="tensorrt",
                         progress=progress)
        plan.backends.append(("trt", engine_path))
        plan.files[f"{kind}_engine"] = str(engine_path)
    return plan


def _export_models(module: nn.Module, work_dir: Path, input_shape: tuple[int, int, int], precision: str,
                   progress: Progress) -> tuple[Path, Path]:
    """Export ``module`` to plain and ECA-fused ONNX in ``work_dir``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    tag = f"model.{precision}" if precision == "fp16" else "model"
    plain, fused = work_dir / f"{tag}.onnx", work_dir / f"{tag}.eca.onnx"
    with progress.step(f"Exporting {precision.upper()} ONNX and fusing ECA blocks into {work_dir}"):
        export_onnx(module, plain, input_shape=input_shape, precision=precision)
        fused_model, _ = fuse_eca(onnx.load(str(plain)))
        save_onnx(fused_model, fused)
    return plain, fused


def instantiate(plan: BackendPlan, *, module_factory: Callable[[], nn.Module], cuda_graphs: bool,
                threads: int | None) -> list[Backend]:
    """Create the planned backends; on any failure close the ones already created."""
    backends: list[Backend] = []
    try:
        for name, path in plan.backends:
            backend = create_backend(name, model_path=path, module_factory=module_factory,
                                     plugin_library=plan.plugin_library,
                                     cuda_graphs=cuda_graphs and name in CUDA_GRAPH_BACKENDS, threads=threads)
            backend.name = name if path is None else f"{name}:{path.name}"
            backends.append(backend)
    except BaseException:
        for backend in backends:
            backend.close()
        raise
    if not backends:
        raise EcaDeployError("no backend can run here: " + "; ".join(f"{k}: {v}" for k, v in plan.skipped.items()))
    return backends
