"""The conversion steps of the Python API: a model to checked ONNX files (:func:`export`), any ONNX model's ECA
blocks fused (:func:`fuse`), an ONNX model to a TensorRT engine (:func:`build_engine`).

Each takes what a user holds (an ``nn.Module``, a checkpoint path, a zoo name, ``timm:NAME``; an ONNX path or
``onnx.ModelProto``), checks every argument and output before any work, stages what it writes (a failure or
Ctrl-C leaves no half-written file) and returns a small result (files, report, summary). Bad input raises
:class:`~eca_deploy.errors.EcaDeployError`; a failed check of the result (parity, equivalence, plugin layers)
raises after the files are written (``check=False`` returns it in ``result.failure`` instead). Progress is
silent by default: pass a callable to receive each line, or a :class:`~eca_deploy.progress.Progress`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
from torch import nn

from eca_deploy._version import __version__
from eca_deploy._io import check_output_dir, check_output_file, staged_outputs, write_text_atomic
from eca_deploy.checkpoints import load_model
from eca_deploy.errors import EcaDeployError, ParityError, PluginNotUsedError
from eca_deploy.onnx_export import check_export_options
from eca_deploy.onnx_files import load_onnx, onnx_precision, save_checked
from eca_deploy.options import CALIBRATION_METHODS, DEFAULT_OPSET, DEFAULT_SOURCE
from eca_deploy.parity import check_onnx_equivalence, check_onnx_files_parity, tolerance_for
from eca_deploy.passes import fuse_eca
from eca_deploy.passes.fused_node import plugin_only_path, without_fallback_function
from eca_deploy.pipeline.results import Exported, Fused, StepResult
from eca_deploy.pipeline.steps import EXPORT_PRECISIONS, build_engine_step, write_onnx_files
from eca_deploy.progress import Progress, Sink, as_progress
from eca_deploy.quantize import CalibrationImages, random_calibration

EXPORT_REPORT_SCHEMA_VERSION = 2  # 2: parity results name their errors as validate does (max_elementwise_rel_error ...)
FUSE_ATOL = {"fp32": 1e-5, "fp16": 2e-3, "int8": 1e-5}  # fused against original on ONNX Runtime
_CHECKPOINT_SUFFIXES = (".pth.tar", ".safetensors", ".pth", ".pt", ".tar", ".ckpt", ".bin")


def output_stem(source: str | Path | nn.Module) -> str:
    """File name stem for outputs: the checkpoint's name without its suffixes, the zoo or timm name, or the
    module's class name."""
    if isinstance(source, nn.Module):
        return type(source).__name__
    name = Path(str(source).removeprefix("timm:")).name
    for suffix in _CHECKPOINT_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def export(model: nn.Module | str | Path = DEFAULT_SOURCE, output_dir: str | Path = "exported", *,
           precision: str = "fp32", input_size: int | None = None, name: str | None = None,
           arch: str | None = None, kernels: str | None = None, num_classes: int | None = None,
           weights: str | Path | None = None, pretrained: bool = False, timm_args: Mapping[str, Any] | None = None,
           allow_pickle: bool = False, opset: int = DEFAULT_OPSET, exporter: str = "dynamo",
           external_data: bool = False, fuse: bool = True, expect: int | None = None, plugin_only: bool = False,
           calib: str | Path | None = None, calib_size: int = 64, calib_method: str = CALIBRATION_METHODS[0],
           strict: bool = False, seed: int = 0, atol: float | None = None, rtol: float | None = None,
           engine: bool = False, batch: tuple[int, int, int] = (1, 8, 32), plugin: str | Path | None = None,
           triton_repo: str | Path | None = None, progress: Progress | Sink | None = None,
           check: bool = True) -> Exported:
    """Export ``model`` to checked ONNX in ``output_dir``: ``<stem>.onnx`` (``precision`` fp32, fp16 or int8) and,
    with ``fuse``, ``<stem>.eca.onnx``, both checked against the PyTorch model on ONNX Runtime CPU, with a JSON
    report; optionally an engine (``engine``) and a Triton repository (``triton_repo``).

    ``model``: an ``nn.Module``, a checkpoint file, a zoo name or ``timm:NAME`` (with ``weights``,
    ``pretrained``, ``timm_args``). ``input_size`` defaults to the model's (224, or a timm model's). INT8
    calibrates on the images of ``calib`` (else seeded random inputs, with a warning).
    """
    progress = as_progress(progress)
    output_dir = check_output_dir(Path(output_dir))
    if triton_repo is not None:
        check_output_dir(Path(triton_repo), "--triton-repo")
    if precision not in EXPORT_PRECISIONS:
        raise EcaDeployError(f"precision must be one of {', '.join(EXPORT_PRECISIONS)}, got {precision!r}")
    if plugin is not None and not engine:
        raise EcaDeployError("--plugin is for the engine: add --engine (the fused ONNX needs no plugin library)")
    if plugin_only and not fuse:
        raise EcaDeployError("--plugin-only writes a variant of the fused model: drop --no-fuse")
    if calib is not None and precision != "int8":
        raise EcaDeployError("--calib calibrates INT8 quantization: add --int8")
    if strict and calib is None:
        raise EcaDeployError("--strict applies to a calibration folder: add --calib DIR")
    if calib_method not in CALIBRATION_METHODS:
        raise EcaDeployError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}")
    check_export_options(exporter, opset)
    tolerance = tolerance_for(precision, atol=atol, rtol=rtol)
    calibration_images = CalibrationImages(Path(calib), strict=strict) if calib is not None else None
    if engine:
        from eca_deploy.tensorrt.engine import BatchProfile
        from eca_deploy.tensorrt.plugin_library import resolve_plugin_library

        BatchProfile(*batch)
        resolve_plugin_library(None if plugin is None else Path(plugin))

    progress.total_steps = 4 - (not fuse) + (precision == "int8") + engine + (triton_repo is not None)
    label = f"nn.Module {type(model).__name__}" if isinstance(model, nn.Module) else str(model)
    with progress.step(f"Loading {label}"):
        loaded = load_model(model, arch=arch, kernels=kernels, num_classes=num_classes, allow_pickle=allow_pickle,
                            weights=weights, pretrained=pretrained, timm_args=timm_args)
    size = input_size or loaded.input_size
    loaded.check_input_size(size)
    classes = f"{loaded.num_classes} classes" if loaded.num_classes else "class count unknown"
    progress.info(f"  {loaded.arch or 'unknown architecture'}, ECA kernels {loaded.kernel_spec}, {classes}, "
                  f"{size} x {size} input ({loaded.source_kind})")
    stem = name or output_stem(model)
    tag = stem if precision == "fp32" else f"{stem}.{precision}"
    preprocessing = loaded.preprocessing.for_input_size(size)
    calibration, parity_inputs = None, None
    if precision == "int8":
        if calibration_images is not None:
            calibration_images.inputs.preprocessing = preprocessing
            calibration = calibration_images.load(calib_size)
            parity_inputs = calibration_images.parity_batches(calib_size)
        else:
            calibration = random_calibration((3, size, size), calib_size, seed=seed)
            progress.warn(f"no --calib folder: calibrating on {calib_size} seeded random inputs; ranges from real "
                          "images (--calib DIR) give a more accurate INT8 model")

    provenance = loaded.provenance(size, precision)
    report: dict[str, Any] = {
        "schema_version": EXPORT_REPORT_SCHEMA_VERSION, "tool": f"eca-deploy {__version__}", "source": label,
        "source_kind": loaded.source_kind, "arch": loaded.arch, "kernel_sizes": list(loaded.kernel_sizes),
        "num_classes": loaded.num_classes, "precision": precision, "input_shape": [3, size, size],
        "preprocessing": preprocessing.to_dict(), "provenance": provenance.to_dict()}
    result = Exported()
    with staged_outputs(output_dir) as staging:
        onnx_files = write_onnx_files(loaded, staging, tag, precision=precision, input_size=size, progress=progress,
                                      opset=opset, exporter=exporter, external_data=external_data, fuse=fuse,
                                      plugin_only=plugin_only, calibration=calibration, calib_method=calib_method)
        report["export"] = onnx_files.export.to_dict()
        if onnx_files.quantization is not None:
            report["quantization"] = onnx_files.quantization.to_dict()
            if calibration_images is not None and calibration_images.inputs.skipped.count:
                progress.warn(calibration_images.inputs.skipped.summary(calibration_images.folder))
        if onnx_files.fusion is not None:
            report["fusion"] = onnx_files.fusion.to_dict()
            if expect is not None and onnx_files.fusion.num_fused != expect:
                raise EcaDeployError(f"fused {onnx_files.fusion.num_fused} ECA blocks, expected {expect}")
        checked = [onnx_files.onnx] + ([onnx_files.fused] if onnx_files.fused else [])
        with progress.step("Checking parity on ONNX Runtime CPU"):
            parities = check_onnx_files_parity(loaded.module, checked, precision=precision, input_shape=(3, size, size),
                                               seed=seed, inputs=parity_inputs, tolerance=tolerance)
        for parity in parities:
            progress.info(f"  {parity.summary()}")
        report["parity"] = [parity.to_dict() for parity in parities]
        failed = [Path(p.model).name for p in parities if not p.passed]
        report_path = output_dir / f"{tag}.report.json"
        if failed:
            result.failure = ParityError(f"parity failed for {', '.join(failed)}; see {report_path}")

        engine_path = None
        if engine:
            try:
                built = build_engine_step(checked[-1], staging / f"{tag}.engine", progress=progress,
                                          precision=precision, batch=batch,
                                          plugin_library=None if plugin is None else Path(plugin))
                report["engine"] = built.to_dict()
                engine_path = staging / f"{tag}.engine"
            except PluginNotUsedError as error:  # exit 1: no engine, the ONNX files and the report kept
                report["engine"] = {"failed": str(error)}
                result.failure = result.failure or PluginNotUsedError(
                    f"{error}; the ONNX files and {report_path.name} are kept")
        if triton_repo is not None:
            from eca_deploy.serving.triton_repo import write_triton_repository

            with progress.step(f"Writing Triton model repository {triton_repo}"):
                triton = write_triton_repository(
                    Path(triton_repo), checked[-1], engine_path=engine_path,
                    plugin_library=None if engine_path is None or plugin is None else Path(plugin), model_name=tag,
                    max_batch_size=batch[2], opt_batch=batch[1], preferred_batch_sizes=(batch[1],))
            report["triton"] = triton.to_dict()
            result.files["triton_repo"] = Path(triton_repo)
            for variant, reason in triton.skipped.items():
                progress.info(f"  Triton {variant} model not written: {reason}")

        roles = {**onnx_files.files, **({"engine": engine_path} if engine_path else {})}
        report["files"] = sorted([path.name for path in staging.iterdir()] + [report_path.name])
        (staging / report_path.name).write_text(json.dumps(report, indent=2) + "\n")
    result.files.update({role: output_dir / path.name for role, path in roles.items()} | {"report": report_path})
    result.report = report
    return _finished(result, check)


