"""The CUDA kernel source (plugins/eca) executed on the CPU by tests/kernel_emu: the grid against the float64
reference in several block and thread orders, the sanitizer builds, and the edges issue 15 found.

By default the grid is a deterministic sample (about 900 cases, every value of every axis); with
``python -m pytest tests/test_kernel_emu.py --emu-full -s`` it is the full grid, and the test prints the
summary BENCHMARKS.md records. Builds are cached in $XDG_CACHE_HOME/eca_deploy/kernel_emu, and so are the
full grid's finished batches (``results/``): a run stopped part way resumes where it stopped.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from kernel_emu.build import (
    ASAN,
    CHECKED,
    TSAN,
    Build,
    Variant,
    build,
    rewrite_launches,
    unavailable,
)
from kernel_emu.cases import (
    CUDA_ERROR_INVALID_VALUE,
    CUDA_SUCCESS,
    ORDERS,
    Case,
    full_grid,
    sampled_grid,
    sanitizer_grid,
    shared_limit_cases,
    single_launch,
)
from kernel_emu.runner import Launch, failures, run_cases, summary

from eca_deploy.resources import cache_root
from eca_deploy.tensorrt.nvrtc import MAX_DYNAMIC_SHARED_BYTES, single_launch_params

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")

#: The single-launch kernel with the thread counts issue 15 found reading scratch no warp wrote.
PARTIAL_GROUP_BLOCKS = (96, 160, 224)


@pytest.fixture(scope="module")
def checked() -> Build:
    return build(CHECKED)


# --- the build ---------------------------------------------------------------------------------------------------

def test_launch_rewrite_turns_every_launch_into_a_call():
    source = ("    kernels::f<T><<<gridSize(blocks), kBlockThreads, 0, stream>>>(\n        x, y);\n"
              "    kernel<<<grid, block, shared, stream>>>(x);\n")
    assert rewrite_launches(source) == (
        "    ::emu::launch(kernels::f<T>, gridSize(blocks), kBlockThreads, 0, stream)(\n        x, y);\n"
        "    ::emu::launch(kernel, grid, block, shared, stream)(x);\n")


def test_launch_rewrite_fails_loudly_on_a_launch_it_cannot_rewrite():
    with pytest.raises(ValueError, match="rewrote 0 of 1"):
        rewrite_launches("    auto f = [] { k<<<1, 32>>>\n(); };\n")


def test_half_and_bfloat16_conversions_round_to_nearest_even(checked: Build, tmp_path: Path):
    edges = np.array([0.0, np.inf, 65504.0, 65519.99, 65520.0, 2.0**-24, 2.0**-25, 1.5 * 2.0**-25, 2.0**-14,
                      1 + 2.0**-11, 1 + 3 * 2.0**-11, 3.0e38, 1 + 2.0**-8, 1 + 3 * 2.0**-8], dtype=np.float32)
    bits = np.random.default_rng(0).integers(0, 2**32, 1 << 20, dtype=np.uint32).view(np.float32)
    floats = np.concatenate([edges, -edges, bits[~np.isnan(bits)]])  # NaN payloads: the GPU's business
    halves = np.resize(np.arange(1 << 16, dtype=np.uint32).astype(np.uint16), floats.size)  # every half, repeated
    inputs, outputs = tmp_path / "in.bin", tmp_path / "out.bin"
    inputs.write_bytes(floats.tobytes() + halves.tobytes())
    outputs.write_bytes(bytes(12 * floats.size))
    subprocess.run([checked.driver, "convert", "--inputs", inputs, "--outputs", outputs, "--count", str(floats.size)],
                   check=True)
    raw = np.fromfile(outputs, dtype=np.uint8)
    to_half, to_bf16, from_half, from_bf16 = np.split(raw, np.cumsum([2, 2, 4]) * floats.size)
    with np.errstate(over="ignore"):  # rounding to infinity is part of the test
        np.testing.assert_array_equal(to_half.view(np.uint16), floats.astype(np.float16).view(np.uint16))
    bf16 = torch.from_numpy(floats).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(to_bf16.view(np.uint16), bf16)
    np.testing.assert_array_equal(from_half.view(np.uint32), halves.view(np.float16).astype(np.float32).view(np.uint32))
    np.testing.assert_array_equal(from_bf16.view(np.uint32), halves.astype(np.uint32) << 16)


# --- the grid ----------------------------------------------------------------------------------------------------

def test_grid_matches_the_reference_bitwise_the_same_in_every_order(checked: Build, request: pytest.FixtureRequest,
                                                                    capsys: pytest.CaptureFixture[str]):
    full = request.config.getoption("--emu-full")
    cases = full_grid() if full else sampled_grid()
    started = time.perf_counter()

    def progress(done: int, batches: int) -> None:  # sys.__stderr__: not capsys's stream, so -s shows it live
        print(f"kernel_emu full grid: {done}/{batches} batches, {(time.perf_counter() - started) / 60:.1f} min",
              file=sys.__stderr__, flush=True)

    outcomes = run_cases(checked, cases, store=cache_root() / "kernel_emu" / "results" if full else None,
                         progress=progress if full else None)
    if full:
        with capsys.disabled():
            print(f"\nkernel_emu full grid (checked build, orders {ORDERS}):\n"
                  f"{summary(outcomes, time.perf_counter() - started)}")
    assert all(o.passed for o in outcomes), failures(outcomes)


def test_a_stored_grid_loads_the_batches_an_earlier_run_finished(checked: Build, tmp_path: Path):
    """--emu-full keeps finished batches, so a grid longer than one sitting completes over several runs; another
    order list (or another build) is another grid."""
    cases = [Case(n, 17, 5, 7, 3, dtype=dtype) for n in (1, 2) for dtype in ("fp32", "fp16", "bf16")]
    calls = []
    first = run_cases(checked, cases, orders=ORDERS[:1], jobs=1, store=tmp_path,
                      progress=lambda done, batches: calls.append((done, batches)))
    assert all(o.passed and not o.resumed and o.cpu_seconds > 0 for o in first), failures(first)
    assert calls == [(done, len(cases)) for done in range(1, len(cases) + 1)]  # a batch per case here
    again = run_cases(checked, cases, orders=ORDERS[:1], jobs=1, store=tmp_path)
    assert all(o.resumed for o in again)
    assert [replace(o, resumed=False) for o in again] == first
    assert not any(o.resumed for o in run_cases(checked, cases[:2], orders=ORDERS, jobs=1, store=tmp_path))


@pytest.mark.parametrize("variant", [ASAN, TSAN], ids=lambda v: v.name)
def test_sanitizer_builds_run_small_shapes_clean(variant: Variant):
    """AddressSanitizer + UBSan (fibers) and ThreadSanitizer (an OS thread per CUDA thread, one order: its
    verdict rests on happens-before, not on the schedule)."""
    cases = sanitizer_grid(24 if variant is ASAN else 8)
    outcomes = run_cases(build(variant), cases, orders=ORDERS if variant is ASAN else ORDERS[1:])
    assert all(o.passed for o in outcomes), failures(outcomes)


# --- issue 15's edges --------------------------------------------------------------------------------------------

def _partial_group_case(block: int, expect_status: int) -> Case:
    """N = 1, C = 64, 28 x 28, FP32 with `block` threads: plane groups of 64 threads."""
    case = Case(1, 64, 28, 28, 3, entry="single", expect_status=expect_status)
    return replace(case, single=single_launch(case, block=block))


def test_single_launch_refuses_blocks_that_split_a_plane_group(checked: Build):
    """ecaForwardSingleLaunch used to accept any multiple of 32 threads; with 96, 160 or 224 the last plane
    group was partial and groupReduce read scratch entries no warp had written."""
    cases = [_partial_group_case(block, CUDA_ERROR_INVALID_VALUE) for block in PARTIAL_GROUP_BLOCKS]
    outcomes = run_cases(checked, cases)
    assert all(o.passed for o in outcomes), failures(outcomes)


def test_single_launch_runs_every_power_of_two_block(checked: Build):
    outcomes = run_cases(checked, [_partial_group_case(block, CUDA_SUCCESS) for block in (32, 64, 128, 256)])
    assert all(o.passed for o in outcomes), failures(outcomes)


def test_single_launch_leaves_room_for_its_static_shared_memory(checked: Build):
    """single_launch_params may ask for the whole 48 KiB of dynamic shared memory, but the kernel's own
    scratch (static shared memory) counts against the same 48 KiB: k = 6141 taps and a window of all 6139 channels
    of 23 x 23 take 48 KiB less 32 bytes (plane groups of 64 threads use the scratch)."""
    case = Case(1, 6139, 23, 23, 6141, entry="single")
    launch = single_launch(case, block=256, lanes=64)
    assert launch.shared == single_launch_params(1, 6139, 23, 23, 6141).shared_mem_bytes == MAX_DYNAMIC_SHARED_BYTES
    outcomes = run_cases(checked, [replace(case, single=launch)], orders=ORDERS[:1])
    assert all(o.passed for o in outcomes), failures(outcomes)


#: Shapes of ResNet-50 and MobileNetV2 layers (fewer channels), a k > C and a window too wide for one launch.
FORWARD_SHAPES = [(1, 64, 14, 14, 5, "fp16"), (2, 160, 7, 7, 3, "fp32"), (1, 24, 28, 28, 1, "bf16"),
                  (3, 17, 5, 5, 35, "fp16"), (1, 96, 14, 14, 1, "fp32")]


def test_forward_runs_nchw_in_the_one_launch_the_aot_path_gives_tensorrt(checked: Build):
    """ecaForward's plan (ecaKernel.cu) and single_launch_params (Python, for TensorRT's AOT plugin) are one policy
    in two languages: ecaForward must make exactly that launch."""
    outcomes = run_cases(checked, [Case(n, c, h, w, k, dtype=dtype) for n, c, h, w, k, dtype in FORWARD_SHAPES],
                         orders=ORDERS[:1])
    assert all(o.passed for o in outcomes), failures(outcomes)
    for outcome in outcomes:
        case = outcome.case
        params = single_launch_params(case.n, case.c, case.h, case.w, case.k, case.dtype)
        assert outcome.launches == (Launch(params.kernel_name, params.grid, params.block[0], params.shared_mem_bytes),)


def test_forward_takes_two_launches_where_one_block_cannot_hold_the_window(checked: Build):
    """k = 601 on 300 channels: every gate reads every channel, more than a block's 256 plane groups."""
    (outcome,) = run_cases(checked, [Case(2, 300, 5, 5, 601)], orders=ORDERS[:1])
    assert outcome.passed, failures([outcome])
    assert [launch.kernel.split("<")[0] for launch in outcome.launches] == [
        "eca::kernels::ecaPlaneSumsNchw", "eca::kernels::ecaGateNchw"]


def test_channels_last_window_beyond_the_device_limit_still_runs(checked: Build):
    """The channels-last gate used to keep the means of its whole channel window in shared memory, asking
    (min(tile + k - 1, C) + tile) * 4 bytes; past the device's opt-in limit the launch failed after the sums
    pass had run. Here on both sides of a T4's 64 KiB (the full tier adds 48 KiB, Orin's and H100's limits)."""
    cases = [case for case in shared_limit_cases() if case.device == "sm75"]
    outcomes = run_cases(checked, cases, orders=ORDERS[:1])
    assert all(o.passed for o in outcomes), failures(outcomes)
