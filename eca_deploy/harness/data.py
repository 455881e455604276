"""Inputs for validation and benchmarks: seeded random batches here; folders of images come from
:mod:`eca_deploy.image_folders` (one :class:`~eca_deploy.image_folders.Batch` type for both)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from eca_deploy.errors import EcaDeployError
from eca_deploy.image_folders import Batch
from eca_deploy.parity import seeded_inputs


class RandomInputs:
    """``num_batches`` seeded standard-normal batches (reproducible from ``seed``)."""

    def __init__(self, sample_shape: Sequence[int], *, batch_size: int, num_batches: int, seed: int = 0) -> None:
        if batch_size < 1 or num_batches < 1:
            raise EcaDeployError(f"batch size and batch count must be positive, got {batch_size} and {num_batches}")
        self.sample_shape, self.seed = tuple(sample_shape), seed
        self.batch_size, self.num_batches = batch_size, num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        for index in range(self.num_batches):
            yield Batch(self.batch(self.batch_size, index), None)

    def batch(self, batch_size: int, index: int = 0) -> np.ndarray:
        """The ``index``-th batch of ``batch_size`` samples (batch 0 is the one ``eca-export`` checks parity on)."""
        return seeded_inputs(batch_size, self.sample_shape, self.seed, index)

    def describe(self) -> dict[str, Any]:
        return {"kind": "random", "distribution": "standard normal", "seed": self.seed,
                "sample_shape": list(self.sample_shape), "batch_size": self.batch_size,
                "num_batches": self.num_batches, "samples": self.batch_size * self.num_batches}
