"""ECA fusion on graphs PyTorch's exporters produce: test modules, near-misses and the model zoo."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from cli_checks import required
from ecanets import BiasedEca, EcaStack, OtherTensorEca, ReluGateEca, SeBlock, WidthPoolEca, eca_block
from onnxconverter_common import float16

from eca_deploy.onnx_export import export_onnx
from eca_deploy.models import create_demo_model, get_architecture
from eca_deploy.parity import check_onnx_equivalence
from eca_deploy.passes import count_fused_nodes, fuse_eca
from eca_deploy.reference import eca_reference

FP32_ATOL, FP16_ATOL = 1e-5, 2e-3
OPSETS = {  # (exporter, pad mode) -> opset: below 19 circular blocks get a Gather-based fallback function
    ("legacy", "constant"): 17, ("legacy", "wrap"): 17, ("dynamo", "constant"): 18, ("dynamo", "wrap"): 20,
}
STYLE_PAD_MODES = {"authors": "constant", "timm": "constant", "ceca": "wrap"}


def export(module: torch.nn.Module, exporter: str, opset: int, *, half: bool = False,
           input_shape: tuple[int, int, int] = (3, 12, 12), static_batch: bool = False,
           optimize: bool = True) -> onnx.ModelProto:
    """Export ``module`` with a dynamic batch axis (input "x", output "y"), quietly; ``static_batch``
    exports batch 1 the way torch.onnx.export does by default (no dynamic axes); ``optimize=False`` skips
    the dynamo exporter's graph optimizer (shape targets stay Shape/Squeeze/Reshape/Concat chains, absent
    conv biases become Expand(CastLike(0)))."""
    module, example = module.eval(), torch.randn(1 if static_batch else 2, *input_shape)
    if half:
        module, example = module.half(), example.half()
    names = dict(input_names=["x"], output_names=["y"], opset_version=opset)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            shapes = None if static_batch else ({0: torch.export.Dim("batch")},)
            program = torch.onnx.export(module, (example,), dynamo=True, optimize=optimize, verbose=False,
                                        dynamic_shapes=shapes, **names)
            return program.model_proto
        buffer = io.BytesIO()
        axes = None if static_batch else {"x": {0: "batch"}, "y": {0: "batch"}}
        torch.onnx.export(module, (example,), buffer, dynamo=False, dynamic_axes=axes, **names)
        return onnx.load_from_string(buffer.getvalue())


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float64)


def assert_close(actual: np.ndarray, expected: np.ndarray, atol: float) -> None:
    """max|actual - expected| <= atol, relative to the output's scale where that exceeds 1."""
    error = np.abs(actual - expected).max()
    assert error <= atol * max(1.0, np.abs(expected).max()), f"max abs error {error:.3g}"


def assert_equivalent(model: onnx.ModelProto, fused: onnx.ModelProto, input_shape: tuple[int, ...], atol: float,
                      dtype: type = np.float32) -> None:
    """The fused model computes the original's outputs at batch 1 and 3 (checker-valid, same I/O)."""
    onnx.checker.check_model(fused, full_check=True)
    assert list(fused.graph.input) == list(model.graph.input)
    assert list(fused.graph.output) == list(model.graph.output)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, *input_shape)).astype(dtype)
        assert_close(run(fused, x), run(model, x), atol)


@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("style", ["authors", "timm", "ceca"])
def test_stack_of_eca_layers(style, exporter, half):
    torch.manual_seed(0)
    stack = EcaStack(style, channels=(8, 16, 24), kernels=(3, 5, 7))
    model = export(stack, exporter, OPSETS[exporter, STYLE_PAD_MODES[style]], half=half)
    fused, report = fuse_eca(model)
    assert report.num_fused == 3 and not report.near_misses, report.summary_table()
    assert {(b.channels, b.kernel_size, b.pad_mode) for b in report.fused} == {
        (c, k, STYLE_PAD_MODES[style]) for c, k in ((8, 3), (16, 5), (24, 7))}
    assert {b.dtype for b in report.fused} == {"float16" if half else "float32"}
    assert_equivalent(model, fused, (3, 12, 12), *((FP16_ATOL, np.float16) if half else (FP32_ATOL, np.float32)))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("style", ["authors", "timm", "ceca"])
