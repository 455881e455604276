"""From logits to answers: softmax, top-k with class names, and class-name files (one name per line)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eca_deploy.errors import EcaDeployError
from eca_deploy.serving.spec import is_torch_tensor


@dataclass(frozen=True)
class TopK:
    """One ranked class: its index, its name and its softmax probability."""

    index: int
    label: str
    score: float

    def to_dict(self) -> dict:
        return {"index": self.index, "label": self.label, "score": self.score}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of N x classes logits, computed in float64 (stable for large logits)."""
    values = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(values - values.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def decode_topk(logits: np.ndarray, k: int = 5, class_names: Sequence[str] | None = None) -> list[list[TopK]]:
    """The ``k`` most probable classes of each row of ``logits`` (N x classes), best first.

    Ties keep the lower class index first. Without ``class_names`` labels are ``class_<index>``.
    """
    if is_torch_tensor(logits):
        logits = logits.detach().cpu().numpy()
    values = np.asarray(logits)
    if values.ndim != 2:
        raise EcaDeployError(f"logits must be N x classes, got shape {values.shape}")
    num_classes = values.shape[1]
    if class_names is not None and len(class_names) != num_classes:
        raise EcaDeployError(f"{len(class_names)} class names for {num_classes} classes")
    if not 1 <= k <= num_classes:
        raise EcaDeployError(f"k must be between 1 and {num_classes}, got {k}")
    probabilities = softmax(values)
    order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    return [[TopK(index=int(i), label=class_names[i] if class_names is not None else f"class_{i}",
                  score=float(row[i])) for i in ranked]
            for row, ranked in zip(probabilities, order)]


def load_class_names(path: str | Path) -> list[str]:
    """Class names from a text file, one per line in class-index order (Triton's ``labels.txt`` format)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise EcaDeployError(f"cannot read class names from {path}: {error.strerror}") from error
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if not names or not all(names):
        raise EcaDeployError(f"{path} must hold one non-empty class name per line")
    return names
