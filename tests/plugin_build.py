"""The plugin library built from plugins/eca for the tests, once per process and TensorRT header set.

Headers are found through ECA_TENSORRT_INCLUDE (a directory holding NvInferRuntime.h), else TensorRT_ROOT
(its include/), else the public TensorRT headers beside the checkout (``../shared/sdk/tensorrt-<version>/include``,
see that folder's README; never copied into the repository), else the usual install locations. Tests that need
the library skip with the reason when there are none, or when nvcc or cmake is missing.
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

from eca_deploy.resources import plugin_dir

HEADER_ENV, ROOT_ENV = "ECA_TENSORRT_INCLUDE", "TensorRT_ROOT"
TENSORRT_HEADER = "NvInferRuntime.h"
SDK_DIR = Path(__file__).resolve().parents[2] / "shared" / "sdk"
SDK_VERSIONS = ("10.3.0", "11.1")  # JetPack 6's TensorRT, and the newest headers there
STANDARD_INCLUDE_DIRS = ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/include",
                         "/usr/local/tensorrt/include", "/opt/tensorrt/include")
CUDA_ARCHITECTURE = "87"  # Jetson Orin; one architecture keeps the build short
PLUGIN_LIBRARY = "libeca_plugin.so"


def tensorrt_include_dir(version: str | None = None) -> Path:
    """Headers of TensorRT ``version`` from ../shared/sdk, or (None) the first set found as described above."""
    if version is not None:
        directory = SDK_DIR / f"tensorrt-{version}" / "include"
        if not (directory / TENSORRT_HEADER).is_file():
            pytest.skip(f"TensorRT {version} headers not found in {directory.parent} (see ../shared/sdk/README.md)")
        return directory
    for variable, relative in ((HEADER_ENV, "."), (ROOT_ENV, "include")):
        if os.environ.get(variable):
            directory = Path(os.environ[variable], relative).resolve()
            if not (directory / TENSORRT_HEADER).is_file():
                pytest.fail(f"{variable}={os.environ[variable]}: no {TENSORRT_HEADER} in {directory}")
            return directory
    candidates = [SDK_DIR / f"tensorrt-{v}" / "include" for v in SDK_VERSIONS] + list(map(Path, STANDARD_INCLUDE_DIRS))
    for candidate in candidates:
        if (candidate / TENSORRT_HEADER).is_file():
            return candidate
    pytest.skip(f"TensorRT headers not found: set {HEADER_ENV} to a directory holding {TENSORRT_HEADER} "
                f"(or {ROOT_ENV} to a TensorRT installation), or provide ../shared/sdk")


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
    of ``version`` (or the first found), built once per process."""
    include_dir, nvcc, cmake = tensorrt_include_dir(version), cuda_compiler(), shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not found")
    return _build(include_dir, nvcc, cmake)