def test_single_layer_matches_the_reference(style, exporter):
    torch.manual_seed(1)
    layer = eca_block(style, 16, 5)
    pad_mode = STYLE_PAD_MODES[style]
    model = export(layer, exporter, OPSETS[exporter, pad_mode], input_shape=(16, 6, 7))
    fused, report = fuse_eca(model)
    assert report.num_fused == 1
    x = np.random.default_rng(0).standard_normal((3, 16, 6, 7)).astype(np.float32)
    expected = eca_reference(x, layer.conv.weight.detach().numpy(), pad_mode)
    assert_close(run(fused, x), expected, FP32_ATOL)
    assert_close(run(model, x), expected, FP32_ATOL)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("style", ["authors", "timm", "ceca"])
def test_static_batch_exports_fuse_every_block(style, exporter):
    """torch.onnx.export without dynamic axes (its default), 16 identical blocks as in timm's ecaresnetlight:
    shape inference alone loses the batch after the first block; every block still fuses."""
    torch.manual_seed(2)
    stack = EcaStack(style, channels=(8,) * 16, kernels=(3,) * 16)
    model = export(stack, exporter, OPSETS[exporter, STYLE_PAD_MODES[style]], static_batch=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    fused, report = fuse_eca(model)
    assert report.num_fused == 16 and not report.near_misses, report.summary_table()
    x = np.random.default_rng(0).standard_normal((1, 3, 12, 12)).astype(np.float32)
    assert_close(run(fused, x), run(model, x), FP32_ATOL)


@pytest.mark.parametrize("opset", [13, 15, 17])
def test_circular_padding_below_opset_19_fuses(opset):
    """timm's CecaModule exported before opset 19 pads with Slice/Concat; its blocks fuse and match PyTorch."""
    torch.manual_seed(3)
    stack = EcaStack("ceca", channels=(8, 5, 24), kernels=(3, 9, 7))
    model = export(stack, "legacy", opset)
    fused, report = fuse_eca(model)
    assert report.num_fused == 3 and {b.pad_mode for b in report.fused} == {"wrap"}, report.summary_table()
    assert_equivalent(model, fused, (3, 12, 12), FP32_ATOL)
    x = np.random.default_rng(1).standard_normal((3, 3, 12, 12)).astype(np.float32)
    with torch.no_grad():
        assert_close(run(fused, x), stack.eval()(torch.from_numpy(x)).double().numpy(), FP32_ATOL)


@pytest.mark.parametrize("style", ["timm", "ceca"])
def test_unoptimized_dynamo_exports_fuse(style):
    """The dynamo exporter without its optimizer: ReduceMean axes from Reshape(Constant), the batch of every
    reshape target from Shape(x) of the graph input, the conv's absent bias as Expand(CastLike(0, ...))."""
    torch.manual_seed(4)
    stack = EcaStack(style, channels=(8, 16), kernels=(3, 5))
    model = export(stack, "dynamo", OPSETS["dynamo", STYLE_PAD_MODES[style]], optimize=False)
    ops = {node.op_type for node in model.graph.node}
    assert {"CastLike", "Expand", "Shape", "Squeeze"} <= ops  # the forms under test are really there
    fused, report = fuse_eca(model)
    assert report.num_fused == 2 and not report.near_misses, report.summary_table()
    assert "CastLike" not in {node.op_type for node in fused.graph.node}
    assert_equivalent(model, fused, (3, 12, 12), FP32_ATOL)


def test_unoptimized_dynamo_export_with_a_real_bias_is_a_near_miss():
    model = export(BiasedEca(3), "dynamo", 18, input_shape=(8, 4, 4), optimize=False)
    fused, report = fuse_eca(model)
    (miss,) = report.near_misses
    assert report.num_fused == 0 and miss.reason == "the conv has a bias"


NEAR_MISSES = {
    "se_block": (lambda: SeBlock(8), "SE-style block: 2 convs/FCs (Conv, Conv) with Relu between them"),
    "biased_conv": (lambda: BiasedEca(3), "the conv has a bias"),
    "relu_gate": (lambda: ReluGateEca(8, 3), "gate is Relu, not Sigmoid"),
    "other_tensor": (lambda: OtherTensorEca(3), "multiplies the gate with"),
    "width_pooling": (lambda: WidthPoolEca(3), "pooling over axes [3], not over H and W"),
}


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", NEAR_MISSES)
def test_near_misses_are_reported_not_fused(name, exporter):
    build, reason = NEAR_MISSES[name]
    model = export(build(), exporter, 18, input_shape=(8, 4, 4))
    fused, report = fuse_eca(model)
    assert report.num_fused == 0 and count_fused_nodes(fused) == 0 and fused == model
    (miss,) = report.near_misses
    assert miss.reason.startswith(reason), miss.reason
    assert miss.nodes[0] in {node.name for node in model.graph.node if node.op_type == "Mul"}


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_simplified_and_fp16_converted_graphs(exporter):
    """onnxslim's simplification and onnxconverter-common's FP16 conversion keep the blocks fusable."""
    onnxslim = required("onnxslim")
    torch.manual_seed(2)
    model = export(EcaStack("timm", kernels=(3, 5, 1)), exporter, 19)
    fp16 = float16.convert_float_to_float16(model, keep_io_types=True)
    for variant, atol in ((onnxslim.slim(model), FP32_ATOL), (fp16, FP16_ATOL)):
        fused, report = fuse_eca(variant)
        assert report.num_fused == 3, report.summary_table()
        assert_equivalent(variant, fused, (3, 12, 12), atol)


@pytest.fixture(scope="session", params=["eca_resnet18", "eca_resnet50", "eca_mobilenet_v2"])
def zoo_export(request, tmp_path_factory):
    """(architecture name, exported file) for a zoo model: legacy exporter, 64 x 64 input, once per session."""
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    export_onnx(create_demo_model(request.param), path, input_shape=(3, 64, 64), exporter="legacy", opset=17)
    return request.param, path


@pytest.mark.slow
def test_zoo_model_every_eca_layer_fused(zoo_export, tmp_path):
    arch, path = zoo_export
    model = onnx.load(str(path))
    fused, report = fuse_eca(model)
    expected = get_architecture(arch).num_eca_layers
    assert report.num_fused == count_fused_nodes(fused) == expected and not report.near_misses
    assert sorted(b.channels for b in report.fused) == sorted(get_architecture(arch).eca_channels)
    onnx.save(fused, tmp_path / "model.eca.onnx")
    assert check_onnx_equivalence(path, tmp_path / "model.eca.onnx", atol=FP32_ATOL).batches == (1, 3)


@pytest.mark.slow
def test_zoo_default_exporter_fp16(tmp_path):
    """The project's default route: dynamo exporter, FP16 with float32 I/O."""
    model = create_demo_model("eca_resnet18")
    result = export_onnx(model, tmp_path / "model.onnx", input_shape=(3, 64, 64), precision="fp16")
    fused, report = fuse_eca(onnx.load(str(result.path)))
    assert report.num_fused == get_architecture("eca_resnet18").num_eca_layers
    assert {b.dtype for b in report.fused} == {"float16"}
    onnx.save(fused, tmp_path / "model.eca.onnx")
    check_onnx_equivalence(result.path, tmp_path / "model.eca.onnx", atol=FP16_ATOL)

