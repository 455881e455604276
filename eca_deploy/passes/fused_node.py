"""The fused ``EcaAttention`` node and its model-local fallback function.

The node takes (x, weight): x is N x C x H x W, weight the [1, 1, k] conv taps in x's dtype. Its
attributes are the schema's fields (``kernel_size``, ``pad_mode``) plus ``plugin_namespace`` and
``plugin_version``, which TensorRT's ONNX parser reads to find the plugin creator. The function of
the same name and domain carries the plain ECA computation, so ONNX Runtime runs the fused model
and TensorRT without the plugin inlines it into native layers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

from eca_deploy.schema import eca_schema

PLUGIN_NAMESPACE_ATTR = "plugin_namespace"
PLUGIN_VERSION_ATTR = "plugin_version"
DOMAIN_VERSION = 1
WRAP_PAD_MIN_OPSET = 19  # Pad mode "wrap" (circular) exists from opset 19


def default_opset(model: onnx.ModelProto) -> int:
    """The model's ai.onnx opset version."""
    versions = [op.version for op in model.opset_import if op.domain in ("", "ai.onnx")]
    if not versions:
        raise ValueError("the model imports no ai.onnx opset")
    return versions[0]


def eca_node_attributes(kernel_size: int, pad_mode: str) -> dict[str, int | str]:
    """Attributes of an EcaAttention node, named as the schema and TensorRT's parser expect."""
    schema = eca_schema()
    if pad_mode not in schema.pad_modes:
        raise ValueError(f"pad_mode must be one of {schema.pad_modes}, got {pad_mode!r}")
    kernel_attr, pad_attr = schema.attributes
    return {kernel_attr: int(kernel_size), pad_attr: pad_mode,
            PLUGIN_NAMESPACE_ATTR: schema.namespace, PLUGIN_VERSION_ATTR: schema.version}


def _int64_constant(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name],
                            value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values))


def make_eca_function(opset: int, pad_mode: str | None = None) -> onnx.FunctionProto:
    """The plain ECA computation as a model-local function for a model of ai.onnx ``opset``.

    GlobalAveragePool -> Reshape [N, 1, C] -> pad the channel axis by (k-1)/2 (k read from the
    weight's shape) -> Conv -> Sigmoid -> Reshape [N, C, 1, 1] -> Mul with x. From opset 19 a Pad
    binds its mode to the node's ``pad_mode``, so one function serves both modes. Below 19 Pad has
    no "wrap" mode and ONNX cannot compare strings, so the function serves one ``pad_mode`` for the
    whole model: zero padding with Pad, or circular padding as a Gather of channel indices taken
    modulo C (numpy's "wrap", for any k).
    """
    schema = eca_schema()
    x, weight = schema.inputs
    (y,) = schema.outputs
    _, pad_attr = schema.attributes
    if opset >= WRAP_PAD_MIN_OPSET:
        pad = [helper.make_node("Pad", ["sequence", "pads"], ["padded"])]
        pad[0].attribute.append(helper.make_attribute_ref("mode", onnx.AttributeProto.STRING, ref_attr_name=pad_attr))
    elif pad_mode in (None, "constant"):
        pad = [helper.make_node("Pad", ["sequence", "pads"], ["padded"])]
    elif pad_mode == "wrap":
        pad = _circular_padding()
    else:
        raise ValueError(f"pad_mode must be one of {schema.pad_modes}, got {pad_mode!r}")
    nodes = [
        helper.make_node("GlobalAveragePool", [x], ["pooled"]),
        _int64_constant("sequence_shape", [0, 1, -1]),
        helper.make_node("Reshape", ["pooled", "sequence_shape"], ["sequence"]),
        helper.make_node("Shape", [weight], ["weight_shape"]),
        _int64_constant("kernel_axis", [2]),
        _int64_constant("kernel_axis_end", [3]),
        helper.make_node("Slice", ["weight_shape", "kernel_axis", "kernel_axis_end"], ["kernel"]),
        _int64_constant("one", [1]),
        _int64_constant("two", [2]),
        helper.make_node("Sub", ["kernel", "one"], ["kernel_minus_one"]),
        helper.make_node("Div", ["kernel_minus_one", "two"], ["half"]),
        _int64_constant("no_pads", [0, 0]),
        helper.make_node("Concat", ["no_pads", "half", "no_pads", "half"], ["pads"], axis=0),
        *pad,
        helper.make_node("Conv", ["padded", weight], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["gate"]),
        _int64_constant("gate_shape", [0, -1, 1, 1]),
        helper.make_node("Reshape", ["gate", "gate_shape"], ["channel_gate"]),
        helper.make_node("Mul", [x, "channel_gate"], [y]),
    ]
    attributes = list(eca_node_attributes(1, schema.pad_modes[0]))
    return helper.make_function(schema.domain, schema.name, [x, weight], [y], nodes,
                                [helper.make_opsetid("", opset)], attributes)


