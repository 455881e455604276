"""The fused ECA kernel for TensorRT's Quickly Deployable Plugin (QDP) AOT path: PTX and launch shape.

``compile_ptx`` compiles ``plugins/eca/ecaKernels.cuh`` (the very source nvcc builds into the
plugin and ``libeca_kernel.so``) to PTX with NVRTC, loaded through ctypes from the
``nvidia-cuda-nvrtc`` wheel or a CUDA toolkit. ``single_launch_params`` is the pure function that
gives the launch shape of its single-launch kernel (``eca_single_launch_{f32,f16,bf16}``), so an
``aot_impl`` can return ``(kernel_name, ptx, launch_params, extra_args)`` without a GPU.

PTX is loadable only by a driver at least as new as the NVRTC that wrote it (its ``.version``
line): pair the wheel's version with the deployment driver.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from eca_deploy.errors import EcaDeployError
from eca_deploy.resources import plugin_dir
from eca_deploy.schema import eca_schema

KERNEL_SOURCE = "ecaKernels.cuh"
SINGLE_LAUNCH_KERNELS = {
    "float32": "eca_single_launch_f32",
    "float16": "eca_single_launch_f16",
    "bfloat16": "eca_single_launch_bf16",
}
PAD_MODE_CODES = {"constant": 0, "wrap": 1}  # eca::PadMode in ecaKernel.h

BLOCK_THREADS = 256  # the kernels' __launch_bounds__ (kMaxBlockThreads): the largest block
WARP_SIZE = 32  # the smallest block
VECTOR_BYTES = 16  # the kernel's vector accesses (kVectorBytes)
HELD_VECTORS = 16  # vectors of its plane a lane keeps in registers (kHeldVectors)
LANE_ELEMENTS = 16  # elements of its plane a lane aims to read (ecaKernel.cu's kSingleLaneElements) ...
LANE_ACCESSES = 4  # ... in at most this many accesses (kSingleLaneAccesses)
TARGET_BLOCKS = 256  # blocks per sample the grid aims for (ecaKernel.cu's kSingleTargetBlocks)
MAX_SHARED_BYTES = 48 * 1024  # static + dynamic shared memory available without an opt-in attribute
STATIC_SHARED_BYTES = BLOCK_THREADS // WARP_SIZE * 4  # the kernel's own scratch: kReduceScratchFloats floats
MAX_DYNAMIC_SHARED_BYTES = MAX_SHARED_BYTES - STATIC_SHARED_BYTES
INT32_MAX = 2**31 - 1  # the kernel's int plane size
MAX_GRID_Y = 65535  # CUDA's grid.y limit: the samples of one launch
ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
_NVRTC_NAME = re.compile(r"^libnvrtc\.so(\.\d+)*$|^nvrtc64_\d+(_0)?\.dll$")
_BUILTINS_PATTERN = "libnvrtc-builtins.so.*"  # not the .alt variant
_ARCH = re.compile(r"^(?:sm_|compute_)?(\d{2,3}[af]?)$")
_NVRTC_SUCCESS = 0


def _dtype_name(dtype: object) -> str:
    """Canonical name ("float32", "float16", "bfloat16") of a str, NumPy or torch dtype."""
    if isinstance(dtype, str):
        name = dtype
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = str(dtype).removeprefix("torch.")
    name = _DTYPE_ALIASES.get(name, name)
    if name not in SINGLE_LAUNCH_KERNELS:
        raise ValueError(f"dtype must be one of {sorted(SINGLE_LAUNCH_KERNELS)}, got {dtype!r}")
    return name


@dataclass(frozen=True)
class SingleLaunchParams:
    """Launch shape of the single-launch kernel and the int32 scalars it takes.

    The kernel's arguments follow TensorRT's AOT convention: ``x, weight`` (inputs), then
    ``extra_args`` = (C, H*W, k, pad-mode code, channels_per_block, lanes_per_plane), then ``y`` (output).
    The grid is (channel_tiles, N, 1); everything else depends on C, H, W, k and dtype only, so a dynamic batch
    only sets ``grid[1]``.
    """

    kernel_name: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem_bytes: int
    channels_per_block: int
    lanes_per_plane: int
    channel_tiles: int
    extra_args: tuple[int, ...]


def _next_pow2(value: int) -> int:
    return 1 << max(value - 1, 0).bit_length()


def plan_single_launch(c: int, hw: int, k: int, dtype: object = "float32") -> tuple[int, int, int]:
    """(channels per block, lanes per plane, threads per block) of the single-launch kernel: ecaKernel.cu's
    ``planSingleLaunch``, which ecaForward uses for NCHW (the emulator tests check that the two agree).

    A lane group per plane of the block's channel window (its tile and the k - 1 halo channels): lanes enough for
    LANE_ELEMENTS elements each in at most LANE_ACCESSES accesses, a tile of at least k - 1 channels and more while a sample would get more than
    TARGET_BLOCKS blocks. Over BLOCK_THREADS threads: halve the lanes while they still hold their vectors, then the
    tile down to one channel, then the lanes, then the groups (windows read in several passes); then grow the tile
    to use every group and the lanes to make at least a warp.
    """
    halo = k - 1
    vector = VECTOR_BYTES // ELEMENT_BYTES[_dtype_name(dtype)]
    access = next(width for width in (vector, vector // 2, 1) if hw % width == 0)  # 16-, 8-byte packs or elements
    vectors = hw // access
    per_lane = min(max(LANE_ELEMENTS // access, 1), LANE_ACCESSES)
    wanted = max(halo, 1, c // TARGET_BLOCKS)
    holding = _next_pow2(-(-vectors // HELD_VECTORS))
    fewest = _next_pow2(min(halo + 1, c))
    lanes = min(_next_pow2(-(-vectors // per_lane)), BLOCK_THREADS)
    groups = min(_next_pow2(min(wanted + halo, c)), BLOCK_THREADS)
    while lanes * groups > BLOCK_THREADS:
        if lanes > holding:
            lanes //= 2
        elif groups > fewest:
            groups //= 2
        elif lanes > 1:
            lanes //= 2
        else:
            groups //= 2
    lanes = max(lanes, WARP_SIZE // groups)
    tile = groups - halo if groups > halo else max(halo, 1)
    return (c if tile + halo >= c else tile), lanes, lanes * groups


def _shared_bytes(channels_per_block: int, c: int, k: int) -> int:
    """Dynamic shared memory: the taps and the channel window's means, in float32."""
    return (k + min(channels_per_block + k - 1, c)) * 4


