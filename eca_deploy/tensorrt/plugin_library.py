"""Find, load and verify the EcaAttention plugin library in a TensorRT (or TensorRT-RTX) process.

Two libraries come out of ``plugins/eca`` (see its CMakeLists.txt):

- ``libeca_plugin.so`` exports ``getCreators``/``setLoggerFinder`` for
  ``IPluginRegistry::loadLibrary`` (``load_library`` in Python, ``trtexec --dynamicPlugins``);
- ``libeca_plugin_autoreg.so`` registers its creator when it is loaded (Triton, DeepStream,
  ``LD_PRELOAD``) and exports no entry point.

They are told apart by their exported symbols, read from the ELF file without loading it, and
loading is verified the only way that counts: the ``EcaAttention`` creator is in the registry.

TensorRT-RTX's parser ``dlopen()``s ``libtensorrt_rtx.so`` when it imports a plugin node; its
wheel ships only ``libtensorrt_rtx.so.1``, and the process aborts ("terminate called without an
active exception"). ``ensure_rtx_loader_name`` makes the name resolvable before any plugin is used.
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

from eca_deploy.errors import EcaDeployError, PluginNotUsedError, first_line
from eca_deploy.resources import cache_root
from eca_deploy.schema import eca_schema

PLUGIN_ENV = "ECA_PLUGIN_LIBRARY"
LOADER_ENTRY_POINT = "getCreators"  # what IPluginRegistry::loadLibrary calls
AUTOREG_LIBRARY = "libeca_plugin_autoreg.so"  # the self-registering build (plugins/eca/CMakeLists.txt)
RTX_LOADER_NAME = "libtensorrt_rtx.so"
BUILD_HINT = "build it with `cmake -S plugins/eca -B build/eca && cmake --build build/eca` (plugins/eca/README.md)"

_ELF_MAGIC = b"\x7fELF"
_SHT_DYNSYM = 11
_SHN_UNDEF = 0


def resolve_plugin_library(plugin_library: str | Path | None) -> Path | None:
    """The plugin library given, else ``$ECA_PLUGIN_LIBRARY``, else None; a missing file is a user error."""
    from_env = plugin_library is None and bool(os.environ.get(PLUGIN_ENV))
    value = os.environ[PLUGIN_ENV] if from_env else plugin_library
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        source = f" (from ${PLUGIN_ENV})" if from_env else ""
        raise EcaDeployError(f"plugin library {path}{source} does not exist; {BUILD_HINT}")
    return path


def exported_symbols(path: Path) -> set[str]:
    """Names of the functions and objects a 64-bit little-endian ELF shared library defines in its
    dynamic symbol table (x86-64 and aarch64 builds)."""
    data = Path(path).read_bytes()
    if data[:4] != _ELF_MAGIC or data[4] != 2 or data[5] != 1:
        raise EcaDeployError(f"{path} is not a 64-bit little-endian ELF shared library (a plugin built by "
                             f"plugins/eca/CMakeLists.txt)")
    section_offset, = struct.unpack_from("<Q", data, 0x28)
    entry_size, count = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, section_offset + i * entry_size) for i in range(count)]
    names: set[str] = set()
    for _, kind, _, _, offset, size, link, _, _, symbol_size in sections:
        if kind != _SHT_DYNSYM:
            continue
        strings_offset = sections[link][4]
        for start in range(offset, offset + size, symbol_size):
            name_offset, _, _, section_index = struct.unpack_from("<IBBH", data, start)
            if name_offset and section_index != _SHN_UNDEF:
                end = data.index(b"\0", strings_offset + name_offset)
                names.add(data[strings_offset + name_offset:end].decode())
    return names


def is_self_registering(path: Path) -> bool:
    """Whether ``path`` registers its creator when loaded (``libeca_plugin_autoreg.so``) rather than
    handing its creators to ``IPluginRegistry::loadLibrary`` (``libeca_plugin.so``)."""
    return LOADER_ENTRY_POINT not in exported_symbols(path)


_LOADED: dict[tuple[str, Path], object] = {}  # (TensorRT module, library) -> handle, for the process's lifetime


def _registered(registry: object) -> bool:
    """Whether the EcaAttention creator of the schema is in ``registry`` (asked without TensorRT logging an
    error for a missing one)."""
    schema = eca_schema()
    wanted = (schema.name, schema.version, schema.namespace)
    return any((creator.name, creator.plugin_version, creator.plugin_namespace) == wanted
               for creator in registry.all_creators)


def load_plugin_library(module: object, registry: object, path: Path, reason: object = None) -> object:
    """Load ``path`` into ``registry`` (of TensorRT ``module``) once per process and check that the
    EcaAttention creator is registered; returns the handle. ``reason()`` may add TensorRT's last error."""
    if module.__name__ == "tensorrt_rtx":
        ensure_rtx_loader_name()
    key = (module.__name__, Path(path).resolve())
    if key in _LOADED:
        return _LOADED[key]
    because = (lambda: "") if reason is None else reason
    schema = eca_schema()
    if is_self_registering(path):
        try:  # its static constructor registers the creator with the process's TensorRT
            handle = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as error:
            raise EcaDeployError(f"cannot load plugin library {path}: {first_line(error)}") from error
    else:
        if _registered(registry):
            raise EcaDeployError(f"another library already registered the {schema.name} creator in this process, so "
                                 f"{path} cannot: load one EcaAttention plugin library per process")
        handle = registry.load_library(str(path))
        if handle is None:
            raise EcaDeployError(f"{module.__name__} could not load plugin library {path}{because()}")
    if not _registered(registry):  # the plugin layers asked for cannot be had: exit code 1, as a build without them
        raise PluginNotUsedError(f"{path} loaded but registered no {schema.name} version {schema.version} creator in "
                                 f"namespace {schema.namespace!r}{because()}; rebuild it from plugins/eca")
    _LOADED[key] = handle
    return handle


