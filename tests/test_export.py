"""ONNX export of zoo models: checked files, dynamic batch, FP32/FP16 parity on ONNX Runtime CPU."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from eca_deploy.errors import EcaDeployError
from eca_deploy.onnx_export import (
    BATCH_DIM,
    BATCH_TRACES,
    INPUT_NAME,
    OUTPUT_NAME,
    export_onnx,
    generalize_batch,
    to_float16,
)
from eca_deploy.models import create_demo_model
from eca_deploy.parity import check_onnx_parity

INPUT_SHAPE = (3, 128, 128)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("arch", ["eca_mobilenet_v2", "eca_resnet18", "eca_resnet50"])
def test_export_passes_parity_at_batch_1_and_3(tmp_path, arch, precision):
    model = create_demo_model(arch)
    result = export_onnx(model, tmp_path / "model.onnx", input_shape=INPUT_SHAPE, precision=precision)
    report = check_onnx_parity(model, result.path, precision=precision, input_shape=INPUT_SHAPE,
                               batch_sizes=(1, 3))
    assert report.passed, report.summary()
    assert [r.batch_size for r in report.results] == [1, 3]
    assert report.results[0].top1_agreement == 1.0
    assert result.batch_trace == BATCH_TRACES[0]  # the fast static trace, generalized
    # The batch axis is symbolic and shared by input and output; I/O stays float32 in FP16 models.
    session = ort.InferenceSession(str(result.path))
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == (INPUT_NAME, OUTPUT_NAME)
    assert inp.shape == [BATCH_DIM, *INPUT_SHAPE] and out.shape == [BATCH_DIM, 1000]
    assert inp.type == out.type == "tensor(float)"
    graph = onnx.load(str(result.path)).graph
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    weight_types = {init.data_type for init in graph.initializer if init.data_type in float_types}
    assert weight_types == {onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.FLOAT}
    if precision == "fp16":
        # No Cast storm: the FP16 graph computes in half between its float32 edges.
        assert sum(node.op_type == "Cast" for node in graph.node) <= 4


def test_fp16_parity_detects_a_broken_model(tmp_path):
    """Parity must fail when the exported weights do not belong to the reference module."""
    exported = create_demo_model("eca_resnet18", seed=1)
    result = export_onnx(exported, tmp_path / "model.onnx", input_shape=INPUT_SHAPE, exporter="legacy")
    report = check_onnx_parity(create_demo_model("eca_resnet18", seed=2), result.path, input_shape=INPUT_SHAPE)
    assert not report.passed


def test_legacy_exporter_and_external_data(tmp_path):
    model = create_demo_model("eca_resnet18")
    result = export_onnx(model, tmp_path / "model.onnx", input_shape=INPUT_SHAPE, exporter="legacy", opset=17,
                         external_data=True)
    assert result.external_data_path == tmp_path / "model.onnx.data"
    assert result.external_data_path.stat().st_size > 40_000_000  # ResNet-18's weights live in the data file
    assert result.path.stat().st_size < 1_000_000
    assert onnx.load(str(result.path), load_external_data=False).opset_import[0].version == 17
    assert check_onnx_parity(model, result.path, input_shape=INPUT_SHAPE).passed


def test_torchscript_module_exports_through_the_legacy_exporter(tmp_path):
    model = create_demo_model("eca_mobilenet_v2")
    scripted = torch.jit.trace(model, torch.randn(1, *INPUT_SHAPE))
    result = export_onnx(scripted, tmp_path / "model.onnx", input_shape=INPUT_SHAPE)
    assert result.exporter == "legacy"
    assert check_onnx_parity(model, result.path, input_shape=INPUT_SHAPE).passed


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"precision": "int8"}, "precision must be one of fp32, fp16"),
    ({"exporter": "jit"}, "exporter must be one of dynamo, legacy"),
    ({"opset": 12}, "opset must be between 13"),
    ({"opset": 17}, "the dynamo exporter needs opset >= 18"),
])
def test_export_rejects_bad_options_without_writing(tmp_path, kwargs, message):
    with pytest.raises(EcaDeployError, match=message):
        export_onnx(create_demo_model("eca_resnet18"), tmp_path / "model.onnx", **kwargs)
    assert not any(tmp_path.iterdir())


def test_seeded_demo_models_are_reproducible_and_well_scaled():
    x = torch.randn(2, 3, 96, 96)
    first, second = (create_demo_model("eca_mobilenet_v2")(x) for _ in range(2))
    assert torch.equal(first, second)
    assert first.std() > 0.01  # BN calibration: raw random MobileNetV2 logits are ~1e-12
    assert not torch.equal(first, create_demo_model("eca_mobilenet_v2", seed=1)(x))


def test_fp16_conversion_counts_clamped_values_instead_of_warning():
    weights = numpy_helper.from_array(np.array([1e-9, -1e-9, 2e4, 1.0], dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weights])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may leak to the user's stderr
        converted, clamped = to_float16(helper.make_model(graph))
    assert clamped == {"underflow": 2, "overflow": 1}
    (initializer,) = converted.graph.initializer
    assert numpy_helper.to_array(initializer).dtype == np.float16


class _PooledHead(torch.nn.Module):
    """Pooled features through a batch-leading Reshape and an Expand, the shapes a static trace bakes in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean((2, 3), keepdim=True)
        return (x * pooled.sigmoid().expand_as(x)).reshape(x.shape[0], -1)


def test_static_trace_is_generalized_to_any_batch():
    x = torch.randn(2, 4, 3, 3)
    program = torch.onnx.export(_PooledHead().eval(), (x,), dynamo=True, input_names=[INPUT_NAME],
                                output_names=[OUTPUT_NAME], verbose=False)
    static = program.model_proto
    generalized = generalize_batch(static, batch=2)
    constants = {t.name: numpy_helper.to_array(t).tolist() for t in generalized.graph.initializer}
    targets = {node.op_type: constants[node.input[1]] for node in generalized.graph.node
               if node.op_type in ("Expand", "Reshape")}
    assert targets["Expand"] == [1, 4, 3, 3] and targets["Reshape"][0] == 0
    assert len(generalized.graph.initializer) < len(static.graph.initializer) + 2  # the old targets are gone
    session = ort.InferenceSession(generalized.SerializeToString())
    for batch in (1, 5):
        x = torch.randn(batch, 4, 3, 3)
        (y,) = session.run(None, {INPUT_NAME: x.numpy()})
        np.testing.assert_allclose(y, _PooledHead()(x).numpy(), rtol=1e-6, atol=1e-6)


class _BatchMixingHead(torch.nn.Module):
    """Pooled features beside zeros of the traced batch: a static trace folds them into a constant that
    no rewrite of Expand or Reshape targets can generalize."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x.new_zeros(x.shape[0], 5)], dim=1)


def test_export_falls_back_to_the_symbolic_trace_when_the_static_one_does_not_generalize(tmp_path):
    module = _BatchMixingHead()
    result = export_onnx(module, tmp_path / "model.onnx", input_shape=(4, 3, 3))
    assert result.batch_trace == BATCH_TRACES[1]
    report = check_onnx_parity(module, result.path, input_shape=(4, 3, 3), batch_sizes=(1, 3))
    assert report.passed, report.summary()
