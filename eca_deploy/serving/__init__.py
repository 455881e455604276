"""Serving: the runtime services call, and the Triton model repositories that serve the same models.

- :class:`EcaRuntime` (:mod:`.runtime`): load a model (``.onnx`` on ONNX Runtime, ``.engine``/``.plan`` on
  TensorRT with our plugin), ``predict`` logits from several threads at once, ``classify`` to top-k.
- :class:`InputSpec` (:mod:`.spec`): what the model accepts; every batch is validated against it.
- :func:`decode_topk`, :func:`load_class_names` (:mod:`.decode`): logits to ranked, named classes.
- :mod:`.onnxrt`, :mod:`.trt`: the two backends, imported on first use, so a service on one never loads the other.
- :mod:`.triton_repo`: a Triton model repository (ONNX Runtime, Python backend, TensorRT plan) for a fused
  model; :mod:`.triton_python_model` is the Python-backend model it copies in, running :class:`EcaRuntime`.
- image preprocessing (the authors' and timm's transforms) lives in :mod:`eca_deploy.preprocess`.
"""

from eca_deploy.serving.runtime import EcaRuntime, backend_for
from eca_deploy.serving.decode import TopK, decode_topk, load_class_names, softmax
from eca_deploy.serving.spec import InputSpec

__all__ = ["EcaRuntime", "InputSpec", "TopK", "backend_for", "decode_topk", "load_class_names", "softmax"]
