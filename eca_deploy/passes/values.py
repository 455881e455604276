"""Values known before running a graph: constants and shape tensors computed from known shapes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from eca_deploy.passes.layout import ONE, Layout, Target

_PASS_THROUGH = ("Identity", "Cast")
_CONSTANT_ATTRS = ("value", "value_int", "value_ints", "value_float", "value_floats")


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def is_constant(tensor: gs.Tensor) -> bool:
    """Whether ``tensor`` is an initializer or computed from constants by Constant/Identity/Cast."""
    if isinstance(tensor, gs.Constant):
        return True
    node = producer(tensor)
    return node is not None and (node.op == "Constant" or (node.op in _PASS_THROUGH and is_constant(node.inputs[0])))


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor (see :func:`is_constant`), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is None:
        return None
    if node.op == "Constant":
        values = [node.attrs[name] for name in _CONSTANT_ATTRS if name in node.attrs]
        if not values:
            return None
        return np.asarray(values[0].values if isinstance(values[0], gs.Constant) else values[0])
    if node.op in _PASS_THROUGH:
        value = constant_value(node.inputs[0])
        if value is not None and node.op == "Cast":
            value = value.astype(onnx.helper.tensor_dtype_to_np_dtype(node.attrs["to"]))
        return value
    return None


def optional_input(node: gs.Node, index: int) -> gs.Tensor | None:
    """Input ``index`` of ``node``, or None when absent or empty."""
    if index < len(node.inputs) and node.inputs[index].name:
        return node.inputs[index]
    return None


def constant_ints(node: gs.Node, index: int, attr: str | None = None) -> list[int] | None:
    """Integer list from input ``index`` (opsets where it is an input) or attribute ``attr``."""
    tensor = optional_input(node, index)
    if tensor is not None:
        value = constant_value(tensor)
        return None if value is None else [int(v) for v in value.reshape(-1)]
    if attr is not None and attr in node.attrs:
        return [int(v) for v in node.attrs[attr]]
    return None


def _slice(values: list, node: gs.Node) -> list | None:
    starts, ends, axes, steps = (constant_ints(node, index) for index in (1, 2, 3, 4))
    if starts is None or ends is None or axes not in (None, [0], [-1]) or len(starts) != 1:
        return None
    step = steps[0] if steps else 1
    return values[slice(starts[0], ends[0], step)]


def shape_values(tensor: gs.Tensor, shape_of: Callable[[gs.Tensor], Layout | list[int] | None]) -> Target | None:
    """Evaluate a 1-D int64 shape tensor: constants and Shape/Gather/Slice/Concat/(Un)Squeeze chains.

    ``shape_of`` gives a tensor's layout (labels) or static shape; elements from a labelled axis
    come out as labels ("1" becomes the integer 1). Returns None when not computable.
    """
    value = constant_value(tensor)
    if value is not None:
        return [int(v) for v in value.reshape(-1)]
    node = producer(tensor)
    if node is None:
        return None
    if node.op == "Shape":
        dims = shape_of(node.inputs[0])
        if dims is None:
            return None
        elements = [1 if d == ONE else d for d in dims]
        return elements[slice(node.attrs.get("start", 0), node.attrs.get("end"))]
    if node.op == "Concat":
        parts = [shape_values(part, shape_of) for part in node.inputs]
        return None if any(part is None for part in parts) else [e for part in parts for e in part]
    source = shape_values(node.inputs[0], shape_of)
    if source is None:
        return None
    if node.op in ("Unsqueeze", "Squeeze", *_PASS_THROUGH):
        return source
    if node.op == "Gather" and node.attrs.get("axis", 0) == 0:
        indices = constant_ints(node, 1)
        if indices is None or any(not -len(source) <= i < len(source) for i in indices):
            return None
        return [source[i] for i in indices]
    if node.op == "Slice":
        return _slice(list(source), node)
    return None
