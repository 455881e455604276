"""ECA fusion on hand-built ONNX graphs: every node sequence exporters produce, near-misses, properties."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from eca_deploy.errors import EcaDeployError
from eca_deploy.onnx_files import load_onnx
from eca_deploy.passes import FusionReport, count_fused_nodes, fuse_eca, is_fused_eca_node
from eca_deploy.passes.fused_node import eca_node_attributes, without_plugin_lookup
from eca_deploy.reference import eca_reference
from eca_deploy.schema import eca_schema

CHANNELS, HW = 8, 5
FP32_ATOL, FP16_ATOL = 1e-5, 2e-3


class EcaGraph:
    """Builds one ECA block x -> Mul(x, gate) -> Relu -> y step by step, as an exporter might."""

    def __init__(self, opset: int = 17, dtype: int = TensorProto.FLOAT, k: int = 3, channels: int = CHANNELS,
                 seed: int = 0) -> None:
        self.opset, self.dtype, self.k, self.channels = opset, dtype, k, channels
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.outputs: list[str] = []
        self.taps = np.random.default_rng(seed).standard_normal((1, 1, k)).astype(np.float32)

    def const(self, values, dtype=np.int64) -> str:
        name = f"c{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        output = f"t{len(self.nodes)}_{op_type.lower()}"
        name = f"n{len(self.nodes)}_{op_type}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=name, **attrs))
        return output

    def axes_op(self, op_type: str, data: str, axes: list[int], attr_before: int = 13, **attrs) -> str:
        """An op whose axes are an attribute before opset ``attr_before`` and an input from it on."""
        if self.opset < attr_before:
            return self.op(op_type, data, axes=axes, **attrs)
        return self.op(op_type, data, self.const(axes), **attrs)

    def batch_dim(self, x: str) -> str:
        return self.op("Unsqueeze", self.op("Gather", self.op("Shape", x), self.const(0)), self.const([0]))

    def weight(self, cast_from_fp32: bool = False) -> str:
        np_dtype = helper.tensor_dtype_to_np_dtype(self.dtype)
        if cast_from_fp32 and self.dtype != TensorProto.FLOAT:
            return self.op("Cast", self.const(self.taps, np.float32), to=self.dtype)
        return self.const(self.taps, np_dtype)

    def model(self, x_dtype: int | None = None) -> onnx.ModelProto:
        x_dtype = self.dtype if x_dtype is None else x_dtype
        graph = helper.make_graph(
            self.nodes, "eca", [helper.make_tensor_value_info("x", x_dtype, ["batch", self.channels, HW, HW])],
            [helper.make_tensor_value_info(name, x_dtype, ["batch", self.channels, HW, HW]) for name in self.outputs],
            self.initializers)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])


POOLS = {
    "gap": lambda g, x: g.op("GlobalAveragePool", x),
    "mean_keepdims": lambda g, x: g.axes_op("ReduceMean", x, [2, 3], attr_before=18, keepdims=1),
    "mean": lambda g, x: g.axes_op("ReduceMean", x, [2, 3], attr_before=18, keepdims=0),
    "mean_negative_axes": lambda g, x: g.axes_op("ReduceMean", x, [-1, -2], attr_before=18, keepdims=0),
}


def _squeeze_transpose(g: EcaGraph, pooled: str, rank: int, x: str) -> str:
    sequence = g.axes_op("Squeeze", pooled, [3]) if rank == 4 else g.axes_op("Unsqueeze", pooled, [-1])
    return g.op("Transpose", sequence, perm=[0, 2, 1])


def _flatten_unsqueeze(g: EcaGraph, pooled: str, rank: int, x: str) -> str:
    return g.axes_op("Unsqueeze", g.op("Flatten", pooled, axis=1), [1])


TO_SEQUENCE = {  # pooled [N, C, 1, 1] or [N, C] -> [N, 1, C]
    "squeeze_transpose": _squeeze_transpose,
    "reshape_constant": lambda g, p, rank, x: g.op("Reshape", p, g.const([-1, 1, g.channels])),
    "reshape_zero": lambda g, p, rank, x: g.op("Reshape", p, g.const([0, 1, -1])),
    "reshape_shape": lambda g, p, rank, x: g.op(
        "Reshape", p, g.op("Concat", g.batch_dim(x), g.const([1]), g.const([-1]), axis=0)),
    "flatten_unsqueeze": _flatten_unsqueeze,
}

TO_GATE = {  # [N, 1, C] -> something that broadcasts against x as [N, C, 1, 1]
    "transpose_unsqueeze": lambda g, s, x: g.axes_op("Unsqueeze", g.op("Transpose", s, perm=[0, 2, 1]), [-1]),
    "reshape_constant": lambda g, s, x: g.op("Reshape", s, g.const([-1, g.channels, 1, 1])),
    "reshape_shape": lambda g, s, x: g.op(
        "Reshape", s, g.op("Concat", g.batch_dim(x), g.const([-1]), g.const([1]), g.const([1]), axis=0)),
    "squeeze_unsqueeze": lambda g, s, x: g.axes_op("Unsqueeze", g.axes_op("Squeeze", s, [1]), [2, 3]),
    "flatten_unsqueeze": lambda g, s, x: g.axes_op("Unsqueeze", g.op("Flatten", s, axis=1), [2, 3]),
}


def _slice_concat(g: EcaGraph, sequence: str, p: int) -> str:
    head = g.op("Slice", sequence, g.const([-p]), g.const([np.iinfo(np.int64).max]), g.const([2]))
    tail = g.op("Slice", sequence, g.const([0]), g.const([p]), g.const([2]))
    return g.op("Concat", head, sequence, tail, axis=2)


PADDINGS = {  # (padded sequence, conv pads, pad mode of the reference)
    "conv": lambda g, s, p: (s, [p, p], "constant"),
    "pad_zero": lambda g, s, p: (g.op("Pad", s, g.const([0, 0, p, 0, 0, p])), [0, 0], "constant"),
    "pad_wrap": lambda g, s, p: (g.op("Pad", s, g.const([0, 0, p, 0, 0, p]), mode="wrap"), [0, 0], "wrap"),
    "pad_wrap_axes": lambda g, s, p: (g.op("Pad", s, g.const([p, p]), "", g.const([-1]), mode="wrap"), [0, 0], "wrap"),
    "slice_concat": lambda g, s, p: (_slice_concat(g, s, p), [0, 0], "wrap"),
}

EXPANDS = {
    "none": lambda g, gate, x: gate,
    "shape": lambda g, gate, x: g.op("Expand", gate, g.op("Shape", x)),
    "concat": lambda g, gate, x: g.op(
        "Expand", gate, g.op("Concat", g.op("Shape", x, start=0, end=1), g.const([g.channels, HW, HW]), axis=0)),
}


def build_eca(*, opset: int = 17, pool: str = "gap", to_sequence: str = "squeeze_transpose",
              to_gate: str = "transpose_unsqueeze", padding: str = "conv", expand: str = "shape",
              sigmoid_last: bool = False, swap: bool = False, k: int = 3, casts: str | None = None,
              ) -> tuple[onnx.ModelProto, EcaGraph, str]:
    """One ECA block in the requested style; returns (model, builder, reference pad mode).

    ``casts``: None (all float32), "fp16" (all float16, weight Cast from float32 by a node) or
    "fp32_gate" (x float16, the gate computed in float32 between Casts, as autocast exports do).
    """
    dtype = TensorProto.FLOAT16 if casts else TensorProto.FLOAT
    g = EcaGraph(opset, TensorProto.FLOAT if casts == "fp32_gate" else dtype, k)
    x = "x"
    pool_input = g.op("Cast", x, to=TensorProto.FLOAT) if casts == "fp32_gate" else x
    pooled = POOLS[pool](g, pool_input)
    rank = 4 if pool in ("gap", "mean_keepdims") else 2
    sequence = TO_SEQUENCE[to_sequence](g, pooled, rank, x)
    padded, pads, pad_mode = PADDINGS[padding](g, sequence, (k - 1) // 2)
    gate = g.op("Conv", padded, g.weight(cast_from_fp32=casts == "fp16"), kernel_shape=[k], pads=pads)
    if not sigmoid_last:
        gate = g.op("Sigmoid", gate)
    gate = TO_GATE[to_gate](g, gate, x)
    if sigmoid_last:
        gate = g.op("Sigmoid", gate)
    if casts == "fp32_gate":
        gate = g.op("Cast", gate, to=TensorProto.FLOAT16)
    gate = EXPANDS[expand](g, gate, x)
    g.outputs.append(g.op("Relu", g.op("Mul", *((gate, x) if swap else (x, gate)))))
    return g.model(x_dtype=dtype), g, pad_mode


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def random_input(model: onnx.ModelProto, batch: int = 3, seed: int = 0) -> np.ndarray:
    elem_type = model.graph.input[0].type.tensor_type.elem_type
    x = np.random.default_rng(seed).standard_normal((batch, CHANNELS, HW, HW))
    return x.astype(helper.tensor_dtype_to_np_dtype(elem_type))


def assert_fused_equivalent(model: onnx.ModelProto, taps: np.ndarray, pad_mode: str) -> onnx.ModelProto:
    """Fuse ``model``'s one ECA block; check the checker and ORT outputs against the original and the reference."""
    onnx.checker.check_model(model, full_check=True)
    fused, report = fuse_eca(model)
    assert report.num_fused == count_fused_nodes(fused) == 1, report.summary_table()
    onnx.checker.check_model(fused, full_check=True)
    x = random_input(model)
    tolerance = dict(atol=FP16_ATOL, rtol=FP16_ATOL) if x.dtype == np.float16 else dict(atol=FP32_ATOL, rtol=0)
    actual = run(fused, x).astype(np.float64)
    np.testing.assert_allclose(actual, run(model, x).astype(np.float64), **tolerance)
    np.testing.assert_allclose(actual, np.maximum(eca_reference(x, taps, pad_mode), 0), **tolerance)
    return fused


