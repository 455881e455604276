"""The Quickly Deployable Plugin route: AOT marking of fused nodes, and its TensorRT requirement."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from eca_deploy.errors import EcaDeployError
from eca_deploy.models import EcaLayer
from eca_deploy.passes import fuse_eca
from eca_deploy.qdp import AOT_ATTRIBUTE, mark_for_aot, register_aot_plugin


@pytest.fixture(scope="module")
def fused_eca(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("qdp") / "eca.onnx"
    torch.onnx.export(EcaLayer(16, 5).eval(), (torch.randn(2, 16, 7, 7),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    fused, report = fuse_eca(onnx.load(str(path)))
    assert report.num_fused == 1
    return fused


def test_marked_model_stays_valid_and_computes_the_same(fused_eca):
    marked = onnx.ModelProto()
    marked.CopyFrom(fused_eca)
    assert mark_for_aot(marked) == 1
    assert mark_for_aot(marked) == 0  # idempotent
    (node,) = [n for n in marked.graph.node if n.op_type == "EcaAttention"]
    assert onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == AOT_ATTRIBUTE)) == 1
    onnx.checker.check_model(marked, full_check=True)
    x = np.random.default_rng(0).standard_normal((3, 16, 7, 7)).astype(np.float32)
    outputs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
               for m in (fused_eca, marked)]
    np.testing.assert_array_equal(*outputs)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed: see gpu_check")
def test_registration_without_tensorrt_names_what_to_install():
    with pytest.raises(EcaDeployError, match=r"TensorRT >= 10.7 .*tensorrt.plugin"):
        register_aot_plugin()
