"""The ECA fusion pass: every ECA block of an ONNX model becomes one EcaAttention node.

Large weights never pass through shape inference or the checker here: both run on a *skeleton*
of the model whose big initializers are typed graph inputs, which keeps the pass fast
(ECA-ResNet-152 in a fraction of a second).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from eca_deploy.errors import EcaDeployError, first_line
from eca_deploy.passes.fused_node import (
    default_opset,
    is_fallback_function,
    make_eca_function,
    make_eca_node,
)
from eca_deploy.passes.matcher import EcaMatch, TensorType, find_eca_blocks, label
from eca_deploy.passes.report import FusedBlock, FusionReport
from eca_deploy.schema import eca_schema

SKELETON_MAX_ELEMENTS = 4096  # initializers up to this size keep their values in the skeleton
FUNCTIONS_MIN_IR_VERSION = 8  # model-local functions need IR version 8


def fuse_eca(model: onnx.ModelProto, *, verify: bool = True) -> tuple[onnx.ModelProto, FusionReport]:
    """Return a new model with every ECA block fused into an EcaAttention node, and the report.

    Idempotent; graph inputs, outputs and their names are unchanged. ``verify`` runs the full
    ONNX checker (strict shape inference included) on the fused model. Invalid models raise
    EcaDeployError.
    """
    skeleton = _skeleton(model)
    _check(skeleton, full=False, what="the input model")
    try:
        opset = default_opset(model)
    except ValueError as error:
        raise EcaDeployError(f"the input model is not a valid ONNX model: {error}") from error
    graph = gs.import_onnx(model)
    graph.import_domains = list(graph.import_domains)  # graphsurgeon would append to the input model's list
    matches, near_misses = find_eca_blocks(graph, _tensor_types(skeleton), opset)
    report = FusionReport(near_misses=near_misses)
    if not matches:
        unchanged = onnx.ModelProto()
        unchanged.CopyFrom(model)
        return unchanged, report
    node_names, tensor_names = {node.name for node in graph.nodes}, set(graph.tensors())
    for match in matches:
        report.fused.append(_replace(graph, match, node_names, tensor_names))
    graph.cleanup().toposort()
    fused = _export(graph, model, opset)
    if verify:
        _check(_skeleton(fused), full=True, what="the fused model")
    return fused, report


def _replace(graph: gs.Graph, match: EcaMatch, node_names: set[str], tensor_names: set[str]) -> FusedBlock:
    """Put an EcaAttention node in place of ``match`` (the chain is left for cleanup)."""
    name = _unique(_fused_name(match), node_names)
    weight = match.weight
    if not (isinstance(weight, gs.Constant) and weight.dtype == match.dtype):
        values = np.ascontiguousarray(match.taps, dtype=match.dtype)
        weight = gs.Constant(_unique(f"{name}.weight", tensor_names), values)
    (y,) = match.mul.outputs
    match.mul.outputs.clear()
    graph.nodes.append(make_eca_node(name, match.x, weight, y, match.pad_mode))
    return FusedBlock(node=name, replaced=tuple(label(n) for n in (match.mul, *match.nodes)),
                      channels=match.channels, kernel_size=int(match.taps.size), pad_mode=match.pad_mode,
                      dtype=np.dtype(match.dtype).name)


def _fused_name(match: EcaMatch) -> str:
    """The replaced nodes' common name scope (TorchScript names like /layer1/layer1.0/eca/Mul) + op name."""
    names = [node.name for node in (match.mul, *match.nodes)]
    scope = "/".join(names[0].split("/")[:-1]) if all(names) else ""
    while scope and not all(n.startswith(scope + "/") for n in names):
        scope = "/".join(scope.split("/")[:-1])
    return f"{scope}/{eca_schema().name}" if scope else f"{label(match.mul)}/{eca_schema().name}"


def _unique(name: str, taken: set[str]) -> str:
    candidate, index = name, 1
    while candidate in taken:
        candidate, index = f"{name}_{index}", index + 1
    taken.add(candidate)
    return candidate


def _export(graph: gs.Graph, original: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The graph as a model with the original's I/O declarations and metadata, plus the EcaAttention function."""
    model = gs.export_onnx(graph)
    for values in ("input", "output"):  # graphsurgeon may retype I/O from stale value_info entries
        declared = getattr(model.graph, values)
        del declared[:]
        declared.extend(getattr(original.graph, values))
    kept = [f for f in model.functions if not is_fallback_function(f)]
    del model.functions[:]
    model.functions.extend([*kept, make_eca_function(opset)])
    model.ir_version = max(original.ir_version, FUNCTIONS_MIN_IR_VERSION)
    model.doc_string, model.domain, model.model_version = original.doc_string, original.domain, original.model_version
    model.metadata_props.extend(original.metadata_props)
    return model


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without large weight payloads: big initializers become typed graph inputs."""
    graph = model.graph
    small = [t for t in graph.initializer if math.prod(t.dims) <= SKELETON_MAX_ELEMENTS]
    inputs = {value.name for value in graph.input}
    typed = [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in graph.initializer
             if math.prod(t.dims) > SKELETON_MAX_ELEMENTS and t.name not in inputs]
    skeleton = helper.make_graph(graph.node, graph.name, [*graph.input, *typed], graph.output, small,
                                 value_info=graph.value_info, sparse_initializer=graph.sparse_initializer)
    return helper.make_model(skeleton, opset_imports=model.opset_import, functions=model.functions,
                             ir_version=model.ir_version)


def _check(skeleton: onnx.ModelProto, *, full: bool, what: str) -> None:
    try:
        onnx.checker.check_model(skeleton, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as error:
        raise EcaDeployError(f"{what} is not a valid ONNX model: {first_line(error)}") from error


def _tensor_types(skeleton: onnx.ModelProto) -> dict[str, TensorType]:
    """dtype and shape of every tensor that shape inference can type."""
    graph = onnx.shape_inference.infer_shapes(skeleton).graph
    types = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            continue
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type) if tensor.elem_type else None
        shape = (tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in tensor.shape.dim)
                 if tensor.HasField("shape") else None)
        types[value.name] = TensorType(dtype, shape)
    for init in graph.initializer:
        types[init.name] = TensorType(helper.tensor_dtype_to_np_dtype(init.data_type), tuple(init.dims))
    return types
