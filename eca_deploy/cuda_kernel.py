"""The fused ECA CUDA kernel from PyTorch: build ``libeca_kernel.so`` with nvcc, call it with ctypes.

The library is ``plugins/eca/ecaKernel.cu`` (the kernel the TensorRT plugin runs) plus the plain C
entry points of ``ecaCApi.cu``, built for the current GPU's architecture into
``~/.cache/eca_deploy/kernels/<hash>/`` (``$XDG_CACHE_HOME`` is honoured), keyed by the sources,
the architecture, nvcc's version and the flags: a rebuild happens only when one of them changes.

Inference only: ``eca_forward`` records no autograd graph. It runs on the current stream and takes
its workspace from PyTorch's caching allocator, so it composes with CUDA graphs and other streams
the way any PyTorch op does.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import torch
from torch import nn

from eca_deploy.errors import EcaDeployError
from eca_deploy.models import EcaLayer
from eca_deploy.resources import cache_root, plugin_dir
from eca_deploy.tensorrt.nvrtc import PAD_MODE_CODES, single_launch_params

LIBRARY_NAME = "libeca_kernel.so"
SOURCES = ("ecaKernel.cu", "ecaCApi.cu")
HEADERS = ("ecaKernel.h", "ecaKernels.cuh")
NVCC_FLAGS = ("-std=c++17", "-O3", "-lineinfo", "-shared", "-Xcompiler", "-fPIC")
WARNING_FLAGS = ("-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror")

# Codes of eca::DataType and eca::Layout in ecaKernel.h.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
LAYOUT_NCHW, LAYOUT_CHANNELS_LAST = 0, 1

_ARCH = re.compile(r"^(?:sm_|compute_)?(\d{2,3}[af]?)$")


def find_nvcc() -> Path:
    """nvcc from PATH, $CUDA_HOME, $CUDA_PATH or /usr/local/cuda."""
    on_path = shutil.which("nvcc")
    if on_path:
        return Path(on_path)
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return Path(root) / "bin" / "nvcc"
    raise EcaDeployError("nvcc is missing: install the CUDA toolkit or set CUDA_HOME to build the ECA kernel")


def _arch_number(arch: str) -> str:
    """The number of "sm_90" / "compute_90" / "90": "90" (suffixes such as "90a" are kept)."""
    match = _ARCH.match(arch)
    if match is None:
        raise ValueError(f"arch must look like 'sm_90', got {arch!r}")
    return match.group(1)


def current_arch(device: torch.device | int | None = None) -> str:
    """The "sm_XY" architecture of a CUDA device (the current one by default)."""
    if not torch.cuda.is_available():
        raise EcaDeployError("CUDA is unavailable (torch.cuda.is_available() is False): the ECA kernel needs a GPU")
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def nvcc_command(nvcc: Path, archs: Sequence[str], output: Path, *, warnings_as_errors: bool = False) -> list[str]:
    """The nvcc command line that builds the library for ``archs`` (SASS for each) into ``output``."""
    folder = plugin_dir()
    gencodes = [f"-gencode=arch=compute_{number},code=sm_{number}" for number in map(_arch_number, archs)]
    warnings = list(WARNING_FLAGS) if warnings_as_errors else []
    return [str(nvcc), *NVCC_FLAGS, *warnings, *gencodes, "-o", str(output), *(str(folder / s) for s in SOURCES)]


def _nvcc_version(nvcc: Path) -> str:
    return subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=True).stdout


def cache_dir() -> Path:
    """Root of the build cache: $XDG_CACHE_HOME/eca_deploy/kernels (default ~/.cache/...)."""
    return cache_root() / "kernels"


def build_kernel_library(arch: str | None = None, force: bool = False) -> Path:
    """Build (or find in the cache) libeca_kernel.so for ``arch`` ("sm_90"; default: the current GPU).

    Raises EcaDeployError without nvcc, without a GPU when ``arch`` is None, or when nvcc fails.
    """
    arch = f"sm_{_arch_number(arch if arch is not None else current_arch())}"
    nvcc = find_nvcc()
    folder = plugin_dir()
    digest = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    probe = nvcc_command(nvcc, [arch], Path(LIBRARY_NAME))
    digest.update("\0".join([arch, _nvcc_version(nvcc), *probe[1:]]).encode())
    target = cache_dir() / f"{arch}-{digest.hexdigest()[:16]}" / LIBRARY_NAME
    if target.is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / LIBRARY_NAME
        result = subprocess.run(nvcc_command(nvcc, [arch], built), capture_output=True, text=True)
        if result.returncode != 0:
            raise EcaDeployError(f"nvcc could not build {LIBRARY_NAME} for {arch}:\n{result.stderr.strip()}")
        os.replace(built, target)  # atomic: concurrent builds of the same key agree
    return target


@cache
def _library_for(arch: str) -> ctypes.CDLL:
    """Build or find the library for ``arch``, load it once and declare its C signatures."""
    lib = ctypes.CDLL(str(build_kernel_library(arch)))
    integer, pointer = ctypes.c_int, ctypes.c_void_p
    shape = [integer] * 9  # n, c, h, w, kernelSize, padMode, dataType, layout, pixelStride
    lib.ecaWorkspaceSizeC.argtypes, lib.ecaWorkspaceSizeC.restype = shape, ctypes.c_size_t
    lib.ecaForwardC.argtypes, lib.ecaForwardC.restype = [*shape, *[pointer] * 5], integer
    lib.ecaForwardSingleLaunchC.argtypes = [*[integer] * 12, *[pointer] * 4]
    lib.ecaForwardSingleLaunchC.restype = integer
    lib.ecaErrorStringC.argtypes, lib.ecaErrorStringC.restype = [integer], ctypes.c_char_p
    return lib


def _library(device: torch.device) -> ctypes.CDLL:
    return _library_for(current_arch(device))


def _check_status(lib: ctypes.CDLL, status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"{what} failed: {lib.ecaErrorStringC(status).decode()} (cudaError {status})")


def _check_input(x: torch.Tensor, pad_mode: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_cuda or x.dim() != 4:
        raise ValueError("x must be a 4D CUDA tensor (N x C x H x W)")
    if x.dtype not in DTYPE_CODES:
        raise ValueError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    if pad_mode not in PAD_MODE_CODES:
        raise ValueError(f"pad_mode must be one of {tuple(PAD_MODE_CODES)}, got {pad_mode!r}")


def _taps(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The k conv taps as a contiguous vector of x's dtype on x's device."""
    taps = weight.detach().reshape(-1).to(device=x.device, dtype=x.dtype).contiguous()
    if taps.numel() % 2 == 0:
        raise ValueError(f"weight must hold an odd number of taps, got {taps.numel()}")
    return taps


