"""Builds of the CPU emulator: the driver, the kernel library for it and the plugin bridge, cached.

Each build lives in ``$XDG_CACHE_HOME/eca_deploy/kernel_emu/<what>-<variant>-<hash>`` where the hash covers
its sources, flags, g++'s version and this file, so an edit rebuilds and nothing else does.

The kernel library is ``plugins/eca/ecaKernel.cu`` + ``ecaCApi.cu`` (what nvcc builds into
libeca_kernel.so) compiled by g++ as C++ with ``include/cuda_runtime.h`` first, after one mechanical
rewrite g++ needs, ``k<<<grid, block, shared, stream>>>(args)`` -> ``::emu::launch(k, grid, block, shared,
stream)(args)`` (``rewrite_launches``). Its ``__shared__`` variables are thread-locals with the
global-dynamic TLS model; ``objcopy`` renames the ``__tls_get_addr`` calls to ``emuSharedAddress`` so the
runtime places them, every ``extern __shared__`` name gets a TLS definition here (all of them mean the
launch's dynamic shared memory), and the library's TLS symbols become ``<library>.layout`` for the runtime.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from eca_deploy.resources import cache_root, plugin_dir

HERE = Path(__file__).resolve().parent
INCLUDE_DIR = HERE / "include"
SOURCE_DIR = HERE / "src"
RUNTIME_SOURCES = ("memory.cpp", "scheduler.cpp", "launch.cpp", "driver.cpp")
RUNTIME_HEADERS = ("runtime.h", "plugin_case.h")
FAKE_CUDA_HEADERS = ("cuda_runtime.h", "cuda_runtime_api.h", "emu_device.h", "emu_bits.h", "cuda_fp16.h", "cuda_bf16.h")
KERNEL_SOURCES = ("ecaKernel.cu", "ecaCApi.cu")  # libeca_kernel.so's (eca_deploy/cuda_kernel.py)
PLUGIN_SOURCES = ("ecaPlugin.cpp",)
HEADER_SUFFIXES = (".h", ".cuh")
BRIDGE_SOURCE = "plugin_bridge.cpp"

COMMON_FLAGS = ("-std=c++17", "-O2", "-g1", "-Wall", "-Wextra")
#: The kernel library: .cu files are C++ after the fake cuda_runtime.h (as nvcc includes the real one);
#: extern thread_locals need no init wrappers; #pragma unroll means nothing to g++.
KERNEL_FLAGS = ("-x", "c++", "-include", "cuda_runtime.h", "-fPIC", "-fno-extern-tls-init", "-Wno-unknown-pragmas")
#: -fsanitize=kernel-address with out-of-line checks: every kept load and store calls a hook in src/memory.cpp.
ACCESS_HOOKS = ("-fsanitize=kernel-address", "--param=asan-instrumentation-with-call-threshold=0",
                "--param=asan-stack=0", "--param=asan-globals=0")
#: UndefinedBehaviorSanitizer's alignment check: every access through a Pack<T, V> (alignas 16 for vectors).
ALIGNMENT = ("-fsanitize=alignment", "-fno-sanitize-recover=alignment")
RUNTIME_TLS_SYMBOLS = frozenset({"_ZN3emu8builtinsE"})  # thread-locals the runtime defines (emu::builtins)



@dataclass(frozen=True)
class Variant:
    """How the kernel library and the runtime are instrumented, and how the runtime runs threads."""

    name: str
    kernel_flags: tuple[str, ...]
    runtime_flags: tuple[str, ...]
    mode: str  # "fibers" or "threads"


#: Every check of the emulator (bounds, initialisation, shared-memory races, barriers, shuffles) plus alignment.
CHECKED = Variant("checked", ACCESS_HOOKS + ALIGNMENT, ALIGNMENT, "fibers")
#: AddressSanitizer and UndefinedBehaviorSanitizer over kernels, host code, plugin and runtime.
ASAN = Variant("asan", ("-fsanitize=address,undefined", "-fno-sanitize-recover=all"),
               ("-fsanitize=address,undefined", "-fno-sanitize-recover=all"), "fibers")
#: ThreadSanitizer over the kernels, every CUDA thread an OS thread.
TSAN = Variant("tsan", ("-fsanitize=thread",) + ALIGNMENT, ("-fsanitize=thread",) + ALIGNMENT, "threads")
VARIANTS = {variant.name: variant for variant in (CHECKED, ASAN, TSAN)}


class BuildError(RuntimeError):
    """A compiler or binutils step failed; the message holds its command and output."""


@dataclass(frozen=True)
class KernelLibrary:
    """The kernel library built for the emulator and its shared-memory layout file."""

    path: Path
    layout: Path


@dataclass(frozen=True)
class Build:
    """Everything a driver run needs."""

    variant: Variant
    driver: Path
    kernels: KernelLibrary
    bridge: Path | None = None


def unavailable() -> str | None:
    """Why this machine cannot build and run the emulator, or None."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return f"the emulator's fibers switch x86-64 Linux stacks; this is {platform.system()} {platform.machine()}"
    missing = [tool for tool in ("g++", "objcopy", "readelf") if shutil.which(tool) is None]
    return f"the emulator needs {', '.join(missing)} on PATH" if missing else None


