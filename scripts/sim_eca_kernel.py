#!/usr/bin/env python3
"""Measure the fused ECA kernel in GPGPU-Sim, a cycle-level GPU simulator, against a naive baseline and a copy kernel.

Every result here is *simulated*: GPGPU-Sim 4.2 (``../shared/gpusim``, its README says how far to trust it) runs
the PTX of ``scripts/sim_eca_kernel.cu``, which includes ``plugins/eca/ecaKernel.cu`` unchanged, compiled by the
simulator's CUDA 11.8. Each run is one process, one variant, cold L2 (``-gpgpu_perf_sim_memcpy 0``):

* ``ours``: ``eca::ecaForward`` (whatever launches it plans for the shape);
* ``single``: ``eca::ecaForwardSingleLaunch`` with the launch shape of ``eca_deploy.tensorrt.nvrtc`` (the TensorRT
  AOT path; NCHW, FP32/FP16);
* ``naive``: four plain kernels as PyTorch eager launches the layer (mean, conv1d, sigmoid, broadcast multiply);
* ``copy``: x read once and y written once with 16-byte vectors, the bandwidth floor of the same bytes.

Every output is checked against the float64 reference (a simulator bug shows as a wrong answer, not a crash).
From the simulator's log: per kernel the cycles with and without the modelled launch latency, instructions, and
DRAM bytes read and written and L2 accesses and hits. Only ratios between variants simulated alike are claims.

The cases are ``scripts/bench_eca_kernel.py``'s (every ECA layer shape of ECA-ResNet-50 and ECA-MobileNetV2 at
224 x 224): batch 1, FP16 and FP32, NCHW and channels-last on the A100 config; batch 8 for two shapes; three
shapes on the RTX 3070 config.

  python scripts/sim_eca_kernel.py --dry-run                      # the runs, no simulator needed
  python scripts/sim_eca_kernel.py --json sim.json --markdown sim.md --jobs 2
  python scripts/sim_eca_kernel.py --shapes 320x7x7 --dtypes fp16 --layouts nchw --configs SM80_A100
  python scripts/sim_eca_kernel.py --from-json a.json b.json --markdown sim.md   # merge runs
  python scripts/sim_eca_kernel.py --from-json after.json --before before.json    # ours before and after
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_eca_kernel as bench  # noqa: E402  (the case list and byte model)

from eca_deploy.reference import eca_reference  # noqa: E402
from eca_deploy.resources import cache_root, plugin_dir  # noqa: E402
from eca_deploy.tensorrt.nvrtc import single_launch_params  # noqa: E402

REPO_ROOT = bench.REPO_ROOT
DRIVER_SOURCE = Path(__file__).resolve().with_suffix(".cu")
DEFAULT_GPUSIM = REPO_ROOT.parent / "shared" / "gpusim"
GPUSIM_ENV = "ECA_GPUSIM"  # overrides DEFAULT_GPUSIM
CONFIG_ARCH = {"SM80_A100": "compute_80", "SM86_RTX3070": "compute_86"}
A100, RTX3070 = CONFIG_ARCH
VARIANTS = ("ours", "single", "naive", "copy")
SINGLE_DTYPES = ("fp16", "fp32")  # what the AOT plugin offers TensorRT (eca_deploy.tensorrt.qdp)
DTYPE_CODES = {"fp32": 0, "fp16": 1, "bf16": 2}  # eca::DataType
LAYOUT_CODES = {"nchw": 0, "channels_last": 1}  # eca::Layout
PAD_CODES = {"constant": 0, "wrap": 1}  # eca::PadMode
STORAGE = {"fp32": np.float32, "fp16": np.float16}
COLD_L2 = "-gpgpu_perf_sim_memcpy 0"  # cudaMemcpy leaves the L2 cold
DRAM_UNIT_BYTES = 32  # the log counts DRAM accesses in 32-byte units
NVCC_FLAGS = ("-allow-unsupported-compiler", "-O3", "-std=c++17", "-cudart", "shared")
DEFAULT_TIMEOUT_S = 3600

#: (C, H, W, k) of the batch-8 runs and of the RTX 3070 runs.
BATCH8_SHAPES = (bench.LayerShape(1024, 14, 14, 5), bench.LayerShape(320, 7, 7, 3))
RTX3070_SHAPES = (bench.LayerShape(256, 56, 56, 3), bench.LayerShape(1024, 14, 14, 5), bench.LayerShape(320, 7, 7, 3))


# ---- plan ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SimRun:
    """One simulator process: a variant of the layer on one case with one config."""

    config: str
    case: bench.Case
    variant: str

    @property
    def label(self) -> str:
        case = self.case
        return f"{self.config} {case.shape.label} N={case.batch} {case.dtype} {case.layout} {self.variant}"


def case_runs(config: str, case: bench.Case, variants: Sequence[str]) -> list[SimRun]:
    """The runs of ``variants`` that apply to ``case``: ``single`` only in NCHW and the AOT path's dtypes; ``copy``
    once per shape, batch and dtype (it does not depend on the layout; it is filed under NCHW)."""
    runs = []
    for variant in variants:
        if variant == "single" and (case.layout != "nchw" or case.dtype not in SINGLE_DTYPES):
            continue
        runs.append(SimRun(config, replace(case, layout="nchw") if variant == "copy" else case, variant))
    return runs


def issue_plan(variants: Sequence[str] = VARIANTS) -> list[SimRun]:
    """Issue 21's runs: every layer shape at batch 1, FP16 and FP32, both layouts, on the A100 config; batch 8 of
    BATCH8_SHAPES (FP16) there; RTX3070_SHAPES at batch 1 (FP16) on the RTX 3070 config."""
    batch1 = bench.build_plan(bench.MODELS, (1,), bench.DTYPES, bench.LAYOUTS)
    batch8 = [c for c in bench.build_plan(bench.MODELS, (8,), ("fp16",), bench.LAYOUTS) if c.shape in BATCH8_SHAPES]
    rtx = [c for c in bench.build_plan(bench.MODELS, (1,), ("fp16",), ("nchw",)) if c.shape in RTX3070_SHAPES]
    planned = [(A100, c) for c in batch1 + batch8] + [(RTX3070, c) for c in rtx]
    return list(dict.fromkeys(run for config, case in planned for run in case_runs(config, case, variants)))


def select(runs: Iterable[SimRun], configs: Sequence[str] | None = None, shapes: Sequence[str] | None = None,
           batches: Sequence[int] | None = None, dtypes: Sequence[str] | None = None,
           layouts: Sequence[str] | None = None) -> list[SimRun]:
    """The runs matching every filter given (``shapes`` as "CxHxW")."""
    def keep(run: SimRun) -> bool:
        case = run.case
        shape = f"{case.shape.channels}x{case.shape.height}x{case.shape.width}"
        return ((configs is None or run.config in configs) and (shapes is None or shape in shapes)
                and (batches is None or case.batch in batches) and (dtypes is None or case.dtype in dtypes)
                and (layouts is None or case.layout in layouts or run.variant == "copy"))
    return [run for run in runs if keep(run)]


# ---- the simulator's log -------------------------------------------------------------------------------------------

_KERNEL = re.compile(r"^kernel_name = (\S+)", re.MULTILINE)
_COUNTERS = {  # cumulative over the process; a kernel's own share is the difference to the previous kernel
    "dram_reads": re.compile(r"^total dram reads = (\d+)", re.MULTILINE),
    "dram_writes": re.compile(r"^total dram writes = (\d+)", re.MULTILINE),
    "l2_accesses": re.compile(r"^L2_total_cache_accesses = (\d+)", re.MULTILINE),
    "l2_misses": re.compile(r"^L2_total_cache_misses = (\d+)", re.MULTILINE),
}
_CYCLES = re.compile(r"^gpu_sim_cycle = (\d+)", re.MULTILINE)
_INSTRUCTIONS = re.compile(r"^gpu_sim_insn = (\d+)", re.MULTILINE)
_VERSION = re.compile(r"\*\*\* (GPGPU-Sim Simulator Version [^*]*?)\s*\*\*\*")
_LAUNCH_LATENCY = re.compile(r"^-gpgpu_kernel_launch_latency\s+(\d+)", re.MULTILINE)
_LAUNCH = re.compile(r"pushing kernel '\S+' to stream \d+, gridDim= \((\d+),(\d+),(\d+)\) "
                     r"blockDim = \((\d+),(\d+),(\d+)\)")
_RESIDENCY = re.compile(r"^GPGPU-Sim uArch: CTA/core = (\d+), limited by: (.*?)\s*$", re.MULTILINE)


class LogError(ValueError):
    """The simulator's log lacks what a finished run prints."""


