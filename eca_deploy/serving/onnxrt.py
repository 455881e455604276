"""ONNX Runtime backend: plain or fused ONNX (EcaAttention runs through its model-local function).

One ``InferenceSession`` serves every thread: ONNX Runtime documents ``run()`` as thread-safe.
Execution providers: CPU by default; ``providers="auto"`` takes TensorRT, then CUDA, then CPU among
those this onnxruntime build has. With the TensorRT execution provider, ``plugin_library`` is passed
as ``trt_extra_plugin_lib_paths`` (the EP dlopen()s it, so give the self-registering
``libeca_plugin_autoreg.so``); the fused nodes run either as the plugin or, when ONNX Runtime inlines
their function first, as native layers: the results are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from eca_deploy.errors import EcaDeployError, first_line
from eca_deploy.serving.spec import InputSpec, is_torch_tensor

AUTO_PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def resolve_providers(providers: str | Sequence | None, plugin_library: Path | None = None) -> list:
    """ONNX Runtime provider list: None -> CPU, "auto" -> the best available, else checked as given."""
    available = ort.get_available_providers()
    if providers is None:
        chosen: list = ["CPUExecutionProvider"]
    elif providers == "auto":
        chosen = [name for name in AUTO_PROVIDER_ORDER if name in available]
    else:
        chosen = [providers] if isinstance(providers, str) else list(providers)
        for entry in chosen:
            name = entry[0] if isinstance(entry, tuple) else entry
            if name not in available:
                raise EcaDeployError(f"execution provider {name} is not in this onnxruntime build "
                                     f"(available: {', '.join(available)})")
    if plugin_library is not None:
        chosen = [("TensorrtExecutionProvider", {"trt_extra_plugin_lib_paths": str(plugin_library)})
                  if entry == "TensorrtExecutionProvider" else entry for entry in chosen]
    return chosen


class OnnxRuntimeBackend:
    """Runs an ONNX model with one float NCHW input and one N x classes output."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, *, providers: str | Sequence | None = None,
                 plugin_library: str | Path | None = None, max_batch: int | None = None,
                 intra_op_threads: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise EcaDeployError(f"ONNX model {path} does not exist")
        options = ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = int(intra_op_threads)
        plugin = Path(plugin_library) if plugin_library is not None else None
        if plugin is not None and not plugin.is_file():
            raise EcaDeployError(f"plugin library {plugin} does not exist")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=resolve_providers(providers, plugin))
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            raise EcaDeployError(f"ONNX Runtime cannot load {path.name}: {first_line(error)}") from error
        self.path = path
        self.spec = self._read_spec(max_batch)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def _read_spec(self, max_batch: int | None) -> InputSpec:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise EcaDeployError(f"{self.path.name} must have one input and one output, has "
                                 f"{len(inputs)} and {len(outputs)}")
        (inp,), (out,) = inputs, outputs
        if len(inp.shape) != 4 or not all(isinstance(d, int) for d in inp.shape[1:]):
            raise EcaDeployError(f"{self.path.name}'s input {inp.name!r} must be N x C x H x W with fixed C, H, W; "
                                 f"has shape {inp.shape}")
        if len(out.shape) != 2 or not isinstance(out.shape[1], int):
            raise EcaDeployError(f"{self.path.name}'s output {out.name!r} must be N x classes, has shape {out.shape}")
        if inp.type not in _ORT_TYPES:
            raise EcaDeployError(f"{self.path.name}'s input must be a float tensor, is {inp.type}")
        fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        if max_batch is not None and max_batch < 1:
            raise EcaDeployError(f"max_batch must be at least 1, got {max_batch}")
        limit = fixed_batch if fixed_batch is not None else max_batch
        return InputSpec(input_name=inp.name, output_name=out.name, sample_shape=tuple(inp.shape[1:]),
                         dtype=np.dtype(_ORT_TYPES[inp.type]), num_classes=int(out.shape[1]),
                         min_batch=fixed_batch or 1, max_batch=limit)

    def run(self, batch):
        """Logits for a validated batch: NumPy in, NumPy out; torch in, torch out on the input's device."""
        if is_torch_tensor(batch):  # ONNX Runtime reads host memory: CUDA tensors are copied here
            import torch

            logits = self.run(np.ascontiguousarray(batch.detach().cpu().numpy()))
            return torch.from_numpy(logits).to(batch.device)
        (logits,) = self.session.run([self.spec.output_name], {self.spec.input_name: batch})
        return logits

    def close(self) -> None:
        self.session = None

    def describe(self) -> dict:
        return {"backend": self.name, "version": ort.__version__, "providers": self.providers}
