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

from eca_deploy._version import __version__

_API = ("export", "fuse", "build_engine", "validate", "bench", "load_model", "EcaDeployError")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """The API's functions, imported when first used (PyTorch, ONNX and TensorRT load with them)."""
    if name in ("export", "fuse", "build_engine", "validate", "bench"):
        from eca_deploy import pipeline

        return getattr(pipeline, name)
    if name == "load_model":
        from eca_deploy.checkpoints import load_model

        return load_model
    if name == "EcaDeployError":
        from eca_deploy.errors import EcaDeployError

        return EcaDeployError
    raise AttributeError(f"module 'eca_deploy' has no attribute {name!r}")
