"""One ``validate`` or ``bench`` run: every argument and path checked before any work, the reference model, the
backends, and a report staged inside the output folder until the run completes.

The reference is the model given (SOURCE, or an ``nn.Module`` in Python), else the one the named files carry in
their provenance (:mod:`eca_deploy.provenance`), else the demo model. A named file made from another model than
the one given is refused, naming the model it came from; one without provenance needs SOURCE. Everything a run
writes (the automatic plan's exports and engines under ``models/``, the report) is staged, so a failure or
Ctrl-C leaves the output folder as it was.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from eca_deploy._io import check_output_dir, staged_outputs
from eca_deploy.checkpoints import LoadedModel, load_model
from eca_deploy.errors import EcaDeployError
from eca_deploy.harness.backends import (CUDA_GRAPH_BACKENDS, ONNXRUNTIME_BACKENDS, PLUGIN_BACKENDS, Backend,
                                         parse_backend_spec)
from eca_deploy.harness.environment import CpuLoad, capture_environment, measure_cpu_load
from eca_deploy.harness.report import new_report, write_report_files
from eca_deploy.harness.targets import BackendPlan, ReferenceShape, check_files, instantiate, plan_backends
from eca_deploy.image_folders import ImageFolderInputs
from eca_deploy.onnx_files import load_graph
from eca_deploy.options import DEFAULT_SOURCE
from eca_deploy.pipeline.steps import build_engine_step, write_onnx_files
from eca_deploy.progress import Progress
from eca_deploy.provenance import Provenance, read_provenance

MODELS_DIR = "models"  # the automatic plan's exports and engines, inside the output folder


@dataclass(frozen=True)
class ModelRequest:
    """The reference model as asked for: :func:`~eca_deploy.checkpoints.load_model`'s arguments (``source`` None:
    none given) and the input size (None: the model's)."""

    source: str | Path | nn.Module | None = None
    arch: str | None = None
    kernels: str | None = None
    num_classes: int | None = None
    allow_pickle: bool = False
    weights: str | Path | None = None
    pretrained: bool = False
    timm_args: Mapping[str, Any] | None = None
    input_size: int | None = None

    def load(self) -> LoadedModel:
        return load_model(DEFAULT_SOURCE if self.source is None else self.source, arch=self.arch,
                          kernels=self.kernels, num_classes=self.num_classes, allow_pickle=self.allow_pickle,
                          weights=self.weights, pretrained=self.pretrained, timm_args=self.timm_args)

    @property
    def label(self) -> str:
        if self.source is None:
            return f"{DEFAULT_SOURCE} (the default SOURCE)"
        return f"nn.Module {type(self.source).__name__}" if isinstance(self.source, nn.Module) else str(self.source)


@dataclass(frozen=True)
class ImageRequest:
    """``--images`` and what goes with it."""

    folder: Path | None = None
    class_index: Path | None = None
    limit: int | None = None
    strict: bool = False


@dataclass
class Session:
    """The loaded reference, the planned backends, the image inputs and the staging folder of one run."""

    loaded: LoadedModel
    source_label: str
    plan: BackendPlan
    reference: ReferenceShape
    images: ImageFolderInputs | None
    progress: Progress
    staging: Path
    output_dir: Path
    threads: int | None = None
    cuda_graphs: bool = False
    cpu_load: CpuLoad | None = None  # measured while the backends are open
    files: dict[str, Path] = field(default_factory=dict)  # what the run wrote, where it ends up

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.reference.sample_shape

    def module(self) -> nn.Module:
        """A fresh FP32 copy of the PyTorch model (backends may move or cast theirs)."""
        return copy.deepcopy(self.loaded.module).float().eval()

    @contextlib.contextmanager
    def backends(self) -> Iterator[list[Backend]]:
        """The planned backends, open for the block, which is measured for CPU load."""
        created = instantiate(self.plan, module_factory=self.module, cuda_graphs=self.cuda_graphs,
                              threads=self.threads, reference=self.reference)
        try:
            with measure_cpu_load() as cpu_load:
                yield created
        finally:
            for backend in created:
                backend.close()
        self.cpu_load = cpu_load[0]

    def write(self, kind: str, inputs: dict[str, Any], body: dict[str, Any], *, plots: bool = True) -> dict:
        """Write the report into the staging folder (it reaches the output folder when the run completes) and
        say what it skipped and warns about."""
        run = {"threads": self.threads, "cpu_load": self.cpu_load.to_dict() if self.cpu_load else None}
        report = new_report(kind, model=self.model_info(), environment=capture_environment(), inputs=inputs,
                            skipped_backends=self.plan.skipped, body=body, run=run)
        written, plots_skipped = write_report_files(report, self.staging, plots=plots)
        self.files.update({name: self.output_dir / name for name in written})
        for name, reason in self.plan.skipped.items():
            self.progress.info(f"skipped {name}: {reason}")
        if plots_skipped:
            self.progress.info(f"skipped plots: {plots_skipped}")
        for warning in report["warnings"]:
            self.progress.warn(warning)
        return report

    def model_info(self) -> dict[str, Any]:
        models = self.output_dir / MODELS_DIR  # where the staged files end up
        files = {role: str(models / path.name) for role, path in self.plan.files.items()}
        return {"source": self.source_label, "arch": self.loaded.arch, "kernel_sizes": list(self.loaded.kernel_sizes),
                "num_classes": self.loaded.num_classes, "input_shape": list(self.input_shape), "onnx": files,
                "provenance": self.loaded.provenance(self.input_shape[-1]).to_dict()}


def check_flags(backends: Sequence[str], *, fp16: bool, plugin: Path | None, cuda_graphs: bool,
                images: ImageRequest) -> None:
    """Refuse flags that would be ignored: each applies to something the run does not ask for."""
    names = [spec.partition("=")[0] for spec in backends]
    if names and fp16:
        raise EcaDeployError("--fp16 exports FP16 models for the default backends; the files named with -b carry "
                             "their own precision: drop --fp16")
    if names and plugin and not set(names) & set(PLUGIN_BACKENDS):
        raise EcaDeployError(f"--plugin applies to {', '.join(PLUGIN_BACKENDS)} backends, and none is named")
    if names and cuda_graphs and not set(names) & set(CUDA_GRAPH_BACKENDS):
        raise EcaDeployError(f"--cuda-graphs applies to {', '.join(CUDA_GRAPH_BACKENDS)} backends, and none is named")
    image_flags = [flag for flag, given in (("--class-index", images.class_index), ("--limit", images.limit),
                                            ("--strict", images.strict)) if given]
    if images.folder is None and image_flags:
        raise EcaDeployError(f"{image_flags[0]} applies to an image folder: add --images DIR")


def file_provenance(name: str, path: Path) -> Provenance | None:
    """What a file named with ``-b`` came from: an ONNX model's metadata, or the report beside an engine
    (``<engine>.json``, written by ``eca-deploy build`` and ``eca-export --engine``)."""
    if name in ONNXRUNTIME_BACKENDS:
        return read_provenance(load_graph(path))
    report = path.with_name(path.name + ".json")
    try:
        recorded = json.loads(report.read_text()).get("provenance")
    except (OSError, ValueError, AttributeError):
        return None
    return None if not recorded else Provenance.from_dict(recorded)


def resolve_reference(request: ModelRequest, specs: list[tuple[str, Path | None]],
                      progress: Progress) -> tuple[LoadedModel, str, int]:
    """The reference model, how to name it, and the input size: the model asked for, checked against the
    provenance of every named file, or, with none asked for, the model those files name."""
    named = {f"{name}={path}": file_provenance(name, path) for name, path in specs if path is not None}
    from_files = request.source is None and bool(named)
    if from_files:
        request = _request_from_provenance(named, request)
    with progress.step(f"Loading {request.label}"):
        loaded = request.load()
    for label, provenance in named.items():
        if provenance is None or provenance.weights_sha256 == loaded.weights_sha256:
            continue
        if from_files:
            raise EcaDeployError(f"{label} was exported from {provenance.describe()}, whose weights have changed since "
                                 f"(sha256 now {loaded.weights_sha256[:12]}): pass the model it was exported from as "
                                 "SOURCE")
        raise EcaDeployError(f"{label} was exported from {provenance.describe()}, not from {request.label} "
                             f"(sha256 {loaded.weights_sha256[:12]}): pass the model it was exported from as SOURCE, "
                             "or no SOURCE to use the one it names")
    size = request.input_size or loaded.input_size
    loaded.check_input_size(size)
    return loaded, request.label, size


def _request_from_provenance(named: dict[str, Provenance | None], request: ModelRequest) -> ModelRequest:
    """With no SOURCE: the model the named files were made from, which must be one and reloadable."""
    bare = [label for label, provenance in named.items() if provenance is None]
    if bare:
        raise EcaDeployError(f"{bare[0]} does not say which model it was made from (no eca-deploy provenance): "
                             "pass that model as SOURCE")
    models = {provenance.weights_sha256: provenance for provenance in named.values()}
    if len(models) > 1:
        first, second = list(models.values())[:2]
        raise EcaDeployError(f"the named files come from different models ({first.describe()} and "
                             f"{second.describe()}): validate each against its own model")
    (provenance,) = models.values()
    if not provenance.loader:
        raise EcaDeployError(f"{next(iter(named))} was exported from {provenance.source} in Python, which cannot be "
                             "loaded again from here: pass that model (eca_deploy.validate(module, ...)) or its "
                             "checkpoint as SOURCE")
    size = request.input_size or (provenance.input_shape[-1] if provenance.input_shape else None)
    loader = {key: value for key, value in provenance.loader.items() if key in ModelRequest.__dataclass_fields__}
    return dataclasses.replace(ModelRequest(**loader), input_size=size)


@contextlib.contextmanager
def open_session(*, model: ModelRequest, backends: Sequence[str], output_dir: Path, images: ImageRequest,
                 include_torch_cpu: bool, batch_size: int, progress: Progress, fp16: bool = False,
                 plugin: Path | None = None, threads: int | None = None,
                 cuda_graphs: bool = False) -> Iterator[Session]:
    """Check every argument and path, load the reference model, plan and prepare the backends; stage what the run
    writes. ``batch_size`` is the largest batch the run feeds (engines are built for it, images batched by it)."""
    output_dir = check_output_dir(Path(output_dir))
    specs = [parse_backend_spec(spec) for spec in backends]
    check_flags(backends, fp16=fp16, plugin=plugin, cuda_graphs=cuda_graphs, images=images)
    if not specs:
        check_output_dir(output_dir / MODELS_DIR)
    folder = None if images.folder is None else ImageFolderInputs(
        images.folder, None, batch_size=batch_size, class_index=images.class_index, limit=images.limit,
        strict=images.strict)
    precision = "fp16" if fp16 else "fp32"
    with staged_outputs(output_dir) as staging, contextlib.ExitStack() as stack:
        work_dir = None if specs else stack.enter_context(staged_outputs(output_dir / MODELS_DIR))
        plan = plan_backends(specs, work_dir=work_dir, precision=precision, include_torch_cpu=include_torch_cpu,
                             plugin_library=plugin)
        loaded, label, size = resolve_reference(model, specs, progress)
        reference = ReferenceShape((3, size, size), loaded.num_classes, label)
        check_files(plan, reference)
        if folder is not None:
            folder.preprocessing = loaded.preprocessing.for_input_size(size)
            _warn_on_class_count(folder, images.class_index, loaded.num_classes, progress)
        _prepare(plan, loaded, size, precision, (1, min(8, batch_size), batch_size), progress)
        session = Session(loaded, label, plan, reference, folder, progress, staging, output_dir, threads, cuda_graphs)
        yield session
    session.files.update({f"{MODELS_DIR}/{path.name}": output_dir / MODELS_DIR / path.name
                          for path in plan.files.values()})


def _prepare(plan: BackendPlan, loaded: LoadedModel, size: int, precision: str, engine_batch: tuple[int, int, int],
             progress: Progress) -> None:
    """Write the files the automatic plan runs, with the steps ``export`` uses: plain and fused ONNX, engines."""
    if plan.exports:
        plain = plan.exports["onnx"]
        write_onnx_files(loaded, plain.parent, plain.name.removesuffix(".onnx"), precision=precision,
                         input_size=size, progress=progress)
    for engine in plan.engines:
        build_engine_step(engine.onnx_path, engine.engine_path, batch=engine_batch, plugin_library=engine.plugin_library,
                          backend="tensorrt", progress=progress, title=f"the {engine.kind} TensorRT engine")


def _warn_on_class_count(images: ImageFolderInputs, class_index: Path | None, num_classes: int | None,
                         progress: Progress) -> None:
    """Labels index the model's classes: say so when the image folder's classes cannot be the model's."""
    if images.num_classes is None or num_classes is None or images.num_classes == num_classes:
        return
    if class_index:
        progress.warn(f"the class index {class_index} lists {images.num_classes} classes but the model has "
                      f"{num_classes}: top-1/top-5 accuracy is only right if line i names the model's class i")
    else:
        progress.warn(f"{images.root} has {images.num_classes} class folders but the model has {num_classes} "
                      "classes: labels are the sorted folders' positions, so top-1/top-5 accuracy is only right if "
                      "those are the model's classes; pass --class-index to map folders to classes")
