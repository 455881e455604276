"""Run cases on the emulator driver and check each against the float64 reference.

Cases go to the driver in batches (one process each, one per CPU at a time); x and the taps travel in a
data file and y comes back in another, both in /dev/shm where there is one. A case passes when the call
returns the expected status (and launches nothing when it fails), every launch keeps the kernels'
__launch_bounds__, every byte of y was written exactly once (where the checked build counts writes), y is
finite with HWC8 padding channels zero, every run (index order, then seeded block and thread orders with
other poison) gives the same bits, and |y - ref| <= tol * (1 + |ref|) with gpu_check.py's tolerances.
A failed emulator or sanitizer check ends the driver: that case fails with the report, and the batch goes on
in a new process.

Given a BatchStore, the outcomes of every finished batch are kept on disk, keyed by the builds (whose names hold
their sources' digests), the orders and the batch's cases: a run of the same grid on the same builds loads them
instead of running them again, so a grid longer than one sitting completes over several.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from eca_deploy.reference import eca_reference
from eca_deploy.tensorrt.nvrtc import BLOCK_THREADS
from kernel_emu.build import CHECKED, Build
from kernel_emu.cases import (
    CUDA_SUCCESS,
    ORDERS,
    TOLERANCE,
    Case,
    from_memory,
    from_storage,
    inputs,
    storage_dtype,
    to_memory,
)

BATCH_CASES = 400
BATCH_BYTES = 256 << 20
ALIGNMENT = 64  # of every tensor in the data files
DRIVER_TIMEOUT_S = 1800
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    "TSAN_OPTIONS": "halt_on_error=1:second_deadlock_stack=1",
}
_EMULATOR_FAILURE = re.compile(r"kernel_emu error \[([\w-]+)\]")


@dataclass(frozen=True)
class Launch:
    """One kernel launch a case made: kernel name, grid (x, y, z), threads per block, dynamic shared memory."""

    kernel: str
    grid: tuple[int, int, int]
    threads: int
    shared: int


@dataclass
class Outcome:
    """What a case did. ``check`` names the first check it failed, ``detail`` says how; both empty if it passed."""

    case: Case
    check: str = ""
    detail: str = ""
    max_error: float = 0.0
    accesses: int = 0
    launches: tuple[Launch, ...] = ()
    cpu_seconds: float = 0.0  # the driver's, for this case (0 where the driver died in it)
    resumed: bool = False  # loaded from a BatchStore, run by an earlier run

    @property
    def passed(self) -> bool:
        return not self.check


def classify(report: str) -> str:
    """The check a driver's stderr reports: an emulator check's name, or the sanitizer's finding."""
    found = _EMULATOR_FAILURE.search(report)
    if found:
        return found.group(1)
    if "misaligned address" in report:
        return "misaligned"
    for marker, check in (("runtime error:", "undefined-behaviour"), ("ERROR: AddressSanitizer", "address-sanitizer"),
                          ("WARNING: ThreadSanitizer: data race", "data-race"), ("ThreadSanitizer", "thread-sanitizer")):
        if marker in report:
            return check
    return "crash"


