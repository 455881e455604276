"""The Quickly Deployable Plugin route, run through TensorRT's own ``tensorrt.plugin`` code.

TensorRT's bindings wheels on PyPI carry ``tensorrt.plugin`` as pure Python, but their compiled
module needs libnvinfer from a wheel this machine cannot download. The tests download the real
wheels (TensorRT 10.9, where ``aot_impl`` appeared; the newest 11.x; and 10.8 for the refusal),
replace only that compiled module (tests/tensorrt_stub.py, imported where the package imports it),
and in a separate process register our plugin with the package's validation and make the calls
TensorRT's builder makes (tests/qdp_build_calls.py). A signature mistake therefore fails here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from eca_deploy.errors import EcaDeployError
from eca_deploy.models import EcaLayer
from eca_deploy.passes import fuse_eca
from eca_deploy.resources import cache_root
from eca_deploy.tensorrt.nvrtc import SINGLE_LAUNCH_KERNELS, single_launch_params
from eca_deploy.tensorrt.qdp import (
    AOT_ATTRIBUTE,
    attribute_text,
    mark_for_aot,
    register_aot_plugin,
)

TESTS = Path(__file__).resolve().parent
AOT_MIN = ("tensorrt-cu12-bindings", "10.9.0.34")
NEWEST = ("tensorrt-cu13-bindings", "11.4.0.106")
BEFORE_AOT = ("tensorrt-cu12-bindings", "10.8.0.43")
BATCHES = (1, 3, 32)
# (C, H, W, k, pad mode, dtype): zoo-like layers, k > C, odd planes, both pad modes and dtypes.
CASES = [(64, 28, 28, 3, "constant", "float32"), (2048, 7, 7, 7, "wrap", "float16"),
         (17, 5, 6, 9, "wrap", "float32"), (3, 4, 4, 9, "constant", "float16")]


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


def test_string_attributes_lose_the_parsers_terminator():
    assert attribute_text("wrap\0") == "wrap" and attribute_text("constant") == "constant"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
def test_registration_without_tensorrt_names_what_to_install():
    with pytest.raises(EcaDeployError, match=r"TensorRT >= 10\.9 with its `tensorrt.plugin`"):
        register_aot_plugin()


def _download_wheel(cache: Path, distribution: str, version: str) -> Path:
    """The wheel of ``distribution==version`` for this Python, downloaded once into ``cache``."""
    found = sorted(cache.glob(f"{distribution.replace('-', '_')}-{version}-*.whl"))
    if not found:
        run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                              "--dest", str(cache), f"{distribution}=={version}"], capture_output=True, text=True)
        found = sorted(cache.glob(f"{distribution.replace('-', '_')}-{version}-*.whl"))
        if run.returncode != 0 or not found:
            pytest.skip(f"cannot download {distribution}=={version} from PyPI: {run.stderr.strip()[-300:]}")
    return found[0]


@pytest.fixture(scope="module")
def tensorrt_python(tmp_path_factory):
    """A function giving, for a (distribution, version), a folder holding the wheel's ``tensorrt`` Python
    package with only its compiled module replaced by tests/tensorrt_stub.py."""
    cache = cache_root() / "tensorrt-bindings-wheels"
    cache.mkdir(parents=True, exist_ok=True)

    def package(distribution: str, version: str) -> Path:
        root = tmp_path_factory.mktemp(f"{distribution}-{version}")
        with zipfile.ZipFile(_download_wheel(cache, distribution, version)) as wheel:
            members = [name for name in wheel.namelist()
                       if name.startswith("tensorrt_bindings/") and not name.endswith(".so")]
            wheel.extractall(root, members)
        (root / "tensorrt_bindings").rename(root / "tensorrt")
        shutil.copyfile(TESTS / "tensorrt_stub.py", root / "tensorrt" / "tensorrt.py")  # where `from .tensorrt import *` looks
        return root

    return package


def _run_with(package_root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package_root), str(TESTS.parent)])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("wheel", [AOT_MIN, NEWEST], ids=lambda w: w[1])
def test_tensorrt_plugin_validates_and_drives_our_aot_plugin(tensorrt_python, wheel):
    root = tensorrt_python(*wheel)
    for channels, height, width, kernel_size, pad_mode, dtype in CASES:
        run = _run_with(root, str(TESTS / "qdp_build_calls.py"), str(channels), str(height), str(width),
                        str(kernel_size), pad_mode, dtype, *map(str, BATCHES))
        assert run.returncode == 0, run.stderr[-3000:]
        report = json.loads(run.stdout)
        assert report["output_shape"] == [[n, channels, height, width] for n in BATCHES]
        assert report["formats"] == [["FLOAT", "LINEAR"], ["HALF", "LINEAR"]]
        assert report["kernel_name"] == SINGLE_LAUNCH_KERNELS[dtype] and report["ptx_defines_kernel"]
        for n, launch in zip(BATCHES, report["launches"]):
            expected = single_launch_params(n, channels, height, width, kernel_size, dtype, pad_mode)
            assert launch == {"grid": list(expected.grid), "block": list(expected.block),
                              "shared_mem": expected.shared_mem_bytes, "extra_args": list(expected.extra_args)}


def test_tensorrt_before_10_9_is_refused_with_the_alternative(tensorrt_python):
    root = tensorrt_python(*BEFORE_AOT)
    run = _run_with(root, str(TESTS / "qdp_build_calls.py"), "16", "7", "7", "3", "constant", "float32", "1")
    assert run.returncode == 1
    assert f"needs TensorRT >= 10.9 (tensorrt.plugin.aot_impl); this is TensorRT {BEFORE_AOT[1]}" in run.stderr
    assert "--plugin libeca_plugin.so" in run.stderr


def test_the_validation_catches_a_signature_mistake(tensorrt_python):
    """Negative control: the package really inspects annotations (``outputs: tuple`` is what we had)."""
    root = tensorrt_python(*AOT_MIN)
    code = ("from typing import List\nimport tensorrt.plugin as trtp\n"
            "@trtp.register('eca_check::Probe')\n"
            "def probe(x: trtp.TensorDesc, k: int) -> trtp.TensorDesc:\n    return x.like()\n"
            "try:\n    @trtp.autotune('eca_check::Probe')\n"
            "    def formats(x: trtp.TensorDesc, k: int, outputs: tuple) -> List[trtp.AutoTuneCombination]:\n"
            "        return []\nexcept ValueError as error:\n    print('refused:', error)\n")
    run = _run_with(root, "-c", code)
    assert run.returncode == 0 and "refused: 'outputs' should be of type Tuple[TensorDesc]" in run.stdout, run.stderr