def fuse(model: str | Path | onnx.ModelProto, output: str | Path | None = None, *, report: str | Path | None = None,
         expect: int | None = None, verify: bool = True, plugin_only: bool = False, external_data: bool = False,
         allow_unfused: bool = False, progress: Progress | Sink | None = None, check: bool = True) -> Fused:
    """Fuse every ECA block of an ONNX model into one EcaAttention node.

    A path writes ``output`` (default ``<model>.eca.onnx`` beside it) and its report (``<output
    stem>.fusion.json``), checked on ONNX Runtime CPU against the original (``verify``); a ``ModelProto`` with no
    ``output`` is fused in memory (``result.model``). No ECA block is an error unless ``allow_unfused``.
    """
    progress = as_progress(progress)
    source = None if isinstance(model, onnx.ModelProto) else Path(model)
    output = Path(output) if output is not None else (
        source.with_name(f"{source.name.removesuffix('.onnx')}.eca.onnx") if source is not None else None)
    report_path = None
    if output is not None:
        check_output_file(output, "-o", f"{(source or output).name.removesuffix('.onnx')}.eca.onnx")
        report_path = check_output_file(
            Path(report) if report is not None else output.with_name(f"{output.name.removesuffix('.onnx')}.fusion.json"),
            "--report", f"{output.name.removesuffix('.onnx')}.fusion.json")
        if source is not None and output.resolve() == source.resolve():
            raise EcaDeployError("the output would overwrite the input model: pass another -o")
    progress.total_steps = 2 + (verify and output is not None)
    if source is not None:
        with progress.step(f"Loading {source}"):
            model = load_onnx(source)
    with progress.step("Fusing ECA blocks"):
        fused, fusion = fuse_eca(model)
    progress.answer(fusion.summary_table())
    if expect is not None and fusion.num_fused != expect:
        raise EcaDeployError(f"fused {fusion.num_fused} ECA blocks, expected {expect}")
    if fusion.num_fused == 0 and not (allow_unfused or expect == 0):
        why = f"{len(fusion.near_misses)} near-misses are listed above" if fusion.near_misses else "no candidate found"
        name = source.name if source is not None else "the model"
        raise EcaDeployError(f"no ECA block to fuse in {name} ({why}); nothing written (--allow-unfused writes an "
                             "unchanged copy)")
    result = Fused(report=fusion.to_dict(), model=fused)
    if output is None:
        return result
    together = report_path.parent.resolve() == output.parent.resolve()
    with staged_outputs(output.parent) as staging:
        staged = staging / output.name
        save_checked(fused, staged, external_data)
        result.files["fused"] = output
        if plugin_only:
            save_checked(without_fallback_function(fused), plugin_only_path(staged), external_data)
            result.report["plugin_only"] = plugin_only_path(output).name
            result.files["plugin_only"] = plugin_only_path(output)
        if verify and fusion.num_fused:
            _verify_fused(source, model, staged, result, progress)
        if together:  # the report lands with the models, all or nothing
            (staging / report_path.name).write_text(json.dumps(result.report, indent=2) + "\n")
    if not together:
        write_text_atomic(report_path, json.dumps(result.report, indent=2) + "\n")
    result.files["report"] = report_path
    return _finished(result, check)


