"""Accuracy: every candidate backend against the PyTorch FP32 reference on the same inputs.

For each candidate: max abs and relative error, cosine similarity, top-1/top-5 agreement with the
reference, the smallest atol/rtol that would have passed, top-1/top-5 accuracy when the inputs
have labels, pass/fail under the tolerance of its precision, and for failing ONNX models the first
diverging layer (:mod:`eca_deploy.harness.localize`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn

from eca_deploy.harness.backends import Backend
from eca_deploy.image_folders import Batch
from eca_deploy.harness.localize import first_divergence
from eca_deploy.parity import DEFAULT_TOLERANCES, AgreementAccumulator, ParityMetrics, Tolerance, topk_hits
from eca_deploy.progress import Progress


class LabelAccuracy:
    """Top-1/top-5 accuracy over labelled samples (labels < 0 are skipped)."""

    def __init__(self) -> None:
        self.samples = self.top1 = self.top5 = 0

    def update(self, logits: np.ndarray, labels: np.ndarray | None) -> None:
        if labels is None:
            return
        known = labels >= 0
        if known.any():
            self.samples += int(known.sum())
            self.top1 += int(topk_hits(logits[known], labels[known], k=1).sum())
            self.top5 += int(topk_hits(logits[known], labels[known], k=5).sum())

    def to_dict(self) -> dict[str, Any] | None:
        if not self.samples:
            return None
        return {"samples": self.samples, "top1": self.top1 / self.samples, "top5": self.top5 / self.samples}


@dataclass
class CandidateResult:
    """One backend's agreement with the reference, its verdict and, on failure, where it diverges."""

    backend: dict[str, Any]
    tolerance: Tolerance
    metrics: ParityMetrics
    labels: dict[str, Any] | None
    localization: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return self.metrics.passes(self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.backend["precision"], "passed": self.passed,
                "tolerance": asdict(self.tolerance), "metrics": self.metrics.to_dict(),
                "smallest_passing_tolerance": self.metrics.smallest_passing(self.tolerance),
                "label_accuracy": self.labels, "localization": self.localization}

    def summary(self) -> str:
        m, verdict = self.metrics, "PASS" if self.passed else "FAIL"
        smallest = m.smallest_passing(self.tolerance)
        text = (f"{verdict} {self.backend['name']} ({self.backend['precision']}): max abs {m.max_abs_error:.2e} "
                f"(passes with atol >= {smallest['atol']:.2e} alone or rtol >= {smallest['rtol']:.2e} alone; "
                f"allowed {self.tolerance.atol:g} + {self.tolerance.rtol:g} x {m.reference_max_abs:.3g}), cosine "
                f"{m.cosine_similarity:.6f}, top-1 agreement {m.top1_agreement:.1%}, top-5 {m.top5_agreement:.1%}")
        if self.labels:
            text += f", top-1 accuracy {self.labels['top1']:.1%}"
        if self.localization:
            text += f"\n    {self.localization['summary']}"
        elif not self.passed and self.backend.get("runtime") != "onnxruntime":
            text += ("\n    to find the first diverging layer, validate the ONNX model this backend runs "
                     "(-b ort-cpu=MODEL.onnx)")
        return text


@dataclass
class AccuracyReport:
    """Reference description, label accuracy of the reference itself, and every candidate's result."""

    reference: dict[str, Any]
    reference_labels: dict[str, Any] | None
    candidates: list[CandidateResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(candidate.passed for candidate in self.candidates)

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference | {"label_accuracy": self.reference_labels},
                "candidates": [candidate.to_dict() for candidate in self.candidates], "passed": self.passed}


def validate(reference: Backend, candidates: Sequence[Backend], batches: Iterable[Batch], *,
             tolerances: dict[str, Tolerance] | None = None, module_factory: Callable[[], nn.Module] | None = None,
             localize: bool = True, progress: Progress | None = None, total: int | None = None) -> AccuracyReport:
    """Run every batch through the reference and every candidate; compare logits.

    ``tolerances`` maps precision -> :class:`Tolerance` (default :data:`DEFAULT_TOLERANCES`).
    ``module_factory`` gives the PyTorch module for first-diverging-layer localisation of failing
    ONNX Runtime candidates (on the sample with the largest error).
    """
    tolerances = tolerances or DEFAULT_TOLERANCES
    progress = progress or Progress(quiet=True)
    agreement = [AgreementAccumulator() for _ in candidates]
    accuracy = [LabelAccuracy() for _ in candidates]
    reference_accuracy = LabelAccuracy()
    worst: list[tuple[float, np.ndarray | None]] = [(-1.0, None) for _ in candidates]
    with progress.bar(total, "Validating") as bar:
        for batch in batches:
            expected = reference.run(batch.images)
            reference_accuracy.update(expected, batch.labels)
            for index, candidate in enumerate(candidates):
                actual = candidate.run(batch.images)
                errors = agreement[index].update(expected, actual)
                accuracy[index].update(actual, batch.labels)
                if errors.max() > worst[index][0]:
                    worst[index] = (float(errors.max()), batch.images[int(errors.argmax())][None])
            bar.advance()
    report = AccuracyReport(reference.describe(), reference_accuracy.to_dict())
    for index, candidate in enumerate(candidates):
        result = CandidateResult(candidate.describe(), tolerances[candidate.precision], agreement[index].result(),
                                 accuracy[index].to_dict())
        if not result.passed and localize and candidate.onnx_path is not None and module_factory is not None:
            with progress.step(f"Localising the first diverging layer of {candidate.name}"):
                divergence = first_divergence(module_factory(), candidate.onnx_path, worst[index][1],
                                              precision=candidate.precision)
            result.localization = divergence.to_dict()
        report.candidates.append(result)
    return report
