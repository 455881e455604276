"""Check the fused ECA CUDA kernel on a GPU machine in one command.

    python scripts/gpu_check.py [--shapes full|small] [--json results.json] [--no-sanitizer]

Builds libeca_kernel.so for the current GPU, then runs ``eca_forward`` (two launches; NCHW,
channels_last and HWC8-padded channels-last) and the single-launch QDP kernel (NCHW) over every
dtype (fp32/fp16/bf16), k in {1, 3, 5, 7, 9} and pad mode on a grid of shapes, against the float64
``eca_reference`` on fresh random inputs. Outputs start NaN-poisoned (so must be fully written, the
HWC8 padding channels as zeros) and every case runs twice (so must be bitwise deterministic).
Finally it re-runs itself with ``--shapes small --kernel-sizes 3 9`` under compute-sanitizer's
memcheck, racecheck, initcheck and synccheck tools (our kernels only). Prints a PASS/FAIL table and
exits 1 on any failure. Needs only PyTorch with CUDA and nvcc (compute-sanitizer for the last
step); no network.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eca_deploy.cuda_kernel import (  # noqa: E402
    build_kernel_library,
    eca_forward,
    eca_forward_single_launch,
    find_nvcc,
)
from eca_deploy.errors import EcaDeployError  # noqa: E402
from eca_deploy.reference import eca_reference  # noqa: E402

KERNEL_SIZES = (1, 3, 5, 7, 9)
PAD_MODES = ("constant", "wrap")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOLERANCE = {"fp32": 2e-5, "fp16": 2e-3, "bf16": 1.6e-2}  # |y - ref| <= tol * (1 + |ref|)
SANITIZER_TOOLS = ("memcheck", "racecheck", "initcheck", "synccheck")
SANITIZER_KERNEL_SIZES = (3, 9)  # k = 9 exceeds C for the smallest shapes
# (n, c, h, w): edge cases, then ResNet-50 and MobileNetV2 stages at batch 8
SMALL_SHAPES = [(1, 1, 1, 1), (2, 1, 7, 7), (3, 3, 5, 5), (2, 17, 9, 9), (4, 17, 1, 1), (2, 20, 30, 31),
                (1, 8, 64, 64)]
FULL_SHAPES = SMALL_SHAPES + [
    (8, 64, 1, 1), (1, 64, 112, 112), (2, 32, 112, 112), (256, 16, 8, 8), (256, 3, 14, 14),
    (8, 256, 56, 56), (8, 512, 28, 28), (8, 1024, 14, 14), (8, 2048, 7, 7),
    (8, 16, 112, 112), (8, 24, 56, 56), (8, 32, 28, 28), (8, 96, 14, 14), (8, 320, 7, 7),
]
LAYOUTS = ("nchw", "channels_last", "hwc8", "single_launch")


@dataclass
class Case:
    """One checked configuration and its outcome."""

    shape: tuple[int, int, int, int]
    dtype: str
    layout: str
    k: int
    pad_mode: str
    max_error: float = float("nan")
    deterministic: bool = False
    passed: bool = False
    error: str = ""


def poisoned(shape: tuple[int, ...], dtype: torch.dtype, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A NaN-filled GPU tensor laid out as ``layout``, and the whole buffer behind it."""
    n, c, h, w = shape
    if layout == "hwc8":
        buffer = torch.full((n, h, w, (c + 7) // 8 * 8), float("nan"), dtype=dtype, device="cuda")
        return buffer[..., :c].permute(0, 3, 1, 2), buffer
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    tensor = torch.full(shape, float("nan"), dtype=dtype, device="cuda").contiguous(memory_format=memory_format)
    return tensor, tensor


def run_layout(x: torch.Tensor, taps: torch.Tensor, pad_mode: str, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's output for ``layout`` (NaN-poisoned first) and the buffer holding it."""
    x_gpu, _ = poisoned(tuple(x.shape), x.dtype, layout)
    x_gpu.copy_(x)
    out, buffer = poisoned(tuple(x.shape), x.dtype, layout)
    if layout == "single_launch":
        eca_forward_single_launch(x_gpu, taps, pad_mode, out=out)
    else:
        eca_forward(x_gpu, taps, pad_mode, out=out)
    return out, buffer


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bits of a tensor, so NaNs compare equal to themselves."""
    return tensor.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[tensor.element_size()])


def check_case(case: Case, x: torch.Tensor, taps: torch.Tensor, reference: torch.Tensor) -> None:
    """Run one case twice; fill in its error, determinism and verdict."""
    try:
        y, buffer = run_layout(x, taps, case.pad_mode, case.layout)
        again, buffer_again = run_layout(x, taps, case.pad_mode, case.layout)
        torch.cuda.synchronize()
    except (RuntimeError, ValueError) as error:
        case.error = str(error).splitlines()[0]
        return
    case.deterministic = bool(torch.equal(bits(buffer), bits(buffer_again)))
    finite = bool(torch.isfinite(buffer).all())  # real channels written, padding channels zeroed
    padding_zero = case.layout != "hwc8" or bool((buffer[..., x.shape[1]:] == 0).all())
    error = (y.double() - reference).abs() / (1 + reference.abs())
    case.max_error = float(error.max()) if finite else float("nan")
    case.passed = finite and padding_zero and case.deterministic and case.max_error <= TOLERANCE[case.dtype]
    if not finite:
        case.error = "non-finite output (unwritten elements or NaN padding)"
    elif not padding_zero:
        case.error = "padding channels not zero"
    elif not case.deterministic:
        case.error = "two runs differ"


def run_grid(shapes: list[tuple[int, int, int, int]], kernel_sizes: list[int], seed: int) -> list[Case]:
    """Every shape x dtype x k x pad mode x layout; fresh inputs per (shape, dtype, k)."""
    generator = torch.Generator().manual_seed(seed)
    cases = []
    for shape in shapes:
        for dtype_name, dtype in DTYPES.items():
            for k in kernel_sizes:
                x = (torch.randn(shape, generator=generator) * 2 + 0.5).to(dtype)
                taps = torch.randn(k, generator=generator).to(dtype)
                for pad_mode in PAD_MODES:
                    expected = eca_reference(x.double().numpy(), taps.double().numpy(), pad_mode)
                    reference = torch.from_numpy(expected).cuda()
                    for layout in LAYOUTS:
                        case = Case(shape, dtype_name, layout, k, pad_mode)
                        check_case(case, x, taps.cuda(), reference)
                        cases.append(case)
    return cases


def find_sanitizer() -> str | None:
    """compute-sanitizer from PATH or beside nvcc."""
    on_path = shutil.which("compute-sanitizer")
    if on_path:
        return on_path
    try:
        beside_nvcc = find_nvcc().parent / "compute-sanitizer"
    except EcaDeployError:
        return None
    return str(beside_nvcc) if beside_nvcc.is_file() else None


def run_sanitizers() -> list[dict]:
    """Re-run this script on the small shapes under each compute-sanitizer tool."""
    sanitizer = find_sanitizer()
    if sanitizer is None:
        return [{"tool": tool, "status": "SKIP", "detail": "compute-sanitizer not found"} for tool in SANITIZER_TOOLS]
    # Instrument only our kernels (names hold "eca"): faster, and PyTorch's own kernels stay out of the verdict.
    help_text = subprocess.run([sanitizer, "--help"], capture_output=True, text=True).stdout
    only_ours = ["--kernel-name", "kns=eca"] if "--kernel-name" in help_text else []
    results = []
    for tool in SANITIZER_TOOLS:
        command = [sanitizer, "--tool", tool, *only_ours, "--error-exitcode", "3", "--target-processes", "all",
                   sys.executable, __file__, "--shapes", "small", "--kernel-sizes", *map(str, SANITIZER_KERNEL_SIZES),
                   "--no-sanitizer", "--quiet"]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        summary = [line for line in result.stdout.splitlines() if "SUMMARY" in line]
        results.append({"tool": tool, "status": "PASS" if result.returncode == 0 else "FAIL",
                        "detail": (summary[-1].strip() if summary else result.stderr.strip()[-300:]),
                        "seconds": round(time.perf_counter() - started, 1)})
        if result.returncode != 0:
            print(result.stdout[-4000:], result.stderr[-2000:], sep="\n", file=sys.stderr)
    return results


def as_json(case: Case) -> dict:
    """The case as a JSON object (a NaN error becomes null)."""
    record = asdict(case)
    record["max_error"] = None if case.max_error != case.max_error else case.max_error
    return record


def print_table(cases: list[Case], sanitizers: list[dict]) -> None:
    """One row per shape, dtype and layout (worst over k and pad mode), then failures and sanitizers."""
    rows: dict[tuple, list[Case]] = {}
    for case in cases:
        rows.setdefault((case.shape, case.dtype, case.layout), []).append(case)
    print(f"{'shape':<22}{'dtype':<6}{'layout':<15}{'cases':>6}{'max err':>11}{'tol':>9}  status")
    for (shape, dtype, layout), group in rows.items():
        worst = max((c.max_error for c in group), key=lambda e: (e != e, e))  # NaN counts as worst
        status = "PASS" if all(c.passed for c in group) else "FAIL"
        print(f"{'x'.join(map(str, shape)):<22}{dtype:<6}{layout:<15}{len(group):>6}{worst:>11.2e}"
              f"{TOLERANCE[dtype]:>9.1e}  {status}")
    for case in (c for c in cases if not c.passed):
        print(f"FAIL {case.shape} {case.dtype} {case.layout} k={case.k} {case.pad_mode}: "
              f"err={case.max_error:.3e} deterministic={case.deterministic} {case.error}")
    for result in sanitizers:
        print(f"compute-sanitizer {result['tool']:<10} {result['status']}  {result['detail']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", choices=("full", "small"), default="full")
    parser.add_argument("--kernel-sizes", type=int, nargs="+", default=list(KERNEL_SIZES), metavar="K")
    parser.add_argument("--json", type=Path, help="write every case and sanitizer result to this file")
    parser.add_argument("--no-sanitizer", action="store_true", help="skip the compute-sanitizer runs")
    parser.add_argument("--quiet", action="store_true", help="print only failures")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    library = build_kernel_library()
    if not args.quiet:
        print(f"{torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))}), "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}; kernel library {library}")
    cases = run_grid(SMALL_SHAPES if args.shapes == "small" else FULL_SHAPES, args.kernel_sizes, args.seed)
    sanitizers = [] if args.no_sanitizer else run_sanitizers()
    failed = sum(not c.passed for c in cases) + sum(r["status"] == "FAIL" for r in sanitizers)
    if args.quiet:
        for case in (c for c in cases if not c.passed):
            print(f"FAIL {case.shape} {case.dtype} {case.layout} k={case.k} {case.pad_mode}: {case.error}")
    else:
        print_table(cases, sanitizers)
        print(f"{len(cases)} cases, {failed} failures, {time.perf_counter() - started:.0f} s: "
              f"{'PASS' if failed == 0 else 'FAIL'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "passed": failed == 0, "cases": [as_json(c) for c in cases], "sanitizers": sanitizers}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
