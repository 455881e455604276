"""PyTorch -> ONNX export: dynamic batch, fixed I/O names, checked and shape-inferred, FP32 or FP16.

Default exporter: ``dynamo`` (torch.export). On the zoo it yields the cleanest graph (ECA-MobileNetV2:
261 nodes against 415 from the TorchScript exporter, which adds Identity/Constant nodes and one
Shape per ECA block) and it is the exporter PyTorch maintains. The ``legacy`` TorchScript exporter is
about 15x faster and is the only one that accepts TorchScript archives; it is used for those.

FP16 (``precision="fp16"``): the FP32 graph is converted with onnxconverter-common
(``keep_io_types=True``): the graph computes in FP16 with a Cast at each edge while I/O stays FP32
(callers, parity checks and Triton configs keep feeding float32). TensorRT >= 11 builds it strongly
typed: precision comes from these ONNX types. scripts/compare_fp16_routes.py measured it against
ModelOpt AutoCast and exporting ``module.half()``; the README's "FP16" section has the numbers.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from onnxconverter_common import float16
from torch import nn

from eca_deploy.errors import EcaDeployError, first_line
from eca_deploy.onnx_files import check_onnx, save_onnx
from eca_deploy.options import (BATCH_DIM, DEFAULT_OPSET, DYNAMO_MIN_OPSET, EXPORTERS, INPUT_NAME, MIN_OPSET,
                                OUTPUT_NAME, PRECISIONS)



@dataclass(frozen=True)
class ExportResult:
    """What was written: the ONNX file (and its external data file, if any) and how."""

    path: Path
    external_data_path: Path | None
    exporter: str
    opset: int
    precision: str
    num_nodes: int
    fp16_clamped: dict[str, int] = field(default_factory=lambda: {"underflow": 0, "overflow": 0})

    def to_dict(self) -> dict:
        return {
            "file": self.path.name,
            "external_data_file": None if self.external_data_path is None else self.external_data_path.name,
            "exporter": self.exporter,
            "opset": self.opset,
            "precision": self.precision,
            "num_nodes": self.num_nodes,
            "fp16_clamped": self.fp16_clamped,
        }


def _torch_export(module: nn.Module, example: torch.Tensor, exporter: str, opset: int) -> onnx.ModelProto:
    """Run one of PyTorch's ONNX exporters silently and return the model in memory."""
    buffer = io.BytesIO()
    common = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    if exporter == "dynamo":
        kwargs = dict(dynamo=True, dynamic_shapes=({0: torch.export.Dim(BATCH_DIM)},), verbose=False,
                      optimize=True)
    else:
        kwargs = dict(dynamo=False, do_constant_folding=True,
                      dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}})
    quiet_loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch._dynamo", "torch.export",
                                                            "onnxscript")]
    levels = [logger.level for logger in quiet_loggers]
    try:
        for logger in quiet_loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                program = torch.onnx.export(module, (example,), **common, **kwargs)
                return program.model_proto
            torch.onnx.export(module, (example,), buffer, **common, **kwargs)
    except Exception as error:  # exporter failures carry long internal traces: keep the first line
        raise EcaDeployError(f"the {exporter} ONNX exporter failed: {first_line(error)}") from error
    finally:
        for logger, level in zip(quiet_loggers, levels):
            logger.setLevel(level)
    return onnx.load_from_string(buffer.getvalue())


def _name_batch_dims(model: onnx.ModelProto) -> None:
    """Give the batch axis of every graph input and output the same symbolic name."""
    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = BATCH_DIM


def effective_exporter(module: nn.Module, requested: str) -> str:
    """The exporter that will run: TorchScript archives always go through the legacy exporter, which is
    the only one that reads them."""
    return "legacy" if isinstance(module, torch.jit.ScriptModule) else requested


def check_export_options(exporter: str, opset: int) -> None:
    """Refuse option combinations the exporters cannot honour, before any model is loaded."""
    if exporter not in EXPORTERS:
        raise EcaDeployError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise EcaDeployError(f"opset must be between {MIN_OPSET} and {onnx.defs.onnx_opset_version()}, got {opset}")
    if exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise EcaDeployError(f"the dynamo exporter needs opset >= {DYNAMO_MIN_OPSET} (got {opset}): "
                             "pass --exporter legacy")


def export_onnx(module: nn.Module, path: str | Path, *, input_shape: tuple[int, int, int] = (3, 224, 224),
                precision: str = "fp32", opset: int = DEFAULT_OPSET, exporter: str = "dynamo",
                external_data: bool = False) -> ExportResult:
    """Export ``module`` (float32; put in eval mode) to a checked ONNX file with a dynamic batch axis.

    The input is named ``input`` (N x C x H x W, float32) and the output ``logits`` (float32),
    whatever ``precision`` is. TorchScript modules always use the legacy exporter.
    """
    if precision not in PRECISIONS:
        raise EcaDeployError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    exporter = effective_exporter(module, exporter)
    check_export_options(exporter, opset)
    path = Path(path)
    model = _torch_export(module.eval(), torch.randn(2, *input_shape), exporter, opset)
    clamped = {"underflow": 0, "overflow": 0}
    if precision == "fp16":
        model, clamped = to_float16(model)
    _name_batch_dims(model)
    model.producer_name = "eca-deploy"
    data_path = save_onnx(model, path, external_data)
    checked = check_onnx(path)
    return ExportResult(path=path, external_data_path=data_path, exporter=exporter, opset=opset,
                        precision=precision, num_nodes=len(checked.graph.node), fp16_clamped=clamped)


def to_float16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """FP16 weights and compute with float32 I/O (onnxconverter-common), and how often values were clamped.

    Nonzero magnitudes below 1e-7 become +-1e-7 (``underflow``, harmless); magnitudes beyond 1e4,
    the converter's limit, become +-1e4 (``overflow``, an accuracy risk worth a look). The
    converter warns once per tensor and sign; the warnings are counted here instead of flooding stderr.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    messages = [str(w.message) for w in caught if "will be truncated to" in str(w.message)]
    overflow = sum(abs(float(message.rsplit(" ", 1)[1])) >= 1 for message in messages)
    return converted, {"underflow": len(messages) - overflow, "overflow": overflow}
