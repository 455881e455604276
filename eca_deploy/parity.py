"""Parity of an ONNX model on ONNX Runtime CPU against the PyTorch FP32 module, on seeded inputs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

from eca_deploy.errors import EcaDeployError, ParityError, first_line
from eca_deploy.options import INPUT_NAME

if TYPE_CHECKING:
    from torch import nn


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
    # Measured on the zoo's demo weights (random, BatchNorm-calibrated) over real photographs, entropy
    # calibration: ECA-MobileNetV2 cosine 0.978, max error 15 % of max|logit|; ECA-ResNet-50 cosine 0.996,
    # 10 % (README, BENCHMARKS.md). Trained weights quantize better; tighten with --atol/--rtol.
    "int8": Tolerance(atol=0.05, rtol=0.3, min_cosine=0.95, min_top1_agreement=0.4),
}


def tolerance_for(precision: str, *, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """The default tolerance of ``precision`` with ``atol``/``rtol`` overridden where given (--atol/--rtol)."""
    overrides = {key: value for key, value in (("atol", atol), ("rtol", rtol)) if value is not None}
    if any(value < 0 for value in overrides.values()):
        raise EcaDeployError(f"tolerances cannot be negative, got {overrides}")
    return replace(DEFAULT_TOLERANCES[precision], **overrides)


@dataclass(frozen=True)
class ParityMetrics:
    """How far ``candidate`` logits are from ``reference`` logits over ``batch_size`` samples.

    The relative error the tolerance judges is ``max_rel_error_vs_ref_max`` (max|a - ref| / max|ref|);
    ``max_elementwise_rel_error`` (max |a - ref| / |ref| per logit) is large wherever a logit is near zero
    and is for information only. Every report uses these names (``to_dict``).
    """

    batch_size: int
    max_abs_error: float
    max_elementwise_rel_error: float
    cosine_similarity: float
    top1_agreement: float
    reference_max_abs: float
    top5_agreement: float = 1.0

    @property
    def max_rel_error_vs_ref_max(self) -> float:
        """max|a - ref| / max|ref|: the smallest rtol that passes alone."""
        return self.max_abs_error / max(self.reference_max_abs, np.finfo(np.float32).tiny)

    def to_dict(self) -> dict[str, float]:
        return asdict(self) | {"max_rel_error_vs_ref_max": self.max_rel_error_vs_ref_max}

    def passes(self, tolerance: Tolerance) -> bool:
        return (self.max_abs_error <= tolerance.atol + tolerance.rtol * self.reference_max_abs
                and self.cosine_similarity >= tolerance.min_cosine
                and self.top1_agreement >= tolerance.min_top1_agreement)

    def smallest_passing(self, tolerance: Tolerance) -> dict[str, float]:
        """The tightest criteria these outputs meet: ``atol`` alone (rtol 0), ``rtol`` alone (atol 0),
        each at the other's configured value, and the observed cosine and top-1 agreement.

        Tells FP16 noise (just above the default) from a bug (orders of magnitude above it).
        """
        scale = max(self.reference_max_abs, np.finfo(np.float32).tiny)
        return {"atol": self.max_abs_error, "rtol": self.max_rel_error_vs_ref_max,
                "atol_at_rtol": max(0.0, self.max_abs_error - tolerance.rtol * self.reference_max_abs),
                "rtol_at_atol": max(0.0, (self.max_abs_error - tolerance.atol) / scale),
                "min_cosine": self.cosine_similarity, "min_top1_agreement": self.top1_agreement}


class AgreementAccumulator:
    """Streams :class:`ParityMetrics` over batches: the result equals ``compare_outputs`` on all rows at once."""

    def __init__(self) -> None:
        self.count = 0
        self._max_abs = self._max_rel = self._ref_max = 0.0
        self._dot = self._ref_sq = self._cand_sq = 0.0
        self._top1 = self._top5 = 0
        self._identical = True

    def update(self, reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
        """Add one batch of N x classes logits; return each row's max abs error."""
        if reference.shape != candidate.shape:
            raise EcaDeployError(f"output shapes differ: reference {reference.shape}, candidate {candidate.shape}")
        ref = reference.astype(np.float64).reshape(reference.shape[0], -1)
        cand = candidate.astype(np.float64).reshape(candidate.shape[0], -1)
        diff = np.abs(ref - cand)
        self.count += ref.shape[0]
        self._max_abs = max(self._max_abs, float(diff.max()))
        self._max_rel = max(self._max_rel, float((diff / np.maximum(np.abs(ref), np.finfo(np.float32).tiny)).max()))
        self._ref_max = max(self._ref_max, float(np.abs(ref).max()))
        self._dot += float(np.dot(ref.ravel(), cand.ravel()))
        self._ref_sq += float(np.dot(ref.ravel(), ref.ravel()))
        self._cand_sq += float(np.dot(cand.ravel(), cand.ravel()))
        self._identical = self._identical and bool(np.array_equal(ref, cand))
        reference_top1 = ref.argmax(-1)
        self._top1 += int((reference_top1 == cand.argmax(-1)).sum())
        self._top5 += int(topk_hits(cand, reference_top1, k=5).sum())
        return diff.max(axis=1)

    def result(self) -> ParityMetrics:
        if not self.count:
            raise EcaDeployError("no outputs were compared")
        denominator = np.sqrt(self._ref_sq) * np.sqrt(self._cand_sq)
        cosine = self._dot / denominator if denominator > 0 else float(self._identical)
        return ParityMetrics(batch_size=self.count, max_abs_error=self._max_abs, max_elementwise_rel_error=self._max_rel,
                             cosine_similarity=float(cosine), top1_agreement=self._top1 / self.count,
                             reference_max_abs=self._ref_max, top5_agreement=self._top5 / self.count)