def _verify_fused(source: Path | None, original: onnx.ModelProto, fused_path: Path, result: Fused,
                  progress: Progress) -> None:
    """The fused file against the original on ONNX Runtime CPU; a difference is ``result.failure`` (exit 1)."""
    with tempfile.TemporaryDirectory(prefix="eca-fuse-") as scratch:
        if source is None:  # a model held in memory: ONNX Runtime reads it from a file like the fused one
            source = Path(scratch) / "original.onnx"
            onnx.save(original, str(source))
        try:
            with progress.step("Checking the fused model against the original on ONNX Runtime CPU"):
                equivalence = check_onnx_equivalence(source, fused_path, atol=FUSE_ATOL[onnx_precision(original)])
        except ParityError as error:
            result.failure = ParityError(f"{error}; the files are kept for inspection")
            result.report["verification_failed"] = str(error)
            return
    result.report["max_abs_difference"] = equivalence.max_abs_difference
    result.report["verified_batches"] = list(equivalence.batches)
    batches = " and ".join(map(str, equivalence.batches))
    progress.info(f"  same outputs at batch {batches} (max abs difference {equivalence.max_abs_difference:.2g})")
    for size, reason in equivalence.skipped.items():
        progress.info(f"  not checked at batch {size}: the original model itself fails there ({reason})")


