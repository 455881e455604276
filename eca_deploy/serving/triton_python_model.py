"""Triton Python-backend model: an ECA classifier served through ``eca_deploy.serving.EcaRuntime``.

``eca_deploy.serving.triton_repo`` copies this file to ``<model>/1/model.py`` beside the fused ONNX model.
It runs inside Triton's Python backend stub (module ``triton_python_backend_utils``), so the Python
environment the stub uses needs eca-deploy and its dependencies installed. It serves where Triton
has no onnxruntime backend (e.g. the server bundled with nvidia-pytriton) and validates every
request with the runtime's checks (NaN/Inf included), answering a bad request with an ``INVALID_ARG``
error (HTTP 400, gRPC INVALID_ARGUMENT) without failing the others batched with it; a failure of the
model itself is ``INTERNAL`` (HTTP 500) for the requests it ran.

Config parameters (string values): ``model_file`` (default ``model.onnx``), ``providers``
(comma-separated ONNX Runtime execution providers, default CPU), ``check_finite`` (default true),
``intra_op_threads``.

Tensors cross the stub through DLPack: stubs built against NumPy 1.x read and write arrays wrongly
under NumPy 2 (``as_numpy()`` returns garbage and ``Tensor(name, array)`` sends zero bytes), while
DLPack capsules are independent of NumPy's ABI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from eca_deploy.errors import EcaDeployError
from eca_deploy.serving import EcaRuntime


class _LegacyDLPack:
    """Presents a Triton tensor to ``np.from_dlpack`` through the unversioned DLPack capsule."""

    def __init__(self, tensor) -> None:
        self._tensor = tensor

    def __dlpack__(self, stream=None, **_ignored):
        return self._tensor.to_dlpack()

    def __dlpack_device__(self):
        return (1, 0)  # kDLCPU: inputs of a KIND_CPU instance live in host memory


def _install_capsule_noise_filter() -> None:
    """Drop the one harmless message DLPack outputs cause in the stub's log.

    After the stub consumes an output's DLPack capsule, NumPy's capsule destructor reports
    ``ValueError: PyCapsule_GetPointer called with incorrect name`` through ``sys.unraisablehook``
    (the stub renames consumed capsules differently from what NumPy checks); the data is intact.
    Every other unraisable error still reaches the previous hook.
    """
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, ValueError) and str(error) == "PyCapsule_GetPointer called with incorrect name"):
            previous(unraisable)

    sys.unraisablehook = hook


def _to_numpy(tensor) -> np.ndarray:
    return np.from_dlpack(_LegacyDLPack(tensor))


def _to_triton(name: str, array: np.ndarray):
    return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(array).__dlpack__())


def _error_response(error: Exception, code):
    """A response carrying ``error``'s sentence with Triton error ``code`` (``INVALID_ARG`` is HTTP 400)."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), code))


class TritonPythonModel:
    def initialize(self, args) -> None:
        _install_capsule_noise_filter()
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        model_file = Path(args["model_repository"]) / args["model_version"] / parameters.get("model_file", "model.onnx")
        providers = [p.strip() for p in parameters.get("providers", "").split(",") if p.strip()] or None
        threads = parameters.get("intra_op_threads")
        self.runtime = EcaRuntime(model_file, providers=providers, max_batch=config.get("max_batch_size") or None,
                                  check_finite=parameters.get("check_finite", "true").lower() != "false",
                                  intra_op_threads=int(threads) if threads else None)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests):
        """One runtime call for every valid request Triton's dynamic batcher handed over; errors per request."""
        responses = [None] * len(requests)
        accepted: list[tuple[int, np.ndarray]] = []
        for index, request in enumerate(requests):
            try:
                batch = _to_numpy(pb_utils.get_input_tensor_by_name(request, self.input_name))
                accepted.append((index, self.runtime.spec.validate(batch, check_finite=self.runtime.check_finite)))
            except EcaDeployError as error:
                responses[index] = _error_response(error, pb_utils.TritonError.INVALID_ARG)
        if accepted:
            try:
                logits = self.runtime.predict(np.concatenate([batch for _, batch in accepted]))
            except EcaDeployError as error:
                for index, _ in accepted:
                    responses[index] = _error_response(error, pb_utils.TritonError.INTERNAL)
            else:
                offsets = np.cumsum([batch.shape[0] for _, batch in accepted])[:-1]
                for (index, _), part in zip(accepted, np.split(logits, offsets)):
                    responses[index] = pb_utils.InferenceResponse([_to_triton(self.output_name, part)])
        return responses

    def finalize(self) -> None:
        self.runtime.close()
