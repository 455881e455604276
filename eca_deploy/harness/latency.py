"""Latency and throughput of a backend: warm-up, timed iterations, percentiles, stages, power.

One *iteration* is one query as a service would see it: preprocessing (image inputs only),
host-to-device copy, device compute, device-to-host copy, postprocessing (softmax and top-5).
Device stages are timed with CUDA events on PyTorch CUDA and TensorRT, and split by I/O binding
on ONNX Runtime's GPU providers; CPU backends have no transfers. Warm-up and timed phases each end when both their
iteration count and their duration are reached (as trtexec's ``--iterations``/``--duration``).

Scenarios, in MLPerf's sense: *single-stream* is batch 1 queries issued one after another
(latency percentiles are the figure of merit); *offline* is the best throughput over the batch
sweep (all samples available at once).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from eca_deploy.harness.backends import Backend, StageTimes
from eca_deploy.image_folders import Batch
from eca_deploy.harness.environment import PowerSampler, PowerSummary
from eca_deploy.progress import ProgressBar
from eca_deploy.serving.decode import decode_topk

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LatencySettings:
    """How long to warm up and to measure, per (backend, batch size) point."""

    warmup_iterations: int = 5
    warmup_seconds: float = 0.5
    iterations: int = 20
    duration_seconds: float = 2.0

    def __post_init__(self) -> None:
        if min(self.warmup_iterations, self.iterations) < 0 or self.iterations < 1:
            raise ValueError("iterations must be at least 1 and warm-up iterations at least 0")
        if min(self.warmup_seconds, self.duration_seconds) < 0:
            raise ValueError("durations must not be negative")


def latency_statistics(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p95/p99, mean, std, min, max of per-iteration latencies, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    stats = {f"p{p}": float(np.percentile(ms, p)) for p in PERCENTILES}
    return stats | {"mean": float(ms.mean()), "std": float(ms.std()), "min": float(ms.min()), "max": float(ms.max())}


@dataclass
class LatencyResult:
    """One (backend, batch size) point."""

    backend: dict[str, Any]
    batch_size: int
    iterations: int
    elapsed_s: float
    latencies_s: list[float]
    stages_mean_s: dict[str, float]
    power: PowerSummary | None = None

    @property
    def throughput(self) -> float:
        """Images per second over the timed phase."""
        return self.batch_size * self.iterations / self.elapsed_s

    def power_figures(self) -> dict[str, float | None]:
        """Joules per image and images per second per watt (module input power), when power was sampled."""
        if self.power is None or self.power.module_mean_w is None:
            return {"joules_per_image": None, "images_per_second_per_watt": None}
        watts = self.power.module_mean_w
        return {"joules_per_image": watts / self.throughput, "images_per_second_per_watt": self.throughput / watts}

    def to_dict(self) -> dict[str, Any]:
        latency = latency_statistics(self.latencies_s)
        return {"backend": self.backend, "batch_size": self.batch_size, "iterations": self.iterations,
                "elapsed_s": self.elapsed_s, "throughput_images_per_s": self.throughput, "latency_ms": latency,
                "latency_per_image_ms": latency["mean"] / self.batch_size,
                "stages_mean_ms": {k: v * 1e3 for k, v in self.stages_mean_s.items()},
                "power": None if self.power is None else self.power.to_dict(), **self.power_figures(),
                "samples_ms": [s * 1e3 for s in self.latencies_s]}


def measure_latency(backend: Backend, batch_size: int, next_batch: Callable[[int, int], Batch], *,
                    settings: LatencySettings = LatencySettings(), sampler: PowerSampler | None = None,
                    bar: ProgressBar | None = None) -> LatencyResult:
    """Warm ``backend`` up, then time iterations at ``batch_size``; ``next_batch(batch_size, i)`` gives inputs."""

    def iterate(index: int) -> tuple[float, StageTimes]:
        begin = time.perf_counter()
        batch = next_batch(batch_size, index)
        logits, stages = backend.run_timed(batch.images)
        after_run = time.perf_counter()
        decode_topk(logits, k=5)
        stages.preprocess = batch.preprocess_s
        stages.postprocess = time.perf_counter() - after_run
        return time.perf_counter() - begin, stages

    _run_until(iterate, settings.warmup_iterations, settings.warmup_seconds)
    latencies: list[float] = []
    stage_sums = StageTimes()
    with (sampler or PowerSampler("none")).measure() as power:
        start = time.perf_counter()

        def timed(index: int) -> None:
            seconds, stages = iterate(index)
            latencies.append(seconds)
            for name, value in asdict(stages).items():
                setattr(stage_sums, name, getattr(stage_sums, name) + value)

        _run_until(timed, settings.iterations, settings.duration_seconds)
        elapsed = time.perf_counter() - start
    if bar is not None:
        bar.advance(label=f"{backend.name} batch {batch_size}: {np.median(latencies) * 1e3:.2f} ms")
    count = len(latencies)
    return LatencyResult(backend.describe(), batch_size, count, elapsed, latencies,
                         {name: value / count for name, value in asdict(stage_sums).items()},
                         power=power[0] if power else None)


def _run_until(step: Callable[[int], Any], iterations: int, seconds: float) -> None:
    """Call ``step(i)`` until at least ``iterations`` calls and ``seconds`` have passed."""
    start, index = time.perf_counter(), 0
    while index < iterations or time.perf_counter() - start < seconds:
        step(index)
        index += 1


def scenario_summary(results: Sequence[LatencyResult]) -> dict[str, Any]:
    """MLPerf-style summary per backend: single-stream latency at batch 1, offline best throughput."""
    summary: dict[str, Any] = {}
    for name in dict.fromkeys(result.backend["name"] for result in results):
        mine = [result for result in results if result.backend["name"] == name]
        single = next((result for result in mine if result.batch_size == 1), None)
        best = max(mine, key=lambda result: result.throughput)
        stats = latency_statistics(single.latencies_s) if single else None
        summary[name] = {
            "single_stream": None if stats is None else {f"{key}_ms": stats[key] for key in ("p50", "p90", "p99")},
            "offline": {"batch_size": best.batch_size, "throughput_images_per_s": best.throughput,
                        **best.power_figures()}}
    return summary