def topk_hits(logits: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """Boolean per row: whether ``targets[i]`` is among the ``k`` largest of ``logits[i]`` (top-k accuracy)."""
    k = min(k, logits.shape[-1])
    top = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    return (top == np.asarray(targets).reshape(-1, 1)).any(axis=-1)


def compare_outputs(reference: np.ndarray, candidate: np.ndarray) -> ParityMetrics:
    """Compute error metrics of ``candidate`` against ``reference`` (float64 arithmetic)."""
    accumulator = AgreementAccumulator()
    accumulator.update(reference, candidate)
    return accumulator.result()


@dataclass(frozen=True)
class ParityReport:
    """Parity of one ONNX file over several batch sizes."""

    model: str
    precision: str
    reference: str
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
            "reference": self.reference,
            "backend": self.backend,
            "seed": self.seed,
            "tolerance": asdict(self.tolerance),
            "results": [result.to_dict() | {"passed": result.passes(self.tolerance)} for result in self.results],
            "passed": self.passed,
        }

    def summary(self) -> str:
        worst = max(self.results, key=lambda r: r.max_abs_error)
        verdict = "PASS" if self.passed else "FAIL"
        return (f"{verdict} {Path(self.model).name} ({self.precision}) on {self.backend}: max abs error "
                f"{worst.max_abs_error:.2e}, cosine {min(r.cosine_similarity for r in self.results):.6f}, "
                f"top-1 agreement {min(r.top1_agreement for r in self.results):.0%}, "
                f"batches {', '.join(str(r.batch_size) for r in self.results)}")


def seeded_inputs(batch_size: int, input_shape: Sequence[int], seed: int, index: int = 0) -> np.ndarray:
    """Standard-normal float32 images, reproducible from ``seed``, the batch size and the batch ``index``."""
    rng = np.random.default_rng([seed, batch_size, index] if index else [seed, batch_size])
    return rng.standard_normal((batch_size, *input_shape), dtype=np.float32)


def _source_name(source: str | Path | onnx.ModelProto) -> str:
    return source.graph.name if isinstance(source, onnx.ModelProto) else str(source)


