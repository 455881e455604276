"""The steps every route through the pipeline shares, each written once: a loaded model to its ONNX files (plain,
INT8, fused, plugin-only, with provenance), and an ONNX file to an engine. ``eca_deploy.export`` composes them
with the parity check; the automatic plan of ``validate``/``bench`` uses the same ones."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from eca_deploy.checkpoints import LoadedModel
from eca_deploy.errors import EcaDeployError
from eca_deploy.onnx_export import ExportResult, effective_exporter, export_onnx
from eca_deploy.onnx_files import save_checked
from eca_deploy.options import DEFAULT_OPSET
from eca_deploy.passes import FusionReport, fuse_eca
from eca_deploy.passes.fused_node import plugin_only_path, without_fallback_function
from eca_deploy.progress import Progress
from eca_deploy.quantize import CalibrationData, QuantizationReport, quantize_int8

EXPORT_PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class OnnxFiles:
    """What :func:`write_onnx_files` wrote and did."""

    onnx: Path
    export: ExportResult
    fused: Path | None = None
    plugin_only: Path | None = None
    fusion: FusionReport | None = None
    quantization: QuantizationReport | None = None
    files: dict[str, Path] = field(default_factory=dict)  # role -> path


def write_onnx_files(loaded: LoadedModel, folder: Path, stem: str, *, precision: str, input_size: int,
                     progress: Progress, opset: int = DEFAULT_OPSET, exporter: str = "dynamo",
                     external_data: bool = False, fuse: bool = True, plugin_only: bool = False,
                     calibration: CalibrationData | None = None, calib_method: str = "entropy") -> OnnxFiles:
    """Export ``loaded`` as ``folder/<stem>.onnx`` (FP32, FP16, or INT8 quantized from the FP32 export with
    ``calibration``) and fuse it into ``<stem>.eca.onnx`` (and ``.eca.plugin.onnx``): every file carries the
    model's provenance."""
    if precision not in EXPORT_PRECISIONS:
        raise EcaDeployError(f"precision must be one of {', '.join(EXPORT_PRECISIONS)}, got {precision!r}")
    if precision == "int8" and calibration is None:
        raise EcaDeployError("an INT8 export needs calibration data")
    exporter = effective_exporter(loaded.module, exporter)
    shape = (3, input_size, input_size)
    export_precision = "fp32" if precision == "int8" else precision  # INT8 quantizes the FP32 export
    plain = folder / f"{stem}.onnx"
    with tempfile.TemporaryDirectory(prefix="eca-export-") as scratch:
        exported_path = Path(scratch) / plain.name if precision == "int8" else plain
        with progress.step(f"Exporting {export_precision.upper()} ONNX ({exporter} exporter, opset {opset})"):
            exported = export_onnx(loaded.module, exported_path, input_shape=shape, precision=export_precision,
                                   opset=opset, exporter=exporter, external_data=external_data,
                                   provenance=loaded.provenance(input_size, export_precision))
        result = OnnxFiles(plain, exported, files={"onnx": plain})
        if precision == "int8":
            with progress.step(f"Quantizing to INT8 ({calib_method} calibration on {calibration.samples} "
                               f"{calibration.source['kind']} samples)"):
                result.quantization = quantize_int8(exported_path, plain, calibration, method=calib_method,
                                                    external_data=external_data,
                                                    provenance=loaded.provenance(input_size, "int8"))
            progress.info(f"  {result.quantization.summary()}")
    if any(exported.fp16_clamped.values()):
        clamped = exported.fp16_clamped
        progress.info(f"  FP16 weights: {clamped['underflow']} tensors held values below 1e-7 (set to +-1e-7), "
                      f"{clamped['overflow']} beyond 1e4 (clamped to +-1e4)")
    if fuse:
        with progress.step("Fusing ECA blocks"):
            fused_model, result.fusion = fuse_eca(onnx.load(str(plain)))
            result.fused = folder / f"{stem}.eca.onnx"
            save_checked(fused_model, result.fused, external_data)
            result.files["fused"] = result.fused
            if plugin_only:
                result.plugin_only = plugin_only_path(result.fused)
                save_checked(without_fallback_function(fused_model), result.plugin_only, external_data)
                result.files["plugin_only"] = result.plugin_only
        progress.info(result.fusion.summary_table())
    return result


def build_engine_step(onnx_path: Path, engine_path: Path, *, progress: Progress, title: str = "TensorRT engine",
                      **options) -> object:
    """:func:`eca_deploy.tensorrt.engine.build_engine` as one progress step (TensorRT imported only here)."""
    from eca_deploy.tensorrt.engine import build_engine

    with progress.step(f"Building {title} {engine_path.name}"):
        return build_engine(onnx_path, engine_path, progress=progress, **options)
