"""Find ECA blocks by their semantics, whatever node sequence an exporter or simplifier produced.

From every Mul, the gate operand is traced back through single-input nodes to a global pooling.
A chain that holds a linear op and an activation is a candidate; it is an ECA block when, step by
step, it computes x * sigmoid(conv1d_k(mean_hw(x))) across channels (see :mod:`layout`), with
every intermediate tensor used only inside the chain. Other candidates become near-misses.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from eca_deploy.passes import layout as lay
from eca_deploy.passes.layout import ONE, X_LAYOUT, Dims, Layout, NotEca
from eca_deploy.passes.report import NearMiss
from eca_deploy.passes.values import (QDQ_OPS, constant_ints, dequantized_value, is_constant,
                                      is_per_tensor_qdq, optional_input, producer, shape_values,
                                      zero_producers)

MIN_OPSET = 13
POOL_OPS = ("GlobalAveragePool", "ReduceMean")
LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ACTIVATION_OPS = ("Sigmoid", "HardSigmoid", "Relu", "LeakyRelu", "PRelu", "Clip", "Tanh", "HardSwish",
                  "Softmax", "Elu", "Selu", "Softplus", "Softsign", "Gelu", "Mish")
SHAPE_ARGUMENT_OPS = ("Reshape", "Expand", "Squeeze", "Unsqueeze", "Pad", "Slice", "Tile")  # data is input 0
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
               onnx.TensorProto.DOUBLE)
MAX_CHAIN = 32
CONV_LAYOUT: Layout = ("N", ONE, "C")


@dataclass(frozen=True)
class TensorType:
    """A tensor's dtype and shape from shape inference: dims are sizes, symbolic names or None."""

    dtype: np.dtype | None
    shape: tuple[int | str | None, ...] | None


@dataclass(frozen=True)
class EcaMatch:
    """An ECA block found in the graph: ``mul`` computes x * gate from ``x`` and the chain ``nodes``."""

    mul: gs.Node
    nodes: tuple[gs.Node, ...]
    x: gs.Tensor
    weight: gs.Tensor
    taps: np.ndarray
    pad_mode: str
    channels: int | None
    dtype: np.dtype


def label(node: gs.Node) -> str:
    """A node's name, or its op and first output where it has none."""
    return node.name or f"{node.op}->{node.outputs[0].name}"


def find_eca_blocks(graph: gs.Graph, types: dict[str, TensorType],
                    opset: int) -> tuple[list[EcaMatch], list[NearMiss]]:
    """Every ECA block of ``graph`` and every near-miss, in graph order."""
    matches, near_misses = [], []
    context = _Context(graph, types, opset, _static_batch(graph, types))
    for mul in [node for node in graph.nodes if node.op == "Mul" and node.domain in (None, "", "ai.onnx")]:
        result = _match_mul(mul, context)
        if isinstance(result, EcaMatch):
            matches.append(result)
        elif result is not None:
            near_misses.append(result)
    return matches, near_misses


@dataclass(frozen=True)
class _Context:
    graph: gs.Graph
    types: dict[str, TensorType]
    opset: int
    static_batch: int | None  # the batch every graph input fixes, if they all do


def _static_batch(graph: gs.Graph, types: dict[str, TensorType]) -> int | None:
    """The batch size of a model whose every input has one static, common leading dim (a static-batch
    export): the N of every feature map, even where shape inference lost it."""
    batches = {types[t.name].shape[0] if t.name in types and types[t.name].shape else None for t in graph.inputs}
    (batch,) = batches if len(batches) == 1 else (None,)
    return batch if isinstance(batch, int) else None


def _match_mul(mul: gs.Node, context: _Context) -> EcaMatch | NearMiss | None:
    """The ECA block ending in ``mul``, a near-miss, or None when ``mul`` gates nothing pooled."""
    misses = []
    for gate_index, chain in _candidates(mul):
        try:
            return _Chain(mul, gate_index, chain, context).match()
        except NotEca as error:
            misses.append(NearMiss(nodes=tuple(label(n) for n in (mul, *chain)), reason=str(error)))
    return misses[0] if misses else None