VARIANTS = [
    # (opset, pool, to_sequence, to_gate, padding, expand, sigmoid_last, swap, casts)
    (13, "gap", "squeeze_transpose", "transpose_unsqueeze", "conv", "shape", True, False, None),  # authors, legacy
    (17, "mean", "reshape_shape", "reshape_shape", "conv", "shape", False, False, None),  # timm, legacy
    (18, "mean", "reshape_constant", "reshape_constant", "conv", "concat", False, False, None),  # timm, dynamo
    (18, "mean_keepdims", "squeeze_transpose", "transpose_unsqueeze", "conv", "concat", True, False, None),
    (17, "mean_keepdims", "reshape_zero", "squeeze_unsqueeze", "conv", "none", False, True, None),
    (13, "mean_negative_axes", "flatten_unsqueeze", "flatten_unsqueeze", "conv", "none", False, False, None),
    (21, "gap", "flatten_unsqueeze", "reshape_constant", "conv", "shape", False, True, None),
    (15, "gap", "reshape_shape", "transpose_unsqueeze", "pad_zero", "none", False, False, None),
    (19, "mean", "reshape_constant", "reshape_constant", "pad_wrap", "concat", False, False, None),  # ceca, dynamo
    (20, "mean", "reshape_shape", "reshape_shape", "slice_concat", "shape", False, False, None),  # ceca, legacy
    (21, "gap", "squeeze_transpose", "squeeze_unsqueeze", "pad_wrap_axes", "none", True, True, None),
    (17, "gap", "squeeze_transpose", "transpose_unsqueeze", "conv", "shape", True, False, "fp16"),
    (18, "mean", "reshape_constant", "reshape_constant", "conv", "concat", False, True, "fp16"),
    (17, "mean", "reshape_shape", "reshape_shape", "conv", "shape", False, False, "fp32_gate"),
    (19, "gap", "squeeze_transpose", "transpose_unsqueeze", "pad_wrap", "none", True, True, "fp32_gate"),
]