_LAUNCH = re.compile(r"^(?P<indent>[ \t]*)(?P<kernel>\S.*?)<<<(?P<config>.*?)>>>\(", re.MULTILINE)


def rewrite_launches(source: str) -> str:
    """``k<<<grid, block, shared, stream>>>(`` -> ``::emu::launch(k, grid, block, shared, stream)(``, for
    launches that start their statement. Raises ValueError if a ``<<<`` is left over."""
    rewritten, count = _LAUNCH.subn(lambda m: f"{m['indent']}::emu::launch({m['kernel']}, {m['config']})(", source)
    if count != source.count("<<<"):
        raise ValueError(f"rewrote {count} of {source.count('<<<')} kernel launches: a launch no longer starts "
                         "its statement on one line")
    return rewritten


def _run(command: Sequence[str | Path]) -> str:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(f"{' '.join(map(str, command))}\n{result.stdout}{result.stderr}")
    return result.stdout


@cache
def _compiler_version() -> str:
    return _run(["g++", "--version"])


def _digest(files: Iterable[Path], *extra: object) -> str:
    digest = hashlib.sha256()
    for path in [*files, Path(__file__)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(repr((extra, _compiler_version())).encode())
    return digest.hexdigest()[:16]


def _cached(name: str, digest: str, make: Callable[[Path], None]) -> Path:
    """The folder ``name-digest`` in the cache, made by ``make(folder)`` into a temporary folder first."""
    root = cache_root() / "kernel_emu"
    target = root / f"{name}-{digest}"
    if not target.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            make(staging)
            os.replace(staging, target)
        except OSError:
            if not target.is_dir():  # another process won the race if it is there
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def plugin_headers(source_dir: Path) -> list[Path]:
    """The headers of a plugin folder (any of them may be included by the sources)."""
    return sorted(path for path in source_dir.iterdir() if path.suffix in HEADER_SUFFIXES)


def _parallel(jobs: Iterable[Sequence[str | Path]]) -> None:
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_run, jobs))


def build_driver(variant: Variant) -> Path:
    """The emulator driver (runtime + case runner) for ``variant``."""
    files = [SOURCE_DIR / name for name in (*RUNTIME_SOURCES, *RUNTIME_HEADERS)]
    files += [INCLUDE_DIR / name for name in FAKE_CUDA_HEADERS]

    def make(folder: Path) -> None:
        flags = [*COMMON_FLAGS, *variant.runtime_flags, f"-I{INCLUDE_DIR}"]
        objects = [folder / f"{Path(name).stem}.o" for name in RUNTIME_SOURCES]
        _parallel(["g++", *flags, "-c", SOURCE_DIR / name, "-o", obj] for name, obj in zip(RUNTIME_SOURCES, objects))
        _run(["g++", *flags, "-rdynamic", *objects, "-o", folder / "emu_driver", "-ldl", "-pthread"])

    return _cached(f"driver-{variant.name}", _digest(files, variant), make) / "emu_driver"


def _tls_symbols(binary: Path, defined: bool) -> dict[str, tuple[int, int]]:
    """TLS symbols of an object or library: name -> (offset, size), defined or undefined ones."""
    symbols = {}
    for line in _run(["readelf", "--wide", "--syms", binary]).splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[3] == "TLS" and (fields[6] != "UND") == defined:
            symbols[fields[7]] = (int(fields[1], 16), int(fields[2]))
    return symbols