def _candidates(mul: gs.Node) -> Iterator[tuple[int, list[gs.Node]]]:
    """(gate operand index, chain from the pooling to the gate) for each operand that looks like a gate."""
    for gate_index, gate in enumerate(mul.inputs):
        chain = _trace_to_pool(gate)
        if chain and any(n.op in LINEAR_OPS for n in chain) and any(n.op in ACTIVATION_OPS for n in chain):
            yield gate_index, chain


def _trace_to_pool(tensor: gs.Tensor) -> list[gs.Node] | None:
    """The nodes from a pooling node to ``tensor``'s producer along data inputs, or None."""
    chain = []
    while len(chain) < MAX_CHAIN and (node := producer(tensor)) is not None:
        chain.append(node)
        if node.op in POOL_OPS:
            return chain[::-1]
        tensor = _data_input(node)
        if tensor is None:
            return None
    return None


def _data_input(node: gs.Node) -> gs.Tensor | None:
    """The one input carrying data (not constants or shape arguments), if there is exactly one."""
    if node.op in SHAPE_ARGUMENT_OPS or node.op == "Conv":
        return node.inputs[0]
    circular = circular_pad_slices(node) if node.op == "Concat" else None
    if circular:
        return circular[0]
    data = [tensor for tensor in node.inputs if tensor.name and not is_constant(tensor)]
    return data[0] if len(data) == 1 else None


def circular_pad_slices(concat: gs.Node) -> tuple[gs.Tensor, gs.Node, gs.Node] | None:
    """(t, head, tail) when ``concat`` is Concat(Slice(t), t, Slice(t)): circular padding as the
    TorchScript exporter writes F.pad(mode="circular")."""
    if len(concat.inputs) != 3:
        return None
    head, middle, tail = concat.inputs
    slices = [producer(head), producer(tail)]
    if all(s is not None and s.op == "Slice" and s.inputs[0] is middle for s in slices):
        return middle, slices[0], slices[1]
    return None


def _cast_root(tensor: gs.Tensor) -> gs.Tensor:
    """``tensor`` before any float-to-float Cast, Identity or per-tensor Q/DQ (a quantizer's fake quantization)."""
    while (node := producer(tensor)) is not None and (
            node.op == "Identity" or (node.op == "Cast" and node.attrs["to"] in FLOAT_TYPES)
            or is_per_tensor_qdq(node)):
        tensor = node.inputs[0]
    return tensor


