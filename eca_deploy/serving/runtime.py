"""``EcaRuntime``: one API for ECA models on TensorRT engines and on ONNX Runtime.

    from eca_deploy.serving import EcaRuntime

    with EcaRuntime("model.eca.onnx") as runtime:            # ONNX Runtime, CPU
        logits = runtime.predict(batch)                     # N x 3 x 224 x 224 float32 -> N x classes
        top5 = runtime.classify(runtime.preprocess(["cat.jpg"]), k=5, class_names=names)

    runtime = EcaRuntime("model.engine", plugin_library="libeca_plugin.so")   # TensorRT, GPU

``predict`` is safe to call from several threads at once. Every batch is checked first (rank,
channels, size, dtype, batch range, and NaN/Inf unless ``check_finite=False``) and a bad one raises
:class:`~eca_deploy.errors.EcaDeployError` saying what is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from eca_deploy.errors import EcaDeployError
from eca_deploy.preprocess import ImageLike, Preprocessing
from eca_deploy.serving.decode import TopK, decode_topk
from eca_deploy.serving.spec import InputSpec

BACKENDS = ("auto", "onnxruntime", "tensorrt")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def backend_for(path: Path, backend: str) -> str:
    """The backend for ``path``: as given, or from the suffix (``.onnx`` / ``.engine``, ``.plan``, ``.trt``)."""
    if backend not in BACKENDS:
        raise EcaDeployError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    if path.suffix == ".onnx":
        return "onnxruntime"
    if path.suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    raise EcaDeployError(f"cannot tell the backend of {path.name} from its suffix: pass backend='onnxruntime' "
                         f"or backend='tensorrt'")


class EcaRuntime:
    """An ECA classifier loaded for inference: ``predict`` (logits), ``classify`` (top-k), ``preprocess``.

    Args:
        model: ``.onnx`` (plain or fused) or a serialized TensorRT engine (``.engine``/``.plan``).
        backend: ``auto`` (from the suffix), ``onnxruntime`` or ``tensorrt``.
        providers: ONNX Runtime execution providers: None for CPU, ``"auto"`` for TensorRT/CUDA/CPU
            as available, or an explicit list.
        plugin_library: ``libeca_plugin.so`` (default ``$ECA_PLUGIN_LIBRARY`` on TensorRT); on ONNX
            Runtime it is handed to the TensorRT execution provider.
        workers: TensorRT execution contexts (at most one per optimization profile; default: all).
        max_batch: largest batch accepted (TensorRT: within the engine profile, which is the default;
            ONNX Runtime: unbounded by default).
        check_finite: reject batches holding NaN or Inf (False lets them through to the model).
        allow_engine_host_code: load version-compatible engines that embed their plugin (trusted plans only).
        tensorrt_module: ``auto`` (from the plan's tag: TensorRT-RTX plans run on ``tensorrt_rtx``), ``tensorrt``
            or ``tensorrt_rtx``.
        intra_op_threads: ONNX Runtime threads per call (default: ONNX Runtime's choice).
    """

    def __init__(self, model: str | Path, *, backend: str = "auto", providers: str | Sequence | None = None,
                 plugin_library: str | Path | None = None, workers: int | None = None,
                 max_batch: int | None = None, check_finite: bool = True, allow_engine_host_code: bool = False,
                 tensorrt_module: str = "auto", intra_op_threads: int | None = None) -> None:
        self.path = Path(model)
        self.check_finite = check_finite
        kind = backend_for(self.path, backend)
        if kind == "onnxruntime":
            from eca_deploy.serving.onnxrt import OnnxRuntimeBackend

            self._backend = OnnxRuntimeBackend(self.path, providers=providers, plugin_library=plugin_library,
                                               max_batch=max_batch, intra_op_threads=intra_op_threads)
        else:
            from eca_deploy.serving.trt import TensorRTBackend

            self._backend = TensorRTBackend(self.path, plugin_library=plugin_library, workers=workers,
                                            max_batch=max_batch, allow_engine_host_code=allow_engine_host_code,
                                            tensorrt_module=tensorrt_module)
        self.spec: InputSpec = self._backend.spec
        self._preprocessing = Preprocessing.from_zoo().for_input_size(self.spec.height)

    @property
    def backend(self) -> str:
        """``onnxruntime`` or ``tensorrt``."""
        return self._backend.name

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def predict(self, batch: Any) -> Any:
        """Logits (N x classes) for an N x C x H x W float batch; thread-safe.

        NumPy arrays give NumPy logits. torch tensors give torch logits; CUDA tensors stay on the GPU
        without copies on TensorRT.
        """
        if self._backend is None:
            raise EcaDeployError("this runtime is closed")
        return self._backend.run(self.spec.validate(batch, check_finite=self.check_finite))

    def classify(self, batch: Any, k: int = 5, class_names: Sequence[str] | None = None) -> list[list[TopK]]:
        """The ``k`` most probable classes (softmax scores) of every sample, best first."""
        return decode_topk(self.predict(batch), k=k, class_names=class_names)

    def preprocess(self, images: Iterable[ImageLike], preprocessing: Preprocessing | None = None):
        """Images (paths, PIL images, RGB uint8 arrays) -> a float32 batch for this model.

        Default: the authors' ImageNet transforms scaled to the model's input size.
        """
        return (preprocessing or self._preprocessing).batch(images)

    def describe(self) -> dict:
        """What is loaded: backend details and the input spec (for logs and health endpoints)."""
        return {"model": self.path.name, **self._backend.describe(), "input": self.spec.to_dict(),
                "check_finite": self.check_finite}

    def close(self) -> None:
        """Release the session or the engine, contexts, streams and buffers."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def __enter__(self) -> EcaRuntime:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EcaRuntime({self.path.name!r}, backend={self.backend!r}, input={self.spec.describe()})"
