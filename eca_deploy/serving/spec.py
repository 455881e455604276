"""What a runtime accepts (one N x C x H x W float input) and the checks ``predict`` runs on every batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from eca_deploy.errors import EcaDeployError


def is_torch_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor, without importing torch (services on NumPy never load it)."""
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "data_ptr")


@dataclass(frozen=True)
class InputSpec:
    """The model's input and output: names, per-sample shape, dtype and the batch range it accepts.

    ``max_batch`` is the engine profile's largest batch on TensorRT and ``None`` (unbounded) on ONNX
    Runtime unless the caller sets one.
    """

    input_name: str
    output_name: str
    sample_shape: tuple[int, int, int]
    dtype: np.dtype
    num_classes: int
    min_batch: int = 1
    max_batch: int | None = None

    @property
    def channels(self) -> int:
        return self.sample_shape[0]

    @property
    def height(self) -> int:
        return self.sample_shape[1]

    @property
    def width(self) -> int:
        return self.sample_shape[2]

    def describe(self) -> str:
        """``N x 3 x 224 x 224 float32, N in [1, 32]``."""
        limit = "unbounded" if self.max_batch is None else str(self.max_batch)
        return (f"N x {' x '.join(map(str, self.sample_shape))} {np.dtype(self.dtype).name}, "
                f"N in [{self.min_batch}, {limit}]")

    def to_dict(self) -> dict:
        return {"input": self.input_name, "output": self.output_name, "sample_shape": list(self.sample_shape),
                "dtype": np.dtype(self.dtype).name, "num_classes": self.num_classes,
                "min_batch": self.min_batch, "max_batch": self.max_batch}

    def validate(self, batch: Any, *, check_finite: bool = True) -> Any:
        """Check ``batch`` against this spec; return it C-contiguous (NumPy) or as given (torch).

        Raises :class:`EcaDeployError` naming what is wrong and how to fix it.
        """
        torch_input = is_torch_tensor(batch)
        if not torch_input and not isinstance(batch, np.ndarray):
            raise EcaDeployError(f"predict() takes a NumPy array or a torch tensor of shape {self.describe()}, "
                                 f"got {type(batch).__name__}")
        shape = tuple(int(d) for d in batch.shape)
        expected = f"N x {' x '.join(map(str, self.sample_shape))}"
        if len(shape) != 4:
            hint = "; add a batch axis with x[None]" if shape == self.sample_shape else ""
            raise EcaDeployError(f"input must be 4-D ({expected}), got a {len(shape)}-D array of shape {shape}{hint}")
        if shape[1] != self.channels:
            hint = ("; channels-last input? transpose it with x.transpose(0, 3, 1, 2)"
                    if shape[3] == self.channels else "")
            raise EcaDeployError(f"input must have {self.channels} channels on axis 1 (NCHW), got {shape[1]}{hint}")
        if shape[2:] != self.sample_shape[1:]:
            raise EcaDeployError(f"input must be {self.height} x {self.width} pixels, got {shape[2]} x {shape[3]}; "
                                 f"resize and crop images first (EcaRuntime.preprocess)")
        dtype_name = str(batch.dtype).removeprefix("torch.")
        if dtype_name != np.dtype(self.dtype).name:
            fix = (f"x.to(torch.{np.dtype(self.dtype).name})" if torch_input
                   else f"x.astype(np.{np.dtype(self.dtype).name})")
            raise EcaDeployError(f"input must be {np.dtype(self.dtype).name}, got {dtype_name}; convert with {fix}")
        count = shape[0]
        if count < self.min_batch:
            raise EcaDeployError(f"batch of {count} is below the minimum {self.min_batch}")
        if self.max_batch is not None and count > self.max_batch:
            raise EcaDeployError(f"batch of {count} exceeds the maximum {self.max_batch} of this model; "
                                 f"split it into batches of at most {self.max_batch}")
        if check_finite:
            bad = int((~batch.isfinite()).sum()) if torch_input else int(count_non_finite(batch))
            if bad:
                # The sentence reaches HTTP and Triton clients too: no Python remedy in it (EcaRuntime documents
                # check_finite=False for callers that want NaN through).
                raise EcaDeployError(f"input holds {bad} non-finite value{'s' if bad != 1 else ''} (NaN or Inf), "
                                     "for which the model gives no meaningful logits")
        return batch if torch_input else np.ascontiguousarray(batch)


def count_non_finite(array: np.ndarray) -> int:
    """Number of NaN/Inf entries, without allocating a full-size mask in the common all-finite case."""
    with np.errstate(invalid="ignore", over="ignore"):
        if np.isfinite(array.sum(dtype=np.float64)):  # any NaN/Inf makes the sum non-finite
            return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))
