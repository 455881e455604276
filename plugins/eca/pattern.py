"""Graph pattern of the EcaAttention plugin for Polygraphy's ``plugin`` tool.

It matches the authors' ECA layer (BangguWu/ECANet) as PyTorch's legacy (TorchScript) ONNX exporter writes it::

    x ─┬─ GlobalAveragePool ─ Squeeze ─ Transpose ─ Conv(weight) ─ Transpose ─ Unsqueeze ─ Sigmoid ─┐
       ├─ Shape ──────────────────────────────────────────────────────────────────────────── Expand ─┤
       └──────────────────────────────────────────────────────────────────────────────────────── Mul ─ y

Squeeze/Unsqueeze axes may be attributes (opset < 13), Constant nodes or initializers, and Expand's shape
Shape(x) or an initializer (static-shape exports). Each match becomes one EcaAttention node (x, weight) -> y
with the plugin's fields and the ``plugin_namespace``/``plugin_version`` attributes TensorRT's ONNX parser
reads::

    polygraphy plugin list    model.onnx --plugin-dir plugins
    polygraphy plugin match   model.onnx --plugin-dir plugins -o config.yaml
    polygraphy plugin replace model.onnx --plugin-dir plugins --config config.yaml -o model.eca.onnx

The replaced model needs the plugin library wherever it runs. ``eca-fuse`` matches every exporter's ECA
block (timm, dynamo, FP16 casts) and adds a fallback function, so its output also runs without the plugin.

Names come from EcaAttention_PluginConfig.yaml beside this file, so the folder works on its own.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs
import yaml

PLUGIN_DIR = Path(__file__).resolve().parent
PLUGIN_CONFIG_FILE = PLUGIN_DIR / "EcaAttention_PluginConfig.yaml"
PLUGIN_NAMESPACE_ATTR = "plugin_namespace"
PLUGIN_VERSION_ATTR = "plugin_version"
ZERO_PAD_MODE = "constant"  # the authors' Conv1d zero-pads
LAST_AXIS = (-1, 3)  # squeeze(-1) / unsqueeze(-1) of a 4-D tensor
SWAP_LAST_TWO = [0, 2, 1]  # transpose(-1, -2) of [N, C, 1]

# Where Squeeze/Unsqueeze find their axes, and Expand its shape.
AXES_FORMS = ("attribute", "constant_node", "initializer")
SHAPE_FORMS = ("shape_of_x", "initializer")


def _schema() -> dict[str, Any]:
    config = yaml.safe_load(PLUGIN_CONFIG_FILE.read_text())
    (version, spec), = config["versions"].items()
    kernel_attr, pad_attr = spec["attributes"]
    if ZERO_PAD_MODE not in spec["attribute_options"][pad_attr]:
        raise ValueError(f"{PLUGIN_CONFIG_FILE.name} has no {pad_attr} {ZERO_PAD_MODE!r}")
    return {"name": config["name"], "namespace": config["namespace"], "version": str(version),
            "kernel_attr": kernel_attr, "pad_attr": pad_attr}


SCHEMA = _schema()


def _values(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output, else None."""
    if isinstance(tensor, gs.Constant):
        return tensor.values
    producers = tensor.inputs
    if len(producers) == 1 and producers[0].op == "Constant":
        value = producers[0].attrs.get("value")
        return value.values if isinstance(value, gs.Constant) else None
    return None


def _axes(node: gs.Node) -> list[int] | None:
    if "axes" in node.attrs:
        return [int(axis) for axis in node.attrs["axes"]]
    values = _values(node.inputs[1]) if len(node.inputs) > 1 else None
    return None if values is None else [int(axis) for axis in np.ravel(values)]


def _is_last_axis(node: gs.Node) -> bool:
    axes = _axes(node)
    return axes is not None and len(axes) == 1 and axes[0] in LAST_AXIS


def _is_swap_last_two(node: gs.Node) -> bool:
    return [int(axis) for axis in node.attrs.get("perm", [])] == SWAP_LAST_TWO


