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
from kernel_emu.cases import Case, single_launch


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


def _single(case: Case, block: int | None = None) -> Case:
    return replace(case, entry="single", single=single_launch(case, block=block))


NCHW = Case(2, 17, 5, 5, 3)                                  # planes of 25: a scalar tail after the vectors
CHANNELS_LAST = Case(1, 96, 3, 3, 5, layout="nhwc")          # three channel tiles, each with a halo
TWO_CHUNKS = Case(2, 256, 5, 5, 3)                           # gate chunks that straddle 165 planes
PLANE_GROUPS = _single(Case(1, 64, 28, 28, 3))               # groups of 64 threads, two reductions per block
MISALIGNED_Y = Case(2, 17, 5, 5, 3, y_misalign=1)            # x aligned, y not: the gate must go scalar
WIDE_WINDOW = Case(1, 12257, 1, 1, 12257, layout="nhwc")     # a channel window of 48 KiB + 4 bytes with its gates

MUTATIONS = (
    Mutation("removed __syncthreads before scratch is reused", "ecaKernels.cuh",
             "    __syncthreads(); // the previous call's readers are done with scratch\n", "",
             (PLANE_GROUPS,), frozenset({"shared-race"})),
    Mutation("removed __syncthreads between gates and scaling", "ecaKernels.cuh",
             "                splits, static_cast<float>(hw));\n        }\n        __syncthreads();\n",
             "                splits, static_cast<float>(hw));\n        }\n",
             (NCHW,), frozenset({"shared-race", "uninitialised-read"})),
    Mutation("off-by-one in the channel window", "ecaKernels.cuh",
             "    int const span = tileChannels + kernelSize - 1;", "    int const span = tileChannels + kernelSize - 2;",
             (CHANNELS_LAST,), frozenset({"uninitialised-read", "wrong-result"})),
    Mutation("tail read past the end of a plane", "ecaKernels.cuh",
             "    if (tail + lane < len)", "    if (tail + lane <= len)",
             (NCHW,), frozenset({"out-of-bounds", "wrong-result"})),
    Mutation("misaligned vector store", "ecaKernels.cuh",
             "    if (head != minOf(len, elementsToAlignment(y)))", "    if (head != minOf(len, elementsToAlignment(x)))",
             (MISALIGNED_Y,), frozenset({"misaligned"})),
    Mutation("read of uninitialised shared memory", "ecaKernels.cuh",
             "            for (int i = tid; i < window.count; i += threads)",
             "            for (int i = tid; i < window.count - 1; i += threads)",
             (CHANNELS_LAST,), frozenset({"uninitialised-read"})),
    Mutation("single launch accepting any multiple of 32 threads (issue 15)", "ecaKernel.cu",
             "isPowerOfTwo(config.blockX)", "config.blockX % kernels::kWarpSize == 0",
             (_single(Case(1, 64, 28, 28, 3), block=96),), frozenset({"uninitialised-read"})),
    Mutation("a thread leaving before a barrier", "ecaKernels.cuh",
             "    extern __shared__ float gates[];\n",
             "    extern __shared__ float gates[];\n    if (threadIdx.x == blockDim.x - 1)\n    {\n        return;\n    }\n",
             (NCHW,), frozenset({"barrier-divergence"})),
    Mutation("a lane skipping a warp shuffle", "ecaKernels.cuh",
             "        v += __shfl_xor_sync(0xffffffffu, v, offset);",
             "        v += threadIdx.x % kWarpSize == 31 ? 0.f : __shfl_xor_sync(0xffffffffu, v, offset);",
             (NCHW,), frozenset({"shuffle"})),
    Mutation("dynamic shared memory one plane short", "ecaKernel.cu",
             "minOf((chunk - 1) / hw + 2, planes)", "minOf((chunk - 1) / hw + 1, planes)",
             (TWO_CHUNKS,), frozenset({"out-of-bounds"})),
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
