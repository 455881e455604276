"""PyTorch -> ONNX export: dynamic batch, fixed I/O names, checked and shape-inferred, FP32 or FP16.

Default exporter: ``dynamo`` (torch.export). On the zoo it yields the cleanest graph (ECA-MobileNetV2:
253 nodes against 415 from the TorchScript exporter, which adds Identity/Constant nodes and one
Shape per ECA block) and it is the exporter PyTorch maintains. It traces a constant batch and
generalizes it (``_dynamo_export``), twice as fast as a symbolic trace. The ``legacy`` TorchScript
exporter is faster still and is the only one that accepts TorchScript archives; it is used for those.

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
import onnx_graphsurgeon as gs
import torch
from onnxconverter_common import float16
from torch import nn

from eca_deploy.errors import EcaDeployError, first_line
from eca_deploy.onnx_files import check_onnx, save_onnx
from eca_deploy.options import (
    BATCH_DIM,
    DEFAULT_OPSET,
    DYNAMO_MIN_OPSET,
    EXPORTERS,
    INPUT_NAME,
    MIN_OPSET,
    OUTPUT_NAME,
    PRECISIONS,
)
from eca_deploy.passes.values import constant_value
from eca_deploy.provenance import Provenance, stamp

#: Batch of the example input the exporters trace; the parity checks run other batch sizes.
EXAMPLE_BATCH = 2
GENERALIZATION_CHECK_BATCHES = (1, 3)
#: How the batch axis was made: a constant trace generalized and proven, or a symbolic trace.
BATCH_TRACES = ("static, generalized", "symbolic")


@dataclass(frozen=True)
class ExportResult:
    """What was written: the ONNX file (and its external data file, if any) and how."""

    path: Path
    external_data_path: Path | None
    exporter: str
    opset: int
    precision: str
    num_nodes: int
    batch_trace: str = BATCH_TRACES[1]
    fp16_clamped: dict[str, int] = field(default_factory=lambda: {"underflow": 0, "overflow": 0})

    def to_dict(self) -> dict:
        return {
            "file": self.path.name,
            "external_data_file": None if self.external_data_path is None else self.external_data_path.name,
            "exporter": self.exporter,
            "opset": self.opset,
            "precision": self.precision,
            "num_nodes": self.num_nodes,
            "batch_trace": self.batch_trace,
            "fp16_clamped": self.fp16_clamped,
        }


def _torch_export(module: nn.Module, example: torch.Tensor, exporter: str, opset: int, *,
                  symbolic_batch: bool = True) -> onnx.ModelProto:
    """Run one of PyTorch's ONNX exporters silently and return the model in memory. ``symbolic_batch=False``
    lets the dynamo exporter trace the example's batch as a constant."""
    buffer = io.BytesIO()
    common = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    if exporter == "dynamo":
        batch = {"dynamic_shapes": ({0: torch.export.Dim(BATCH_DIM)},)} if symbolic_batch else {}
        kwargs = dict(dynamo=True, verbose=False, optimize=True, **batch)
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


def generalize_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto | None:
    """A copy of a model traced at a constant ``batch`` whose batch axis is symbolic, or None.

    Shape constants that lead with the traced batch become batch-free: an Expand target's
    ``[batch, ...]`` becomes ``[1, ...]`` (broadcasting restores the batch) and a Reshape target's
    ``[batch, ...]`` becomes ``[0, ...]``, the input's batch (with ``allowzero`` off, which changes
    nothing else in a target that held no 0; None if one did). Other constants are left alone, so the
    copy must be proven on other batch sizes before use.
    """
    graph = gs.import_onnx(model)
    for node in graph.nodes:
        if node.op not in ("Expand", "Reshape") or len(node.inputs) < 2:
            continue
        shape = constant_value(node.inputs[1])
        if shape is None or shape.ndim != 1 or shape.size == 0 or shape[0] != batch:
            continue
        if node.op == "Reshape":
            if 0 in shape:
                return None
            node.attrs["allowzero"] = 0
        free = shape.copy()
        free[0] = 1 if node.op == "Expand" else 0
        node.inputs[1] = gs.Constant(f"{node.outputs[0].name}_batch_free_shape", free)
    graph.cleanup()  # the batch-leading targets nothing reads any more
    generalized = gs.export_onnx(graph)
    del generalized.graph.value_info[:]  # the traced shapes
    _name_batch_dims(generalized)
    return generalized


