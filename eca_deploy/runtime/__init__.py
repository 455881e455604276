"""Inference runtime for services: one API over TensorRT engines and ONNX Runtime.

- :class:`EcaRuntime`: load a model (``.onnx`` on ONNX Runtime, ``.engine``/``.plan`` on TensorRT
  with our plugin), ``predict`` logits from several threads at once, ``classify`` to top-k.
- :class:`InputSpec`: what the model accepts; every batch is validated against it.
- :func:`decode_topk`, :func:`load_class_names`: logits to ranked, named classes.
- image preprocessing (the authors' transforms) lives in :mod:`eca_deploy.preprocess`.

TensorRT and ONNX Runtime backends are imported on first use, so a service on one never loads the other.
"""

from eca_deploy.runtime.core import EcaRuntime, backend_for
from eca_deploy.runtime.decode import TopK, decode_topk, load_class_names, softmax
from eca_deploy.runtime.spec import InputSpec

__all__ = ["EcaRuntime", "InputSpec", "TopK", "backend_for", "decode_topk", "load_class_names", "softmax"]
