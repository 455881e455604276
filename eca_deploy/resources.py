"""Locate files that live at the repository root and ship inside the wheel (plugin sources, manifest)."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def resource_path(relative: str) -> Path:
    """Return the path of ``relative`` (e.g. ``plugins/eca``) in the wheel or the source checkout."""
    for root in (_PACKAGE_DIR / "_bundled", _PACKAGE_DIR.parent):
        candidate = root / relative
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{relative} is missing from this eca-deploy installation")


def plugin_dir() -> Path:
    """The folder holding the ECA plugin's CUDA/C++ sources and its ``_PluginConfig.yaml``."""
    return resource_path("plugins/eca")


def cache_root() -> Path:
    """Root of eca-deploy's caches (engines, kernels, links): $XDG_CACHE_HOME/eca_deploy, else ~/.cache/eca_deploy."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eca_deploy"
