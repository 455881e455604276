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
    """Whether ``tensor`` is an initializer or computed from constants by Constant/Identity/Cast/Reshape."""
    if isinstance(tensor, gs.Constant):
        return True
    node = producer(tensor)
    return node is not None and (node.op == "Constant" or (
        node.op in (*_PASS_THROUGH, "Reshape") and all(is_constant(t) for t in node.inputs[:2])))


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
    if node.op == "Reshape":  # the dynamo exporter without its optimizer reshapes constant axes to 1-D
        value, shape = constant_value(node.inputs[0]), constant_value(node.inputs[1])
        return None if value is None or shape is None else _reshaped(value, shape, node.attrs.get("allowzero", 0))
    return None


def _reshaped(value: np.ndarray, target: np.ndarray, allowzero: int) -> np.ndarray | None:
    """``value`` reshaped as ONNX Reshape does (a 0 copies the input's dim unless ``allowzero``), or None."""
    shape = [value.shape[i] if d == 0 and not allowzero and i < value.ndim else int(d)
             for i, d in enumerate(target.reshape(-1))]
    try:
        return value.reshape(shape)
    except ValueError:
        return None


def zero_producers(tensor: gs.Tensor) -> list[gs.Node] | None:
    """The nodes computing ``tensor`` when every element of it is provably 0 (none for a zero constant), else
    None: a zero ConstantOfShape, or Expand/CastLike/Cast/Identity of a zero, as the dynamo exporter without
    its optimizer writes a conv's absent bias (CastLike reads a tensor of the block only for its type)."""
    value = constant_value(tensor)
    if value is not None:
        return None if value.any() else []
    node = producer(tensor)
    if node is None:
        return None
    if node.op == "ConstantOfShape":
        fill = node.attrs.get("value")
        return [node] if fill is None or not np.asarray(fill.values).any() else None
    if node.op in ("Expand", "CastLike", *_PASS_THROUGH):
        rest = zero_producers(node.inputs[0])
        return None if rest is None else [node, *rest]
    return None


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def is_per_tensor_qdq(node: gs.Node) -> bool:
    """A QuantizeLinear/DequantizeLinear with one (scalar) scale: exporters' fake quantization of a tensor."""
    scale = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    return node.op in QDQ_OPS and scale is not None and scale.size == 1


def dequantized_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The float value of a constant, or of DequantizeLinear(constant) / DequantizeLinear(QuantizeLinear(
    constant)) as quantizers write weights (per-tensor or per-axis); None otherwise."""
    node = producer(tensor)
    if node is None or node.op != "DequantizeLinear":
        return constant_value(tensor)
    source = producer(node.inputs[0])
    if source is not None and source.op == "QuantizeLinear":
        quantized = _quantize(source)
    else:
        quantized = constant_value(node.inputs[0])
    return None if quantized is None else _dequantize(node, quantized)


def _qparams(node: gs.Node, rank: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, zero point) of a Q/DQ node, broadcastable against a tensor of ``rank`` along its axis."""
    scale = constant_value(node.inputs[1])
    zero = constant_value(optional_input(node, 2)) if optional_input(node, 2) is not None else np.zeros(1)
    if scale is None or zero is None:
        return None
    shape = [1] * rank
    if scale.size > 1:
        shape[node.attrs.get("axis", 1) % rank] = scale.size
    return scale.astype(np.float64).reshape(shape if scale.size > 1 else ()), zero.astype(np.float64).reshape(
        shape if zero.size > 1 else ())


def _quantize(node: gs.Node) -> np.ndarray | None:
    value = constant_value(node.inputs[0])
    zero_point = optional_input(node, 2)
    if zero_point is not None:
        dtype = constant_value(zero_point).dtype
    elif "output_dtype" in node.attrs:  # opset 21: the type without a zero point
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(node.attrs["output_dtype"]))
    else:
        dtype = np.dtype(np.uint8)
    params = None if value is None else _qparams(node, value.ndim)
    if params is None:
        return None
    scale, zero = params
    info = np.iinfo(dtype)
    return np.clip(np.rint(value / scale) + zero, info.min, info.max).astype(dtype)


def _dequantize(node: gs.Node, quantized: np.ndarray) -> np.ndarray | None:
    params = _qparams(node, quantized.ndim)
    if params is None:
        return None
    scale, zero = params
    return ((quantized.astype(np.float64) - zero) * scale).astype(np.float32)


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
    """Evaluate a 1-D int64 shape tensor: constants and Shape/Gather/Slice/Concat/(Un)Squeeze/Reshape chains.

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
    if node.op == "Reshape":  # a shape vector (or one element of it) reshaped to 1-D
        target = constant_ints(node, 1)
        return source if target in ([-1], [len(source)]) else None
    if node.op == "Gather" and node.attrs.get("axis", 0) == 0:
        indices = constant_ints(node, 1)
        if indices is None or any(not -len(source) <= i < len(source) for i in indices):
            return None
        return [source[i] for i in indices]
    if node.op == "Slice":
        return _slice(list(source), node)
    return None