def kernel_name(symbol: str) -> str:
    """The unqualified function name of a (possibly Itanium-mangled) kernel symbol:
    ``_ZN3eca7kernels11ecaGateNchwI6__halfEEv...`` -> ``ecaGateNchw``; unmangled names are returned as they are."""
    if not symbol.startswith("_Z"):
        return symbol
    position = 3 if symbol.startswith("_ZN") else 2
    name = symbol
    while position < len(symbol) and symbol[position].isdigit():
        digits = re.match(r"\d+", symbol[position:]).group()
        start = position + len(digits)
        name = symbol[start:start + int(digits)]
        position = start + int(digits)
        if not symbol.startswith("_ZN"):
            break
    return name


def launch_latency(config_text: str) -> int:
    """The modelled launch latency (cycles) a gpgpusim.config adds to every kernel."""
    match = _LAUNCH_LATENCY.search(config_text)
    if match is None:
        raise LogError("the config sets no -gpgpu_kernel_launch_latency")
    return int(match.group(1))


def simulator_version(log: str) -> str:
    match = _VERSION.search(log)
    return match.group(1).strip() if match else "unknown"


def parse_log(log: str, latency: int) -> dict:
    """Per-kernel and total figures of one simulated process.

    Each kernel gets ``cycles`` (the simulator's gpu_sim_cycle, launch latency included), ``exec_cycles`` (without
    it), ``instructions``, its own DRAM bytes read/written and L2 accesses/hits (the log's counters are cumulative;
    hits = accesses - misses, so requests merged into a pending miss count as hits), and its launch: ``ctas``,
    ``threads_per_cta``, and the CTAs an SM holds at once (``ctas_per_sm``) with what limits them (``regs``,
    ``threads``, ``smem``...), as the simulator reports them at the launch."""
    starts = [m.start() for m in _KERNEL.finditer(log)]
    if not starts:
        raise LogError("no kernel finished in the simulator's log")
    launches, residencies = _LAUNCH.findall(log), _RESIDENCY.findall(log)
    if len(launches) != len(starts) or len(residencies) != len(starts):
        raise LogError(f"{len(starts)} kernels finished in the log but {len(launches)} were launched and "
                       f"{len(residencies)} placed on the SMs")
    kernels, previous = [], dict.fromkeys(_COUNTERS, 0)
    for start, end in zip(starts, [*starts[1:], len(log)]):
        section = log[start:end]
        values = {}
        for key, pattern in {"cycles": _CYCLES, "instructions": _INSTRUCTIONS, **_COUNTERS}.items():
            match = pattern.search(section)
            if match is None:
                raise LogError(f"kernel {len(kernels) + 1} of the log has no {pattern.pattern!r}")
            values[key] = int(match.group(1))
        own = {key: values[key] - previous[key] for key in _COUNTERS}
        previous = {key: values[key] for key in _COUNTERS}
        grid, (resident, limit) = [int(v) for v in launches[len(kernels)]], residencies[len(kernels)]
        kernels.append({"name": kernel_name(_KERNEL.match(section).group(1)), "cycles": values["cycles"],
                        "exec_cycles": values["cycles"] - latency, "instructions": values["instructions"],
                        "dram_read_bytes": own["dram_reads"] * DRAM_UNIT_BYTES,
                        "dram_write_bytes": own["dram_writes"] * DRAM_UNIT_BYTES,
                        "l2_accesses": own["l2_accesses"], "l2_hits": own["l2_accesses"] - own["l2_misses"],
                        "ctas": math.prod(grid[:3]), "threads_per_cta": math.prod(grid[3:]),
                        "ctas_per_sm": int(resident), "ctas_per_sm_limited_by": limit})
    totals = {key: sum(k[key] for k in kernels) for key in
              ("cycles", "exec_cycles", "instructions", "dram_read_bytes", "dram_write_bytes", "l2_accesses",
               "l2_hits")}
    return {"kernels": kernels, **totals}


