"""The ECA model zoo: the authors' ECA-ResNet and ECA-MobileNetV2 definitions.

The registry (names, layouts, kernel specs) imports no PyTorch; ``EcaLayer`` and the functions that
build or calibrate models import it when first used.
"""

from __future__ import annotations

import importlib

from eca_deploy.models.registry import (ARCHITECTURES, Architecture, calibrate_batchnorm, create_demo_model,
                                        create_model, get_architecture)
from eca_deploy.models.specs import adaptive_kernel_size

__all__ = [
    "ARCHITECTURES", "Architecture", "EcaLayer", "adaptive_kernel_size", "calibrate_batchnorm",
    "create_demo_model", "create_model", "get_architecture",
]


def __getattr__(name: str) -> object:
    if name == "EcaLayer":  # needs PyTorch: imported on first use
        return importlib.import_module("eca_deploy.models.layers").EcaLayer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