def _aligned(offset: int) -> int:
    return (offset + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


class _Batch:
    """Cases, their data offsets, and the files the driver reads and writes."""

    def __init__(self, cases: Sequence[Case], folder: Path, orders: Sequence[int]) -> None:
        self.cases = list(cases)
        self.orders = ",".join(map(str, orders))
        self.inputs = {}
        self.x_at, self.w_at, self.y_at = [], [], []
        in_bytes = out_bytes = 0
        for case in self.cases:
            x, taps = inputs(case)
            self.inputs[case] = (x, taps)
            self.x_at.append(in_bytes)
            self.w_at.append(_aligned(in_bytes + case.nbytes))
            in_bytes = _aligned(self.w_at[-1] + taps.nbytes)
            self.y_at.append(out_bytes)
            out_bytes = _aligned(out_bytes + case.nbytes)
        self.input_file = folder / "inputs.bin"
        self.output_file = folder / "outputs.bin"
        data = np.zeros(max(in_bytes, 1), dtype=np.uint8)
        for case, x_at, w_at in zip(self.cases, self.x_at, self.w_at):
            x, taps = self.inputs[case]
            data[x_at:x_at + case.nbytes] = to_memory(x, case).reshape(-1).view(np.uint8)
            data[w_at:w_at + taps.nbytes] = taps.view(np.uint8)
        data.tofile(self.input_file)
        np.zeros(max(out_bytes, 1), dtype=np.uint8).tofile(self.output_file)

    def line(self, index: int) -> str:
        return (f"{self.cases[index].fields()} orders={self.orders} x_at={self.x_at[index]} "
                f"w_at={self.w_at[index]} y_at={self.y_at[index]}")

    def output(self, index: int) -> np.ndarray:
        case = self.cases[index]
        raw = np.fromfile(self.output_file, dtype=np.uint8, count=case.nbytes, offset=self.y_at[index])
        return raw.view(storage_dtype(case.dtype))


def _results(stdout: str) -> dict[str, dict[str, str]]:
    """name -> result fields of every finished case."""
    results = {}
    for line in stdout.splitlines():
        if not line.startswith("begin "):
            fields = dict(item.split("=", 1) for item in line.split())
            results[fields["name"]] = fields
    return results


def _launches(result: dict[str, str]) -> tuple[Launch, ...]:
    """The launches of a driver result line (its ;-separated kernels, grids, threads and shared fields)."""
    if result["kernels"] == "-":
        return ()
    fields = [result[key].split(";") for key in ("kernels", "grids", "threads", "shared")]
    return tuple(Launch(kernel, tuple(int(d) for d in grid.split("x")), int(threads), int(shared))
                 for kernel, grid, threads, shared in zip(*fields))


def _check(case: Case, result: dict[str, str], y_stored: np.ndarray, x: np.ndarray, taps: np.ndarray,
           counts_writes: bool) -> Outcome:
    outcome = Outcome(case, accesses=int(result["accesses"]), launches=_launches(result),
                      cpu_seconds=float(result["cpu_s"]))
    status, launches = int(result["status"]), int(result["launches"])
    threads = [launch.threads for launch in outcome.launches]

    def failed(check: str, detail: str) -> Outcome:
        outcome.check, outcome.detail = check, detail
        return outcome

    if status != case.expect_status:
        return failed("status", f"returned {status}, expected {case.expect_status}, after {launches} launches "
                                f"(their errors: {result['errors']})")
    if status != CUDA_SUCCESS:
        return failed("launch-before-error", f"{launches} launches before an error") if launches else outcome
    if any(t > BLOCK_THREADS for t in threads):
        return failed("launch-bounds", f"blocks of {result['threads']} threads exceed {BLOCK_THREADS}")
    if counts_writes and (outcome.accesses == 0 or int(result["unwritten"]) >= 0):
        return failed("unwritten-output", f"byte {result['unwritten']} of y not written exactly once "
                                          f"({outcome.accesses} checked accesses)")
    y, padding = from_memory(from_storage(y_stored, case.dtype), case)
    if not np.all(padding == 0):
        return failed("padding", "HWC8 padding channels of y are not zero")
    if not np.isfinite(y).all():
        return failed("unwritten-output", "y holds non-finite values (poison)")
    if result["deterministic"] != "1":
        return failed("nondeterministic", "runs in other block and thread orders gave other bits")
    reference = eca_reference(from_storage(x, case.dtype), from_storage(taps, case.dtype), case.pad_mode)
    outcome.max_error = float((np.abs(y - reference) / (1 + np.abs(reference))).max())
    if outcome.max_error > TOLERANCE[case.dtype]:
        return failed("wrong-result", f"max |y - ref| / (1 + |ref|) = {outcome.max_error:.3g} > "
                                      f"{TOLERANCE[case.dtype]}")
    return outcome


def _driver_command(build: Build, batch: _Batch) -> list[str]:
    command = [str(build.driver), "--kernels", str(build.kernels.path), "--layout", str(build.kernels.layout),
               "--mode", build.variant.mode, "--inputs", str(batch.input_file), "--outputs", str(batch.output_file)]
    if build.bridge:
        command += ["--plugin-bridge", str(build.bridge)]
    return command


def _run_batch(build: Build, cases: Sequence[Case], orders: Sequence[int]) -> list[Outcome]:
    with tempfile.TemporaryDirectory(prefix="kernel_emu-", dir=_scratch()) as folder:
        batch = _Batch(cases, Path(folder), orders)
        outcomes, start = [], 0
        while start < len(batch.cases):
            lines = "".join(batch.line(i) + "\n" for i in range(start, len(batch.cases)))
            process = subprocess.run(_driver_command(build, batch), input=lines, capture_output=True, text=True,
                                     timeout=DRIVER_TIMEOUT_S, env={**os.environ, **SANITIZER_ENV}, check=False)
            results = _results(process.stdout)
            for index in range(start, len(batch.cases)):
                case = batch.cases[index]
                if case.name not in results:
                    break
                x, taps = batch.inputs[case]
                outcomes.append(_check(case, results[case.name], batch.output(index), x, taps,
                                       build.variant == CHECKED))
            start = len(outcomes)
            if process.returncode != 0 and start < len(batch.cases):
                report = process.stderr.strip() or f"exit status {process.returncode}"
                began = "begin name=" in process.stdout  # else the driver failed before any case
                stop = start + 1 if began else len(batch.cases)
                outcomes += [Outcome(case, classify(report), report[-3000:]) for case in batch.cases[start:stop]]
                start = stop
        return outcomes


class BatchStore:
    """Outcomes of finished batches in ``folder``, one JSON file per batch, for the builds and orders given."""

    def __init__(self, folder: Path, build: Build, orders: Sequence[int]) -> None:
        key = repr((str(build.driver), str(build.kernels.path), str(build.bridge), tuple(orders)))
        self.folder = folder / hashlib.sha256(key.encode()).hexdigest()[:16]

    def _path(self, cases: Sequence[Case]) -> Path:
        names = "\n".join(case.name for case in cases)
        return self.folder / f"batch-{hashlib.sha256(names.encode()).hexdigest()[:24]}.json"

    def load(self, cases: Sequence[Case]) -> list[Outcome] | None:
        """The batch's outcomes if an earlier run finished it, else None."""
        path = self._path(cases)
        if not path.is_file():
            return None
        by_name = {case.name: case for case in cases}
        return [Outcome(**{**record, "case": by_name[record["case"]], "resumed": True,
                           "launches": tuple(Launch(**{**launch, "grid": tuple(launch["grid"])})
                                                   for launch in record["launches"])})
                for record in json.loads(path.read_text())]

    def save(self, cases: Sequence[Case], outcomes: Sequence[Outcome]) -> None:
        """Keep a finished batch (written to a temporary file first: an interrupted save leaves nothing)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        records = [{**asdict(outcome), "case": outcome.case.name, "resumed": False} for outcome in outcomes]
        path = self._path(cases)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(records))
        temporary.replace(path)


def _stored_batch(build: Build, cases: Sequence[Case], orders: Sequence[int],
                  store: BatchStore | None) -> list[Outcome]:
    """The batch's outcomes: from the store where an earlier run kept them, else run (and then kept)."""
    outcomes = store.load(cases) if store else None
    if outcomes is None:
        outcomes = _run_batch(build, cases, orders)
        if store:
            store.save(cases, outcomes)
    return outcomes


def _scratch() -> str | None:
    return "/dev/shm" if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None


def _batches(cases: Sequence[Case], jobs: int) -> list[list[Case]]:
    """At least 8 batches per job, of at most BATCH_CASES cases and about BATCH_BYTES of data, dealt out
    largest case first so that they take about as long."""
    count = max(8 * jobs, math.ceil(len(cases) / BATCH_CASES), math.ceil(sum(c.nbytes for c in cases) / BATCH_BYTES))
    batches: list[list[Case]] = [[] for _ in range(min(count, len(cases)))]
    for index, case in enumerate(sorted(cases, key=lambda c: -c.nbytes)):
        batches[index % len(batches)].append(case)
    return batches


def run_cases(build: Build, cases: Sequence[Case], orders: Sequence[int] = ORDERS,
              jobs: int | None = None, store: Path | None = None,
              progress: Callable[[int, int], None] | None = None) -> list[Outcome]:
    """Every case's outcome (in the order of ``cases``): one run per order seed (bits compared between runs),
    ``jobs`` driver processes at a time (default: one per CPU); with ``store``, finished batches are kept there
    and those an earlier run kept are loaded, not run. ``progress(done, batches)`` is called as batches finish."""
    jobs = jobs or os.cpu_count() or 1
    kept = BatchStore(store, build, orders) if store else None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_stored_batch, build, batch, orders, kept) for batch in _batches(cases, jobs)]
        for done, _ in enumerate(as_completed(futures), 1):
            if progress:
                progress(done, len(futures))
        outcomes = [outcome for future in futures for outcome in future.result()]
    by_case = {outcome.case: outcome for outcome in outcomes}
    return [by_case[case] for case in cases]


