"""TensorRT headers for the tests that compile the plugin: one variable, ``$ECA_TENSORRT_SDK``, for every test.

It names either a folder of header sets laid out as ``../shared/sdk`` is (``tensorrt-<version>/include``), or one
TensorRT ``include/`` folder: a TensorRT installation's, or the ``include/`` folder of the NVIDIA/TensorRT
repository at a tag such as ``v10.3.0`` or ``v11.1``. Without it, ``../shared/sdk`` beside the checkout, else the
usual install locations. Sets are keyed by the ``major.minor`` version their NvInferVersion.h declares; a test
that needs a version the headers do not provide skips, saying where headers come from.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import pytest

SDK_ENV = "ECA_TENSORRT_SDK"
#: The versions the plugin is compiled against in CI: JetPack 6's TensorRT and the newest headers there.
CI_VERSIONS = ("10.3", "11.1")
HEADER = "NvInferRuntime.h"
SHARED_SDK = Path(__file__).resolve().parents[2] / "shared" / "sdk"
INSTALL_LOCATIONS = ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/include",
                     "/usr/local/tensorrt/include", "/opt/tensorrt/include")
WHERE = (f"set {SDK_ENV} to a TensorRT include/ folder (an installation's, or the NVIDIA/TensorRT repository's at "
         "tag v10.3.0 or v11.1) or to a folder of tensorrt-<version>/include sets")


def _version(include: Path) -> str | None:
    """``major.minor`` from the folder's NvInferVersion.h (both the 10.x and the 11.x spelling), or None."""
    header = include / "NvInferVersion.h"
    if not (include / HEADER).is_file() or not header.is_file():
        return None
    numbers = dict(re.findall(r"#define\s+(?:NV_TENSORRT_|TRT_)(MAJOR|MINOR)\w*\s+(\d+)", header.read_text()))
    return f"{numbers['MAJOR']}.{numbers['MINOR']}" if {"MAJOR", "MINOR"} <= numbers.keys() else None


def _sets_in(folder: Path) -> dict[str, Path]:
    """The header sets of ``folder``: itself when it is an include folder, else its ``tensorrt-*/include``."""
    includes = [folder] if (folder / HEADER).is_file() else sorted(folder.glob("tensorrt-*/include"))
    return {version: include for include in includes if (version := _version(include)) is not None}


@functools.cache
def header_sets() -> dict[str, Path]:
    """TensorRT ``major.minor`` -> include folder, from $ECA_TENSORRT_SDK, else ../shared/sdk, else an install."""
    configured = os.environ.get(SDK_ENV)
    if configured:
        sets = _sets_in(Path(configured))
        if not sets:
            pytest.fail(f"{SDK_ENV}={configured}: neither a TensorRT include/ folder (with {HEADER} and "
                        "NvInferVersion.h) nor a folder of tensorrt-<version>/include sets")
        return sets
    if SHARED_SDK.is_dir():
        return _sets_in(SHARED_SDK)
    for location in map(Path, INSTALL_LOCATIONS):
        if (sets := _sets_in(location)):
            return sets
    return {}


def include_dir(version: str | None = None) -> Path:
    """The include folder of TensorRT ``version`` (``major.minor``), or with None the newest found; skips the
    test, saying where headers come from, when there is none."""
    sets = header_sets()
    if version is None and sets:
        return sets[max(sets, key=lambda v: tuple(map(int, v.split("."))))]
    if version in sets:
        return sets[version]
    found = f" (found: {', '.join(sorted(sets))})" if sets else ""
    pytest.skip(f"no TensorRT {version or ''} headers{found}: {WHERE}".replace("TensorRT  ", "TensorRT "))