def single_launch_params(n: int, c: int, h: int, w: int, k: int, dtype: object = "float32",
                         pad_mode: str = "constant") -> SingleLaunchParams:
    """Grid, block, dynamic shared memory and extra arguments of the single-launch NCHW kernel.

    ``dtype`` is "float32"/"float16"/"bfloat16" (or a NumPy/torch dtype); ``pad_mode`` only sets
    the pad-mode code among the extra arguments. Pure: no GPU, no NVRTC.
    """
    for name, value in (("n", n), ("c", c), ("h", h), ("w", w), ("k", k)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if k % 2 == 0:
        raise ValueError(f"kernel size must be odd, got {k}")
    if pad_mode not in eca_schema().pad_modes:
        raise ValueError(f"pad_mode must be one of {eca_schema().pad_modes}, got {pad_mode!r}")
    n, c, h, w, k = (int(v) for v in (n, c, h, w, k))
    if h * w > INT32_MAX:
        raise EcaDeployError(f"H * W = {h * w} exceeds the single-launch kernel's int32 plane size")
    per_block, lanes, threads = plan_single_launch(c, h * w, k, dtype)
    shared = _shared_bytes(per_block, c, k)
    if shared > MAX_DYNAMIC_SHARED_BYTES:
        raise EcaDeployError(f"kernel size {k} with {c} channels needs more shared memory than the "
                             f"single-launch kernel may use ({MAX_DYNAMIC_SHARED_BYTES} bytes)")
    if n > MAX_GRID_Y:
        raise EcaDeployError(f"batch {n} exceeds the single-launch grid's {MAX_GRID_Y} samples (CUDA's grid.y limit)")
    tiles = math.ceil(c / per_block)
    return SingleLaunchParams(
        kernel_name=SINGLE_LAUNCH_KERNELS[_dtype_name(dtype)],
        grid=(tiles, n, 1),
        block=(threads, 1, 1),
        shared_mem_bytes=shared,
        channels_per_block=per_block,
        lanes_per_plane=lanes,
        channel_tiles=tiles,
        extra_args=(c, h * w, k, PAD_MODE_CODES[pad_mode], per_block, lanes),
    )


def _nvidia_package_dirs() -> list[Path]:
    """Folders of the installed ``nvidia`` namespace package (where NVIDIA's pip wheels unpack)."""
    try:
        import nvidia
    except ImportError:
        return []
    return [Path(entry) for entry in nvidia.__path__]


def _toolkit_dirs() -> list[Path]:
    """CUDA toolkit roots: $CUDA_HOME, $CUDA_PATH, /usr/local/cuda."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    return [Path(root) for root in roots if root]


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name))


def find_nvrtc() -> Path:
    """The NVRTC library: from the ``nvidia-cuda-nvrtc`` wheel (newest), else the CUDA toolkit."""
    wheel = [path for base in _nvidia_package_dirs() for pattern in ("*/lib/*", "*/bin/*")
             for path in base.glob(pattern) if _NVRTC_NAME.match(path.name)]
    if wheel:
        return max(wheel, key=_version_key)
    for root in _toolkit_dirs():
        found = [path for folder in (root / "lib64", *root.glob("targets/*/lib"), root / "bin")
                 if folder.is_dir() for path in folder.iterdir() if _NVRTC_NAME.match(path.name)]
        if found:
            return max(found, key=_version_key)
    raise EcaDeployError("NVRTC is missing: `pip install nvidia-cuda-nvrtc` or install a CUDA toolkit "
                         "(set CUDA_HOME if it is not in /usr/local/cuda)")


def cuda_include_dir() -> Path:
    """The folder holding cuda_fp16.h / cuda_bf16.h, which NVRTC does not ship: from NVIDIA's wheels,
    else a CUDA toolkit."""
    candidates = [path for base in _nvidia_package_dirs() for path in sorted(base.glob("*/include"))]
    candidates += [root / "include" for root in _toolkit_dirs()]
    found = [path for path in candidates if (path / "cuda_fp16.h").is_file() and (path / "cuda_bf16.h").is_file()]
    if not found:
        raise EcaDeployError("NVRTC needs cuda_fp16.h and cuda_bf16.h: install a CUDA toolkit (set CUDA_HOME) "
                             "or the nvidia-cuda-runtime wheel's headers")
    return found[0]


class Nvrtc:
    """The few NVRTC calls PTX generation needs, through ctypes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            # NVRTC dlopen()s its builtins library by name at compile time, which finds the wheel's copy beside it
            # only if a process (PyTorch, say) loaded it already: load it first.
            for builtins in sorted(path.parent.glob(_BUILTINS_PATTERN)):
                ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
            lib = ctypes.CDLL(str(path))
        except OSError as error:
            raise EcaDeployError(f"cannot load NVRTC from {path}: {error}") from error
        pointer, size, text = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
        lib.nvrtcGetErrorString.restype = text
        lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
        signatures = {
            "nvrtcVersion": [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)],
            "nvrtcCreateProgram": [ctypes.POINTER(pointer), text, text, ctypes.c_int, pointer, pointer],
            "nvrtcCompileProgram": [pointer, ctypes.c_int, ctypes.POINTER(text)],
            "nvrtcGetProgramLogSize": [pointer, ctypes.POINTER(size)],
            "nvrtcGetProgramLog": [pointer, text],
            "nvrtcGetPTXSize": [pointer, ctypes.POINTER(size)],
            "nvrtcGetPTX": [pointer, text],
            "nvrtcDestroyProgram": [ctypes.POINTER(pointer)],
        }
        for name, argtypes in signatures.items():
            function = getattr(lib, name)
            function.restype, function.argtypes = ctypes.c_int, argtypes
        self._lib = lib

    def _check(self, result: int, what: str) -> None:
        if result != _NVRTC_SUCCESS:
            raise EcaDeployError(f"NVRTC {what} failed: {self._lib.nvrtcGetErrorString(result).decode()}")

    def version(self) -> tuple[int, int]:
        """NVRTC's (major, minor) version."""
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self._lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        return major.value, minor.value

    def _read(self, program: ctypes.c_void_p, size_call: str, read_call: str) -> str:
        size = ctypes.c_size_t()
        self._check(getattr(self._lib, size_call)(program, ctypes.byref(size)), size_call)
        buffer = ctypes.create_string_buffer(size.value)
        self._check(getattr(self._lib, read_call)(program, buffer), read_call)
        return buffer.value.decode(errors="replace")

    def compile(self, source: str, name: str, options: Sequence[str]) -> tuple[str, str]:
        """Compile CUDA C++ ``source`` to PTX; returns (ptx, log). Compile errors raise with the log."""
        program = ctypes.c_void_p()
        self._check(self._lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(), 0,
                                                 None, None), "nvrtcCreateProgram")
        try:
            encoded = [option.encode() for option in options]
            result = self._lib.nvrtcCompileProgram(program, len(encoded), (ctypes.c_char_p * len(encoded))(*encoded))
            log = self._read(program, "nvrtcGetProgramLogSize", "nvrtcGetProgramLog").strip()
            if result != _NVRTC_SUCCESS:
                raise EcaDeployError(f"NVRTC could not compile {name}: "
                                     f"{self._lib.nvrtcGetErrorString(result).decode()}\n{log}")
            return self._read(program, "nvrtcGetPTXSize", "nvrtcGetPTX"), log
        finally:
            self._lib.nvrtcDestroyProgram(ctypes.byref(program))