def failures(outcomes: Sequence[Outcome], limit: int = 10) -> str:
    """The first failures as text, for assertion messages."""
    failed = [o for o in outcomes if not o.passed]
    lines = [f"{len(failed)} of {len(outcomes)} cases failed"]
    lines += [f"{o.case.name}: [{o.check}] {o.detail[-1500:]}" for o in failed[:limit]]
    return "\n".join(lines)


def summary(outcomes: Sequence[Outcome], seconds: float) -> str:
    """Cases, failures, worst error per dtype, checked accesses, this run's wall time and the drivers' CPU time
    (of every run, where outcomes were resumed), as Markdown lines."""
    failed = sum(not o.passed for o in outcomes)
    resumed = sum(o.resumed for o in outcomes)
    cpu = f"{sum(o.cpu_seconds for o in outcomes) / 60:.1f} min CPU in the drivers"
    lines = [f"- {len(outcomes)} cases, {failed} failed, {seconds / 60:.1f} min wall, {cpu}"]
    if resumed:
        lines.append(f"- {resumed} cases resumed from earlier runs of the same builds (the wall time is this run's; "
                     "the CPU time is every run's)")
    for dtype in TOLERANCE:
        errors = [o.max_error for o in outcomes if o.case.dtype == dtype]
        if errors:
            lines.append(f"- {dtype}: {len(errors)} cases, max |y - ref| / (1 + |ref|) = {max(errors):.3g} "
                         f"(tolerance {TOLERANCE[dtype]:g})")
    lines.append(f"- {sum(o.accesses for o in outcomes):,} memory accesses checked")
    return "\n".join(lines)