@pytest.mark.parametrize("opset, pool, to_sequence, to_gate, padding, expand, sigmoid_last, swap, casts", VARIANTS)
def test_variant_is_fused_and_equivalent(opset, pool, to_sequence, to_gate, padding, expand, sigmoid_last, swap, casts):
    model, g, pad_mode = build_eca(opset=opset, pool=pool, to_sequence=to_sequence, to_gate=to_gate,
                                   padding=padding, expand=expand, sigmoid_last=sigmoid_last, swap=swap, casts=casts)
    fused = assert_fused_equivalent(model, g.taps, pad_mode)
    (node,) = [n for n in fused.graph.node if is_fused_eca_node(n)]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {k: v.encode() if isinstance(v, str) else v for k, v in eca_node_attributes(3, pad_mode).items()}


@pytest.mark.parametrize("opset", range(13, 22))
@pytest.mark.parametrize("pool", ["gap", "mean"])
def test_every_opset(opset, pool):
    model, g, pad_mode = build_eca(opset=opset, pool=pool, to_sequence="reshape_shape", to_gate="reshape_shape")
    fused = assert_fused_equivalent(model, g.taps, pad_mode)
    (function,) = fused.functions
    assert [(o.domain, o.version) for o in function.opset_import] == [("", opset)]
    assert fused.ir_version >= 8


