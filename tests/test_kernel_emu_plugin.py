"""EcaPlugin (plugins/eca/ecaPlugin.cpp) on the CPU emulator: compiled with TensorRT's headers and the emulator's
CUDA headers, created by its creator from plugin fields, asked for types, formats, configurePlugin and
getWorkspaceSize with the dynamic DynamicPluginTensorDesc a TensorRT(-RTX) build hands it, rebuilt from its
serialized fields and run with onShapeChange and enqueue into a workspace of exactly the size it asked for,
in every format TensorRT allows it (kLINEAR FP32/FP16/BF16, kHWC FP32, kHWC8 FP16/BF16); against the float64
reference. The headers come from tests/tensorrt_headers.py ($ECA_TENSORRT_SDK, else ../shared/sdk beside the
repository), like every plugin test's; CI builds against JetPack 6's 10.3 and 11.1."""

from __future__ import annotations

from pathlib import Path

import pytest
from kernel_emu.build import (
    ASAN,
    CHECKED,
    Variant,
    build,
    unavailable,
)
from kernel_emu.cases import plugin_grid
from kernel_emu.mutations import PLUGIN_MUTATION
from kernel_emu.runner import failures, run_cases
from tensorrt_headers import CI_VERSIONS, include_dir

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")


@pytest.mark.parametrize("version", CI_VERSIONS)
@pytest.mark.parametrize("variant", [CHECKED, ASAN], ids=lambda v: v.name)
def test_plugin_enqueue_matches_the_reference_in_every_format(variant: Variant, version: str,
                                                              request: pytest.FixtureRequest):
    cases = plugin_grid(sampled=not request.config.getoption("--emu-full"))
    outcomes = run_cases(build(variant, tensorrt_include=include_dir(version)), cases)
    assert all(o.passed for o in outcomes), failures(outcomes)


@pytest.mark.parametrize("version", CI_VERSIONS[:1])
def test_a_broken_plugin_is_caught(version: str, tmp_path: Path):
    mutant = build(CHECKED, source_dir=PLUGIN_MUTATION.apply(tmp_path), tensorrt_include=include_dir(version))
    failed = [o for o in run_cases(mutant, PLUGIN_MUTATION.cases) if not o.passed]
    assert failed and failed[0].check in PLUGIN_MUTATION.caught_by, failures(failed) if failed else "passed"
