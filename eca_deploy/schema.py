"""The fused ECA node's schema, read from the plugin's ``EcaAttention_PluginConfig.yaml``.

y = x * sigmoid(conv1d_k(mean_hw(x))) over the channel axis, with ``pad_mode`` "constant"
(zero padding, the authors' ECA) or "wrap" (circular padding, timm's CecaModule). The names are
ONNX Pad's modes, so the fallback function binds them directly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import yaml

from eca_deploy.resources import plugin_dir

PLUGIN_CONFIG_FILE = "EcaAttention_PluginConfig.yaml"


@dataclass(frozen=True)
class PluginSchema:
    """Name, version, namespace, I/O and fields of the fused node and its TensorRT plugin."""

    name: str
    namespace: str
    version: str
    interface: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: tuple[str, ...]
    attribute_types: dict[str, str]
    pad_modes: tuple[str, ...]

    @property
    def domain(self) -> str:
        """ONNX domain of the fused node and its local function (same as the plugin namespace)."""
        return self.namespace


@functools.cache
def eca_schema() -> PluginSchema:
    """Load the schema from the plugin folder (cached)."""
    config = yaml.safe_load((plugin_dir() / PLUGIN_CONFIG_FILE).read_text())
    (version, spec), = config["versions"].items()
    return PluginSchema(
        name=config["name"],
        namespace=config["namespace"],
        version=str(version),
        interface=config["interface"],
        inputs=tuple(spec["inputs"]),
        outputs=tuple(spec["outputs"]),
        attributes=tuple(spec["attributes"]),
        attribute_types=dict(spec["attribute_types"]),
        pad_modes=tuple(spec["attribute_options"]["pad_mode"]),
    )
