"""Cases for the CPU emulator: what to run, the grids, input data and tensor layouts.

A Case is one call of the kernel library (``forward``: ecaForward's two launches, NCHW or channels-last;
``single``: the single-launch kernel with a given launch shape) or of the TensorRT plugin (``plugin``),
on x of shape N x C x H x W in memory laid out as ``nchw``, ``nhwc`` or ``hwc8`` (pixel stride
roundUp(C, 8), padding channels NaN in x and expected zero in y), with x and y optionally starting some
bytes past a 256-byte boundary.

``full_grid()`` is every combination of N, C, map, k, pad mode, dtype and entry point (below) within
FULL_ELEMENT_BUDGET elements, the misalignments rotating over them; plus larger shapes, sampled (the zoo's
layers at their resolutions, 112 x 112 maps, k > C on wide layers), and channels-last around the shared-memory
limits. ``sampled_grid()`` is a deterministic sample of it that still holds every value of every axis.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import random
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from eca_deploy.models import ARCHITECTURES
from eca_deploy.models.mobilenetv2 import INVERTED_RESIDUAL_SETTING
from eca_deploy.tensorrt.nvrtc import single_launch_params


def _gpu_check() -> ModuleType:
    """scripts/gpu_check.py, whose tolerances, kernel sizes and pad modes the emulator shares."""
    path = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


_GPU_CHECK = _gpu_check()
TOLERANCE: dict[str, float] = _GPU_CHECK.TOLERANCE  # |y - ref| <= tol * (1 + |ref|)
KERNEL_SIZES: tuple[int, ...] = _GPU_CHECK.KERNEL_SIZES
PAD_MODES: tuple[str, ...] = _GPU_CHECK.PAD_MODES
DTYPES = ("fp32", "fp16", "bf16")
DTYPE_CODES = {"fp32": 0, "fp16": 1, "bf16": 2}  # eca::DataType
ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
LAYOUTS = ("nchw", "nhwc", "hwc8")
#: What TensorRT lets the plugin see: (dtype, layout) per supported TensorFormat.
PLUGIN_FORMATS = (("fp32", "nchw"), ("fp32", "nhwc"), ("fp16", "nchw"), ("fp16", "hwc8"), ("bf16", "nchw"),
                  ("bf16", "hwc8"))
CUDA_SUCCESS, CUDA_ERROR_INVALID_VALUE = 0, 1

BATCHES = (1, 2, 3, 7)
PRIMES = (2, 3, 5, 7, 13, 17, 31, 127, 251, 509, 1021, 2039)
ZOO_CHANNELS = tuple(sorted({c for arch in ARCHITECTURES.values() for c in arch.eca_channels}))
CHANNELS = tuple(sorted({1, 4, 8, 9, 16, 33, 63, 65, 96, 97, 255, 257, 2048, *PRIMES, *ZOO_CHANNELS}))
MAPS = ((1, 1), (1, 7), (3, 5), (5, 5), (7, 7), (9, 13), (14, 14), (17, 3), (28, 28), (31, 29), (56, 56))
#: Misalignment of x and y in elements: both aligned, either one off (their alignments then differ, so
#: the NCHW gate must fall back to scalar accesses), both off by different amounts.
MISALIGNMENTS = ((0, 0), (1, 0), (0, 1), (3, 5))
FULL_ELEMENT_BUDGET = 1 << 17
SAMPLE_ELEMENT_BUDGET = 1 << 14
ONE_CHANNEL_BLOCKS = 256
ORDERS = (0, 0x9E3779B97F4A7C15)  # runs of a case: index order, then seeded permutations of blocks and threads


@dataclass(frozen=True)
class SingleLaunch:
    """Launch shape of the single-launch kernel (eca::SingleLaunchConfig; the grid's y is N)."""

    per_block: int
    grid: int
    block: int
    shared: int
    lanes: int


@dataclass(frozen=True)
class Case:
    """One call on the emulator; see the module docstring."""

    n: int
    c: int
    h: int
    w: int
    k: int
    pad_mode: str = "constant"
    dtype: str = "fp32"
    layout: str = "nchw"
    entry: str = "forward"
    x_misalign: int = 0  # elements
    y_misalign: int = 0
    device: str = "sm90"
    single: SingleLaunch | None = None
    profile_max: tuple[int, int, int] | None = None  # plugin: the profile's largest N, H, W
    expect_status: int = CUDA_SUCCESS

    @property
    def name(self) -> str:
        """A unique, readable id (also the seed of its data)."""
        parts = [f"n{self.n}c{self.c}h{self.h}w{self.w}k{self.k}", self.pad_mode, self.dtype, self.layout, self.entry,
                 f"x{self.x_misalign}y{self.y_misalign}", self.device]
        if self.single:
            parts.append("cfg{per_block}.{grid}.{block}.{shared}.{lanes}".format(**vars(self.single)))
        if self.profile_max:
            parts.append("max{}.{}.{}".format(*self.profile_max))
        return "-".join(parts)

    @property
    def pixel_stride(self) -> int:
        return (self.c + 7) // 8 * 8 if self.layout == "hwc8" else self.c

    @property
    def elements(self) -> int:
        """Elements of x's buffer (HWC8 padding included)."""
        return self.n * self.h * self.w * self.pixel_stride

    @property
    def nbytes(self) -> int:
        return self.elements * ELEMENT_BYTES[self.dtype]

    def fields(self) -> str:
        """The driver's key=value fields, without the data offsets."""
        size = ELEMENT_BYTES[self.dtype]
        text = (f"name={self.name} entry={self.entry} n={self.n} c={self.c} h={self.h} w={self.w} k={self.k} "
                f"pad={PAD_MODES.index(self.pad_mode)} dtype={DTYPE_CODES[self.dtype]} layout={self.layout} "
                f"x_misalign={self.x_misalign * size} y_misalign={self.y_misalign * size} device={self.device}")
        if self.single:
            text += " per_block={per_block} grid={grid} block={block} shared={shared} lanes={lanes}".format(
                **vars(self.single))
        if self.profile_max:
            text += " max_n={} max_h={} max_w={}".format(*self.profile_max)
        return text


def single_launch(case: Case, block: int | None = None, per_block: int | None = None,
                  lanes: int | None = None) -> SingleLaunch:
    """The launch shape eca_deploy.tensorrt.nvrtc.single_launch_params gives ``case``, with another block size,
    channels per block or lanes per plane if asked (lanes shrink to fit the block; grid and shared memory follow)."""
    params = single_launch_params(case.n, case.c, case.h, case.w, case.k, case.dtype, case.pad_mode)
    per_block = per_block or params.channels_per_block
    block = block or params.block[0]
    shared = (case.k + min(per_block + case.k - 1, case.c)) * 4
    return SingleLaunch(per_block, math.ceil(case.c / per_block), block, shared,
                        lanes or min(params.lanes_per_plane, block))


# --- data ------------------------------------------------------------------------------------------------------

def to_storage(values: np.ndarray, dtype: str) -> np.ndarray:
    """float values rounded to ``dtype``'s storage (float32, float16, or bf16 bits as uint16)."""
    if dtype == "fp32":
        return values.astype(np.float32)
    if dtype == "fp16":
        return values.astype(np.float16)
    return torch.from_numpy(values.astype(np.float32)).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def from_storage(stored: np.ndarray, dtype: str) -> np.ndarray:
    """The float64 values of ``dtype``'s storage."""
    if dtype == "bf16":
        return (stored.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return stored.astype(np.float64)


def storage_dtype(dtype: str) -> np.dtype:
    return np.dtype({"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16}[dtype])


def inputs(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """x (N x C x H x W) and the k taps in the case's storage type, seeded by its name: x as gpu_check draws
    it (normal * 2 + 0.5), the taps normal / sqrt(k) (about the scale of PyTorch's Conv1d initialisation),
    so that gates stay off saturation for every k and FP32's rounding of a k-term sum stays within
    gpu_check's tolerance."""
    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    x = rng.standard_normal((case.n, case.c, case.h, case.w), dtype=np.float32) * 2 + 0.5
    taps = rng.standard_normal(case.k, dtype=np.float32) / np.float32(math.sqrt(case.k))
    return to_storage(x, case.dtype), to_storage(taps, case.dtype)


def to_memory(x: np.ndarray, case: Case) -> np.ndarray:
    """x (N x C x H x W) as the case's buffer: NCHW, NHWC, or NHWC with NaN padding channels (HWC8)."""
    if case.layout == "nchw":
        return np.ascontiguousarray(x)
    channels_last = x.transpose(0, 2, 3, 1)
    if case.layout == "nhwc":
        return np.ascontiguousarray(channels_last)
    padded = np.empty((case.n, case.h, case.w, case.pixel_stride), dtype=x.dtype)
    padded[...] = to_storage(np.array(np.nan, dtype=np.float32), case.dtype)
    padded[..., :case.c] = channels_last
    return padded


def from_memory(buffer: np.ndarray, case: Case) -> tuple[np.ndarray, np.ndarray]:
    """A flat buffer of the case's layout as N x C x H x W, and its padding channels (empty unless HWC8)."""
    if case.layout == "nchw":
        return buffer.reshape(case.n, case.c, case.h, case.w), buffer[:0]
    pixels = buffer.reshape(case.n, case.h, case.w, case.pixel_stride)
    return pixels[..., :case.c].transpose(0, 3, 1, 2), pixels[..., case.c:]


# --- grids -----------------------------------------------------------------------------------------------------

def _variants(n: int, c: int, h: int, w: int, k: int, pad_mode: str, dtype: str) -> Iterator[Case]:
    """The shape through ecaForward in every layout and through the single-launch kernel: its own launch shape,
    32 threads (windows of more planes than groups read in passes), 256 threads in groups of 64 lanes (reductions
    through shared memory), and one channel per block with 128 single-lane groups where that makes at most
    ONE_CHANNEL_BLOCKS blocks with k <= 9 (every lane reads a whole plane, past what it holds in registers);
    x and y misaligned by a rotating pair."""
    case = Case(n, c, h, w, k, pad_mode, dtype)
    launches = [single_launch(case), single_launch(case, block=32), single_launch(case, block=256, lanes=64)]
    if n * c <= ONE_CHANNEL_BLOCKS and k <= max(KERNEL_SIZES):
        launches.append(single_launch(case, block=128, per_block=1, lanes=1))
    entries = [(layout, "forward", None) for layout in LAYOUTS] + [("nchw", "single", cfg) for cfg in launches]
    turn = n + c + h + w + k + DTYPES.index(dtype) + PAD_MODES.index(pad_mode)
    for index, (layout, entry, launch) in enumerate(entries):
        x_misalign, y_misalign = MISALIGNMENTS[(turn + index) % len(MISALIGNMENTS)]
        yield Case(n, c, h, w, k, pad_mode, dtype, layout, entry, x_misalign, y_misalign, single=launch)


def _small_cases(budget: int) -> Iterator[Case]:
    """Every N, C, map, k (1..9 and 2C + 1), pad mode, dtype and entry of shapes within ``budget`` elements."""
    for n, c, (h, w) in itertools.product(BATCHES, CHANNELS, MAPS):
        if n * c * h * w <= budget:
            for k, pad_mode, dtype in itertools.product((*KERNEL_SIZES, 2 * c + 1), PAD_MODES, DTYPES):
                yield from _variants(n, c, h, w, k, pad_mode, dtype)


def zoo_layers() -> list[tuple[int, int]]:
    """(channels, map side) of every distinct ECA layer of the zoo at 224 x 224 input."""
    resnet = {(64 * 2**stage * expansion, 56 // 2**stage) for stage in range(4) for expansion in (1, 4)}
    side, mobilenet = 112, set()  # MobileNetV2's stem halves 224
    for _expansion, channels, _repeats, stride in INVERTED_RESIDUAL_SETTING:
        side //= stride
        mobilenet.add((channels, side))
    return sorted(resnet | mobilenet)


def _large_cases() -> Iterator[Case]:
    """Beyond the budget: every zoo layer at its resolution (N 1 and 7), 112 x 112 and 97 x 113 maps, and
    k > C on wide layers; in every dtype, pad mode and entry."""
    shapes = [(n, c, side, side, k) for c, side in zoo_layers() for n in (1, 7) for k in (3, 7)]
    shapes += [(2, 32, 112, 112, 3), (1, 17, 97, 113, 5), (3, 2048, 7, 7, 4097), (1, 1021, 14, 14, 2043)]
    for (n, c, h, w, k), pad_mode, dtype in itertools.product(shapes, PAD_MODES, DTYPES):
        yield from _variants(n, c, h, w, k, pad_mode, dtype)


def shared_limit_cases() -> Iterator[Case]:
    """Channels-last, k = C, on both sides of the channel windows that fill 48 KiB (where the gate leaves
    shared memory for global memory) and the opt-in limits of a T4, and in FP32 of an Orin and an H100 (where
    the gate used to fail after the sums pass had run); tiles of one 128-byte pixel row."""
    limits = [("sm90", 48, ("fp32", "fp16")), ("sm75", 64, ("fp32", "fp16")), ("sm87", 163, ("fp32",)),
              ("sm90", 227, ("fp32",))]
    for device, kib, dtypes in limits:
        for dtype in dtypes:
            boundary = kib * 1024 // 4 - 128 // ELEMENT_BYTES[dtype]
            for c in (boundary - 1, boundary + 1):
                yield Case(1, c, 1, 1, c, "constant", dtype, "nhwc" if dtype == "fp32" else "hwc8", device=device)


def full_grid() -> list[Case]:
    """The full tier (``--emu-full``)."""
    return [*_small_cases(FULL_ELEMENT_BUDGET), *_large_cases(), *shared_limit_cases()]


def _path_values(case: Case) -> set[tuple[str, object]]:
    """(axis, value) pairs that choose the code a case runs."""
    return {("layout", case.layout), ("entry", case.entry), ("dtype", case.dtype), ("pad", case.pad_mode),
            ("misalign", (case.x_misalign, case.y_misalign)), ("k>c", case.k > case.c),
            ("block", case.single and case.single.block), ("per_block=1", case.single and case.single.per_block == 1),
            ("lanes", case.single and case.single.lanes)}


def _axis_values(case: Case) -> set[tuple[str, object]]:
    """(axis, value) pairs of every axis of the grid."""
    return _path_values(case) | {("n", case.n), ("c", case.c), ("map", (case.h, case.w)), ("k", min(case.k, 11))}


def sample(cases: list[Case], count: int, seed: int = 0,
           axes: Callable[[Case], set[tuple[str, object]]] = _axis_values) -> list[Case]:
    """``count`` cases in a seeded order, chosen first so that every value of every axis of ``cases`` appears."""
    order = list(cases)
    random.Random(seed).shuffle(order)
    chosen, covered, rest = [], set(), []
    for case in order:
        values = axes(case)
        (chosen if not values <= covered else rest).append(case)
        covered |= values
    return chosen + rest[:max(count - len(chosen), 0)]


def sampled_grid(count: int = 900) -> list[Case]:
    """The CI tier: a deterministic sample of the full grid's cases within SAMPLE_ELEMENT_BUDGET, plus the
    zoo's layers at N = 1 in FP16 HWC8 and FP32 NCHW."""
    small = list(_small_cases(SAMPLE_ELEMENT_BUDGET))
    zoo = [Case(1, c, side, side, 3, "constant", dtype, layout) for c, side in zoo_layers()
           for dtype, layout in (("fp16", "hwc8"), ("fp32", "nchw"))]
    return sample(small, count - len(zoo)) + zoo


def plugin_grid(sampled: bool) -> list[Case]:
    """Plugin cases in every format TensorRT allows it, with a dynamic profile larger than the shape."""
    shapes = [(1, 1, 1, 1, 3), (2, 17, 5, 7, 5), (3, 96, 14, 14, 3), (2, 160, 7, 7, 3), (1, 5, 3, 3, 9),
              (7, 64, 28, 28, 7)]
    cases = [Case(n, c, h, w, k, pad_mode, dtype, layout, "plugin", profile_max=(n + 2, h + 3, w + 1))
             for (n, c, h, w, k), pad_mode, (dtype, layout) in itertools.product(shapes, PAD_MODES, PLUGIN_FORMATS)]
    return sample(cases, 24) if sampled else cases


def sanitizer_grid(count: int) -> list[Case]:
    """Small cases through every code path (entry, layout, dtype, pad mode, misalignment, k above C, launch
    shape), for the sanitizer builds."""
    tiny = [case for case in _small_cases(512) if case.n <= 2]
    return sample(tiny, count, seed=1, axes=_path_values)
