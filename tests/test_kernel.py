"""The fused ECA CUDA kernel: warning-free builds for every architecture, the C API's validation,
NVRTC PTX of the same source, the single-launch shape, the float64 reference against PyTorch and
ONNX Runtime, and (on a GPU) the kernel against the reference."""

from __future__ import annotations

import ctypes
import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from ecanets import CecaModule
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from eca_deploy.cuda_kernel import (
    CudaEca,
    build_kernel_library,
    eca_forward,
    eca_forward_single_launch,
    find_nvcc,
    nvcc_command,
    replace_eca_modules,
)
from eca_deploy.errors import EcaDeployError
from eca_deploy.models import (
    EcaLayer,
    create_demo_model,
    create_model,
    get_architecture,
)
from eca_deploy.passes.fused_node import (
    WRAP_PAD_MIN_OPSET,
    eca_node_attributes,
    make_eca_function,
)
from eca_deploy.reference import eca_reference
from eca_deploy.schema import eca_schema
from eca_deploy.tensorrt.nvrtc import (
    BLOCK_THREADS,
    MAX_SHARED_BYTES,
    PAD_MODE_CODES,
    SINGLE_LAUNCH_KERNELS,
    compile_ptx_with_log,
    cuda_include_dir,
    load_nvrtc,
    plan_single_launch,
    single_launch_params,
)

MIN_ARCH = 75
CUDA_ERROR_INVALID_VALUE = 1
CL_NCHW, CL_CHANNELS_LAST = 0, 1
C_FLOAT, C_HALF = 0, 1
# (n, c, h, w, k): k > C, C = 1, H = W = 1, odd sizes, ResNet/MobileNetV2 stages
REFERENCE_SHAPES = [(2, 8, 5, 5, 3), (2, 3, 4, 4, 9), (3, 1, 3, 3, 3), (2, 2, 1, 1, 7), (1, 17, 7, 6, 5),
                    (2, 4, 3, 3, 11)]
GPU_SHAPES = [(2, 8, 5, 5, 3), (2, 3, 4, 4, 9), (3, 1, 3, 3, 3), (4, 17, 1, 1, 5), (2, 64, 56, 56, 3),
              (8, 2048, 7, 7, 7), (1, 96, 112, 112, 1)]
GPU_TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available())")


# --- nvcc: every architecture, warnings as errors -------------------------------------------------------------

@pytest.fixture(scope="module")
def nvcc() -> Path:
    try:
        return find_nvcc()
    except EcaDeployError as error:
        pytest.skip(str(error))