def _cpu_session(source: str | Path | onnx.ModelProto) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of a file or of a model held in memory."""
    model = source.SerializeToString() if isinstance(source, onnx.ModelProto) else str(source)
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def check_onnx_parity(module: nn.Module, onnx_path: str | Path | onnx.ModelProto, *, precision: str = "fp32",
                      input_shape: Sequence[int] = (3, 224, 224), batch_sizes: Sequence[int] = (1, 3),
                      seed: int = 0, tolerance: Tolerance | None = None) -> ParityReport:
    """Run ``onnx_path`` on ONNX Runtime CPU and PyTorch FP32 on the same seeded inputs; compare logits.

    Several batch sizes go through the same file, which also proves the batch axis is dynamic.
    """
    (report,) = check_onnx_files_parity(module, [onnx_path], precision=precision, input_shape=input_shape,
                                        batch_sizes=batch_sizes, seed=seed, tolerance=tolerance)
    return report


def check_onnx_files_parity(module: nn.Module, onnx_paths: Sequence[str | Path | onnx.ModelProto], *,
                            precision: str = "fp32",
                            input_shape: Sequence[int] = (3, 224, 224), batch_sizes: Sequence[int] = (1, 3),
                            seed: int = 0, tolerance: Tolerance | None = None,
                            inputs: Sequence[np.ndarray] | None = None) -> list[ParityReport]:
    """:func:`check_onnx_parity` for several ONNX files of one model: PyTorch runs once per batch.

    ``inputs`` (float32 N x C x H x W batches, e.g. preprocessed images) replace the seeded batches. A model
    held in memory is reported under its graph's name.
    """
    import torch

    tolerance = tolerance or DEFAULT_TOLERANCES[precision]
    sessions = [_cpu_session(path) for path in onnx_paths]
    reference_module = module.float().eval()
    results: list[list[ParityMetrics]] = [[] for _ in sessions]
    batches = inputs if inputs is not None else [seeded_inputs(size, input_shape, seed) for size in batch_sizes]
    for x in batches:
        with torch.no_grad():
            reference = reference_module(torch.from_numpy(x)).numpy()
        for session, file_results in zip(sessions, results):
            (candidate,) = session.run(None, {INPUT_NAME: x})
            file_results.append(compare_outputs(reference, candidate))
    return [ParityReport(model=_source_name(path), precision=precision, reference=f"pytorch-fp32 (torch {torch.__version__})",
                         backend=f"onnxruntime-cpu {ort.__version__}", seed=seed, tolerance=tolerance,
                         results=tuple(file_results))
            for path, file_results in zip(onnx_paths, results)]


def _feed(session: ort.InferenceSession, batch_size: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs for every graph input; symbolic dims become ``batch_size``."""
    rng = np.random.default_rng(seed)
    feed = {}
    for value in session.get_inputs():
        shape = [dim if isinstance(dim, int) else batch_size for dim in value.shape]
        dtype = np.float16 if value.type == "tensor(float16)" else np.float32
        feed[value.name] = rng.standard_normal(shape).astype(dtype)
    return feed


def runtime_failure(error: Exception) -> str:
    """ONNX Runtime's failure in a few words: "Reshape node: The input tensor cannot be reshaped ..."
    without the error codes, source locations and C++ signatures around it."""
    text = first_line(error)
    node = re.search(r"running (\w+) node", text)
    detail = re.sub(r"^.*?was false\.\s*", "", text.split("Status Message:")[-1]).strip()
    return f"{node.group(1)} node: {detail}" if node else detail


@dataclass(frozen=True)
class Equivalence:
    """Two ONNX files compared on the same inputs: the batch sizes that ran and the largest difference."""

    batches: tuple[int, ...]
    max_abs_difference: float
    skipped: dict[int, str]  # batch size -> why the original model could not run it


def check_onnx_equivalence(original: str | Path, transformed: str | Path, *, atol: float,
                           batch_sizes: Sequence[int] = (1, 3), seed: int = 0) -> Equivalence:
    """Run both ONNX files on ONNX Runtime CPU with the same seeded inputs and compare every output.

    Batch sizes the original model itself cannot run (an export that declares a symbolic batch but bakes
    batch 1 into a Reshape) are skipped and reported; if it runs none, :class:`EcaDeployError` says why.
    Raises :class:`ParityError` when the transformed model fails where the original ran, or when an output
    differs by more than ``atol`` (relative to the output's scale when that exceeds 1).
    """
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures are reported below, in one sentence
    sessions = [ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for path in (original, transformed)]
    worst, ran, skipped = 0.0, [], {}
    for batch_size in batch_sizes:
        feed = _feed(sessions[0], batch_size, seed)
        try:
            expected = sessions[0].run(None, feed)
        except Exception as error:  # onnxruntime raises its own exception types for shape and kernel failures
            skipped[batch_size] = runtime_failure(error)
            continue
        try:
            actual = sessions[1].run(None, feed)
        except Exception as error:
            raise ParityError(f"{Path(transformed).name} fails on ONNX Runtime at batch {batch_size}, where "
                              f"{Path(original).name} runs: {runtime_failure(error)}") from error
        for name, a, b in zip((o.name for o in sessions[0].get_outputs()), expected, actual):
            error = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
            if error > atol * max(1.0, float(np.abs(a).max())):
                raise ParityError(f"{Path(transformed).name} differs from {Path(original).name} on output "
                                  f"{name!r} at batch {batch_size}: max abs error {error:.3g} > {atol:g}")
            worst = max(worst, error)
        ran.append(batch_size)
    if not ran:
        batches = " or ".join(map(str, skipped))
        raise EcaDeployError(f"{Path(original).name} itself does not run on ONNX Runtime CPU at batch {batches} "
                             f"({next(iter(skipped.values()))}), so the fused model cannot be checked against it; "
                             "pass --no-verify to skip the check")
    return Equivalence(tuple(ran), worst, skipped)
