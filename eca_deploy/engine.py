"""Build TensorRT engines from plain or ECA-fused ONNX models.

Small steps in the spirit of Polygraphy's loaders, composed by :func:`build_engine`:
:func:`load_backend` (``tensorrt``, or ``tensorrt_rtx`` whose builder needs no GPU) ->
:func:`parse_onnx` (strongly typed network, plugin library or AOT plugin loaded first) ->
:func:`create_config` (dynamic-batch profile, precision route, timing cache, embedded plugin) ->
``build_serialized_network`` -> engine cache -> plain plan file.

Fused EcaAttention nodes use our plugin when a library is given (``--plugin`` or
``$ECA_PLUGIN_LIBRARY``) or the AOT route is chosen; otherwise TensorRT's parser inlines their
model-local function and the engine runs ECA with native layers ("fallback-function").
"""

from __future__ import annotations

import hashlib
import json
import importlib
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType

import onnx
from google.protobuf.message import DecodeError

from eca_deploy._io import staged_outputs, write_text_atomic
from eca_deploy.errors import EcaDeployError, first_line
from eca_deploy.passes.fused_node import count_fused_nodes
from eca_deploy.progress import Progress

BACKENDS = ("tensorrt", "tensorrt_rtx")
PRECISION_ROUTES = ("strongly-typed", "builder-flag")
PLUGIN_ENV = "ECA_PLUGIN_LIBRARY"
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "eca_deploy" / "engines"
_INSTALL_HINT = {"tensorrt": "pip install 'eca-deploy[trt]' (tensorrt)",
                 "tensorrt_rtx": "pip install 'eca-deploy[rtx]' (tensorrt-rtx-cu13)"}


@dataclass(frozen=True)
class BatchProfile:
    """min/opt/max batch of the optimisation profile."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise EcaDeployError(f"batch profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")


@dataclass(frozen=True)
class Backend:
    """The imported TensorRT flavour and what its API offers."""

    module: ModuleType
    name: str

    @property
    def version(self) -> str:
        return self.module.__version__

    @property
    def loads_plugin_libraries(self) -> bool:
        """TensorRT-RTX's parser cannot use plugins (see TRT_ONNX_FACTS.md): only full TensorRT."""
        return self.name == "tensorrt"

    @property
    def has_timing_cache(self) -> bool:
        """Timing-cache operations are no-ops in TensorRT-RTX."""
        return self.name == "tensorrt"

    @property
    def has_fp16_builder_flag(self) -> bool:
        """TensorRT 11 and TensorRT-RTX are strongly typed only: no FP16 builder flag."""
        return hasattr(self.module.BuilderFlag, "FP16")


def load_backend(name: str = "auto") -> Backend:
    """Import ``tensorrt`` (preferred) or ``tensorrt_rtx``; missing: one sentence naming what to install."""
    candidates = BACKENDS if name == "auto" else (name,)
    if name not in (*BACKENDS, "auto"):
        raise EcaDeployError(f"unknown TensorRT backend {name!r}; use auto, {' or '.join(BACKENDS)}")
    for candidate in candidates:
        try:
            return Backend(importlib.import_module(candidate), candidate)
        except ImportError:
            continue
    raise EcaDeployError("TensorRT is not installed: " + " or ".join(_INSTALL_HINT[c] for c in candidates))


@dataclass
class ParsedNetwork:
    """Builder, network and parser kept together (the network borrows from both)."""

    builder: object
    network: object
    parser: object
    strongly_typed: bool

    def layers(self) -> list[dict[str, str]]:
        """Name and type of every layer of the parsed network."""
        return [{"name": layer.name, "type": layer.type.name}
                for layer in (self.network.get_layer(i) for i in range(self.network.num_layers))]