def _loaded_library(prefix: str) -> Path | None:
    """The file of a shared library whose name starts with ``prefix`` mapped into this process (Linux)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = Path(line.split(maxsplit=5)[-1]) if line.count(" ") >= 5 else None
        if path is not None and path.name.startswith(prefix):
            return path
    return None


def _startup_library_path() -> list[Path]:
    """LD_LIBRARY_PATH as the dynamic loader read it when this process started."""
    try:
        environ = Path("/proc/self/environ").read_bytes().split(b"\0")
    except OSError:
        environ = [f"LD_LIBRARY_PATH={os.environ.get('LD_LIBRARY_PATH', '')}".encode()]
    for entry in environ:
        if entry.startswith(b"LD_LIBRARY_PATH="):
            return [Path(part) for part in entry.split(b"=", 1)[1].decode().split(":") if part]
    return []


def _link(target: Path, link: Path) -> None:
    """Create the symlink ``link`` -> ``target`` atomically (a concurrent process may do the same)."""
    temporary = link.with_name(f".{link.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary)
    os.replace(temporary, link)


def ensure_rtx_loader_name(fallback_dir: Path | None = None) -> None:
    """Make ``libtensorrt_rtx.so`` resolvable for the ``dlopen()`` TensorRT-RTX does when it imports a
    plugin node: a symlink to the loaded ``libtensorrt_rtx.so.N`` beside it (the folder the library's
    RPATH ``$ORIGIN`` searches). Where that folder is read-only, the link is made in ``fallback_dir``
    and the error says how to start the process so that the loader finds it."""
    library = _loaded_library(RTX_LOADER_NAME + ".")
    if library is None:
        return  # not a Linux process with TensorRT-RTX's library mapped: nothing the loader can miss
    if (library.parent / RTX_LOADER_NAME).exists() or any(
            (folder / RTX_LOADER_NAME).exists() for folder in _startup_library_path()):
        return
    try:
        _link(Path(library.name), library.parent / RTX_LOADER_NAME)
        return
    except OSError as error:
        denied = first_line(error)
    folder = fallback_dir or cache_root() / "rtx-loader"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _link(library, folder / RTX_LOADER_NAME)
    except OSError as error:
        raise EcaDeployError(f"TensorRT-RTX needs {RTX_LOADER_NAME} beside {library} to use plugins, and neither "
                             f"that folder ({denied}) nor {folder} ({first_line(error)}) is writable: run "
                             f"`ln -s {library.name} {library.parent / RTX_LOADER_NAME}` once as its owner") from error
    raise EcaDeployError(f"TensorRT-RTX needs {RTX_LOADER_NAME} to use plugins and its folder {library.parent} is "
                         f"read-only ({denied}): start the process with LD_LIBRARY_PATH={folder} (a link is "
                         f"there), or run `ln -s {library.name} {library.parent / RTX_LOADER_NAME}` once as its owner")
