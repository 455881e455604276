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
from eca_deploy.passes.fused_node import (WRAP_PAD_MIN_OPSET, default_opset, is_fallback_function, is_fused_eca_node,
                                         make_eca_function, make_eca_node)
from eca_deploy.passes.matcher import EcaMatch, TensorType, find_eca_blocks, label
from eca_deploy.passes.report import FusedBlock, FusionReport, NearMiss
from eca_deploy.passes.values import QDQ_OPS, producer
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
    report = FusionReport()
    node_names, tensor_names = {node.name for node in graph.nodes}, set(graph.tensors())
    types = _tensor_types(skeleton)
    while True:  # until a round fuses nothing new (see _fused_types)
        matches, report.near_misses = find_eca_blocks(graph, types, opset)
        matches, report.near_misses = _one_function_pad_mode(matches, report.near_misses, opset,
                                                             {block.pad_mode for block in report.fused})
        for match in matches:
            report.fused.append(_replace(graph, match, node_names, tensor_names))
        if not matches or not report.near_misses:
            break
        graph.cleanup().toposort()
        types = _tensor_types(_skeleton(_fused_types(gs.export_onnx(graph))))
    if not report.fused:
        unchanged = onnx.ModelProto()
        unchanged.CopyFrom(model)
        return unchanged, report
    graph.cleanup().toposort()
    fused = _export(graph, model, opset, report.fused[0].pad_mode)
    if verify:
        _check(_skeleton(fused), full=True, what="the fused model")
    return fused, report


def _replace(graph: gs.Graph, match: EcaMatch, node_names: set[str], tensor_names: set[str]) -> FusedBlock:
    """Put an EcaAttention node in place of ``match`` (the chain is left for cleanup)."""
    name = _unique(_fused_name(match), node_names)
    replaced = tuple(label(n) for n in (match.mul, *match.nodes))  # before the Mul loses its output
    weight = match.weight
    if not (isinstance(weight, gs.Constant) and weight.dtype == match.dtype):
        values = np.ascontiguousarray(match.taps, dtype=match.dtype)
        weight = gs.Constant(_unique(f"{name}.weight", tensor_names), values)
    (y,) = match.mul.outputs
    match.mul.outputs.clear()
    graph.nodes.append(make_eca_node(name, match.x, weight, y, match.pad_mode))
    return FusedBlock(node=name, replaced=replaced,
                      channels=match.channels, kernel_size=int(match.taps.size), pad_mode=match.pad_mode,
                      dtype=np.dtype(match.dtype).name,
                      dropped_qdq=sum(n.op in QDQ_OPS for n in match.nodes) + len(_weight_qdq(match.weight)))


def _weight_qdq(weight: gs.Tensor) -> list[gs.Node]:
    """The DequantizeLinear (and QuantizeLinear) nodes a quantizer put on a conv weight."""
    nodes = []
    while (node := producer(weight)) is not None and node.op in QDQ_OPS:
        nodes.append(node)
        weight = node.inputs[0]
    return nodes


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


def _fused_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every EcaAttention node replaced by an Identity of its x, for shape inference.

    Shape inference loses the shapes after some exporters' ECA blocks (opset 13's Reshape of a Shape
    chain with a symbolic batch), so the blocks behind them look like tensors of unknown rank. A fused
    block's output is shaped like its input; with that stand-in, inference reaches the next blocks.
    """
    for index, node in enumerate(model.graph.node):
        if is_fused_eca_node(node):
            model.graph.node[index].CopyFrom(helper.make_node("Identity", [node.input[0]], list(node.output),
                                                              name=node.name))
    return model


def _one_function_pad_mode(matches: list[EcaMatch], near_misses: list[NearMiss], opset: int,
                           fused_modes: set[str]) -> tuple[list[EcaMatch], list[NearMiss]]:
    """Below opset 19 one fallback function serves one pad mode (make_eca_function): in a model that mixes
    zero and circular padding, the blocks of the mode not already fused (circular, if neither) stay
    unfused, as near-misses."""
    modes = fused_modes or {match.pad_mode for match in matches}
    if opset >= WRAP_PAD_MIN_OPSET or not modes:
        return matches, near_misses
    kept = "constant" if "constant" in modes else "wrap"
    reason = (f"circular and zero-padded ECA blocks in one model need opset >= {WRAP_PAD_MIN_OPSET} for their "
              f"shared fallback function (model has {opset}); only the {kept} ones were fused")
    return ([match for match in matches if match.pad_mode == kept],
            near_misses + [NearMiss(nodes=tuple(label(n) for n in (m.mul, *m.nodes)), reason=reason)
                           for m in matches if m.pad_mode != kept])


def _export(graph: gs.Graph, original: onnx.ModelProto, opset: int, pad_mode: str) -> onnx.ModelProto:
    """The graph as a model with the original's I/O declarations and metadata, plus the EcaAttention function
    (for ``pad_mode``, the mode of the fused blocks, where the opset needs one function per mode)."""
    model = gs.export_onnx(graph)
    for values in ("input", "output"):  # graphsurgeon may retype I/O from stale value_info entries
        declared = getattr(model.graph, values)
        del declared[:]
        declared.extend(getattr(original.graph, values))
    kept = [f for f in model.functions if not is_fallback_function(f)]
    del model.functions[:]
    model.functions.extend([*kept, make_eca_function(opset, pad_mode)])
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
    """dtype and shape of every tensor that shape inference can type, one name per provably equal symbolic dim.

    An exporter's own shape annotations may name a dim differently from the graph input it comes from (the
    feature maps' batch ``s0``, the input's ``batch``), so a shape computed from the input would not be known
    to hold the feature maps' batch. Inference from the graph inputs alone (the annotations dropped) names
    every dim after where it came from; two names given to the same dim of the same tensor by the two
    inferences are the same size, and become one.
    """
    annotated = _inferred_types(skeleton)
    bare = onnx.ModelProto()
    bare.CopyFrom(skeleton)
    del bare.graph.value_info[:]
    derived = _inferred_types(bare)
    aliases = _SymbolAliases()
    for name, known in annotated.items():
        other = derived.get(name)
        if known.shape and other is not None and other.shape and len(other.shape) == len(known.shape):
            for mine, theirs in zip(known.shape, other.shape):
                if isinstance(mine, str) and isinstance(theirs, str):
                    aliases.join(mine, theirs)
    merged = {**derived, **{name: known for name, known in annotated.items() if known.shape is not None
                            or name not in derived}}
    return {name: TensorType(known.dtype, None if known.shape is None else tuple(
        aliases.find(d) if isinstance(d, str) else d for d in known.shape)) for name, known in merged.items()}


class _SymbolAliases:
    """Union-find over symbolic dim names."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def find(self, symbol: str) -> str:
        while (parent := self._parent.get(symbol, symbol)) != symbol:
            symbol = parent
        return symbol

    def join(self, a: str, b: str) -> None:
        roots = sorted({self.find(a), self.find(b)})
        for root in roots[1:]:
            self._parent[root] = roots[0]


def _inferred_types(skeleton: onnx.ModelProto) -> dict[str, TensorType]:
    graph = onnx.shape_inference.infer_shapes(skeleton, data_prop=True).graph
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