@dataclass
class EngineResult:
    """What was built; ``to_dict`` keys are stable (written into JSON reports)."""

    path: Path
    backend: str
    backend_version: str
    precision: str
    precision_route: str
    profile: BatchProfile
    num_fused_nodes: int
    plugin: dict
    layers: list[dict[str, str]] = field(default_factory=list)
    cache: dict = field(default_factory=dict)
    build_seconds: float = 0.0
    size_bytes: int = 0

    @property
    def num_plugin_layers(self) -> int:
        return sum(layer["type"].startswith("PLUGIN") for layer in self.layers)

    def to_dict(self) -> dict:
        return {"path": self.path.name, "backend": self.backend, "backend_version": self.backend_version,
                "precision": self.precision, "precision_route": self.precision_route, "profile": asdict(self.profile),
                "num_fused_nodes": self.num_fused_nodes, "plugin": self.plugin,
                "num_plugin_layers": self.num_plugin_layers, "num_layers": len(self.layers), "layers": self.layers,
                "cache": self.cache, "build_seconds": round(self.build_seconds, 3), "size_bytes": self.size_bytes}


def load_graph(path: Path) -> onnx.ModelProto:
    """The ONNX model without its external weights (enough for types and node counts)."""
    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as error:
        raise EcaDeployError(f"{path} is not a readable ONNX model: {first_line(error)}") from error


def onnx_precision(model: onnx.ModelProto) -> str:
    """"fp16" when the model's weights are FP16 (an ``eca-export --fp16`` model), else "fp32"."""
    return "fp16" if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer) else "fp32"


def resolve_plugin_library(plugin_library: Path | None) -> Path | None:
    """The plugin library given, else ``$ECA_PLUGIN_LIBRARY``; a missing file is a user error."""
    library = plugin_library or (Path(os.environ[PLUGIN_ENV]) if os.environ.get(PLUGIN_ENV) else None)
    if library is not None and not Path(library).is_file():
        raise EcaDeployError(f"plugin library {library} does not exist: build plugins/eca (see plugins/eca/README.md)")
    return Path(library) if library else None


def make_logger(backend: Backend) -> object:
    """A TensorRT logger printing warnings and errors, minus the parser's notice that inlined copies of
    the fused nodes' function reuse node names (expected: the function body is inlined once per node)."""
    trt = backend.module

    class Logger(trt.ILogger):
        def log(self, severity: object, msg: str) -> None:
            if severity <= trt.ILogger.WARNING and "will not be queryable" not in msg:
                print(f"[{backend.name}] [{severity.name}] {msg}", file=sys.stderr)

    return Logger()


def parse_onnx(backend: Backend, path: Path, *, strongly_typed: bool = True, plugin_library: Path | None = None,
               aot: bool = False) -> ParsedNetwork:
    """Parse ``path`` into a network; loads the plugin library or registers the AOT plugin first."""
    trt = backend.module
    builder = trt.Builder(make_logger(backend))
    if plugin_library is not None:
        builder.get_plugin_registry().load_library(str(plugin_library))
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, builder.logger)
    if aot:
        from eca_deploy.qdp import mark_for_aot, register_aot_plugin

        register_aot_plugin()
        model = onnx.load(str(path))
        mark_for_aot(model)
        parsed = parser.parse(model.SerializeToString(), str(path))
    else:
        parsed = parser.parse_from_file(str(path))
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EcaDeployError(f"{backend.name} could not parse {path}: {errors or 'unknown error'}")
    return ParsedNetwork(builder, network, parser, strongly_typed)


def create_config(backend: Backend, parsed: ParsedNetwork, profile: BatchProfile, *, fp16_flag: bool = False,
                  timing_cache: bytes | None = None, embed_library: Path | None = None) -> object:
    """Builder config: the batch profile on every dynamic input, FP16 flag route, timing cache, embedded plugin."""
    trt = backend.module
    config = parsed.builder.create_builder_config()
    optimization_profile = parsed.builder.create_optimization_profile()
    for i in range(parsed.network.num_inputs):
        tensor = parsed.network.get_input(i)
        batch, *rest = tensor.shape
        if any(d < 0 for d in rest):
            raise EcaDeployError(f"input {tensor.name} has dynamic non-batch dims {list(tensor.shape)}")
        if batch >= 0:
            if (profile.min, profile.max) != (batch, batch):
                raise EcaDeployError(f"input {tensor.name} has a static batch of {batch}: re-export with a "
                                     f"dynamic batch or use --min/--opt/--max-batch {batch}")
            continue
        optimization_profile.set_shape(tensor.name, (profile.min, *rest), (profile.opt, *rest), (profile.max, *rest))
    config.add_optimization_profile(optimization_profile)
    if fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if timing_cache is not None:
        config.set_timing_cache(config.create_timing_cache(timing_cache), False)
    if embed_library is not None:
        config.plugins_to_serialize = [str(embed_library)]
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
    return config