@cache
def load_nvrtc() -> Nvrtc:
    """NVRTC from ``find_nvrtc()``, loaded once."""
    return Nvrtc(find_nvrtc())


def virtual_arch(arch: str) -> str:
    """Map "sm_87" / "compute_87" / "87" to "compute_87": NVRTC emits PTX for a virtual architecture."""
    match = _ARCH.match(arch)
    if match is None:
        raise ValueError(f"arch must look like 'sm_87', got {arch!r}")
    return f"compute_{match.group(1)}"


def compile_ptx_with_log(arch: str = "sm_90", extra_options: Sequence[str] = ()) -> tuple[str, str]:
    """``compile_ptx`` that also returns NVRTC's log (warnings)."""
    source = plugin_dir() / KERNEL_SOURCE
    options = [f"--gpu-architecture={virtual_arch(arch)}", "-std=c++17",
               f"--include-path={cuda_include_dir()}", *extra_options]
    return load_nvrtc().compile(source.read_text(), KERNEL_SOURCE, options)


def compile_ptx(arch: str = "sm_90", extra_options: Sequence[str] = ()) -> str:
    """PTX of ecaKernels.cuh for ``arch`` ("sm_87", "sm_90", ...), holding the extern "C" kernels
    named in SINGLE_LAUNCH_KERNELS. Raises EcaDeployError when NVRTC or the CUDA headers are missing."""
    return compile_ptx_with_log(arch, extra_options)[0]
