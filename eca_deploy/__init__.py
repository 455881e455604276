"""eca-deploy: ECA-Net checkpoints to validated ONNX models and TensorRT engines.

The pipeline, one module per stage:
``checkpoints`` -> ``export`` -> ``passes`` (ECA fusion) -> ``engine`` -> ``parity``/harness.
"""

__version__ = "0.1.0"
