"""The measuring steps of the Python API: :func:`validate` (agreement with PyTorch FP32, label accuracy, first
diverging layer) and :func:`bench` (latency, throughput, power), on every backend named or this machine has.

The model is what :func:`eca_deploy.export` takes (``nn.Module``, checkpoint, zoo name, ``timm:NAME``), or none:
then the files named in ``backends`` bring it in their provenance. Images (``images``) go through that model's
preprocessing. Reports (JSON, CSV, Markdown, plots) go to ``output_dir``, staged until the run completes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from eca_deploy.errors import EcaDeployError, ParityError
from eca_deploy.harness.accuracy import validate as compare_backends
from eca_deploy.harness.backends import available_backends, create_backend
from eca_deploy.harness.data import RandomInputs
from eca_deploy.harness.environment import PowerSampler
from eca_deploy.harness.latency import LatencySettings, measure_latency, scenario_summary
from eca_deploy.image_folders import Batch
from eca_deploy.options import POWER_SOURCES
from eca_deploy.parity import DEFAULT_TOLERANCES, tolerance_for
from eca_deploy.pipeline.results import Measured
from eca_deploy.pipeline.session import ImageRequest, ModelRequest, open_session
from eca_deploy.progress import Progress, Sink, as_progress

REFERENCES = ("torch-cpu", "torch-cuda")


def validate(model: nn.Module | str | Path | None = None, backends: Sequence[str] = (), *,
             output_dir: str | Path = "reports/accuracy", input_size: int | None = None, arch: str | None = None,
             kernels: str | None = None, num_classes: int | None = None, weights: str | Path | None = None,
             pretrained: bool = False, timm_args: Mapping[str, Any] | None = None, allow_pickle: bool = False,
             images: str | Path | None = None, class_index: str | Path | None = None, limit: int | None = None,
             strict: bool = False, batch_size: int = 8, num_batches: int = 4, seed: int = 0,
             precision: str | None = None, atol: float | None = None, rtol: float | None = None,
             localize: bool = True, reference: str = "torch-cpu", fp16: bool = False,
             plugin: str | Path | None = None, threads: int | None = None,
             progress: Progress | Sink | None = None, check: bool = True) -> Measured:
    """Compare ``backends`` (``"ort-cpu=model.eca.onnx"``, ``"trt=m.engine"``, ``"torch-cpu"`` ...; none: export
    the model and use every backend this machine has) with the PyTorch FP32 model on the same inputs; writes
    ``accuracy.json/.csv/.md``. A backend beyond its precision's tolerance (or ``precision``, ``atol``, ``rtol``)
    fails the check (:class:`~eca_deploy.errors.ParityError`, after the report is written)."""
    progress = as_progress(progress)
    if reference not in REFERENCES:
        raise EcaDeployError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    unavailable = available_backends()[reference]
    if unavailable is not None:
        raise EcaDeployError(f"--reference {reference} cannot run here: {unavailable}")
    if precision is not None and precision not in DEFAULT_TOLERANCES:
        raise EcaDeployError(f"precision must be one of {', '.join(DEFAULT_TOLERANCES)}, got {precision!r}")
    tolerances = {name: tolerance_for(precision or name, atol=atol, rtol=rtol) for name in DEFAULT_TOLERANCES}
    request = _model_request(model, input_size, arch, kernels, num_classes, weights, pretrained, timm_args, allow_pickle)
    folder = ImageRequest(_path(images), _path(class_index), limit, strict)
    with open_session(model=request, backends=list(backends), output_dir=Path(output_dir), images=folder,
                      include_torch_cpu=False, batch_size=batch_size, progress=progress, fp16=fp16,
                      plugin=_path(plugin), threads=threads) as session:
        inputs = session.images or RandomInputs(session.input_shape, batch_size=batch_size, num_batches=num_batches,
                                                seed=seed)
        reference_backend = create_backend(reference, module_factory=session.module, threads=threads)
        with session.backends() as candidates:
            result = compare_backends(reference_backend, candidates, inputs, tolerances=tolerances,
                                      module_factory=session.module, localize=localize, progress=progress,
                                      total=len(inputs))
        report = session.write("accuracy", inputs.describe(), result.to_dict())
    lines = []
    if result.reference_labels:
        labels = result.reference_labels
        lines.append(f"reference pytorch-fp32: top-1 accuracy {labels['top1']:.1%}, top-5 {labels['top5']:.1%} on "
                     f"{labels['samples']} images")
    lines += [candidate.summary() for candidate in result.candidates]
    measured = Measured(files=session.files, report=report, lines=lines, output_dir=session.output_dir)
    if not result.passed:
        failed = ", ".join(c.backend["name"] for c in result.candidates if not c.passed)
        measured.failure = ParityError(f"{failed} disagreed with PyTorch FP32 beyond tolerance; see "
                                       f"{Path(output_dir) / 'accuracy.md'}")
    if check:
        measured.raise_failure()
    return measured


def bench(model: nn.Module | str | Path | None = None, backends: Sequence[str] = (), *,
          output_dir: str | Path = "reports/latency", input_size: int | None = None, arch: str | None = None,
          kernels: str | None = None, num_classes: int | None = None, weights: str | Path | None = None,
          pretrained: bool = False, timm_args: Mapping[str, Any] | None = None, allow_pickle: bool = False,
          images: str | Path | None = None, class_index: str | Path | None = None, limit: int | None = None,
          strict: bool = False, batch_sizes: Sequence[int] = (1, 8), warmup_iterations: int = 5,
          warmup_seconds: float = 0.5, iterations: int = 20, duration: float = 2.0, cuda_graphs: bool = False,
          power: str = "auto", power_interval: float = 0.05, plots: bool = True, seed: int = 0, fp16: bool = False,
          plugin: str | Path | None = None, threads: int | None = None,
          progress: Progress | Sink | None = None) -> Measured:
    """Time ``backends`` (as :func:`validate`) at every batch size: percentiles, throughput, stages, power on
    Jetson; writes ``latency.json/.csv/.md`` and the PNG plots (``plots``)."""
    progress = as_progress(progress)
    if power not in POWER_SOURCES:
        raise EcaDeployError(f"power must be one of {', '.join(POWER_SOURCES)}, got {power!r}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise EcaDeployError(f"batch sizes must be at least 1, got {list(batch_sizes)}")
    try:
        settings = LatencySettings(warmup_iterations, warmup_seconds, iterations, duration)
    except ValueError as error:
        raise EcaDeployError(str(error)) from error
    sizes = sorted(set(batch_sizes))
    sampler = PowerSampler(power, interval_s=power_interval)
    request = _model_request(model, input_size, arch, kernels, num_classes, weights, pretrained, timm_args, allow_pickle)
    folder = ImageRequest(_path(images), _path(class_index), limit, strict)
    with open_session(model=request, backends=list(backends), output_dir=Path(output_dir), images=folder,
                      include_torch_cpu=True, batch_size=max(sizes), progress=progress, fp16=fp16,
                      plugin=_path(plugin), threads=threads, cuda_graphs=cuda_graphs) as session:
        random = RandomInputs(session.input_shape, batch_size=max(sizes), num_batches=1, seed=seed)
        if session.images:
            next_batch = session.images.batch_of
        else:
            pool = {size: [random.batch(size, index) for index in range(2)] for size in sizes}

            def next_batch(size: int, index: int) -> Batch:
                return Batch(pool[size][index % 2], None)

        results = []
        with session.backends() as opened, progress.bar(len(opened) * len(sizes), "Benchmarking") as bar:
            for backend in opened:
                for size in sizes:
                    results.append(measure_latency(backend, size, next_batch, settings=settings, sampler=sampler,
                                                   bar=bar))
        summary = scenario_summary(results)
        body = {"settings": asdict(settings) | {"batch_sizes": sizes, "cuda_graphs": cuda_graphs,
                                                "power_source": sampler.source},
                "results": [result.to_dict() for result in results], "summary": summary}
        inputs = (session.images or random).describe() | {"batch_sizes": sizes}  # after the run: its skips
        report = session.write("latency", inputs, body, plots=plots)
    return Measured(files=session.files, report=report, output_dir=session.output_dir,
                    lines=[_scenario_line(name, figures) for name, figures in summary.items()])


def _scenario_line(name: str, figures: dict[str, Any]) -> str:
    single, offline = figures["single_stream"], figures["offline"]
    line = f"{name}: "
    if single:
        line += f"single-stream p50 {single['p50_ms']:.3f} ms, p99 {single['p99_ms']:.3f} ms; "
    line += f"offline {offline['throughput_images_per_s']:.1f} images/s at batch {offline['batch_size']}"
    if offline["joules_per_image"] is not None:
        line += f", {offline['joules_per_image'] * 1e3:.2f} mJ/image"
    return line


def _model_request(model: nn.Module | str | Path | None, input_size: int | None, arch: str | None,
                   kernels: str | None, num_classes: int | None, weights: str | Path | None, pretrained: bool,
                   timm_args: Mapping[str, Any] | None, allow_pickle: bool) -> ModelRequest:
    return ModelRequest(model, arch, kernels, num_classes, allow_pickle, weights, pretrained, timm_args, input_size)


def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)
