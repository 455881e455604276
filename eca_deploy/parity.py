"""Parity of an ONNX model on ONNX Runtime CPU against the PyTorch FP32 module, on seeded inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from eca_deploy.errors import EcaDeployError, ParityError
from eca_deploy.export import INPUT_NAME


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria. ``atol``/``rtol`` bound max|a - b| <= atol + rtol * max|reference|."""

    atol: float
    rtol: float
    min_cosine: float
    min_top1_agreement: float


DEFAULT_TOLERANCES = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-4, min_cosine=0.99999, min_top1_agreement=1.0),
    "fp16": Tolerance(atol=1e-2, rtol=2e-2, min_cosine=0.999, min_top1_agreement=0.9),
}


@dataclass(frozen=True)
class ParityMetrics:
    """How far ``candidate`` is from ``reference`` (both N x classes)."""

    batch_size: int
    max_abs_error: float
    max_rel_error: float
    cosine_similarity: float
    top1_agreement: float
    reference_max_abs: float

    def passes(self, tolerance: Tolerance) -> bool:
        return (self.max_abs_error <= tolerance.atol + tolerance.rtol * self.reference_max_abs
                and self.cosine_similarity >= tolerance.min_cosine
                and self.top1_agreement >= tolerance.min_top1_agreement)


def compare_outputs(reference: np.ndarray, candidate: np.ndarray) -> ParityMetrics:
    """Compute error metrics of ``candidate`` against ``reference`` (float64 arithmetic)."""
    if reference.shape != candidate.shape:
        raise EcaDeployError(f"output shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    diff = np.abs(ref - cand)
    scale = np.abs(ref).max()
    denominator = np.linalg.norm(ref) * np.linalg.norm(cand)
    cosine = float(np.dot(ref.ravel(), cand.ravel()) / denominator) if denominator > 0 else float(np.array_equal(ref, cand))
    return ParityMetrics(
        batch_size=ref.shape[0],
        max_abs_error=float(diff.max()),
        max_rel_error=float((diff / np.maximum(np.abs(ref), np.finfo(np.float32).tiny)).max()),
        cosine_similarity=cosine,
        top1_agreement=float((ref.argmax(-1) == cand.argmax(-1)).mean()),
        reference_max_abs=float(scale),
    )


@dataclass(frozen=True)
class ParityReport:
    """Parity of one ONNX file over several batch sizes."""

    model: str
    precision: str
    backend: str
    seed: int
    tolerance: Tolerance
    results: tuple[ParityMetrics, ...]

    @property
    def passed(self) -> bool:
        return all(result.passes(self.tolerance) for result in self.results)

    def to_dict(self) -> dict:
        return {
            "model": Path(self.model).name,
            "precision": self.precision,
            "reference": f"pytorch-fp32 (torch {torch.__version__})",
            "backend": self.backend,
            "seed": self.seed,
            "tolerance": asdict(self.tolerance),
            "results": [asdict(result) | {"passed": result.passes(self.tolerance)} for result in self.results],
            "passed": self.passed,
        }

    def summary(self) -> str:
        worst = max(self.results, key=lambda r: r.max_abs_error)
        verdict = "PASS" if self.passed else "FAIL"
        return (f"{verdict} {Path(self.model).name} ({self.precision}) on {self.backend}: max abs error "
                f"{worst.max_abs_error:.2e}, cosine {min(r.cosine_similarity for r in self.results):.6f}, "
                f"top-1 agreement {min(r.top1_agreement for r in self.results):.0%}, "
                f"batches {', '.join(str(r.batch_size) for r in self.results)}")


def seeded_inputs(batch_size: int, input_shape: Sequence[int], seed: int) -> np.ndarray:
    """Standard-normal float32 images, reproducible from ``seed`` and the batch size."""
    rng = np.random.default_rng([seed, batch_size])
    return rng.standard_normal((batch_size, *input_shape), dtype=np.float32)


def check_onnx_parity(module: nn.Module, onnx_path: str | Path, *, precision: str = "fp32",
                      input_shape: Sequence[int] = (3, 224, 224), batch_sizes: Sequence[int] = (1, 3),
                      seed: int = 0, tolerance: Tolerance | None = None) -> ParityReport:
    """Run ``onnx_path`` on ONNX Runtime CPU and PyTorch FP32 on the same seeded inputs; compare logits.

    Several batch sizes go through the same file, which also proves the batch axis is dynamic.
    """
    tolerance = tolerance or DEFAULT_TOLERANCES[precision]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    reference_module = module.float().eval()
    results = []
    for batch_size in batch_sizes:
        x = seeded_inputs(batch_size, input_shape, seed)
        with torch.no_grad():
            reference = reference_module(torch.from_numpy(x)).numpy()
        (candidate,) = session.run(None, {INPUT_NAME: x})
        results.append(compare_outputs(reference, candidate))
    return ParityReport(model=str(onnx_path), precision=precision,
                        backend=f"onnxruntime-cpu {ort.__version__}", seed=seed, tolerance=tolerance,
                        results=tuple(results))


def _feed(session: ort.InferenceSession, batch_size: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs for every graph input; symbolic dims become ``batch_size``."""
    rng = np.random.default_rng(seed)
    feed = {}
    for value in session.get_inputs():
        shape = [dim if isinstance(dim, int) else batch_size for dim in value.shape]
        dtype = np.float16 if value.type == "tensor(float16)" else np.float32
        feed[value.name] = rng.standard_normal(shape).astype(dtype)
    return feed


def check_onnx_equivalence(original: str | Path, transformed: str | Path, *, atol: float,
                           batch_sizes: Sequence[int] = (1, 3), seed: int = 0) -> float:
    """Run both ONNX files on ONNX Runtime CPU with the same seeded inputs; return the max abs difference.

    Raises :class:`ParityError` when any output differs by more than ``atol`` (relative to the
    output's scale when that exceeds 1).
    """
    sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for path in (original, transformed)]
    worst = 0.0
    for batch_size in batch_sizes:
        feed = _feed(sessions[0], batch_size, seed)
        expected, actual = (session.run(None, feed) for session in sessions)
        for name, a, b in zip((o.name for o in sessions[0].get_outputs()), expected, actual):
            error = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
            if error > atol * max(1.0, float(np.abs(a).max())):
                raise ParityError(f"{Path(transformed).name} differs from {Path(original).name} on output "
                                  f"{name!r} at batch {batch_size}: max abs error {error:.3g} > {atol:g}")
            worst = max(worst, error)
    return worst
