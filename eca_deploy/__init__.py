"""eca-deploy: ECA-Net models to validated ONNX models and TensorRT engines with a fused ECA plugin.

The pipeline, one call per step (:mod:`eca_deploy.pipeline`, imported on first use so that ``import
eca_deploy`` and the command line's ``--help`` stay instant)::

    import eca_deploy

    exported = eca_deploy.export(model, "out", precision="fp16")     # nn.Module, checkpoint, zoo or timm:NAME
    fused = eca_deploy.fuse("other.onnx")                             # any ONNX model's ECA blocks
    engine = eca_deploy.build_engine(exported.fused, plugin_library="libeca_plugin.so")
    report = eca_deploy.validate(model, [f"ort-cpu={exported.fused}"])
    timings = eca_deploy.bench(model, [f"ort-cpu={exported.fused}"])

Stages, in the order data flows: ``checkpoints`` (every model source) -> ``onnx_export`` -> ``passes`` (ECA
fusion) -> ``tensorrt`` (engines) -> ``serving`` (runtime, Triton) -> ``harness`` (reports) -> ``pipeline``.
"""

from __future__ import annotations

import importlib

from eca_deploy._version import __version__

#: The public API and the module each name comes from, imported when first used (PyTorch, ONNX and TensorRT load
#: with them).
_API = {"export": "eca_deploy.pipeline", "fuse": "eca_deploy.pipeline", "build_engine": "eca_deploy.pipeline",
        "validate": "eca_deploy.pipeline", "bench": "eca_deploy.pipeline", "load_model": "eca_deploy.checkpoints",
        "EcaDeployError": "eca_deploy.errors"}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'eca_deploy' has no attribute {name!r}")
