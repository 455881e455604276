"""Broken copies of the kernel source (and of the plugin) that the emulator must catch.

Each Mutation is one exact textual edit of one file of plugins/eca, the cases that reach the edited code,
and the checks allowed to catch it (runner.Outcome.check: an emulator check, a sanitizer finding or a wrong
result). ``apply`` copies the kernel sources to a folder and makes the edit there; it raises if the file no
longer holds the text exactly once, so a change of the kernel that moves the text fails the test loudly
instead of testing nothing.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from eca_deploy.resources import plugin_dir
from kernel_emu.build import KERNEL_SOURCES, PLUGIN_SOURCES, plugin_headers
from kernel_emu.cases import CUDA_ERROR_INVALID_VALUE, Case, single_launch


class MutationError(ValueError):
    """The text a mutation edits is not in its file exactly once."""


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` by ``new`` in ``file``; ``cases`` must then fail, by one of ``caught_by``."""

    name: str
    file: str
    old: str
    new: str
    cases: tuple[Case, ...]
    caught_by: frozenset[str]

    def apply(self, folder: Path, source_dir: Path | None = None) -> Path:
        """Copy the sources of ``source_dir`` (default plugins/eca) the builds read into ``folder``, and edit
        the copy."""
        source_dir = source_dir or plugin_dir()
        folder.mkdir(parents=True, exist_ok=True)
        for path in [*(source_dir / name for name in (*KERNEL_SOURCES, *PLUGIN_SOURCES)), *plugin_headers(source_dir)]:
            shutil.copy2(path, folder / path.name)
        target = folder / self.file
        text = target.read_text()
        if text.count(self.old) != 1:
            raise MutationError(f"mutation '{self.name}': {self.file} holds its text {text.count(self.old)} times, "
                                f"not once:\n{self.old}")
        target.write_text(text.replace(self.old, self.new))
        return folder


def _single(case: Case, block: int | None = None, lanes: int | None = None) -> Case:
    return replace(case, entry="single", single=single_launch(case, block=block, lanes=lanes))


#: ecaForward takes two launches where a block's 256 plane groups cannot hold the channel window (k > 2 * 256):
#: planes of 25 elements, so scalar heads and tails; gate chunks that straddle 165 planes.
TWO_LAUNCHES = Case(2, 300, 5, 5, 601)
MISALIGNED_Y = replace(TWO_LAUNCHES, y_misalign=1)            # x aligned, y not: the gate must go scalar
CHANNELS_LAST = Case(1, 96, 3, 3, 5, "wrap", layout="nhwc")   # two launches (wrap): three channel tiles with halos
PLANE_GROUPS = _single(Case(1, 64, 28, 28, 3), block=64, lanes=64)  # groups of 64 lanes, four reductions per block
SUB_WARP_GROUPS = _single(Case(2, 64, 7, 7, 3))               # lane groups within a warp, one shuffle tree each
SEVERAL_PASSES = _single(Case(2, 17, 5, 5, 9), block=32, lanes=8)  # a window of 4 groups read in several passes
WIDE_WINDOW = Case(1, 12257, 1, 1, 12257, layout="nhwc")     # a channel window of 48 KiB + 4 bytes with its gates
CHANNELS_LAST_SINGLE = Case(1, 260, 3, 3, 3, dtype="fp16", layout="hwc8")  # one launch of 17 blocks; 4 padding channels
ODD_LANES = replace(SUB_WARP_GROUPS, single=replace(SUB_WARP_GROUPS.single, lanes=24),
                    expect_status=CUDA_ERROR_INVALID_VALUE)