def _is_eca_conv(node: gs.Node) -> bool:
    """A bias-free, stride-1, undilated, ungrouped 1D conv with an odd [1, 1, k] kernel padded by (k - 1) / 2."""
    weight = node.inputs[1] if len(node.inputs) == 2 else None
    if not isinstance(weight, gs.Constant) or len(weight.shape) != 3 or tuple(weight.shape[:2]) != (1, 1):
        return False
    k = int(weight.shape[2])
    attrs = node.attrs
    return (k % 2 == 1
            and [int(p) for p in attrs.get("pads", [0, 0])] == [(k - 1) // 2] * 2
            and attrs.get("auto_pad", "NOTSET") == "NOTSET"
            and int(attrs.get("group", 1)) == 1
            and [int(s) for s in attrs.get("strides", [1])] == [1]
            and [int(d) for d in attrs.get("dilations", [1])] == [1]
            and [int(s) for s in attrs.get("kernel_shape", [k])] == [k])


def get_plugin_pattern(axes_form: str = "constant_node", shape_form: str = "shape_of_x") -> gs.GraphPattern:
    """The ECA block with its Squeeze/Unsqueeze axes given as ``axes_form`` and Expand's shape as ``shape_form``."""
    if axes_form not in AXES_FORMS or shape_form not in SHAPE_FORMS:
        raise ValueError(f"axes_form must be one of {AXES_FORMS} and shape_form one of {SHAPE_FORMS}")
    pattern = gs.GraphPattern()
    x = pattern.variable()
    weight = pattern.constant("weight")

    def axes(name: str) -> list[int]:
        if axes_form == "attribute":
            return []
        if axes_form == "constant_node":
            return [pattern.add(name, "Constant")]
        return [pattern.constant(name)]

    pooled = pattern.add("pool", "GlobalAveragePool", inputs=[x])
    squeezed = pattern.add("squeeze", "Squeeze", inputs=[pooled, *axes("squeeze_axes")], check_func=_is_last_axis)
    sequence = pattern.add("transpose_in", "Transpose", inputs=[squeezed], check_func=_is_swap_last_two)
    logits = pattern.add("conv", "Conv", inputs=[sequence, weight], check_func=_is_eca_conv)
    channels = pattern.add("transpose_out", "Transpose", inputs=[logits], check_func=_is_swap_last_two)
    unsqueezed = pattern.add("unsqueeze", "Unsqueeze", inputs=[channels, *axes("unsqueeze_axes")],
                             check_func=_is_last_axis)
    gate = pattern.add("sigmoid", "Sigmoid", inputs=[unsqueezed])
    shape = pattern.add("shape", "Shape", inputs=[x]) if shape_form == "shape_of_x" else pattern.constant("shape")
    expanded = pattern.add("expand", "Expand", inputs=[gate, shape])
    y = pattern.add("mul", "Mul", inputs=[x, expanded])
    pattern.set_output_tensors([y])
    return pattern


def get_plugin_attributes(weight: gs.Constant) -> dict[str, int | str]:
    """EcaAttention attributes for a block with conv taps ``weight``: the plugin's fields and the attributes
    TensorRT's parser finds the plugin by."""
    return {SCHEMA["kernel_attr"]: int(np.prod(weight.shape)), SCHEMA["pad_attr"]: ZERO_PAD_MODE,
            PLUGIN_NAMESPACE_ATTR: SCHEMA["namespace"], PLUGIN_VERSION_ATTR: SCHEMA["version"]}


def get_matching_subgraphs(graph: gs.Graph) -> list[dict[str, Any]]:
    """Every ECA block of ``graph``: inputs [x, weight], outputs [y] and the plugin node's attributes."""
    instances = []
    for axes_form, shape_form in itertools.product(AXES_FORMS, SHAPE_FORMS):
        for match in get_plugin_pattern(axes_form, shape_form).match_all(graph):
            (x,), (y,), weight = match.inputs, match.outputs, match.constants["weight"]
            instances.append({"inputs": [x.name, weight.name], "outputs": [y.name],
                              "attributes": get_plugin_attributes(weight)})
    return instances


def get_plugin_metadata() -> dict[str, str]:
    """``name`` is this folder's name (where Polygraphy finds this file); ``op`` the node's op type."""
    return {"name": PLUGIN_DIR.name, "op": SCHEMA["name"]}


def replace_with_plugin(graph: gs.Graph, input_tensors: list[gs.Tensor], output_tensors: list[gs.Tensor],
                        attrs: dict[str, Any] | None = None, op: str | None = None) -> gs.Node:
    """Replace one matched block by an EcaAttention node in the plugin's namespace (its ONNX domain)."""
    x, weight = input_tensors
    (y,) = output_tensors
    y.inputs.clear()  # detach the block's Mul; cleanup() then drops the whole block
    node = gs.Node(op=op or SCHEMA["name"], domain=SCHEMA["namespace"], name=f"{y.name}/{SCHEMA['name']}",
                   inputs=[x, weight], outputs=[y], attrs=dict(attrs or get_plugin_attributes(weight)))
    graph.nodes.append(node)
    graph.cleanup().toposort()
    return node