@pytest.mark.parametrize("k", [1, 5, 7, 9])
@pytest.mark.parametrize("padding", ["conv", "pad_wrap"])
def test_kernel_sizes(k, padding):
    model, g, pad_mode = build_eca(opset=19, padding=padding, k=k)
    assert_fused_equivalent(model, g.taps, pad_mode)


def test_batch_read_from_another_tensor_with_the_same_symbol():
    """The dynamo exporter reads the batch once from the graph input for every block."""
    g = EcaGraph(18)
    x = g.op("Relu", "x")
    pooled = g.axes_op("ReduceMean", x, [2, 3], attr_before=18, keepdims=0)
    sequence = g.op("Reshape", pooled, g.op("Concat", g.batch_dim("x"), g.const([1, -1]), axis=0))
    gate = g.op("Sigmoid", g.op("Conv", sequence, g.weight(), pads=[1, 1]))
    batch = g.op("Shape", "x", start=0, end=1)
    g.outputs.append(g.op("Mul", x, g.op("Reshape", gate, g.op("Concat", batch, g.const([-1, 1, 1]), axis=0))))
    model = g.model()
    fused, report = fuse_eca(model)
    assert report.num_fused == 1
    x = random_input(model)
    np.testing.assert_allclose(run(fused, x), eca_reference(np.maximum(x, 0), g.taps), atol=FP32_ATOL, rtol=0)


def _unoptimized_dynamo_block(g: EcaGraph, batch_source: str) -> str:
    """One ECA block on Relu(x) as the dynamo exporter writes it without its optimizer: axes reshaped from a
    Constant, the batch of each reshape target Reshape(Squeeze(Shape(batch_source)[0:1]), [-1]), and the conv's
    absent bias Expand(CastLike(0, sequence), Expand(Shape(weight)[0:1], [1]))."""
    x = g.op("Relu", "x")
    pooled = g.op("ReduceMean", x, g.op("Reshape", g.const([2, 3]), g.const([-1])), keepdims=0)
    batch = g.op("Reshape", g.op("Squeeze", g.op("Shape", batch_source, start=0, end=1)), g.const([-1]))
    sequence = g.op("Reshape", pooled, g.op("Concat", batch, g.const([1]), g.const([-1]), axis=0), allowzero=1)
    weight = g.weight()
    bias = g.op("Expand", g.op("CastLike", g.const(0.0, np.float32), sequence),
                g.op("Expand", g.op("Shape", weight, start=0, end=1), g.const([1])))
    gate = g.op("Sigmoid", g.op("Conv", sequence, weight, bias, pads=[1, 1], kernel_shape=[3]))
    gate = g.op("Reshape", gate, g.op("Concat", batch, g.const([-1]), g.const([1]), g.const([1]), axis=0))
    return g.op("Mul", x, gate)