# ---- inputs and the check ------------------------------------------------------------------------------------------

def inputs(case: bench.Case) -> tuple[np.ndarray, np.ndarray]:
    """x (N x C x H x W, normal * 2 + 0.5) and the k taps (normal / sqrt(k)) in the case's dtype, seeded by the case."""
    shape = case.shape
    seed = zlib.crc32(f"{shape.label} {case.batch} {case.dtype}".encode())
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case.batch, shape.channels, shape.height, shape.width), dtype=np.float32) * 2 + 0.5
    taps = rng.standard_normal(shape.kernel_size, dtype=np.float32) / np.float32(math.sqrt(shape.kernel_size))
    return x.astype(STORAGE[case.dtype]), taps.astype(STORAGE[case.dtype])


def in_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """x (N x C x H x W) as its bytes lie in memory."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1) if layout == "channels_last" else x)


def scaled_error(y: np.ndarray, reference: np.ndarray) -> float:
    """max |y - ref| / (1 + |ref|), NaN if any element is NaN (an unwritten output)."""
    error = np.abs(y.astype(np.float64) - reference) / (1 + np.abs(reference))
    return float("nan") if np.isnan(error).any() else float(error.max())


def expected_output(run: SimRun, x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """What the run must write, in its layout: x itself for the copy kernel, else the float64 reference."""
    if run.variant == "copy":
        return in_layout(x, "nchw").astype(np.float64)
    return in_layout(eca_reference(x, taps), run.case.layout)


# ---- running -------------------------------------------------------------------------------------------------------

def gpusim_dir() -> Path:
    return Path(os.environ.get(GPUSIM_ENV) or DEFAULT_GPUSIM)


def simulator_environment(gpusim: Path | None = None) -> dict[str, str]:
    """The environment ``setup.sh --env`` gives (the simulator's libcudart and CUDA 11.8 first); raises
    RuntimeError saying why when the simulator is not set up."""
    setup = (gpusim or gpusim_dir()) / "setup.sh"
    if not setup.is_file():
        raise RuntimeError(f"no GPGPU-Sim set-up script at {setup} (set ${GPUSIM_ENV})")
    result = subprocess.run(["bash", "-c", f'eval "$("{setup}" --env)" && env -0'], capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"GPGPU-Sim is not set up: {result.stderr.strip() or result.stdout.strip()}")
    return dict(entry.split("=", 1) for entry in result.stdout.split("\0") if "=" in entry)


def build_driver(config: str, environment: dict[str, str]) -> Path:
    """scripts/sim_eca_kernel.cu with the kernel sources, compiled by the simulator's nvcc to PTX for ``config``'s
    architecture; cached by sources, flags and nvcc version."""
    nvcc = shutil.which("nvcc", path=environment.get("PATH"))
    if nvcc is None:
        raise RuntimeError("the simulator's environment has no nvcc")
    arch = CONFIG_ARCH[config]
    command = [nvcc, *NVCC_FLAGS, f"-gencode=arch={arch},code={arch}", f"-I{plugin_dir()}"]
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, env=environment).stdout
    digest = hashlib.sha256(repr((command[1:], version)).encode())
    for path in [DRIVER_SOURCE, *sorted(plugin_dir().glob("ecaKernel*"))]:
        digest.update(path.name.encode() + path.read_bytes())
    target = cache_root() / "sim_eca_kernel" / digest.hexdigest()[:16] / "sim_eca_kernel"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_suffix(".part")
        result = subprocess.run([*command, "-o", str(staging), str(DRIVER_SOURCE)], capture_output=True, text=True,
                                env=environment)
        if result.returncode != 0:
            raise RuntimeError(f"nvcc failed:\n{result.stdout}{result.stderr}")
        staging.replace(target)
    return target


def driver_arguments(run: SimRun, input_path: Path, output_path: Path) -> list[str]:
    case = run.case
    shape = case.shape
    arguments = [run.variant, str(DTYPE_CODES[case.dtype]), str(LAYOUT_CODES[case.layout]), str(case.batch),
                 str(shape.channels), str(shape.height), str(shape.width), str(shape.kernel_size),
                 str(PAD_CODES["constant"]), str(input_path), str(output_path)]
    if run.variant == "single":
        params = single_launch_params(case.batch, shape.channels, shape.height, shape.width, shape.kernel_size,
                                      case.dtype)
        arguments += [str(v) for v in (params.channels_per_block, params.grid[0], params.block[0],
                                       params.shared_mem_bytes, params.lanes_per_plane)]
    return arguments


def simulate(run: SimRun, driver: Path, environment: dict[str, str], gpusim: Path, timeout: float,
             keep_logs: Path | None = None) -> dict:
    """Run ``run`` in the simulator, check its output, and return its figures."""
    case = run.case
    x, taps = inputs(case)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sim_eca_") as folder:
        work = Path(folder)
        for path in (gpusim / "configs" / run.config).iterdir():
            shutil.copy(path, work / path.name)
        config_path = work / "gpgpusim.config"
        config_text = config_path.read_text() + f"\n{COLD_L2}\n"
        config_path.write_text(config_text)
        layout = "nchw" if run.variant == "copy" else case.layout
        (work / "input.bin").write_bytes(in_layout(x, layout).tobytes() + taps.tobytes())
        command = [str(driver), *driver_arguments(run, work / "input.bin", work / "output.bin")]
        with open(work / "sim.log", "w") as log_file:
            try:
                returncode = subprocess.run(command, cwd=work, env=environment, stdout=log_file,
                                            stderr=subprocess.STDOUT, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                returncode = f"no result within the {timeout:.0f} s timeout"
        log = (work / "sim.log").read_text(errors="replace")
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(work / "sim.log", keep_logs / log_name(run.label))
        result = {**run_fields(run), "config_sha256": hashlib.sha256(config_text.encode()).hexdigest()[:16],
                  "simulator": simulator_version(log), "launch_latency": launch_latency(config_text),
                  "wall_seconds": round(time.monotonic() - started, 1), "tolerance": bench.TOLERANCE[case.dtype]}
        if returncode != 0 or "sim_eca_kernel: ok" not in log:
            tail = [line for line in log.splitlines() if line.startswith("sim_eca_kernel")]
            return {**result, "correct": False, "error": float("nan"),
                    "failure": tail[-1] if tail else f"exit code {returncode}"}
        y = np.fromfile(work / "output.bin", dtype=STORAGE[case.dtype])
    expected = expected_output(run, x, taps).reshape(-1)
    error = scaled_error(y, expected)
    tolerance = 0.0 if run.variant == "copy" else bench.TOLERANCE[case.dtype]
    return {**result, **parse_log(log, result["launch_latency"]), "error": error, "correct": error <= tolerance}


def run_fields(run: SimRun) -> dict:
    return {"config": run.config, "variant": run.variant, **asdict(run.case)}


def log_name(label: str) -> str:
    """The file name under ``--keep-logs`` of the run labelled ``label``."""
    return re.sub(r"[^\w.=-]+", "_", label) + ".log"


def result_run(result: dict) -> SimRun:
    """The run a result (run_fields) came from."""
    case = bench.Case(bench.LayerShape(**result["shape"]), result["batch"], result["dtype"], result["layout"],
                      result["layers"], tuple(result["models"]))
    return SimRun(result["config"], case, result["variant"])


def reread_logs(runs: Sequence[dict], logs: Path) -> int:
    """Replace the figures parse_log gives of every result of ``runs`` whose log ``--keep-logs`` kept in ``logs``
    with a new reading of that log (figures the parser has learned since); the check's verdict stays. A log of the
    same case whose cycles differ from the result's is another run's (an earlier kernel's) and is left alone.
    Returns how many results were re-read."""
    count = 0
    for result in (r for run in runs for r in run["results"]):
        path = logs / log_name(result_run(result).label)
        if not path.is_file():
            continue
        figures = parse_log(path.read_text(errors="replace"), result["launch_latency"])
        if [k["cycles"] for k in figures["kernels"]] == [k.get("cycles") for k in result["kernels"]]:
            result.update(figures)
            count += 1
    return count


# ---- tables --------------------------------------------------------------------------------------------------------

TABLE_HEADERS = ("C", "HxW", "k", "N", "dtype", "layout", "ours kernels (exec cycles)", "ours", "naive", "copy",
                 "ours / copy", "ours / naive", "total ours / naive", "single", "single / copy",
                 "total single / naive", "ours DRAM read / x", "ours L2 hits")


def _key(result: dict, layout: str | None = None) -> tuple:
    shape = result["shape"]
    return (result["config"], shape["channels"], shape["height"], shape["width"], shape["kernel_size"],
            result["batch"], result["dtype"], layout or result["layout"])


def comparison_rows(results: Sequence[dict]) -> dict[str, list[dict]]:
    """Per config, one row per case that has ours, naive and copy: the cycles and the issue's ratios."""
    by_variant = {(_key(r), r["variant"]): r for r in results}
    rows: dict[str, list[dict]] = {}
    for result in results:
        if result["variant"] != "ours":
            continue
        naive = by_variant.get((_key(result), "naive"))
        copy = by_variant.get((_key(result, "nchw"), "copy"))
        single = by_variant.get((_key(result), "single"))
        shape = bench.LayerShape(**result["shape"])
        x_bytes = result["batch"] * shape.channels * shape.height * shape.width * bench.ELEMENT_BYTES[result["dtype"]]
        row = {"config": result["config"], "shape": shape, "batch": result["batch"], "dtype": result["dtype"],
               "layout": result["layout"], "ours": result, "naive": naive, "copy": copy, "single": single,
               "x_bytes": x_bytes}
        rows.setdefault(result["config"], []).append(row)
    return rows


def _exec(result: dict | None) -> int | str | None:
    if result is None:
        return None
    return result["exec_cycles"] if result["correct"] else "WRONG"


def _ratio(top: dict | None, bottom: dict | None, key: str) -> float | None:
    if top is None or bottom is None or not top["correct"] or not bottom["correct"]:
        return None
    return top[key] / bottom[key]


def table_row(row: dict) -> tuple:
    ours, naive, copy, single = row["ours"], row["naive"], row["copy"], row["single"]
    shape = row["shape"]
    kernels = " / ".join(f"{k['exec_cycles']}" for k in ours.get("kernels", [])) if ours["correct"] else "WRONG"
    return (shape.channels, f"{shape.height}x{shape.width}", shape.kernel_size, row["batch"], row["dtype"],
            row["layout"], kernels, _exec(ours), _exec(naive), _exec(copy),
            _ratio(ours, copy, "exec_cycles"), _ratio(ours, naive, "exec_cycles"), _ratio(ours, naive, "cycles"),
            _exec(single), _ratio(single, copy, "exec_cycles"), _ratio(single, naive, "cycles"),
            ours["dram_read_bytes"] / row["x_bytes"] if ours["correct"] else None,
            bench.percent(ours["l2_hits"] / ours["l2_accesses"]) if ours["correct"] and ours["l2_accesses"] else None)


#: Issue 21's targets, per config and batch-1 row: (title, ratio key of table_row's values, bound).
TARGET_COPY_RATIO = 1.5
TARGET_TOTAL_RATIO = 0.5


def target_lines(rows: Sequence[dict]) -> list[str]:
    """How many batch-1 rows meet each target, and the worst."""
    batch1 = [r for r in rows if r["batch"] == 1]
    checks = (("ours <= {:.1f}x copy (execution)".format(TARGET_COPY_RATIO), "copy", "exec_cycles", TARGET_COPY_RATIO),
              ("ours total <= {:.1f}x naive total".format(TARGET_TOTAL_RATIO), "naive", "cycles", TARGET_TOTAL_RATIO),
              ("ours execution <= naive execution", "naive", "exec_cycles", 1.0))
    lines = []
    for title, other, key, bound in checks:
        ratios = [(_ratio(r["ours"], r[other], key), r) for r in batch1]
        known = [(value, r) for value, r in ratios if value is not None]
        if not known:
            continue
        worst, where = max(known, key=lambda item: item[0])
        met = sum(value <= bound for value, _ in known)
        lines.append(f"- {title}: {met} of {len(known)} batch-1 cases; worst {worst:.2f} "
                     f"({where['shape'].label} {where['dtype']} {where['layout']})")
    return lines


LAUNCH_HEADERS = ("C", "HxW", "k", "N", "dtype", "layout", "ours: CTAs x threads (CTAs per SM, limited by)",
                  "copy: CTAs x threads (CTAs per SM, limited by)", "ours instructions / copy's")


def _launches(result: dict | None) -> str | None:
    if result is None or not result["correct"] or "ctas" not in result["kernels"][0]:
        return None
    return " / ".join(f"{k['ctas']} x {k['threads_per_cta']} ({k['ctas_per_sm']}, {k['ctas_per_sm_limited_by']})"
                      for k in result["kernels"])


def launch_row(row: dict) -> tuple:
    """Where a row's cycles can go: each kernel's launch and occupancy, and the instructions against the copy's."""
    shape = row["shape"]
    return (shape.channels, f"{shape.height}x{shape.width}", shape.kernel_size, row["batch"], row["dtype"],
            row["layout"], _launches(row["ours"]), _launches(row["copy"]), _ratio(row["ours"], row["copy"], "instructions"))


def environment_line(env: dict) -> str:
    return (f"{env['simulator']}, configs {', '.join(env['configs'])} (cold L2: `{COLD_L2}`; launch latency "
            f"{env['launch_latency']} cycles per kernel), {env['date']}, commit {env['commit']}, {env['nvcc']}")


BEFORE_HEADERS = ("config", "C", "HxW", "k", "N", "dtype", "layout", "before: kernels (exec cycles)", "before",
                  "after: kernels", "after", "after / before", "total after / before")


def before_rows(before: Sequence[dict], after: Sequence[dict]) -> list[tuple]:
    """Our kernel before and after, case by case: the ``ours`` results of ``after`` with a result in ``before``
    (a wrong result on either side is shown as such and not compared)."""
    earlier = {_key(r): r for r in before if r["variant"] == "ours"}
    rows = []
    for now in (r for r in after if r["variant"] == "ours" and _key(r) in earlier):
        then = earlier[_key(now)]
        shape = bench.LayerShape(**now["shape"])
        kernels = [" / ".join(str(k["exec_cycles"]) for k in r["kernels"]) if r["correct"] else "WRONG"
                   for r in (then, now)]
        rows.append((now["config"], shape.channels, f"{shape.height}x{shape.width}", shape.kernel_size, now["batch"],
                     now["dtype"], now["layout"], kernels[0], _exec(then), kernels[1], _exec(now),
                     _ratio(now, then, "exec_cycles"), _ratio(now, then, "cycles")))
    return rows


def latest_results(runs: Sequence[dict]) -> list[dict]:
    """The results of ``runs``, a later run's result of a case and variant replacing an earlier one's."""
    latest = {(_key(r), r["variant"]): r for run in runs for r in run["results"]}
    return list(latest.values())


def render_markdown(runs: Sequence[dict], before: Sequence[dict] = ()) -> str:
    """The simulated tables of one or more ``--json`` files (later ones replacing earlier results of a case and
    variant), per config; with ``before`` (runs of an earlier kernel), a table of our kernel before and after."""
    results = latest_results(runs)
    parts = ["**Simulated** (GPGPU-Sim; cycles of the simulator, not of a GPU). Runs:\n\n"
             + "\n".join(f"- {environment_line(run['environment'])}" for run in runs)]
    wrong = [r for r in results if not r["correct"]]
    if wrong:
        parts.append("Wrong or failed results (not compared):\n\n" + "\n".join(
            f"- {r['config']} {bench.LayerShape(**r['shape']).label} N={r['batch']} {r['dtype']} {r['layout']} "
            f"{r['variant']}: error {r['error']:.3g} {r.get('failure', '')}" for r in wrong))
    for config, rows in comparison_rows(results).items():
        parts.append(f"Simulated {config}, execution cycles (without the launch latency; totals with it); ratios "
                     "below 1: ours faster:\n\n" + markdown_table(TABLE_HEADERS, [table_row(r) for r in rows])
                     + "\n\n" + "\n".join(target_lines(rows)))
        if any(_launches(r["ours"]) for r in rows):
            parts.append(f"Simulated {config}, launches as the simulator placed them (CTAs per SM: how many it holds "
                         "at once, and the resource that limits it):\n\n"
                         + markdown_table(LAUNCH_HEADERS, [launch_row(r) for r in rows]))
    if before:
        parts.append("Simulated, our kernel before (runs: "
                     + "; ".join(environment_line(run["environment"]) for run in before) + ") and after:\n\n"
                     + markdown_table(BEFORE_HEADERS, before_rows([r for run in before for r in run["results"]],
                                                                  results)))
    return "\n\n".join(parts) + "\n"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """bench_eca_kernel's table, with cycle counts as whole numbers."""
    return bench.markdown_table(headers, ([float(v) if isinstance(v, int) and not isinstance(v, bool) and v >= 1000
                                           else v for v in row] for row in rows))


# ---- command line --------------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="list the runs; no simulator needed")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIG_ARCH))
    parser.add_argument("--shapes", nargs="+", metavar="CxHxW", help="only these layer shapes, e.g. 320x7x7")
    parser.add_argument("--batches", nargs="+", type=int)
    parser.add_argument("--dtypes", nargs="+", choices=bench.DTYPES)
    parser.add_argument("--layouts", nargs="+", choices=bench.LAYOUTS)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=2, help="simulations at once (one per core; default 2)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per simulation")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy every simulator log into DIR")
    parser.add_argument("--json", type=Path, help="write every result as JSON")
    parser.add_argument("--markdown", type=Path, help="write the tables as Markdown (for BENCHMARKS.md)")
    parser.add_argument("--from-json", nargs="+", type=Path, metavar="PATH",
                        help="simulate nothing: merge these --json files into the tables (later files replace "
                             "earlier results of a case and variant)")
    parser.add_argument("--before", nargs="+", type=Path, metavar="PATH",
                        help="with --from-json: --json files of an earlier kernel, to compare ours with")
    parser.add_argument("--logs", nargs="+", type=Path, metavar="DIR",
                        help="with --from-json: re-read the figures of every result whose log --keep-logs kept "
                             "in DIR (for figures added to the parser since the run); a log whose cycles differ "
                             "from the result's is another run's and is skipped")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.timeout <= 0:
        parser.error("--jobs and --timeout must be positive")
    if (args.before or args.logs) and not args.from_json:
        parser.error("--before and --logs go with --from-json")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        runs = [json.loads(path.read_text()) for path in args.from_json]
        for logs in args.logs or ():
            print(f"re-read {reread_logs(runs, logs)} results from the logs in {logs}", file=sys.stderr)
        text = render_markdown(runs, [json.loads(path.read_text()) for path in args.before or ()])
        print(text, end="")
        if args.markdown:
            args.markdown.write_text(text)
        return 0
    runs = select(issue_plan(args.variants), args.configs, args.shapes, args.batches, args.dtypes, args.layouts)
    if args.dry_run:
        print("\n".join(run.label for run in runs) + f"\n{len(runs)} simulator runs")
        return 0
    gpusim = gpusim_dir()
    try:
        environment = simulator_environment(gpusim)
        drivers = {config: build_driver(config, environment) for config in sorted({run.config for run in runs})}
    except RuntimeError as error:
        print(f"sim_eca_kernel: error: {error}", file=sys.stderr)
        return 2
    nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, env=environment).stdout
    env = {"simulator": "unknown", "configs": sorted(drivers), "launch_latency": "unknown", "cold_l2": COLD_L2,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "commit": bench.git_commit(), "nvcc": nvcc.strip().splitlines()[-1] if nvcc.strip() else "nvcc unknown",
           "nvcc_flags": list(NVCC_FLAGS), "argv": sys.argv[1:] if argv is None else list(argv)}
    started = time.monotonic()
    finished: list[dict] = []
    lock = threading.Lock()

    def one(run: SimRun) -> dict:
        result = simulate(run, drivers[run.config], environment, gpusim, args.timeout, args.keep_logs)
        with lock:
            finished.append(result)
            env.update(simulator=result["simulator"],
                       launch_latency="/".join(map(str, sorted({r["launch_latency"] for r in finished}))))
            if args.json:  # what has finished so far, in case the rest never does
                args.json.write_text(json.dumps({"environment": env, "results": finished}, indent=1) + "\n")
        verdict = (f"{result['exec_cycles']} exec cycles, error {result['error']:.2g}" if result["correct"]
                   else f"FAILED: {result.get('failure') or 'error %.3g' % result['error']}")
        print(f"[{len(finished)}/{len(runs)} {time.monotonic() - started:.0f}s] {run.label}: {verdict} "
              f"({result['wall_seconds']:.0f} s)", flush=True)
        return result

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(one, runs))
    bench.write_run({"environment": env, "results": results}, args.json, args.markdown, render_markdown)
    return 1 if any(not r["correct"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