def listed_archs(nvcc: Path) -> list[str]:
    """The real architectures >= sm_75 this nvcc lists."""
    listing = subprocess.run([str(nvcc), "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout
    numbers = sorted({int(number) for number in re.findall(r"compute_(\d+)\b", listing)})
    return [f"sm_{number}" for number in numbers if number >= MIN_ARCH]


@pytest.fixture(scope="module")
def all_arch_library(nvcc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libeca_kernel.so for every listed architecture, built once with all warnings as errors."""
    output = tmp_path_factory.mktemp("kernel") / "libeca_kernel.so"
    archs = listed_archs(nvcc)
    assert archs, "nvcc lists no architecture >= sm_75"
    command = [*nvcc_command(nvcc, archs, output, warnings_as_errors=True), "--threads", "2"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr}"
    return output


@pytest.fixture(scope="module")
def c_api(all_arch_library: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(all_arch_library))
    integer, pointer = ctypes.c_int, ctypes.c_void_p
    lib.ecaWorkspaceSizeC.argtypes, lib.ecaWorkspaceSizeC.restype = [integer] * 9, ctypes.c_size_t
    lib.ecaForwardC.argtypes, lib.ecaForwardC.restype = [integer] * 9 + [pointer] * 5, integer
    lib.ecaForwardSingleLaunchC.argtypes = [integer] * 12 + [pointer] * 4
    lib.ecaForwardSingleLaunchC.restype = integer
    return lib


def test_library_builds_warning_free_for_every_architecture(all_arch_library: Path):
    assert all_arch_library.stat().st_size > 0


def test_workspace_sized_for_the_largest_shape_serves_every_smaller_one(c_api: ctypes.CDLL):
    for n, c, h, w, k in [(1, 64, 112, 112, 3), (256, 2048, 7, 7, 7), (1, 1, 1, 1, 1), (3, 17, 5, 5, 9)]:
        for layout, stride in [(CL_NCHW, 0), (CL_CHANNELS_LAST, 0), (CL_CHANNELS_LAST, (c + 7) // 8 * 8)]:
            size = c_api.ecaWorkspaceSizeC(n, c, h, w, k, 0, C_HALF, layout, stride)
            assert size % 256 == 0 and size >= n * c * 4
            # a function of N * C alone: dynamic H, W (and k, pad mode, dtype) never need more
            for other in [(n, c, 1, 1, 1, 1, C_FLOAT), (n, c, 2 * h, 3 * w, k + 2, 0, C_HALF)]:
                assert c_api.ecaWorkspaceSizeC(*other, layout, stride) == size
            assert c_api.ecaWorkspaceSizeC(max(n // 2, 1), c, h, w, k, 0, C_HALF, layout, stride) <= size
    assert c_api.ecaWorkspaceSizeC(256, 2048, 7, 7, 3, 0, C_HALF, CL_NCHW, 0) == 256 * 2048 * 4


@pytest.mark.parametrize("params", [
    (1, 8, 4, 4, 2, 0, C_FLOAT, CL_NCHW, 0),  # even k
    (1, 8, 4, 4, 0, 0, C_FLOAT, CL_NCHW, 0),  # k = 0
    (0, 8, 4, 4, 3, 0, C_FLOAT, CL_NCHW, 0),  # no samples
    (1, 8, 0, 4, 3, 0, C_FLOAT, CL_NCHW, 0),  # empty map
    (1, 8, 4, 4, 3, 2, C_FLOAT, CL_NCHW, 0),  # unknown pad mode
    (1, 8, 4, 4, 3, 0, 3, CL_NCHW, 0),  # unknown data type
    (1, 8, 4, 4, 3, 0, C_FLOAT, 2, 0),  # unknown layout
    (1, 8, 4, 4, 3, 0, C_FLOAT, CL_NCHW, 16),  # NCHW with a pixel stride
    (1, 8, 4, 4, 3, 0, C_FLOAT, CL_CHANNELS_LAST, 7),  # pixel stride < C
], ids=["even-k", "k0", "n0", "h0", "pad", "dtype", "layout", "nchw-stride", "short-stride"])
def test_invalid_parameters_are_rejected_before_any_launch(c_api: ctypes.CDLL, params: tuple[int, ...]):
    assert c_api.ecaWorkspaceSizeC(*params) == 0
    assert c_api.ecaForwardC(*params, 16, 16, 16, 16, None) == CUDA_ERROR_INVALID_VALUE


def test_null_pointers_and_wrong_single_launch_shapes_are_rejected(c_api: ctypes.CDLL):
    valid = (2, 8, 4, 4, 3, 0, C_FLOAT, CL_NCHW, 0)
    assert c_api.ecaForwardC(*valid, None, 16, 16, 16, None) == CUDA_ERROR_INVALID_VALUE
    assert c_api.ecaForwardC(*valid, 16, 16, 16, None, None) == CUDA_ERROR_INVALID_VALUE
    launch = single_launch_params(2, 8, 4, 4, 3)
    shape = (2, 8, 4, 4, 3, 0, C_FLOAT)
    good = (launch.channels_per_block, launch.grid[0], launch.block[0], launch.shared_mem_bytes,
            launch.lanes_per_plane)
    per_block, grid, block, shared, lanes = good
    for wrong in [(per_block, grid + 1, block, shared, lanes), (per_block, grid, 48, shared, lanes),
                  (per_block, grid, block, shared - 4, lanes), (0, grid, block, shared, lanes),
                  (per_block, grid, 512, shared, lanes), (per_block, grid, block, shared, 3),
                  (per_block, grid, block, shared, 2 * block)]:
        assert c_api.ecaForwardSingleLaunchC(*shape, *wrong, 16, 16, 16, None) == CUDA_ERROR_INVALID_VALUE


def test_build_kernel_library_caches_by_source_and_arch(nvcc: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    library = build_kernel_library("sm_90")
    assert library.is_file() and library.is_relative_to(tmp_path / "eca_deploy" / "kernels")
    built_at = library.stat().st_mtime_ns
    assert build_kernel_library("90") == library and library.stat().st_mtime_ns == built_at
    assert build_kernel_library("sm_90", force=True) == library
    with pytest.raises(ValueError, match="sm_90"):
        build_kernel_library("hopper")


# --- NVRTC: the same source to PTX ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nvrtc_available() -> None:
    try:
        load_nvrtc()
        cuda_include_dir()
    except EcaDeployError as error:
        pytest.skip(str(error))


@pytest.mark.parametrize("arch", ["sm_87", "sm_90"])
def test_nvrtc_compiles_the_kernel_source_to_ptx(nvrtc_available: None, arch: str):
    ptx, log = compile_ptx_with_log(arch)  # NVRTC 13 has no option to make warnings errors: the log is checked
    assert "warning" not in log.lower(), log
    assert re.search(rf"^\.target {arch}\b", ptx, re.M)
    for name in SINGLE_LAUNCH_KERNELS.values():
        entry = re.search(rf"\.entry {name}\((.*?)\)\s*\.maxntid (\d+), 1, 1", ptx, re.S)
        assert entry, f"{name} missing from the PTX"
        # TensorRT's AOT convention: inputs (x, weight), int32 extra arguments, output (y)
        params = re.findall(r"\.param \.(\w+)", entry.group(1))
        assert params == ["u64", "u64", *["u32"] * 6, "u64"]
        assert int(entry.group(2)) == BLOCK_THREADS


def test_nvrtc_rejects_a_bad_arch(nvrtc_available: None):
    with pytest.raises(ValueError, match="sm_87"):
        compile_ptx_with_log("ampere")


# --- single-launch shape ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, c, h, w, k", [(1, 64, 112, 112, 3), (256, 2048, 7, 7, 7), (8, 3, 1, 1, 9),
                                           (1, 1, 1, 1, 1), (2, 17, 5, 5, 35), (32, 100_000, 1, 1, 3),
                                           (4, 1280, 7, 7, 3), (1, 24, 56, 56, 1)])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_single_launch_grid_covers_every_channel_and_sample(n, c, h, w, k, dtype):
    launch = single_launch_params(n, c, h, w, k, dtype, "wrap")
    per_block, tiles, lanes = launch.channels_per_block, launch.channel_tiles, launch.lanes_per_plane
    threads = launch.block[0]
    assert 1 <= per_block <= c and (tiles - 1) * per_block < c <= tiles * per_block
    assert launch.grid == (tiles, n, 1)
    assert launch.block == (threads, 1, 1) and 32 <= threads <= BLOCK_THREADS and threads & (threads - 1) == 0
    assert 1 <= lanes <= threads and lanes & (lanes - 1) == 0  # whole plane groups
    assert launch.shared_mem_bytes == (k + min(per_block + k - 1, c)) * 4 <= MAX_SHARED_BYTES - 32
    assert launch.extra_args == (c, h * w, k, PAD_MODE_CODES["wrap"], per_block, lanes)
    assert launch.kernel_name == SINGLE_LAUNCH_KERNELS[dtype]
    # a dynamic batch only sets the grid's y
    other = single_launch_params(n + 5, c, h, w, k, dtype, "wrap")
    assert other.grid == (tiles, n + 5, 1) and (other.block, other.shared_mem_bytes, other.extra_args) == (
        launch.block, launch.shared_mem_bytes, launch.extra_args)


@pytest.mark.parametrize("c, h, w, k, dtype, tile, lanes, threads", [
    (256, 56, 56, 3, "float16", 2, 64, 256),   # 392 vectors a plane: 64 lanes of 6-7, windows of 4 planes
    (2048, 7, 7, 7, "float16", 10, 16, 256),   # 49 halves a plane, no whole packs: 16 lanes of 3-4 elements
    (320, 7, 7, 3, "float32", 2, 16, 64),      # windows of 4 planes, tiles of 2 channels: 160 blocks a sample
    (16, 112, 112, 1, "float32", 1, 256, 256),  # 3136 vectors: the largest group, 12-13 vectors a lane
    (64, 14, 14, 1, "float16", 1, 32, 32),     # 392 bytes a plane: 49 8-byte packs; a warp a block, so 32 lanes
])
def test_single_launch_plan_of_zoo_layers(c, h, w, k, dtype, tile, lanes, threads):
    """The plan (ecaKernel.cu's planSingleLaunch, mirrored by plan_single_launch) on ResNet-50 and MobileNetV2
    layers: tiles of at least k - 1 channels, lanes for about 16 elements each, a block at most 256 threads."""
    assert plan_single_launch(c, h * w, k, dtype) == (tile, lanes, threads)


def test_single_launch_accepts_torch_and_numpy_dtypes():
    assert single_launch_params(1, 8, 4, 4, 3, torch.float16).kernel_name == "eca_single_launch_f16"
    assert single_launch_params(1, 8, 4, 4, 3, torch.bfloat16).kernel_name == "eca_single_launch_bf16"
    assert single_launch_params(1, 8, 4, 4, 3, np.float32).kernel_name == "eca_single_launch_f32"


@pytest.mark.parametrize("args, error", [
    ((1, 8, 4, 4, 4), ValueError), ((0, 8, 4, 4, 3), ValueError), ((1, 8, 4, 4, 3, "int8"), ValueError),
    ((1, 8, 4, 4, 3, "float32", "reflect"), ValueError), ((1, 30_000, 1, 1, 30_001), EcaDeployError),
    ((65_536, 8, 4, 4, 3), EcaDeployError),
])
def test_single_launch_rejects_what_it_cannot_run(args, error):
    with pytest.raises(error):
        single_launch_params(*args)


# --- the float64 reference against PyTorch and ONNX Runtime ----------------------------------------------------

class CircularEca(nn.Module):
    """ECA with circular padding that wraps as often as needed (numpy.pad mode="wrap"), even for k > C."""

    def __init__(self, taps: torch.Tensor) -> None:
        super().__init__()
        self.taps = taps.reshape(1, 1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, pad = x.shape[1], (self.taps.shape[-1] - 1) // 2
        pooled = x.mean((2, 3))[:, None, :]
        padded = pooled[..., torch.arange(-pad, c + pad) % c]
        gate = torch.sigmoid(F.conv1d(padded, self.taps))
        return x * gate.reshape(x.shape[0], c, 1, 1)


def _input(n: int, c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, c, h, w)) * 2 + 0.5


@pytest.mark.parametrize("n, c, h, w, k", REFERENCE_SHAPES)
def test_reference_matches_the_authors_layer_with_zero_padding(n, c, h, w, k):
    torch.manual_seed(k)
    layer = EcaLayer(c, k).double()
    x = _input(n, c, h, w)
    expected = layer(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(eca_reference(x, layer.conv.weight.detach().numpy(), "constant"), expected,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n, c, h, w, k", REFERENCE_SHAPES)
def test_reference_matches_circular_padding_even_past_c(n, c, h, w, k):
    taps = torch.from_numpy(np.random.default_rng(k).standard_normal(k))
    x = _input(n, c, h, w)
    expected = CircularEca(taps)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(eca_reference(x, taps.numpy(), "wrap"), expected, rtol=1e-12, atol=1e-12)
    if k <= c:  # timm's CecaModule pads with F.pad, which cannot wrap more than once
        ceca = CecaModule(k).double()
        ceca.conv.weight.data = taps.reshape(1, 1, k).clone()
        np.testing.assert_allclose(ceca(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def _fused_model(c: int, taps: np.ndarray, pad_mode: str) -> onnx.ModelProto:
    """One EcaAttention node with its model-local function: what ONNX Runtime runs for a fused block."""
    schema = eca_schema()
    node = helper.make_node(schema.name, list(schema.inputs), list(schema.outputs), domain=schema.domain,
                            **eca_node_attributes(taps.size, pad_mode))
    x, weight = schema.inputs
    dims = ["n", c, "h", "w"]
    graph = helper.make_graph([node], "eca", [helper.make_tensor_value_info(x, TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info(schema.outputs[0], TensorProto.FLOAT, dims)],
                              [numpy_helper.from_array(taps.reshape(1, 1, -1).astype(np.float32), weight)])
    model = helper.make_model(graph, functions=[make_eca_function(WRAP_PAD_MIN_OPSET)], opset_imports=[
        helper.make_opsetid("", WRAP_PAD_MIN_OPSET), helper.make_opsetid(schema.domain, 1)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("pad_mode", ["constant", "wrap"])
@pytest.mark.parametrize("n, c, h, w, k", REFERENCE_SHAPES)
def test_reference_matches_onnx_runtime_on_the_fused_node(n, c, h, w, k, pad_mode):
    taps = np.random.default_rng(k).standard_normal(k).astype(np.float32)
    x = _input(n, c, h, w).astype(np.float32)
    session = ort.InferenceSession(_fused_model(c, taps, pad_mode).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {eca_schema().inputs[0]: x})
    np.testing.assert_allclose(y, eca_reference(x, taps, pad_mode), rtol=1e-5, atol=1e-5)


# --- PyTorch integration without a GPU --------------------------------------------------------------------------

def test_cuda_eca_reads_kernel_and_padding_from_eca_modules():
    authors = CudaEca.from_module(EcaLayer(64, 5))
    assert authors.weight.shape == (5,) and authors.pad_mode == "constant"
    assert CudaEca.from_module(CecaModule(3)).pad_mode == "wrap"
    circular = EcaLayer(8, 3)
    circular.conv.padding_mode = "circular"
    assert CudaEca.from_module(circular).pad_mode == "wrap"
    with pytest.raises(ValueError, match="Conv1d"):
        CudaEca.from_module(nn.Sequential(nn.ReLU()))


def test_replace_eca_modules_swaps_every_layer_in_place():
    model = create_model("eca_mobilenet_v2")
    sizes = [m.k_size for m in model.modules() if isinstance(m, EcaLayer)]
    assert replace_eca_modules(model) == get_architecture("eca_mobilenet_v2").num_eca_layers == len(sizes)
    assert not any(isinstance(m, EcaLayer) for m in model.modules())
    assert [m.weight.numel() for m in model.modules() if isinstance(m, CudaEca)] == sizes
    with pytest.raises(ValueError, match="from_module"):
        replace_eca_modules(EcaLayer(8))


def test_eca_forward_wants_a_cuda_tensor():
    with pytest.raises(ValueError, match="CUDA"):
        eca_forward(torch.zeros(1, 4, 2, 2), torch.ones(3))


# --- on a GPU: the kernel against the reference -----------------------------------------------------------------

LAYOUTS = ["nchw", "channels_last", "hwc8"]


def _poisoned(like: torch.Tensor, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A NaN-filled tensor laid out as ``layout`` on the GPU, and the buffer that holds it."""
    n, c, h, w = like.shape
    if layout == "hwc8":
        buffer = torch.full((n, h, w, (c + 7) // 8 * 8), float("nan"), dtype=like.dtype, device="cuda")
        return buffer[..., :c].permute(0, 3, 1, 2), buffer
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    tensor = torch.full_like(like, float("nan"), device="cuda", memory_format=memory_format)
    return tensor, tensor


def _gpu_case(shape: tuple[int, ...], dtype: torch.dtype, layout: str, seed: int = 0):
    """CPU input and taps, and the input on the GPU in ``layout`` (HWC8 padding channels poisoned)."""
    n, c, h, w, k = shape
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, h, w, generator=generator) * 2 + 0.5).to(dtype)
    taps = torch.randn(k, generator=generator).to(dtype)
    x_gpu, _ = _poisoned(x, layout)
    x_gpu.copy_(x)
    return x, taps, x_gpu


def _assert_matches_reference(y: torch.Tensor, x: torch.Tensor, taps: torch.Tensor, pad_mode: str) -> None:
    expected = eca_reference(x.double().numpy(), taps.double().numpy(), pad_mode)
    got = y.float().cpu().double().numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=GPU_TOLERANCE[y.dtype], atol=GPU_TOLERANCE[y.dtype])


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("pad_mode", ["constant", "wrap"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
def test_gpu_eca_forward_matches_the_reference(shape, dtype, layout, pad_mode):
    x, taps, x_gpu = _gpu_case(shape, dtype, layout)
    out, buffer = _poisoned(x, layout)
    y = eca_forward(x_gpu, taps.cuda(), pad_mode, out=out)
    assert y is out
    _assert_matches_reference(y, x, taps, pad_mode)
    assert not buffer.isnan().any(), "every element of the output buffer must be written"
    padding = buffer[..., x.shape[1]:] if layout == "hwc8" else buffer[:0]
    assert torch.equal(padding, torch.zeros_like(padding)), "HWC8 padding channels must be written as zeros"
    again = eca_forward(x_gpu, taps.cuda(), pad_mode)
    assert again.stride() == y.stride() and torch.equal(again, y), "the kernel must be deterministic"


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("pad_mode", ["constant", "wrap"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
def test_gpu_single_launch_kernel_matches_the_reference(shape, dtype, pad_mode):
    x, taps, x_gpu = _gpu_case(shape, dtype, "nchw")
    _assert_matches_reference(eca_forward_single_launch(x_gpu, taps.cuda(), pad_mode), x, taps, pad_mode)


@pytest.mark.gpu
@needs_gpu
def test_gpu_replaced_model_matches_pytorch():
    model = create_demo_model("eca_resnet18").cuda().eval()
    x = torch.randn(2, 3, 112, 112, device="cuda")
    with torch.no_grad():
        expected = model(x)
        assert replace_eca_modules(model) == get_architecture("eca_resnet18").num_eca_layers
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