class _Chain:
    """Checks one candidate chain; :meth:`match` returns the EcaMatch or raises NotEca."""

    def __init__(self, mul: gs.Node, gate_index: int, chain: list[gs.Node], context: _Context) -> None:
        self.mul, self.chain, self.context = mul, chain, context
        self.x = mul.inputs[1 - gate_index]
        self.source = chain[0].inputs[0]
        source_type = context.types.get(self.source.name)
        if source_type is None or source_type.shape is None or len(source_type.shape) != len(X_LAYOUT):
            raise NotEca(f"the pooled tensor {self.source.name} is not known to be 4D")
        sizes = {axis: d if isinstance(d, int) else None for axis, d in zip(X_LAYOUT, source_type.shape)}
        if sizes["N"] is None:
            sizes["N"] = context.static_batch
        self.dims = Dims(sizes)
        self.symbols = {d: axis for axis, d in zip(X_LAYOUT, source_type.shape) if isinstance(d, str)}
        self.layouts: dict[str, Layout] = {t.name: X_LAYOUT for t in (self.source, self.x, _cast_root(self.x))}
        self.members = list(chain)
        self.pad: tuple[str, int, int] | None = None  # explicit padding waiting for its conv
        self.pad_mode = "constant"

    def match(self) -> EcaMatch:
        conv = self._check_structure()
        taps = self._conv_taps(conv)
        self.members += self._zero_input(conv, 2)
        layout = self._pooled_layout(self.chain[0])
        self.layouts[self.chain[0].outputs[0].name] = layout
        for node in self.chain[1:]:
            layout = self._step(node, layout, taps.size)
            self.layouts[node.outputs[0].name] = layout
        self._check_gate_alignment(layout)
        self._check_exclusive()
        if self.context.opset < MIN_OPSET:
            raise NotEca(f"opset {self.context.opset} is below {MIN_OPSET}")
        x_type = self.context.types.get(self.x.name)
        if x_type is None or x_type.dtype is None:
            raise NotEca(f"the dtype of {self.x.name} is unknown")
        return EcaMatch(mul=self.mul, nodes=tuple(self.members), x=self.x, weight=conv.inputs[1], taps=taps,
                        pad_mode=self.pad_mode, channels=self.dims.sizes["C"], dtype=x_type.dtype)

    def _check_structure(self) -> gs.Node:
        """The one Conv of the chain, after checking the ops: one 1D conv, a sigmoid gate, x pooled."""
        linear = [n for n in self.chain if n.op in LINEAR_OPS]
        activations = [n for n in self.chain if n.op in ACTIVATION_OPS]
        if len(linear) > 1:
            raise NotEca(f"SE-style block: {len(linear)} convs/FCs ({', '.join(n.op for n in linear)}) with "
                         f"{', '.join(n.op for n in activations[:-1]) or 'no activation'} between them, "
                         "not ECA's single 1D conv")
        gate, conv = activations[-1], linear[0]
        if gate.op != "Sigmoid":
            raise NotEca(f"gate is {gate.op}, not Sigmoid")
        if len(activations) > 1:
            raise NotEca(f"{activations[0].op} in the gate path besides the Sigmoid")
        if conv.op != "Conv":
            raise NotEca(f"channels interact through {conv.op}, not a 1D Conv")
        if self.chain.index(conv) > self.chain.index(gate):
            raise NotEca("the Sigmoid comes before the conv")
        if _cast_root(self.x) is not _cast_root(self.source):
            raise NotEca(f"multiplies the gate with {self.x.name}, not with the pooled tensor {self.source.name}")
        return conv

    @staticmethod
    def _conv_taps(conv: gs.Node) -> np.ndarray:
        """The conv's [1, 1, k] weight after checking it is ECA's conv (no bias, stride 1, ...)."""
        weight = dequantized_value(conv.inputs[1])
        if weight is None:
            raise NotEca("the conv weight is not a constant")
        if weight.ndim != 3 or weight.shape[:2] != (1, 1):
            raise NotEca(f"conv weight shape {list(weight.shape)} is not [1, 1, k]: not a 1D conv across channels")
        k = weight.shape[2]
        if k % 2 == 0:
            raise NotEca(f"even kernel size {k}")
        for attr in ("strides", "dilations"):
            if any(v != 1 for v in conv.attrs.get(attr, [1])):
                raise NotEca(f"conv {attr} {list(conv.attrs[attr])}, ECA needs 1")
        if conv.attrs.get("group", 1) != 1:
            raise NotEca(f"conv group {conv.attrs['group']}, ECA needs 1")
        return weight

    @staticmethod
    def _zero_input(node: gs.Node, index: int, reason: str = "the conv has a bias") -> list[gs.Node]:
        """The nodes computing input ``index`` of ``node``, absent or provably zero (a bias, a pad value); NotEca
        with ``reason`` otherwise."""
        tensor = optional_input(node, index)
        nodes = [] if tensor is None else zero_producers(tensor)
        if nodes is None:
            raise NotEca(reason)
        return nodes

    def _pooled_layout(self, pool: gs.Node) -> Layout:
        """Layout of the pooling output; the pooling must average exactly H and W."""
        rank = len(X_LAYOUT)
        if pool.op == "GlobalAveragePool":
            return ("N", "C", ONE, ONE)
        axes = self._optional_ints(pool, 1, "axes")
        if not axes and not pool.attrs.get("noop_with_empty_axes", 0):
            axes = list(range(rank))
        if sorted(lay.normalize_axes(axes, rank)) != [2, 3]:
            raise NotEca(f"pooling over axes {axes}, not over H and W (2, 3)")
        return ("N", "C", ONE, ONE) if pool.attrs.get("keepdims", 1) else ("N", "C")

    def _step(self, node: gs.Node, layout: Layout, k: int) -> Layout:
        """Layout after ``node``; checks the node keeps the ECA semantics."""
        op = node.op
        if self.pad is not None and op != "Conv":
            raise NotEca(f"{op} between the padding and the conv")
        if op == "Conv":
            self._check_conv(node, layout, k)
        elif op == "Pad":
            self.pad = self._explicit_pad(node, layout)
        elif op == "Concat" and len(node.inputs) > 1:
            self.pad = self._circular_pad(node, layout)
        elif op == "Cast" and node.attrs["to"] not in FLOAT_TYPES:
            raise NotEca(f"Cast {node.name} to a non-float type")
        elif op in QDQ_OPS and not is_per_tensor_qdq(node):
            raise NotEca(f"per-axis {op} ({label(node)}) in the gate path")
        elif op == "Squeeze":
            layout = lay.squeeze(layout, self._optional_ints(node, 1, "axes"), self.dims)
        elif op == "Unsqueeze":
            layout = lay.unsqueeze(layout, self._required_ints(node, 1, "axes"))
        elif op == "Transpose":
            layout = lay.transpose(layout, node.attrs.get("perm"))
        elif op == "Flatten":
            layout = lay.flatten(layout, node.attrs.get("axis", 1), self.dims)
        elif op == "Reshape":
            layout = lay.reshape(layout, self._target(node), self.dims, bool(node.attrs.get("allowzero", 0)))
        elif op == "Expand":
            layout = lay.broadcast(layout, self._target(node), self.dims)
        elif op not in ("Sigmoid", "Cast", "Identity", "Concat", *QDQ_OPS):
            raise NotEca(f"unexpected {op} ({label(node)}) in the gate path")
        return layout

    @staticmethod
    def _optional_ints(node: gs.Node, index: int, attr: str | None = None) -> list[int] | None:
        """Constant ints from input ``index`` or attribute ``attr``; None when absent, NotEca when not constant."""
        values = constant_ints(node, index, attr)
        if values is None and optional_input(node, index) is not None:
            raise NotEca(f"{node.op} ({label(node)}) input {index} is not a constant")
        return values

    def _required_ints(self, node: gs.Node, index: int, attr: str) -> list[int]:
        values = self._optional_ints(node, index, attr)
        if values is None:
            raise NotEca(f"{node.op} ({label(node)}) has no {attr}")
        return values

    def _target(self, node: gs.Node) -> lay.Target:
        """The shape a Reshape/Expand targets, from constants or a Shape computation."""
        target = shape_values(node.inputs[1], self._shape_of)
        if target is None:
            raise NotEca(f"cannot tell what shape {node.op} ({label(node)}) targets")
        return target

    def _shape_of(self, tensor: gs.Tensor) -> Layout | list[int | str] | None:
        """A tensor's axes as labels (chain tensors, x) or sizes and labels of x's symbolic dims."""
        if tensor.name in self.layouts:
            return self.layouts[tensor.name]
        known = self.context.types.get(tensor.name)
        if known is None or known.shape is None:
            return None
        dims = [d if isinstance(d, int) else self.symbols.get(d) for d in known.shape]
        return None if None in dims else dims

    def _check_conv(self, conv: gs.Node, layout: Layout, k: int) -> None:
        """The conv runs across channels ([N, 1, C] input) with (k-1)/2 padding on each side."""
        if self.dims.canonical(layout) != self.dims.canonical(CONV_LAYOUT):
            raise NotEca(f"the conv input's axes are {list(layout)}, not [N, 1, C]: not a conv across channels")
        auto_pad = conv.attrs.get("auto_pad", "NOTSET")
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            conv_pads = [(k - 1) // 2] * 2
        else:
            conv_pads = list(conv.attrs.get("pads", [0, 0])) if auto_pad == "NOTSET" else [0, 0]
        mode, before, after = self.pad or ("constant", 0, 0)
        if mode == "wrap" and any(conv_pads):
            raise NotEca("circular padding and conv padding combined")
        before, after = before + conv_pads[0], after + conv_pads[1]
        if (before, after) != ((k - 1) // 2,) * 2:
            raise NotEca(f"padding ({before}, {after}) is not (k-1)/2 = {(k - 1) // 2} on both sides")
        self.pad = None
        self.pad_mode = mode

    def _check_gate_alignment(self, layout: Layout) -> None:
        """The gate reaching the Mul broadcasts as [N, C, 1, 1] (or is already expanded to x)."""
        if len(layout) > len(X_LAYOUT):
            raise NotEca(f"the gate has rank {len(layout)}, more than x's")
        gate = self.dims.canonical((ONE,) * (len(X_LAYOUT) - len(layout)) + layout)
        x = self.dims.canonical(X_LAYOUT)
        if gate[:2] != x[:2] or any(g not in (ONE, axis) for g, axis in zip(gate[2:], x[2:])):
            raise NotEca(f"the gate's axes {list(layout)} do not line up with x's N and C")

    def _explicit_pad(self, pad: gs.Node, layout: Layout) -> tuple[str, int, int]:
        """(mode, before, after) of a Pad node that pads only the channel axis."""
        mode = pad.attrs.get("mode", "constant")
        if mode not in ("constant", "wrap"):
            raise NotEca(f"{mode} padding, not zero or circular")
        if mode == "constant":
            self.members += self._zero_input(pad, 2, "padding with a non-zero value")
        pads = self._required_ints(pad, 1, "pads")
        axes = lay.normalize_axes(self._optional_ints(pad, 3) or range(len(layout)), len(layout))
        if len(pads) != 2 * len(axes):
            raise NotEca("Pad pads do not match its axes")
        per_axis = {axis: (pads[i], pads[i + len(axes)]) for i, axis in enumerate(axes)}
        return (mode, *self._channel_padding(per_axis, layout))

    def _circular_pad(self, concat: gs.Node, layout: Layout) -> tuple[str, int, int]:
        """Circular padding written as Concat(t[..., -p:], t, t[..., :p]) along the channel axis."""
        circular = circular_pad_slices(concat)
        channels = self.dims.sizes["C"]
        if circular is None:
            raise NotEca(f"Concat ({label(concat)}) in the gate path is not a circular padding")
        if channels is None:
            raise NotEca("circular padding of a channel count unknown before run time")
        _, head, tail = circular
        self.members += [head, tail]
        axis = lay.normalize_axes([concat.attrs.get("axis", 0)], len(layout))[0]
        kept = []
        for node in (head, tail):
            starts, ends, axes, steps = (constant_ints(node, i) for i in (1, 2, 3, 4))
            if None in (starts, ends) or len(starts) != 1 or (steps or [1]) != [1] or \
                    lay.normalize_axes(axes or [0], len(layout)) != [axis]:
                raise NotEca(f"Slice ({label(node)}) is not part of a circular padding")
            kept.append(list(range(channels))[starts[0]:ends[0]])
        before, after = len(kept[0]), len(kept[1])
        if kept != [list(range(channels - before, channels)), list(range(after))]:
            raise NotEca(f"Concat ({label(concat)}) is not a circular padding")
        return ("wrap", *self._channel_padding({axis: (before, after)}, layout))

    @staticmethod
    def _channel_padding(per_axis: dict[int, tuple[int, int]], layout: Layout) -> tuple[int, int]:
        padded = {axis: pads for axis, pads in per_axis.items() if any(pads)}
        if any(layout[axis] != "C" for axis in padded):
            raise NotEca("padding along an axis other than the channels")
        return next(iter(padded.values()), (0, 0))

    def _check_exclusive(self) -> None:
        """No intermediate tensor of the chain is a graph output or used outside the block."""
        inside = {id(node) for node in (*self.members, self.mul)}
        outputs = {id(tensor) for tensor in self.context.graph.outputs}
        for node in self.members:
            for tensor in node.outputs:
                if id(tensor) in outputs:
                    raise NotEca(f"intermediate tensor {tensor.name} is a graph output")
                others = [label(user) for user in tensor.outputs if id(user) not in inside]
                if others:
                    raise NotEca(f"intermediate tensor {tensor.name} is also used by {', '.join(others)}")