def _layout(x: torch.Tensor) -> tuple[int, int]:
    """(layout code, pixel stride) of x: contiguous NCHW, torch.channels_last, or the channels-last
    view ``buffer[..., :C].permute(0, 3, 1, 2)`` of an N x H x W x P buffer (P >= C, e.g. HWC8)."""
    n, c, h, w = x.shape
    stride = x.stride(3)
    # The padded view first: the contiguity checks ignore size-1 dimensions and may accept it too.
    if stride > c and x.stride() == (h * w * stride, 1, w * stride, stride):
        return LAYOUT_CHANNELS_LAST, stride
    if x.is_contiguous():
        return LAYOUT_NCHW, c
    if x.is_contiguous(memory_format=torch.channels_last):
        return LAYOUT_CHANNELS_LAST, c
    raise ValueError("x must be contiguous NCHW, torch.channels_last, or a channels-last view of an "
                     "N x H x W x P buffer")


def _output(x: torch.Tensor, out: torch.Tensor | None, pixel_stride: int) -> torch.Tensor:
    """``out`` (checked) or a new tensor laid out like x; padded channels-last gets a padded buffer."""
    if out is None:
        n, c, h, w = x.shape
        if pixel_stride == c:
            return torch.empty_like(x)
        buffer = torch.empty(n, h, w, pixel_stride, dtype=x.dtype, device=x.device)
        return buffer[..., :c].permute(0, 3, 1, 2)
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device or out.stride() != x.stride():
        raise ValueError("out must match x's shape, dtype, device and strides")
    if out.data_ptr() == x.data_ptr():
        raise ValueError("out may not alias x")
    return out