def gpu_tag() -> str:
    """Compute capability of the GPU engines are built for ("sm_90"), or "no-gpu" for CPU-only builds."""
    try:
        import torch
    except ImportError:
        return "unknown-gpu"
    if not torch.cuda.is_available():
        return "no-gpu"
    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}"


def _sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def engine_cache_key(onnx_path: Path, backend: Backend, precision: str, route: str, profile: BatchProfile,
                     plugin: dict) -> str:
    """Hash of everything that decides the engine: model bytes (external data too), TensorRT version,
    GPU compute capability, precision and route, profile, and the plugin (library hash, embed, AOT)."""
    external = onnx_path.with_name(onnx_path.name + ".data")
    model_hash = _sha256(onnx_path, *([external] if external.is_file() else []))
    parts = [model_hash, backend.name, backend.version, gpu_tag(), precision, route,
             f"{profile.min}/{profile.opt}/{profile.max}", plugin["mode"], plugin.get("sha256") or "none"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, precision: str | None = None,
                 batch: tuple[int, int, int] | BatchProfile = BatchProfile(), plugin_library: Path | None = None,
                 embed_plugin: bool = False, aot: bool = False, precision_route: str = "strongly-typed",
                 backend: str = "auto", cache_dir: Path | None = DEFAULT_CACHE_DIR,
                 progress: Progress | None = None) -> EngineResult:
    """Build (or take from the engine cache) a serialized engine for ``onnx_path``, written atomically.

    ``precision`` defaults to the ONNX model's (FP16 weights -> "fp16"); the "builder-flag" route
    builds FP16 from the FP32 model with TensorRT 10's FP16 flag. ``cache_dir=None`` disables the
    engine and timing caches.
    """
    progress = progress or Progress(quiet=True)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise EcaDeployError(f"{onnx_path}: no such ONNX file")
    profile = batch if isinstance(batch, BatchProfile) else BatchProfile(*batch)
    if precision_route not in PRECISION_ROUTES:
        raise EcaDeployError(f"precision route must be one of {', '.join(PRECISION_ROUTES)}")
    trt = load_backend(backend)
    graph = load_graph(onnx_path)
    model_precision = onnx_precision(graph)
    precision = precision or model_precision
    fp16_flag = precision_route == "builder-flag" and precision == "fp16"
    if fp16_flag and not trt.has_fp16_builder_flag:
        raise EcaDeployError(f"{trt.name} {trt.version} is strongly typed only (no FP16 builder flag): "
                             "build from the FP16 ONNX (eca-export --fp16) instead")
    if fp16_flag and model_precision == "fp16":
        raise EcaDeployError("the builder-flag route starts from the FP32 ONNX; this model is already FP16")
    if not fp16_flag and precision != model_precision:
        raise EcaDeployError(f"the ONNX model is {model_precision}, not {precision}: strongly typed engines take "
                             "their precision from the ONNX types (use eca-export --fp16 for FP16)")

    fused = count_fused_nodes(graph)
    plugin = _plugin_plan(trt, fused, resolve_plugin_library(plugin_library), embed_plugin, aot)
    if plugin["mode"] == "fallback-function":
        progress.info(f"  no plugin library: {fused} EcaAttention nodes run as native layers (their ONNX function)")

    key = engine_cache_key(onnx_path, trt, precision, precision_route, profile, plugin)
    cached = cache_dir / f"{key}.engine" if cache_dir is not None else None
    cached_layers = cached.with_suffix(".layers.json") if cached is not None else None
    library = Path(plugin["path"]) if plugin.get("path") else None
    result = EngineResult(engine_path, trt.name, trt.version, precision, precision_route, profile, fused, plugin,
                          cache={"key": key, "hit": False})
    start = time.perf_counter()
    with staged_outputs(engine_path.parent) as staging:
        staged = staging / engine_path.name
        if cached is not None and cached.is_file() and cached_layers.is_file():
            shutil.copyfile(cached, staged)
            result.layers = json.loads(cached_layers.read_text())
            result.cache["hit"] = True
            progress.info(f"  engine cache hit ({cached})")
        else:
            parsed = parse_onnx(trt, onnx_path, strongly_typed=not fp16_flag,
                                plugin_library=library if plugin["mode"] in ("library", "serialized-in-engine") else None,
                                aot=plugin["mode"] == "aot-ptx")
            result.layers = parsed.layers()
            staged.write_bytes(_build(trt, parsed, profile, fp16_flag, library if plugin["mode"] ==
                                      "serialized-in-engine" else None, cache_dir))
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(staged, cached)
                write_text_atomic(cached_layers, json.dumps(result.layers))
    result.build_seconds = time.perf_counter() - start
    result.size_bytes = engine_path.stat().st_size
    return result


