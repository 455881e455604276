"""The TensorRT plugin folder (plugins/eca): generated schema header, C++ creator vs. schema, Polygraphy pattern.

The build tests configure and compile the plugin with CMake against TensorRT's headers alone (no GPU and no
TensorRT library needed), for one CUDA architecture and with warnings as errors, against the TensorRT 10.3 and
11.1 headers ($ECA_TENSORRT_SDK or ../shared/sdk, tests/tensorrt_headers.py), then inspect the library with ecaPluginInfo.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
import torch
from plugin_build import run_checked
from plugin_build import plugin_build as build_plugin
from tensorrt_headers import CI_VERSIONS
from torch import nn

from eca_deploy.models import EcaLayer
from eca_deploy.passes.fused_node import make_eca_function
from eca_deploy.resources import plugin_dir
from eca_deploy.schema import CPP_HEADER_FILE, eca_schema

PLUGIN_LIBRARY = "libeca_plugin.so"
LOADER_ENTRY_POINTS = {"getCreators", "setLoggerFinder"}
SYSTEM_LIBRARIES = ("libc.so", "libstdc++.so", "libgcc_s.so", "libm.so", "libdl.so", "libpthread.so",
                    "librt.so", "ld-linux")
TENSORRT_ENTRY_POINTS = ("getPluginRegistry", "getLogger", "createInferBuilder", "createInferRuntime")
EXPECTED_FORMATS = [  # x, weight, y: (DataType/TensorFormat) pairs the plugin accepts
    {"x": "kFLOAT/kLINEAR", "weight": ["kFLOAT/kLINEAR"], "y": ["kFLOAT/kLINEAR"]},
    {"x": "kFLOAT/kHWC", "weight": ["kFLOAT/kLINEAR"], "y": ["kFLOAT/kHWC"]},
    {"x": "kHALF/kLINEAR", "weight": ["kHALF/kLINEAR"], "y": ["kHALF/kLINEAR"]},
    {"x": "kHALF/kHWC8", "weight": ["kHALF/kLINEAR"], "y": ["kHALF/kHWC8"]},
    {"x": "kBF16/kLINEAR", "weight": ["kBF16/kLINEAR"], "y": ["kBF16/kLINEAR"]},
    {"x": "kBF16/kHWC8", "weight": ["kBF16/kLINEAR"], "y": ["kBF16/kHWC8"]},
]


# --- Generated header ------------------------------------------------------------------------------------------

def test_committed_schema_header_is_generated_from_the_yaml():
    generated = subprocess.run([sys.executable, "-m", "eca_deploy.schema", "--cpp-header"], check=True,
                               capture_output=True, text=True).stdout
    committed = (plugin_dir() / CPP_HEADER_FILE).read_text()
    assert committed == generated, (f"plugins/eca/{CPP_HEADER_FILE} is stale: run `python -m eca_deploy.schema "
                                    f"--cpp-header > plugins/eca/{CPP_HEADER_FILE}`")
    schema = eca_schema()
    assert f'kPLUGIN_NAME{{"{schema.name}"}}' in committed
    assert all(f'"{mode}"' in committed for mode in schema.pad_modes)


# --- Polygraphy pattern ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pattern() -> ModuleType:
    """plugins/eca/pattern.py, imported as Polygraphy imports it (a script beside the plugin)."""
    spec = importlib.util.spec_from_file_location("pattern", plugin_dir() / "pattern.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TwoEcaBlocks(nn.Module):
    """Two of the authors' ECA layers (k = 5 on 16 channels, k = 3 on 24), the second one feeding the output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.eca1 = nn.Conv2d(3, 16, 3, padding=1), EcaLayer(16, 5)
        self.conv2, self.eca2 = nn.Conv2d(16, 24, 3, padding=1), EcaLayer(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.eca2(self.conv2(torch.relu(self.eca1(self.conv1(x)))))


def legacy_export(module: nn.Module, opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    buffer = io.BytesIO()
    axes = {"x": {0: "batch"}, "y": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, 3, 8, 8),), buffer, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"], dynamic_axes=axes)
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("opset, fold", [
    (11, False),  # Squeeze/Unsqueeze axes as attributes
    (13, False),  # axes from Constant nodes
    (17, True),   # axes and Expand's shape as initializers (static shape, constants folded)
])
def test_pattern_replaces_each_legacy_eca_block_by_an_equivalent_plugin_node(pattern, opset, fold):
    torch.manual_seed(0)
    original = legacy_export(TwoEcaBlocks(), opset, dynamic_batch=not fold)
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(original))
    if fold:
        graph.fold_constants().cleanup()
        assert "Constant" not in {node.op for node in graph.nodes} and "Shape" not in {node.op for node in graph.nodes}

    instances = pattern.get_matching_subgraphs(graph)
    schema = eca_schema()
    kernel_attr, pad_attr = schema.attributes
    assert sorted(instance["attributes"][kernel_attr] for instance in instances) == [3, 5]
    for instance in instances:
        other_attributes = {name: value for name, value in instance["attributes"].items() if name != kernel_attr}
        assert other_attributes == {pad_attr: "constant", "plugin_namespace": schema.namespace,
                                    "plugin_version": schema.version}
    assert pattern.get_plugin_metadata() == {"name": "eca", "op": schema.name}

    tensors = graph.tensors()
    for instance in instances:
        pattern.replace_with_plugin(graph, [tensors[name] for name in instance["inputs"]],
                                    [tensors[name] for name in instance["outputs"]], instance["attributes"],
                                    pattern.get_plugin_metadata()["op"])
    assert [(node.op, node.domain) for node in graph.nodes if node.op not in ("Conv", "Relu")] == [
        (schema.name, schema.domain)] * 2

    # With the fallback function eca-fuse adds, ONNX Runtime runs the replaced model: same outputs.
    replaced = gs.export_onnx(graph)
    replaced.functions.append(make_eca_function(opset))
    replaced.ir_version = max(replaced.ir_version, 8)
    onnx.checker.check_model(replaced)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    expected = ort.InferenceSession(original.SerializeToString()).run(None, {"x": x})[0]
    actual = ort.InferenceSession(replaced.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_pattern_ignores_an_eca_like_block_whose_conv_has_a_bias(pattern):
    module = TwoEcaBlocks()
    module.eca1.conv = nn.Conv1d(1, 1, 5, padding=2, bias=True)
    graph = gs.import_onnx(legacy_export(module, 17, dynamic_batch=True))
    assert [instance["attributes"]["kernel_size"] for instance in pattern.get_matching_subgraphs(graph)] == [3]


# --- Plugin build ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=CI_VERSIONS)
def plugin_build(request) -> Path:
    """plugins/eca built with -Werror against the headers of each TensorRT version CI builds for."""
    return build_plugin(request.param)


def plugin_info(build: Path, *fields: str) -> tuple[int, dict]:
    result = subprocess.run([str(build / "ecaPluginInfo"), str(build / PLUGIN_LIBRARY), *fields],
                            capture_output=True, text=True)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.mark.slow
def test_plugin_creator_matches_the_schema(plugin_build):
    _, info = plugin_info(plugin_build)
    schema = eca_schema()
    (creator,) = info["creators"]
    assert (creator["name"], creator["version"], creator["namespace"]) == (schema.name, schema.version,
                                                                           schema.namespace)
    assert creator["fields"] == [{"name": name, "type": schema.attribute_types[name]} for name in schema.attributes]


@pytest.mark.slow
def test_plugin_library_exports_the_loader_entry_points_and_needs_no_tensorrt_library(plugin_build):
    if shutil.which("nm") is None or shutil.which("readelf") is None:
        pytest.skip("needs binutils (nm, readelf)")
    library = str(plugin_build / PLUGIN_LIBRARY)
    exported = run_checked(["nm", "-D", "--defined-only", "--extern-only", library]).split()[2::3]
    assert set(exported) == LOADER_ENTRY_POINTS
    needed = [line.split("[")[1].rstrip("]") for line in run_checked(["readelf", "-d", library]).splitlines()
              if "(NEEDED)" in line]
    assert all(name.startswith(SYSTEM_LIBRARIES) for name in needed), needed
    undefined_lines = run_checked(["nm", "-D", "--undefined-only", library]).splitlines()
    undefined = {line.split()[-1].split("@")[0] for line in undefined_lines}
    assert not undefined & set(TENSORRT_ENTRY_POINTS)


@pytest.mark.slow
@pytest.mark.parametrize("kernel_size", [1, 3, 5, 7, 9])
def test_plugin_serializes_its_fields_and_is_recreated_from_them(plugin_build, kernel_size):
    schema = eca_schema()
    kernel_attr, pad_attr = schema.attributes
    for pad_mode in schema.pad_modes:
        status, info = plugin_info(plugin_build, f"{kernel_attr}={kernel_size}", f"{pad_attr}={pad_mode}")
        assert status == 0 and info["created"] and info["recreated"] and info["cloned"], info
        assert info["serialized"] == [{"name": kernel_attr, "type": "int32", "value": [kernel_size]},
                                      {"name": pad_attr, "type": "char", "value": pad_mode}]
        assert info["metadata"] == f"{kernel_attr}={kernel_size},{pad_attr}={pad_mode}"
        assert info["formats"] == EXPECTED_FORMATS
        assert info["log"] == []


@pytest.mark.slow
@pytest.mark.parametrize("fields, complaint", [
    (["kernel_size=4", "pad_mode=constant"], "kernel_size must be odd and positive, got 4"),
    (["kernel_size=0", "pad_mode=constant"], "kernel_size must be odd and positive, got 0"),
    (["kernel_size=-3", "pad_mode=wrap"], "kernel_size must be odd and positive, got -3"),
    (["kernel_size=3", "pad_mode=reflect"], "unknown pad_mode 'reflect'"),
    (["kernel_size=3,5", "pad_mode=constant"], "field 'kernel_size' must be one kINT32 value"),
    (["kernel_size=3"], "missing field 'pad_mode'"),
    (["pad_mode=wrap"], "missing field 'kernel_size'"),
])
def test_plugin_rejects_invalid_fields_with_a_logged_error(plugin_build, fields, complaint):
    status, info = plugin_info(plugin_build, *fields)
    assert status == 1 and not info["created"]
    (message,) = info["log"]
    assert message["severity"] == "ERROR" and complaint in message["message"], message


def test_one_variable_points_every_plugin_test_at_its_headers(monkeypatch, tmp_path):
    """$ECA_TENSORRT_SDK takes a folder of tensorrt-<version>/include sets or one include/ folder (an installation's,
    or the NVIDIA/TensorRT repository's at a tag); both header spellings of the version are read."""
    import tensorrt_headers

    sets = tensorrt_headers.header_sets()
    if set(tensorrt_headers.CI_VERSIONS) - set(sets):
        pytest.skip(f"the TensorRT {', '.join(tensorrt_headers.CI_VERSIONS)} headers are not all here")
    try:
        for version in tensorrt_headers.CI_VERSIONS:
            monkeypatch.setenv(tensorrt_headers.SDK_ENV, str(sets[version]))
            tensorrt_headers.header_sets.cache_clear()
            assert tensorrt_headers.header_sets() == {version: sets[version]}
        monkeypatch.setenv(tensorrt_headers.SDK_ENV, str(tmp_path))
        tensorrt_headers.header_sets.cache_clear()
        with pytest.raises(pytest.fail.Exception, match=f"{tensorrt_headers.SDK_ENV}=.*neither a TensorRT include"):
            tensorrt_headers.header_sets()
    finally:
        tensorrt_headers.header_sets.cache_clear()