def _dynamo_export(module: nn.Module, example: torch.Tensor, opset: int) -> tuple[onnx.ModelProto, str]:
    """The dynamo export with a dynamic batch, and how its batch axis was made.

    torch.export traces a constant batch about twice as fast as a symbolic one (ECA-MobileNetV2: 7 s
    against 14 s on 2 cores; BENCHMARKS.md), so the static trace comes first: its batch axis is
    generalized (``generalize_batch``) and kept only if ONNX Runtime then matches PyTorch at batch
    sizes other than the traced one. Otherwise the symbolic trace runs.
    """
    static = generalize_batch(_torch_export(module, example, "dynamo", opset, symbolic_batch=False),
                              example.shape[0])
    if static is not None and _matches_module(module, static, tuple(example.shape[1:])):
        return static, BATCH_TRACES[0]
    return _torch_export(module, example, "dynamo", opset), BATCH_TRACES[1]


def _matches_module(module: nn.Module, model: onnx.ModelProto, input_shape: tuple[int, ...]) -> bool:
    """Whether ONNX Runtime runs ``model`` like ``module`` at GENERALIZATION_CHECK_BATCHES (FP32 parity)."""
    from eca_deploy.parity import check_onnx_parity

    try:
        return check_onnx_parity(module, model, input_shape=input_shape,
                                 batch_sizes=GENERALIZATION_CHECK_BATCHES).passed
    except Exception:  # noqa: BLE001 - ONNX Runtime's shape and load errors mean "not generalizable"
        return False


def _name_batch_dims(model: onnx.ModelProto) -> None:
    """Give the batch axis of every graph input and output the same symbolic name."""
    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = BATCH_DIM


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every subgraph computed from constants alone replaced by its value (onnx-graphsurgeon's
    ``fold_constants``, as ``polygraphy surgeon sanitize --fold-constants``).

    Weights a network derives at run time collapse into plain initializers: timm's NFNets standardize their conv
    weights with a training-mode BatchNormalization, which TensorRT's parser refuses (and would recompute on every
    inference); eca_nfnet_l0 goes from 1,167 nodes to 383 with the same outputs.
    """
    from onnx_graphsurgeon.logger import G_LOGGER

    severity = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.ERROR  # its advice about large folded tensors is for interactive use
    try:
        graph = gs.import_onnx(model)
        graph.fold_constants().cleanup()
        folded = gs.export_onnx(graph)
    finally:
        G_LOGGER.severity = severity
    del folded.opset_import[:]  # graphsurgeon may narrow the imports to the ops it saw
    folded.opset_import.extend(model.opset_import)
    folded.ir_version = model.ir_version
    return folded


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
                external_data: bool = False, provenance: Provenance | None = None) -> ExportResult:
    """Export ``module`` (float32; put in eval mode) to a checked ONNX file with a dynamic batch axis.

    The input is named ``input`` (N x C x H x W, float32) and the output ``logits`` (float32),
    whatever ``precision`` is. TorchScript modules always use the legacy exporter. ``provenance`` (where
    the module came from) goes into the file's metadata.
    """
    if precision not in PRECISIONS:
        raise EcaDeployError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    exporter = effective_exporter(module, exporter)
    check_export_options(exporter, opset)
    path = Path(path)
    example = torch.randn(EXAMPLE_BATCH, *input_shape)
    if exporter == "dynamo":
        model, batch_trace = _dynamo_export(module.eval(), example, opset)
    else:
        model, batch_trace = _torch_export(module.eval(), example, exporter, opset), BATCH_TRACES[1]
    model = fold_constants(model)
    clamped = {"underflow": 0, "overflow": 0}
    if precision == "fp16":
        model, clamped = to_float16(model)
    _name_batch_dims(model)
    model.producer_name = "eca-deploy"
    if provenance is not None:
        stamp(model, provenance)
    data_path = save_onnx(model, path, external_data)
    checked = check_onnx(path)
    return ExportResult(path=path, external_data_path=data_path, exporter=exporter, opset=opset,
                        precision=precision, num_nodes=len(checked.graph.node), batch_trace=batch_trace,
                        fp16_clamped=clamped)


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
