"""The pipeline as library functions, one call per step: what the command line runs, for Python callers.

:func:`export` (model -> checked ONNX, fused ONNX, engine, Triton repository), :func:`fuse` (any ONNX model's ECA
blocks), :func:`build_engine` (ONNX -> TensorRT engine), :func:`validate` and :func:`bench` (reports). Each
returns a small result (files, report, summary); ``eca_deploy.export`` and the others are these functions.
"""

from eca_deploy.pipeline.convert import build_engine, export, fuse
from eca_deploy.pipeline.measure import bench, validate
from eca_deploy.pipeline.results import Exported, Fused, Measured, StepResult

__all__ = ["Exported", "Fused", "Measured", "StepResult", "bench", "build_engine", "export", "fuse", "validate"]