def _dynamic_shared_assembly(names: Iterable[str]) -> str:
    """TLS definitions of the ``extern __shared__`` names (16 bytes each; the runtime maps them all to the
    launch's dynamic shared memory)."""
    lines = ['\t.section .tbss,"awT",@nobits', "\t.p2align 4"]
    for name in sorted(names):
        lines += [f"\t.globl {name}", f"\t.type {name}, @object", f"\t.size {name}, 16", f"{name}:", "\t.zero 16"]
    return "\n".join([*lines, '\t.section .note.GNU-stack,"",@progbits', ""])


def build_kernel_library(variant: Variant, source_dir: Path | None = None) -> KernelLibrary:
    """The kernel library built from ``source_dir`` (default: plugins/eca) for ``variant``."""
    source_dir = source_dir or plugin_dir()
    files = [*(source_dir / name for name in KERNEL_SOURCES), *plugin_headers(source_dir)]
    files += [INCLUDE_DIR / name for name in FAKE_CUDA_HEADERS]

    def make(folder: Path) -> None:
        flags = [*COMMON_FLAGS, *variant.kernel_flags, *KERNEL_FLAGS, f"-I{INCLUDE_DIR}", f"-I{source_dir}"]
        sources = [folder / name for name in KERNEL_SOURCES]  # their #include "..." find source_dir through -I
        for name, source in zip(KERNEL_SOURCES, sources):
            source.write_text(rewrite_launches((source_dir / name).read_text()))
        objects = [folder / f"{Path(name).stem}.o" for name in KERNEL_SOURCES]
        _parallel(["g++", *flags, "-c", source, "-o", obj] for source, obj in zip(sources, objects))
        for obj in objects:
            if "R_X86_64_TLSLD" in _run(["readelf", "--wide", "--relocs", obj]):
                raise BuildError(f"{obj.name}: g++ used the local-dynamic TLS model for a __shared__ variable")
            _run(["objcopy", "--redefine-sym", "__tls_get_addr=emuSharedAddress", obj])
        dynamic = {name for obj in objects for name in _tls_symbols(obj, defined=False)} - RUNTIME_TLS_SYMBOLS
        assembly = folder / "dynamic_shared.s"
        assembly.write_text(_dynamic_shared_assembly(dynamic))
        library = folder / "libeca_kernel_emu.so"
        _run(["g++", *variant.kernel_flags, "-shared", *objects, assembly, "-o", library])
        layout = [f"{offset} {size} {'dynamic' if name in dynamic else 'static'} {name}"
                  for name, (offset, size) in sorted(_tls_symbols(library, defined=True).items())]
        library.with_suffix(".layout").write_text("\n".join(layout) + "\n")

    folder = _cached(f"kernels-{variant.name}", _digest(files, variant), make)
    return KernelLibrary(folder / "libeca_kernel_emu.so", folder / "libeca_kernel_emu.layout")


def build_plugin_bridge(variant: Variant, tensorrt_include: Path, source_dir: Path | None = None) -> Path:
    """``source_dir``'s (default plugins/eca) ecaPlugin.cpp and the bridge that drives it, built against
    ``tensorrt_include``."""
    source_dir = source_dir or plugin_dir()
    files = [*(source_dir / name for name in PLUGIN_SOURCES), *plugin_headers(source_dir)]
    files += [SOURCE_DIR / name for name in (BRIDGE_SOURCE, "plugin_case.h")]
    files += [INCLUDE_DIR / name for name in FAKE_CUDA_HEADERS]
    files += sorted(tensorrt_include.glob("*.h"))

    def make(folder: Path) -> None:
        _run(["g++", *COMMON_FLAGS, *variant.runtime_flags, "-fPIC", "-shared", "-isystem", tensorrt_include,
              f"-I{INCLUDE_DIR}", f"-I{source_dir}", *(source_dir / name for name in PLUGIN_SOURCES),
              SOURCE_DIR / BRIDGE_SOURCE, "-o", folder / "libeca_plugin_bridge.so"])

    folder = _cached(f"bridge-{variant.name}", _digest(files, variant, str(tensorrt_include)), make)
    return folder / "libeca_plugin_bridge.so"


def build(variant: Variant = CHECKED, source_dir: Path | None = None, tensorrt_include: Path | None = None) -> Build:
    """Driver, kernel library and (with ``tensorrt_include``) plugin bridge for ``variant``, from the sources
    in ``source_dir`` (default plugins/eca)."""
    bridge = build_plugin_bridge(variant, tensorrt_include, source_dir) if tensorrt_include else None
    return Build(variant, build_driver(variant), build_kernel_library(variant, source_dir), bridge)