def _plugin_plan(trt: Backend, fused: int, library: Path | None, embed: bool, aot: bool) -> dict:
    """How fused nodes will run: library, serialized-in-engine, aot-ptx, fallback-function, or none."""
    if fused == 0:
        return {"mode": "none", "path": None, "sha256": None}
    if aot:
        if trt.name != "tensorrt":
            raise EcaDeployError(f"{trt.name} has no tensorrt.plugin module: the AOT plugin needs TensorRT >= 10.7")
        return {"mode": "aot-ptx", "path": None, "sha256": None}
    if library is None:
        if embed:
            raise EcaDeployError("--embed-plugin needs the plugin library (--plugin or $ECA_PLUGIN_LIBRARY)")
        return {"mode": "fallback-function", "path": None, "sha256": None}
    if not trt.loads_plugin_libraries:
        raise EcaDeployError(f"{trt.name} cannot use plugin libraries: build without --plugin to run the fused nodes "
                             "as native layers, or install TensorRT (pip install 'eca-deploy[trt]')")
    return {"mode": "serialized-in-engine" if embed else "library", "path": str(library), "sha256": _sha256(library)}


def _build(trt: Backend, parsed: ParsedNetwork, profile: BatchProfile, fp16_flag: bool, embed: Path | None,
           cache_dir: Path | None) -> bytes:
    """Serialized engine bytes; reads and updates the timing cache in ``cache_dir``."""
    timing_path = (cache_dir / f"timing-{trt.name}-{trt.version}-{gpu_tag()}.cache"
                   if cache_dir is not None and trt.has_timing_cache else None)
    timing = timing_path.read_bytes() if timing_path is not None and timing_path.is_file() else (
        b"" if timing_path is not None else None)
    config = create_config(trt, parsed, profile, fp16_flag=fp16_flag, timing_cache=timing, embed_library=embed)
    serialized = parsed.builder.build_serialized_network(parsed.network, config)
    if serialized is None:
        raise EcaDeployError(f"{trt.name} failed to build the engine (see the TensorRT messages above)")
    if timing_path is not None:
        timing_path.parent.mkdir(parents=True, exist_ok=True)
        timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def inspect_engine(engine_path: str | Path, backend: str = "auto", plugin_library: Path | None = None) -> str:
    """The engine inspector's JSON layer report (needs a GPU to deserialize the engine)."""
    trt = load_backend(backend)
    module = trt.module
    runtime = module.Runtime(make_logger(trt))
    runtime.engine_host_code_allowed = True  # engines with an embedded plugin library
    if plugin_library is not None:
        runtime.get_plugin_registry().load_library(str(plugin_library))
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise EcaDeployError(f"{trt.name} could not deserialize {engine_path} (it needs a GPU of the kind it was "
                             "built for, and the plugin library if the engine uses one)")
    inspector = engine.create_engine_inspector()
    return inspector.get_engine_information(module.LayerInformationFormat.JSON)