def _annotate(model: onnx.ModelProto, batch_symbol: str) -> onnx.ModelProto:
    """``model`` with the shape of every intermediate tensor annotated, its batch named ``batch_symbol``."""
    inferred = onnx.shape_inference.infer_shapes(model)
    for value in inferred.graph.value_info:
        dim = value.type.tensor_type.shape.dim
        if dim and dim[0].dim_param == "batch":
            dim[0].dim_param = batch_symbol
    return inferred


@pytest.mark.parametrize("batch_symbol", ["batch", "s0"])
def test_batch_read_from_the_graph_input_by_an_unoptimized_dynamo_export(batch_symbol):
    """Reshape targets whose batch is Shape(input)[0:1] fuse, also where the exporter's own annotations name
    the feature maps' batch differently from the input's (s0 vs batch): inference proves them equal."""
    g = EcaGraph(18)
    g.outputs.append(_unoptimized_dynamo_block(g, "x"))
    model = _annotate(g.model(), batch_symbol)
    fused, report = fuse_eca(model)
    assert report.num_fused == 1 and not report.near_misses, report.summary_table()
    x = random_input(model)
    np.testing.assert_allclose(run(fused, x), eca_reference(np.maximum(x, 0), g.taps), atol=FP32_ATOL, rtol=0)


def test_batch_read_from_an_unrelated_input_is_a_near_miss():
    """A reshape target built from another graph input's batch cannot be proven to be x's: not fused."""
    g = EcaGraph(18)
    g.outputs.append(_unoptimized_dynamo_block(g, "other"))
    model = g.model()
    model.graph.input.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, ["other_batch", 2]))
    assert "cannot tell what shape Reshape" in _near_miss(model)


def test_fused_node_carries_the_schema_and_a_function():
    model, g, _ = build_eca(opset=18, casts="fp16")
    fused, report = fuse_eca(model)
    schema = eca_schema()
    (node,) = [n for n in fused.graph.node if n.op_type == schema.name]
    assert node.domain == schema.domain
    weight = numpy_helper.to_array(next(i for i in fused.graph.initializer if i.name == node.input[1]))
    assert weight.dtype == np.float16 and weight.shape == (1, 1, 3)
    np.testing.assert_array_equal(weight, g.taps.astype(np.float16))
    (function,) = fused.functions
    assert (function.domain, function.name) == (schema.domain, schema.name)
    assert set(function.attribute) == set(eca_node_attributes(3, "constant"))
    assert (schema.domain, 1) in [(o.domain, o.version) for o in fused.opset_import]
    assert report.fused[0].dtype == "float16" and report.fused[0].channels == CHANNELS


def test_strict_shape_inference_types_the_fused_node():
    model, _, _ = build_eca(opset=19, casts="fp16")
    fused, _ = fuse_eca(model)
    inferred = onnx.shape_inference.infer_shapes(fused, strict_mode=True)
    (node,) = [n for n in inferred.graph.node if is_fused_eca_node(n)]
    (value,) = [v for v in inferred.graph.value_info if v.name == node.output[0]]
    batch, *dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
    assert value.type.tensor_type.elem_type == TensorProto.FLOAT16
    assert isinstance(batch, str) and dims == [CHANNELS, HW, HW]  # the batch stays symbolic


def test_idempotent_and_leaves_the_input_alone():
    model, _, _ = build_eca(opset=18, to_sequence="reshape_shape", to_gate="reshape_shape")
    before = model.SerializeToString()
    fused, _ = fuse_eca(model)
    again, report = fuse_eca(fused)
    assert model.SerializeToString() == before
    assert report.num_fused == 0 and not report.near_misses
    assert again == fused and again is not fused


def test_io_names_types_and_dynamic_batch_unchanged():
    model, _, _ = build_eca(opset=17, pool="mean", to_sequence="reshape_shape", to_gate="reshape_shape")
    fused, _ = fuse_eca(model)
    assert list(fused.graph.input) == list(model.graph.input)
    assert list(fused.graph.output) == list(model.graph.output)
    for batch in (1, 3):
        x = random_input(model, batch)
        assert run(fused, x).shape == (batch, CHANNELS, HW, HW)
        np.testing.assert_allclose(run(fused, x), run(model, x), atol=FP32_ATOL)


