"""The plugin library built from plugins/eca for the tests, once per process and TensorRT header set.

The headers come from :mod:`tensorrt_headers` ($ECA_TENSORRT_SDK, else ../shared/sdk, else an installation);
tests that need the library skip with the reason when there are none, or when nvcc or cmake is missing.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from tensorrt_headers import include_dir

from eca_deploy.resources import plugin_dir

CUDA_ARCHITECTURE = "87"  # Jetson Orin; one architecture keeps the build short
PLUGIN_LIBRARY = "libeca_plugin.so"


def cuda_compiler() -> str:
    """nvcc from CUDACXX, PATH or /usr/local/cuda; skips the test without one."""
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("nvcc not found: set CUDACXX or put the CUDA toolkit's bin/ on PATH")


def run_checked(command: list[str]) -> str:
    """Run ``command``; a failure fails the test with the end of its output."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        output = result.stdout[-4000:] + result.stderr[-4000:]
        pytest.fail(f"{' '.join(command)} failed ({result.returncode}):\n{output}")
    return result.stdout


@functools.cache
def _build(include_dir: Path, nvcc: str, cmake: str) -> Path:
    build = Path(tempfile.mkdtemp(prefix="eca_plugin_build_"))
    atexit.register(shutil.rmtree, build, ignore_errors=True)
    run_checked([cmake, "-S", str(plugin_dir()), "-B", str(build), f"-DTensorRT_INCLUDE_DIR={include_dir}",
                 f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DCMAKE_CUDA_ARCHITECTURES={CUDA_ARCHITECTURE}", "-DECA_WERROR=ON"])
    run_checked([cmake, "--build", str(build), "--parallel", str(os.cpu_count() or 1)])
    return build


def plugin_build(version: str | None = None) -> Path:
    """The CMake build folder of plugins/eca (warnings as errors, one architecture) against the headers
    of TensorRT ``version`` (``major.minor``; None: the newest found), built once per process."""
    headers, nvcc, cmake = include_dir(version), cuda_compiler(), shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not found")
    return _build(headers, nvcc, cmake)