def _circular_padding() -> list[onnx.NodeProto]:
    """``padded`` = ``sequence`` (N x 1 x C) with channels -half .. C + half - 1 taken modulo C (opset >= 13)."""
    return [
        helper.make_node("Shape", ["sequence"], ["sequence_shape_now"]),
        helper.make_node("Slice", ["sequence_shape_now", "two", "kernel_axis_end"], ["channels"]),
        _int64_constant("scalar_axes", [0]),
        helper.make_node("Squeeze", ["channels", "scalar_axes"], ["channel_count"]),
        helper.make_node("Squeeze", ["half", "scalar_axes"], ["half_scalar"]),
        helper.make_node("Neg", ["half_scalar"], ["first_index"]),
        helper.make_node("Add", ["channel_count", "half_scalar"], ["end_index"]),
        helper.make_node("Squeeze", ["one", "scalar_axes"], ["step"]),
        helper.make_node("Range", ["first_index", "end_index", "step"], ["indices"]),
        helper.make_node("Mod", ["indices", "channel_count"], ["wrapped"]),  # fmod=0: the divisor's sign
        helper.make_node("Gather", ["sequence", "wrapped"], ["padded"], axis=2),
    ]


def make_eca_node(name: str, x: gs.Tensor, weight: gs.Constant, y: gs.Tensor, pad_mode: str) -> gs.Node:
    """An EcaAttention node computing ``y`` from ``x`` and the [1, 1, k] taps ``weight``."""
    schema = eca_schema()
    kernel_size = int(np.prod(weight.shape))
    return gs.Node(op=schema.name, domain=schema.domain, name=name, inputs=[x, weight], outputs=[y],
                   attrs=eca_node_attributes(kernel_size, pad_mode))


def is_fused_eca_node(node: onnx.NodeProto | gs.Node) -> bool:
    """Whether ``node`` (ONNX or graphsurgeon) is an EcaAttention node of our domain."""
    schema = eca_schema()
    op = node.op if isinstance(node, gs.Node) else node.op_type
    return op == schema.name and node.domain == schema.domain


def is_fallback_function(function: onnx.FunctionProto) -> bool:
    """Whether ``function`` is the EcaAttention fallback function (:func:`make_eca_function`)."""
    schema = eca_schema()
    return (function.domain, function.name) == (schema.domain, schema.name)


def without_fallback_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a fused model without the EcaAttention function: its nodes then resolve only to the
    plugin. TensorRT's parser before 10.7 inlines a node's model-local function even when the plugin
    is registered, so this is the file that makes TensorRT 10.3-10.6 (JetPack 6) use the plugin."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.functions[:]
    copy.functions.extend(function for function in model.functions if not is_fallback_function(function))
    return copy


def plugin_only_path(fused_path: Path) -> Path:
    """Where the plugin-only copy of the fused model ``fused_path`` goes: ``model.eca.onnx`` ->
    ``model.eca.plugin.onnx``."""
    return fused_path.with_name(f"{fused_path.name.removesuffix('.onnx')}.plugin.onnx")


def without_plugin_lookup(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a fused model whose EcaAttention nodes carry no ``plugin_namespace``/``plugin_version``:
    TensorRT's parser (10.7 and later) then inlines their fallback function even in a process where the
    plugin is registered, so an engine meant to run without the plugin library really does."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        if is_fused_eca_node(node):
            kept = [a for a in node.attribute if a.name not in (PLUGIN_NAMESPACE_ATTR, PLUGIN_VERSION_ATTR)]
            del node.attribute[:]
            node.attribute.extend(kept)
    return copy


def count_fused_nodes(model: onnx.ModelProto) -> int:
    """How many EcaAttention nodes the model's main graph holds (whether the plugin is needed)."""
    return sum(is_fused_eca_node(node) for node in model.graph.node)