def eca_forward(x: torch.Tensor, weight: torch.Tensor, pad_mode: str = "constant", *,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """y = x * sigmoid(conv1d_k(mean_hw(x))) across channels with the fused CUDA kernel (``ecaForward``).

    ``x``: 4D CUDA float32/float16/bfloat16 tensor, contiguous NCHW, ``torch.channels_last``, or
    the channels-last view ``buffer[..., :C].permute(0, 3, 1, 2)`` of an N x H x W x P buffer
    (TensorRT's HWC8 with P = roundUp(C, 8)); ``weight``: the k taps (any shape), cast to x's dtype;
    ``pad_mode``: "constant" or "wrap". Returns y laid out like x (written into ``out`` when given,
    which must have x's strides). With a padded layout the padding channels [C, P) of every pixel
    of y's buffer are set to zero, as TensorRT expects of HWC8: never pass as ``out`` a view whose
    buffer keeps other data there.
    """
    _check_input(x, pad_mode)
    layout, pixel_stride = _layout(x)
    taps = _taps(weight, x)
    y = _output(x, out, pixel_stride)
    if x.numel() == 0:
        return y
    n, c, h, w = x.shape
    args = (n, c, h, w, taps.numel(), PAD_MODE_CODES[pad_mode], DTYPE_CODES[x.dtype], layout, pixel_stride)
    lib = _library(x.device)
    with torch.cuda.device(x.device):
        workspace = torch.empty(lib.ecaWorkspaceSizeC(*args), dtype=torch.uint8, device=x.device)
        status = lib.ecaForwardC(*args, x.data_ptr(), taps.data_ptr(), y.data_ptr(), workspace.data_ptr(),
                                 torch.cuda.current_stream(x.device).cuda_stream)
    _check_status(lib, status, "ecaForward")
    return y


def eca_forward_single_launch(x: torch.Tensor, weight: torch.Tensor, pad_mode: str = "constant", *,
                              out: torch.Tensor | None = None) -> torch.Tensor:
    """``eca_forward`` through the single-launch kernel of the QDP AOT path (contiguous NCHW only),
    launched with exactly the shape ``eca_deploy.tensorrt.nvrtc.single_launch_params`` gives TensorRT."""
    _check_input(x, pad_mode)
    if not x.is_contiguous():
        raise ValueError("the single-launch kernel needs a contiguous NCHW x")
    taps = _taps(weight, x)
    y = _output(x, out, x.shape[1])
    if x.numel() == 0:
        return y
    n, c, h, w = x.shape
    launch = single_launch_params(n, c, h, w, taps.numel(), x.dtype, pad_mode)
    lib = _library(x.device)
    with torch.cuda.device(x.device):
        status = lib.ecaForwardSingleLaunchC(
            n, c, h, w, taps.numel(), PAD_MODE_CODES[pad_mode], DTYPE_CODES[x.dtype], launch.channels_per_block,
            launch.grid[0], launch.block[0], launch.shared_mem_bytes, launch.lanes_per_plane, x.data_ptr(),
            taps.data_ptr(), y.data_ptr(), torch.cuda.current_stream(x.device).cuda_stream)
    _check_status(lib, status, "ecaForwardSingleLaunch")
    return y


class CudaEca(nn.Module):
    """An ECA layer running the fused CUDA kernel (inference): forward is ``eca_forward``."""

    def __init__(self, weight: torch.Tensor, pad_mode: str = "constant") -> None:
        super().__init__()
        if pad_mode not in PAD_MODE_CODES:
            raise ValueError(f"pad_mode must be one of {tuple(PAD_MODE_CODES)}, got {pad_mode!r}")
        if weight.numel() % 2 == 0:
            raise ValueError(f"weight must hold an odd number of taps, got {weight.numel()}")
        self.register_buffer("weight", weight.detach().reshape(-1).clone())
        self.pad_mode = pad_mode

    @classmethod
    def from_module(cls, module: nn.Module, pad_mode: str | None = None) -> CudaEca:
        """From a module with a bias-free 1 -> 1 ``conv`` (Conv1d) across channels: the authors'
        EcaLayer, timm's EcaModule (zero padding) or CecaModule (circular ``F.pad``, conv padding 0,
        ``padding`` attribute); a Conv1d with ``padding_mode="circular"`` means "wrap"."""
        conv = getattr(module, "conv", None)
        if not isinstance(conv, nn.Conv1d) or conv.in_channels != 1 or conv.out_channels != 1 or conv.bias is not None:
            raise ValueError(f"{type(module).__name__} has no bias-free Conv1d(1, 1, k) named 'conv'")
        k = conv.kernel_size[0]
        if pad_mode is None:
            if conv.padding == ((k - 1) // 2,):
                pad_mode = "wrap" if conv.padding_mode == "circular" else "constant"
            elif conv.padding == (0,) and getattr(module, "padding", None) == (k - 1) // 2:
                pad_mode = "wrap"
            else:
                raise ValueError(f"cannot tell how {type(module).__name__} pads its channels: pass pad_mode")
        return cls(conv.weight, pad_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return eca_forward(x, self.weight, self.pad_mode)

    def extra_repr(self) -> str:
        return f"kernel_size={self.weight.numel()}, pad_mode={self.pad_mode!r}"


def replace_eca_modules(model: nn.Module) -> int:
    """Swap every ``eca_deploy.models.EcaLayer`` inside ``model`` for a CudaEca in place; returns the count."""
    if isinstance(model, EcaLayer):
        raise ValueError("model is itself an EcaLayer: use CudaEca.from_module(model)")
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, EcaLayer):
                setattr(parent, name, CudaEca.from_module(child))
                replaced += 1
    return replaced