def build_engine(model: str | Path, output: str | Path | None = None, *, report: str | Path | None = None,
                 progress: Progress | Sink | None = None, check: bool = True, **options: Any) -> StepResult:
    """Build a TensorRT engine from an ONNX model (plain or fused): ``output`` (default ``<model stem>.engine``
    beside it) and its JSON report (``<engine>.json``: layers, plugin layers, provenance). ``options`` are those of
    :func:`eca_deploy.tensorrt.engine.build_engine` (``batch``, ``plugin_library``, ``precision``,
    ``embed_plugin``, ``aot``, ``precision_route``, ``backend``, ``cache_dir``, ``verbose``). An engine that did
    not get the plugin layers asked for is not written (``PluginNotUsedError``)."""
    progress = as_progress(progress)
    model = Path(model)
    default_name = f"{model.name.removesuffix('.onnx')}.engine"
    output = check_output_file(Path(output) if output is not None else model.with_name(default_name), "-o",
                               default_name)
    report_path = check_output_file(Path(report) if report is not None else output.with_name(output.name + ".json"),
                                    "--report", output.name + ".json")
    progress.total_steps = 1
    result = StepResult()
    try:
        built = build_engine_step(model, output, progress=progress, title="engine", **options)
    except PluginNotUsedError as error:
        if check:
            raise
        result.failure = error
        return result
    result.report = built.to_dict()
    write_text_atomic(report_path, json.dumps(result.report, indent=2) + "\n")
    result.files.update({"engine": output, "report": report_path})
    return result


def _finished(result: StepResult, check: bool) -> Any:
    if check:
        result.raise_failure()
    return result
