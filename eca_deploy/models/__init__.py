"""The ECA model zoo: the authors' ECA-ResNet and ECA-MobileNetV2 definitions."""

from eca_deploy.models.layers import EcaLayer, adaptive_kernel_size
from eca_deploy.models.registry import (
    ARCHITECTURES,
    Architecture,
    calibrate_batchnorm,
    create_demo_model,
    create_model,
    get_architecture,
)

__all__ = [
    "ARCHITECTURES", "Architecture", "EcaLayer", "adaptive_kernel_size", "calibrate_batchnorm",
    "create_demo_model", "create_model", "get_architecture",
]