def test_only_the_chain_is_replaced():
    model, _, _ = build_eca(opset=17)
    fused, report = fuse_eca(model)
    assert [n.op_type for n in fused.graph.node] == [eca_schema().name, "Relu"]
    (block,) = report.fused
    names = {n.op_type: n.name for n in model.graph.node}
    assert block.replaced[0] == names["Mul"] and names["GlobalAveragePool"] in block.replaced
    assert (block.kernel_size, block.pad_mode, block.gate) == (3, "constant", "sigmoid")


def _near_miss(model: onnx.ModelProto) -> str:
    fused, report = fuse_eca(model)
    assert report.num_fused == 0 and count_fused_nodes(fused) == 0
    assert fused == model
    (miss,) = report.near_misses
    assert miss.nodes[0].endswith("_Mul")
    return miss.reason


def _changed(model: onnx.ModelProto, op_type: str, new_op_type: str | None = None, **attrs) -> onnx.ModelProto:
    """A copy of ``model`` whose first ``op_type`` node gets another op type and/or new attributes."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    node = next(n for n in model.graph.node if n.op_type == op_type)
    node.op_type = new_op_type or op_type
    kept = [a for a in node.attribute if a.name not in attrs]
    del node.attribute[:]
    node.attribute.extend([*kept, *(helper.make_attribute(name, value) for name, value in attrs.items())])
    return model


@pytest.mark.parametrize("opset", [13, 15, 17, 18])
@pytest.mark.parametrize("k", [3, 5])
def test_circular_padding_below_opset_19_fuses_with_a_gather_fallback(opset, k):
    """Pad has no "wrap" mode before opset 19: the function pads by gathering channel indices modulo C."""
    model, g, pad_mode = build_eca(opset=opset, padding="slice_concat", k=k)
    fused = assert_fused_equivalent(model, g.taps, pad_mode)
    (function,) = fused.functions
    assert "Gather" in {node.op_type for node in function.node} and "Pad" not in {n.op_type for n in function.node}


def test_mixed_padding_below_opset_19_fuses_one_mode_and_says_why_not_the_other():
    g = EcaGraph(17)
    x = g.op("Relu", "x")
    outputs = []
    for padding in ("conv", "slice_concat"):  # zero padding in the conv, then circular by Slice/Concat
        pooled = g.op("GlobalAveragePool", x)
        sequence = g.op("Transpose", g.op("Squeeze", pooled, g.const([3])), perm=[0, 2, 1])
        padded, pads, _ = PADDINGS[padding](g, sequence, 1)
        gate = g.op("Sigmoid", g.op("Conv", padded, g.weight(), kernel_shape=[3], pads=pads))
        gate = g.op("Unsqueeze", g.op("Transpose", gate, perm=[0, 2, 1]), g.const([3]))
        x = g.op("Mul", x, gate)
        outputs.append(x)
    g.outputs.append(outputs[-1])
    fused, report = fuse_eca(g.model())
    assert [block.pad_mode for block in report.fused] == ["constant"]
    (miss,) = report.near_misses
    assert "circular and zero-padded ECA blocks in one model need opset >= 19" in miss.reason
    assert fused.functions[0].node[-1].op_type == "Mul" and count_fused_nodes(fused) == 1


@pytest.mark.parametrize("gate", ["HardSigmoid", "Relu", "Tanh"])
def test_other_gates_are_near_misses(gate):
    model, _, _ = build_eca(opset=17)
    assert _near_miss(_changed(model, "Sigmoid", gate)) == f"gate is {gate}, not Sigmoid"


@pytest.mark.parametrize("attr, value, reason", [
    ("strides", [2], "conv strides [2], ECA needs 1"),
    ("dilations", [2], "conv dilations [2], ECA needs 1"),
    ("pads", [0, 2], "padding (0, 2) is not (k-1)/2 = 1 on both sides"),
])
def test_conv_attributes_are_checked(attr, value, reason):
    model, _, _ = build_eca(opset=17)
    assert _near_miss(_changed(model, "Conv", **{attr: value})) == reason


def test_pooling_over_other_axes_is_a_near_miss():
    g = EcaGraph(18)
    pooled = g.op("ReduceMean", "x", g.const([1, 2]), keepdims=0)
    gate = g.op("Sigmoid", g.op("Conv", g.axes_op("Unsqueeze", pooled, [1]), g.weight(), pads=[1, 1]))  # [N, 1, W]
    g.outputs.append(g.op("Mul", "x", g.axes_op("Unsqueeze", gate, [2])))
    assert "pooling over axes [1, 2]" in _near_miss(g.model())


def test_reshape_mixing_batch_and_channels_is_a_near_miss():
    g = EcaGraph(17)
    pooled = g.axes_op("ReduceMean", "x", [2, 3], attr_before=18, keepdims=0)
    sequence = g.op("Reshape", pooled, g.const([1, 1, -1]))  # N*C in one row: the conv crosses samples
    gate = g.op("Sigmoid", g.op("Conv", sequence, g.weight(), pads=[1, 1]))
    g.outputs.append(g.op("Mul", "x", g.op("Reshape", gate, g.const([-1, CHANNELS, 1, 1]))))
    assert "mixes the gate's axes" in _near_miss(g.model())


def test_conv_across_the_batch_is_a_near_miss():
    g = EcaGraph(17)
    pooled = g.axes_op("ReduceMean", "x", [2, 3], attr_before=18, keepdims=0)
    sequence = g.axes_op("Unsqueeze", g.op("Transpose", pooled, perm=[1, 0]), [1])  # [C, 1, N]
    gate = g.op("Sigmoid", g.op("Conv", sequence, g.weight(), pads=[1, 1]))
    g.outputs.append(g.op("Mul", "x", g.axes_op("Unsqueeze", g.op("Transpose", gate, perm=[2, 0, 1]), [3])))
    assert "not [N, 1, C]" in _near_miss(g.model())


def test_reflect_padding_is_a_near_miss():
    model, _, _ = build_eca(opset=19, padding="pad_wrap")
    assert _near_miss(_changed(model, "Pad", mode="reflect")) == "reflect padding, not zero or circular"


def test_intermediate_used_elsewhere_is_a_near_miss():
    model, _, _ = build_eca(opset=17)
    conv_output = next(n for n in model.graph.node if n.op_type == "Conv").output[0]
    model.graph.output.append(helper.make_tensor_value_info(conv_output, TensorProto.FLOAT, ["batch", 1, CHANNELS]))
    assert _near_miss(model) == f"intermediate tensor {conv_output} is a graph output"
    model.graph.output.pop()
    model.graph.node.append(helper.make_node("Neg", [conv_output], ["negated"], name="other_user"))
    model.graph.output.append(helper.make_tensor_value_info("negated", TensorProto.FLOAT, ["batch", 1, CHANNELS]))
    assert _near_miss(model) == f"intermediate tensor {conv_output} is also used by other_user"


def test_dynamic_conv_weight_is_a_near_miss():
    model, _, _ = build_eca(opset=17)
    weight = next(n for n in model.graph.node if n.op_type == "Conv").input[1]
    (init,) = [i for i in model.graph.initializer if i.name == weight]
    model.graph.initializer.remove(init)
    model.graph.input.append(helper.make_tensor_value_info(weight, TensorProto.FLOAT, [1, 1, 3]))
    assert _near_miss(model) == "the conv weight is not a constant"


def test_report_json_and_table():
    model, _, _ = build_eca(opset=17)
    fused, report = fuse_eca(model)
    _, miss_report = fuse_eca(_changed(model, "Sigmoid", "Relu"))
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data) == {"num_fused", "num_near_misses", "by_shape", "fused", "near_misses"}
    assert data["by_shape"] == [{"channels": CHANNELS, "kernel_size": 3, "pad_mode": "constant", "count": 1}]
    assert set(data["fused"][0]) == {"node", "replaced", "channels", "kernel_size", "pad_mode", "dtype", "gate",
                                     "dropped_qdq"}
    assert data["fused"][0]["dropped_qdq"] == 0
    table = report.summary_table()
    assert "ECA blocks fused: 1" in table and "Near-misses: 0" in table
    assert "gate is Relu, not Sigmoid" in miss_report.summary_table()
    assert FusionReport().to_dict()["num_fused"] == 0


def test_invalid_model_raises():
    model, _, _ = build_eca(opset=17)
    model.graph.node[3].input[0] = "missing_tensor"
    with pytest.raises(EcaDeployError, match="not a valid ONNX model"):
        fuse_eca(model)


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "not an ONNX model"),
    (b"name,value\nalpha,1\n", "not"),
    (b"\x08\x07\x12\x04test\x3a\xff\xff", "not a readable ONNX model"),
])
def test_load_onnx_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(EcaDeployError, match=message):
        load_onnx(path)


def test_load_onnx_rejects_invalid_and_truncated_models(tmp_path):
    model, _, _ = build_eca(opset=17)
    data = model.SerializeToString()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(EcaDeployError, match="truncated.onnx is not"):
        load_onnx(tmp_path / "truncated.onnx")
    model.graph.node[3].input[0] = "missing_tensor"
    onnx.save(model, tmp_path / "invalid.onnx")
    with pytest.raises(EcaDeployError, match="invalid.onnx is not a valid ONNX model"):
        load_onnx(tmp_path / "invalid.onnx")
    with pytest.raises(EcaDeployError, match="is not a file"):
        load_onnx(tmp_path)


def test_load_onnx_round_trip(tmp_path):
    model, _, _ = build_eca(opset=17)
    onnx.save(model, tmp_path / "model.onnx")
    assert load_onnx(tmp_path / "model.onnx") == model


@pytest.mark.parametrize(("opset", "padding"), [(19, "pad_wrap"), (17, "slice_concat"), (13, "conv")])
def test_tensorrt_rtx_parses_the_fallback_function(opset, padding):
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed")
    model, _, _ = build_eca(opset=opset, padding=padding)
    fused, _ = fuse_eca(model)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    # Without plugin_namespace the parser inlines the function even where another test registered the plugin.
    inlined = without_plugin_lookup(fused).SerializeToString()
    assert parser.parse(inlined), [parser.get_error(i).desc() for i in range(parser.num_errors)]
    layer_types = {network.get_layer(i).type.name for i in range(network.num_layers)}
    assert {"REDUCE", "CONVOLUTION", "ACTIVATION"} <= layer_types
    assert "PLUGIN" not in layer_types and "PLUGIN_V3" not in layer_types


def test_opset_21_weight_quantization_without_zero_point_keeps_negative_taps():
    """QuantizeLinear(output_dtype=INT8) without a zero point (opset 21) is signed: negative taps survive fusion."""
    channels, taps = 8, np.array([[[-0.5, 1.0, -0.25]]], np.float32)
    scale = np.float32(1 / 127)
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
        helper.make_node("Squeeze", ["pooled", "axis3"], ["squeezed"]),
        helper.make_node("Transpose", ["squeezed"], ["sequence"], perm=[0, 2, 1]),
        helper.make_node("QuantizeLinear", ["w", "scale"], ["wq"], output_dtype=TensorProto.INT8),
        helper.make_node("DequantizeLinear", ["wq", "scale"], ["wdq"]),
        helper.make_node("Conv", ["sequence", "wdq"], ["conv"], pads=[1, 1]),
        helper.make_node("Transpose", ["conv"], ["back"], perm=[0, 2, 1]),
        helper.make_node("Unsqueeze", ["back", "axis3"], ["gate_logits"]),
        helper.make_node("Sigmoid", ["gate_logits"], ["gate"]),
        helper.make_node("Mul", ["x", "gate"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "eca", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 4, 4])],
                              [numpy_helper.from_array(taps, "w"), numpy_helper.from_array(scale, "scale"),
                               numpy_helper.from_array(np.array([3], np.int64), "axis3")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    fused, report = fuse_eca(model)
    assert report.num_fused == 1 and report.fused[0].dropped_qdq == 2
    x = np.random.default_rng(0).standard_normal((1, channels, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(run(fused, x), run(model, x), atol=1e-6)