MUTATIONS = (
    Mutation("removed __syncthreads before scratch is reused", "ecaKernels.cuh",
             "    __syncthreads(); // the previous call's readers are done with scratch\n", "",
             (PLANE_GROUPS,), frozenset({"shared-race"})),
    Mutation("removed __syncthreads between gates and scaling", "ecaKernels.cuh",
             "                splits, static_cast<float>(hw));\n        }\n        __syncthreads();\n",
             "                splits, static_cast<float>(hw));\n        }\n",
             (TWO_LAUNCHES,), frozenset({"shared-race", "uninitialised-read"})),
    Mutation("removed __syncthreads between the single launch's means and gates", "ecaKernels.cuh",
             "    __syncthreads();\n    // The window is [c0 - halo", "    // The window is [c0 - halo",
             (SUB_WARP_GROUPS,), frozenset({"shared-race", "uninitialised-read"})),
    Mutation("sub-warp reduction pairing lanes of different planes", "ecaKernels.cuh",
             "1 << (laneBits - 1 - bit)", "1 << (laneBits - bit)",
             (SUB_WARP_GROUPS,), frozenset({"wrong-result"})),
    Mutation("registers of a window read in several passes taken for the tile's planes", "ecaKernels.cuh",
             "bool const held = window.count <= groups;", "bool const held = true;",
             (SEVERAL_PASSES,), frozenset({"wrong-result"})),
    Mutation("removed __syncthreads between channels-last partial sums and means", "ecaKernels.cuh",
             "    __syncthreads();\n    float const inverseHw = 1.f / static_cast<float>(hw);\n    for (int i = threadIdx.x",
             "    float const inverseHw = 1.f / static_cast<float>(hw);\n    for (int i = threadIdx.x",
             (CHANNELS_LAST_SINGLE,), frozenset({"shared-race", "uninitialised-read"})),
    Mutation("removed __syncthreads between channels-last means and gates", "ecaKernels.cuh",
             "    __syncthreads();\n    if (group < haloVectors", "    if (group < haloVectors",
             (CHANNELS_LAST_SINGLE,), frozenset({"shared-race", "uninitialised-read"})),
    Mutation("HWC8 padding channels scaled instead of zeroed", "ecaKernels.cuh",
             "first + e < channels ? toFloat(pack.v[e]) * gate[e] : 0.f", "toFloat(pack.v[e]) * gate[e]",
             (CHANNELS_LAST_SINGLE,), frozenset({"padding", "unwritten-output", "wrong-result"})),
    Mutation("off-by-one in the channel window", "ecaKernels.cuh",
             "    int const span = tileChannels + kernelSize - 1;", "    int const span = tileChannels + kernelSize - 2;",
             (CHANNELS_LAST,), frozenset({"uninitialised-read", "wrong-result"})),
    Mutation("tail read past the end of a plane", "ecaKernels.cuh",
             "    if (tail + lane < len)", "    if (tail + lane <= len)",
             (TWO_LAUNCHES,), frozenset({"out-of-bounds", "wrong-result"})),
    Mutation("misaligned vector store", "ecaKernels.cuh",
             "    if (head != minOf<index_t>(len, elementsToAlignment(y)))",
             "    if (head != minOf<index_t>(len, elementsToAlignment(x)))",
             (MISALIGNED_Y,), frozenset({"misaligned"})),
    Mutation("read of uninitialised shared memory", "ecaKernels.cuh",
             "            for (int i = tid; i < window.count; i += threads)",
             "            for (int i = tid; i < window.count - 1; i += threads)",
             (CHANNELS_LAST,), frozenset({"uninitialised-read"})),
    Mutation("single launch accepting any multiple of 32 threads (issue 15)", "ecaKernel.cu",
             "isPowerOfTwo(config.blockX)", "config.blockX % kernels::kWarpSize == 0",
             (_single(Case(1, 64, 28, 28, 3), block=96),), frozenset({"uninitialised-read", "shared-race"})),
    Mutation("single launch accepting lanes per plane that are no power of two", "ecaKernel.cu",
             "isPowerOfTwo(config.lanesPerPlane) && ", "",
             (ODD_LANES,), frozenset({"status", "shared-race", "wrong-result"})),
    Mutation("split sums added past a channel's last one", "ecaKernels.cuh",
             "            parts[j] = first + j < splits ? channelSums[first + j] : 0.f;\n        }\n#pragma unroll\n"
             "        for (int j = 0; j < kSplitsInFlight; ++j)\n        {\n            if (first + j < splits)\n"
             "            {\n                sum += parts[j];\n            }\n",
             "            parts[j] = channelSums[first + j];\n        }\n#pragma unroll\n"
             "        for (int j = 0; j < kSplitsInFlight; ++j)\n        {\n            {\n"
             "                sum += parts[j];\n            }\n",
             (TWO_LAUNCHES, CHANNELS_LAST), frozenset({"wrong-result", "uninitialised-read", "out-of-bounds"})),
    Mutation("a thread leaving before a barrier", "ecaKernels.cuh",
             "    extern __shared__ float gates[];\n",
             "    extern __shared__ float gates[];\n    if (threadIdx.x == blockDim.x - 1)\n    {\n        return;\n    }\n",
             (TWO_LAUNCHES,), frozenset({"barrier-divergence"})),
    Mutation("a lane skipping a warp shuffle", "ecaKernels.cuh",
             "        v += __shfl_xor_sync(0xffffffffu, v, offset);",
             "        v += threadIdx.x % kWarpSize == 31 ? 0.f : __shfl_xor_sync(0xffffffffu, v, offset);",
             (TWO_LAUNCHES,), frozenset({"shuffle"})),
    Mutation("dynamic shared memory one plane short", "ecaKernel.cu",
             "minOf((chunk - 1) / hw + 2, planes)", "minOf((chunk - 1) / hw + 1, planes)",
             (TWO_LAUNCHES,), frozenset({"out-of-bounds"})),
    Mutation("a launch asking for more than 48 KiB without an opt-in", "ecaKernel.cu",
             "bool const windowed = (window + tileChannels) * static_cast<index_t>(sizeof(float)) "
             "<= kMaxDefaultSharedBytes;", "bool const windowed = true;",
             (WIDE_WINDOW,), frozenset({"status"})),
)

#: Through EcaPlugin::enqueue (needs TensorRT's headers): HWC8 with C not a multiple of 8.
PLUGIN_MUTATION = Mutation(
    "plugin passing C as the HWC8 pixel stride", "ecaPlugin.cpp",
    "supported->layout == Layout::kNCHW ? 0 : static_cast<int32_t>(pixelStride)",
    "supported->layout == Layout::kNCHW ? 0 : params.c",
    (Case(2, 17, 5, 5, 3, dtype="fp16", layout="hwc8", entry="plugin", profile_max=(2, 5, 5)),),
    frozenset({"wrong-result", "padding", "unwritten-output"}))
