"""Choices and defaults the command line offers, free of heavy imports so that ``--help`` is instant.

The modules that implement them (export, tensorrt, harness) import them from here.
"""

from __future__ import annotations

DEFAULT_SOURCE = "eca_mobilenet_v2"  # what eca-export, validate and bench load without SOURCE
DEFAULT_INPUT_SIZE = 224  # pixels, where the model does not say (timm models do)

# Export (eca_deploy.onnx_export): names of the exported model's input, output and batch dimension, and options
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
DEFAULT_OPSET = 18
MIN_OPSET = 13
DYNAMO_MIN_OPSET = 18
EXPORTERS = ("dynamo", "legacy")
PRECISIONS = ("fp32", "fp16")  # what the exporter writes; INT8 models are quantized from FP32 (eca_deploy.quantize)
CALIBRATION_METHODS = ("entropy", "percentile", "minmax")  # the first is the default (measured, BENCHMARKS.md)

# Engines (eca_deploy.tensorrt)
TENSORRT_FLAVOURS = ("tensorrt", "tensorrt_rtx")
PRECISION_ROUTES = ("strongly-typed", "builder-flag")

# Power sampling on Jetson (eca_deploy.harness.environment)
POWER_SOURCES = ("auto", "sysfs", "tegrastats", "none")
