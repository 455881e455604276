"""Build TensorRT engines from plain or ECA-fused ONNX models.

Small steps in the spirit of Polygraphy's loaders, composed by :func:`build_engine`:
:func:`~eca_deploy.tensorrt.backend.load_backend` (``tensorrt``, or ``tensorrt_rtx`` whose builder
needs no GPU) -> :func:`plan_plugin` (how the fused nodes will run) -> :func:`parse_onnx` (strongly
typed network; plugin library loaded and verified, or the AOT plugin registered) ->
:func:`create_config` (dynamic-batch profile, precision route, timing cache, embedded plugin) ->
``build_serialized_network`` -> engine cache -> plan file.

Fused EcaAttention nodes run on our plugin when a library is given (``--plugin`` or
``$ECA_PLUGIN_LIBRARY``) or the AOT route is chosen. Then the parser gets a copy of the model
without the nodes' fallback function, on every TensorRT version: before 10.7 the parser would
inline the function even with the plugin registered, and from 10.7 a missing plugin would silently
fall back to it. The parsed network must hold exactly one plugin layer per fused node, or the build
fails (:class:`~eca_deploy.errors.PluginNotUsedError`). Without a plugin, the parser inlines the
function and the engine runs ECA with native layers ("fallback-function").
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from eca_deploy._io import check_output_dir, staged_outputs, write_text_atomic
from eca_deploy.errors import EcaDeployError, PluginNotUsedError, first_line
from eca_deploy.onnx_files import load_graph, onnx_precision
from eca_deploy.options import PRECISION_ROUTES
from eca_deploy.passes.fused_node import (
    count_fused_nodes,
    without_fallback_function,
    without_plugin_lookup,
)
from eca_deploy.progress import Progress
from eca_deploy.provenance import read_provenance
from eca_deploy.resources import cache_root
from eca_deploy.tensorrt.backend import (
    AOT_MIN_VERSION,
    Backend,
    load_backend,
    tensorrt_logger,
    verbose_log,
)
from eca_deploy.tensorrt.plugin_library import (
    load_plugin_library,
    resolve_plugin_library,
)

DEFAULT_CACHE_DIR = cache_root() / "engines"
PLUGIN_LAYER_TYPES = ("PLUGIN", "PLUGIN_V2", "PLUGIN_V3")


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
class PluginPlan:
    """How the fused nodes will run. ``mode``: "none" (no fused node), "fallback-function" (native
    layers from the nodes' ONNX function), "library" (libeca_plugin.so loaded at build and run time),
    "serialized-in-engine" (the library inside a version-compatible engine) or "aot-ptx" (the
    Quickly Deployable Plugin with the kernel's PTX in the engine)."""

    mode: str
    library: Path | None = None
    sha256: str | None = None

    @property
    def uses_plugin(self) -> bool:
        return self.mode in ("library", "serialized-in-engine", "aot-ptx")

    def to_dict(self) -> dict:
        return {"mode": self.mode, "path": None if self.library is None else str(self.library), "sha256": self.sha256}


@dataclass
class ParsedNetwork:
    """Builder, network and parser kept together (the network borrows from both), with the plugin
    handle that must outlive them."""

    builder: object
    network: object
    parser: object
    strongly_typed: bool
    plugin_handle: object = None

    def layers(self) -> list[dict]:
        """Name and type of every layer of the parsed network. In a Q/DQ (INT8) network, a layer fed by a
        DequantizeLinear is marked ``int8_input`` (TensorRT runs it in INT8, or reformats for a plugin) and
        one feeding a QuantizeLinear ``quantized_output``."""
        layers = [self.network.get_layer(i) for i in range(self.network.num_layers)]
        producers = {layer.get_output(j).name: layer.type.name for layer in layers for j in range(layer.num_outputs)}
        consumers: dict[str, list[str]] = {}
        for layer in layers:
            for j in range(layer.num_inputs):
                tensor = layer.get_input(j)
                if tensor is not None:
                    consumers.setdefault(tensor.name, []).append(layer.type.name)
        described = []
        for layer in layers:
            entry = {"name": layer.name, "type": layer.type.name}
            inputs = [layer.get_input(j) for j in range(layer.num_inputs)]
            if any(t is not None and producers.get(t.name) == "DEQUANTIZE" for t in inputs):
                entry["int8_input"] = True
            outputs = [layer.get_output(j).name for j in range(layer.num_outputs)]
            if any("QUANTIZE" in consumers.get(name, []) for name in outputs):
                entry["quantized_output"] = True
            described.append(entry)
        return described


def count_plugin_layers(layers: list[dict]) -> int:
    """How many of ``layers`` (as :meth:`ParsedNetwork.layers` lists them) are plugin layers."""
    return sum(layer["type"] in PLUGIN_LAYER_TYPES for layer in layers)


def quantization_summary(layers: list[dict]) -> dict:
    """INT8 facts of a parsed network (all zero for an FP32/FP16 one): Q/DQ layers, the layers fed from
    DequantizeLinear that TensorRT runs in INT8, and plugin layers next to Q/DQ, around which TensorRT
    inserts a reformat (the plugin computes in FP32/FP16)."""
    types = [layer["type"] for layer in layers]
    return {"quantize_layers": types.count("QUANTIZE"), "dequantize_layers": types.count("DEQUANTIZE"),
            "int8_layers": sum(layer.get("int8_input", False) and layer["type"] not in
                               ("QUANTIZE", "DEQUANTIZE", *PLUGIN_LAYER_TYPES) for layer in layers),
            "plugin_layers_reformatted": sum(layer["type"] in PLUGIN_LAYER_TYPES and (
                layer.get("int8_input", False) or layer.get("quantized_output", False)) for layer in layers)}


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
    plugin: PluginPlan
    provenance: dict | None = None  # the ONNX model's (where it came from), None for a file without
    layers: list[dict[str, str]] = field(default_factory=list)
    cache: dict = field(default_factory=dict)
    build_seconds: float = 0.0
    size_bytes: int = 0

    @property
    def num_plugin_layers(self) -> int:
        return count_plugin_layers(self.layers)

    def to_dict(self) -> dict:
        return {"path": self.path.name, "backend": self.backend, "backend_version": self.backend_version,
                "precision": self.precision, "precision_route": self.precision_route, "profile": asdict(self.profile),
                "num_fused_nodes": self.num_fused_nodes, "plugin": self.plugin.to_dict(),
                "num_plugin_layers": self.num_plugin_layers, "num_layers": len(self.layers),
                "quantization": quantization_summary(self.layers), "provenance": self.provenance, "layers": self.layers,
                "cache": self.cache, "build_seconds": round(self.build_seconds, 3), "size_bytes": self.size_bytes}


def plan_plugin(backend: Backend, fused: int, library: Path | None, *, explicit_library: bool = False,
                embed: bool = False, aot: bool = False) -> PluginPlan:
    """How ``fused`` EcaAttention nodes will run with this backend; refuses what cannot work."""
    if fused == 0:
        if explicit_library or embed or aot:
            raise EcaDeployError("the model has no EcaAttention node, so there is nothing for the plugin to run: "
                                 "build the fused model (<stem>.eca.onnx from eca-export or eca-fuse)")
        return PluginPlan("none")
    if aot:
        if not backend.has_aot_plugins:
            minimum = ".".join(map(str, AOT_MIN_VERSION))
            raise EcaDeployError(f"the ahead-of-time plugin needs TensorRT >= {minimum} (tensorrt.plugin's aot_impl); "
                                 f"this is {backend.describe()}: use --plugin libeca_plugin.so instead")
        return PluginPlan("aot-ptx")
    if library is None:
        if embed:
            raise EcaDeployError("--embed-plugin needs the plugin library (--plugin or $ECA_PLUGIN_LIBRARY)")
        return PluginPlan("fallback-function")
    return PluginPlan("serialized-in-engine" if embed else "library", library, _sha256(library))


def parse_onnx(backend: Backend, path: Path, plugin: PluginPlan, *, strongly_typed: bool = True,
               graph: onnx.ModelProto | None = None) -> ParsedNetwork:
    """Parse ``path`` (``graph``: its model, already read) into a network. With a plugin, the library is loaded
    and verified (or the AOT plugin registered) first and the parser gets a copy of the model without the fused
    nodes' fallback function; without one, a copy whose fused nodes name no plugin, so that their function is
    inlined even where a plugin library was loaded into this process before."""
    graph = graph if graph is not None else load_graph(path)
    trt = backend.module
    builder = trt.Builder(tensorrt_logger(backend.module))
    handle = None
    if plugin.library is not None:
        handle = load_plugin_library(trt, builder.get_plugin_registry(), plugin.library)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, builder.logger)
    if plugin.uses_plugin:
        model = without_fallback_function(graph)
        if plugin.mode == "aot-ptx":
            from eca_deploy.tensorrt.qdp import mark_for_aot, register_aot_plugin

            register_aot_plugin()
            mark_for_aot(model)
        parsed = parser.parse(model.SerializeToString(), str(path))
    elif plugin.mode == "fallback-function":
        parsed = parser.parse(without_plugin_lookup(graph).SerializeToString(), str(path))
    else:
        parsed = parser.parse_from_file(str(path))
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EcaDeployError(f"{backend.name} could not parse {path}: {errors or 'unknown error'}")
    return ParsedNetwork(builder, network, parser, strongly_typed, handle)


def check_plugin_layers(plugin: PluginPlan, fused: int, layers: list[dict[str, str]]) -> None:
    """The parsed network must be what the plan says: one plugin layer per fused node on a plugin route,
    none otherwise; anything else fails the build (the report would describe another engine)."""
    found = count_plugin_layers(layers)
    if plugin.uses_plugin and found != fused:
        raise PluginNotUsedError(f"the plugin was requested ({plugin.mode}) but the parsed network has {found} plugin "
                                 f"layers for {fused} EcaAttention nodes; no engine was written")
    if not plugin.uses_plugin and found:
        raise PluginNotUsedError(f"no plugin was requested ({plugin.mode}) but the parsed network has {found} plugin "
                                 "layers, which would need a plugin library at run time; no engine was written")


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


def read_model(onnx_path: Path) -> tuple[onnx.ModelProto, str]:
    """The ONNX model without its external weights, and the SHA-256 of its bytes (external data too), from one
    read of the file."""
    data = onnx_path.read_bytes()
    try:
        graph = onnx.load_from_string(data)
    except (DecodeError, ValueError) as error:
        raise EcaDeployError(f"{onnx_path} is not a readable ONNX model: {first_line(error)}") from error
    digest = hashlib.sha256(data)
    external = onnx_path.with_name(onnx_path.name + ".data")
    if external.is_file():
        digest.update(bytes.fromhex(_sha256(external)))
    return graph, digest.hexdigest()


def engine_cache_key(model_sha256: str, backend: Backend, precision: str, route: str, profile: BatchProfile,
                     plugin: PluginPlan) -> str:
    """Hash of everything that decides the engine: the model's bytes (:func:`read_model`), TensorRT version,
    GPU compute capability, precision and route, profile, and the plugin (mode and library hash)."""
    parts = [model_sha256, backend.name, backend.version, gpu_tag(), precision, route,
             f"{profile.min}/{profile.opt}/{profile.max}", plugin.mode, plugin.sha256 or "none"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, precision: str | None = None,
                 batch: tuple[int, int, int] | BatchProfile = BatchProfile(), plugin_library: Path | None = None,
                 embed_plugin: bool = False, aot: bool = False, precision_route: str = "strongly-typed",
                 backend: str = "auto", cache_dir: Path | None = DEFAULT_CACHE_DIR,
                 progress: Progress | None = None, verbose: bool = False) -> EngineResult:
    """Build (or take from the engine cache) a serialized engine for ``onnx_path``, written atomically.

    ``precision`` defaults to the ONNX model's (FP16 weights -> "fp16"); the "builder-flag" route
    builds FP16 from the FP32 model with TensorRT 10's FP16 flag. ``plugin_library`` (else
    ``$ECA_PLUGIN_LIBRARY``) runs the fused nodes on the plugin; the engine then has one plugin layer
    per fused node or none is written. ``cache_dir=None`` disables the engine and timing caches;
    ``verbose`` prints TensorRT's verbose log, the plugin's answers to the builder included.
    """
    progress = progress or Progress(quiet=True)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise EcaDeployError(f"{onnx_path}: no such ONNX file")
    profile = batch if isinstance(batch, BatchProfile) else BatchProfile(*batch)
    if precision_route not in PRECISION_ROUTES:
        raise EcaDeployError(f"precision route must be one of {', '.join(PRECISION_ROUTES)}")
    trt = load_backend(backend)
    graph, model_sha256 = read_model(onnx_path)
    model_precision = onnx_precision(graph)
    precision = precision or model_precision
    fp16_flag = precision_route == "builder-flag" and precision == "fp16"
    if fp16_flag and not trt.has_fp16_builder_flag:
        raise EcaDeployError(f"{trt.describe()} is strongly typed only (no FP16 builder flag): "
                             "build from the FP16 ONNX (eca-export --fp16) instead")
    if fp16_flag and model_precision == "fp16":
        raise EcaDeployError("the builder-flag route starts from the FP32 ONNX; this model is already FP16")
    if not fp16_flag and precision != model_precision:
        raise EcaDeployError(f"the ONNX model is {model_precision}, not {precision}: strongly typed engines take "
                             "their precision from the ONNX types (use eca-export --fp16 for FP16)")

    fused = count_fused_nodes(graph)
    plugin = plan_plugin(trt, fused, resolve_plugin_library(plugin_library), explicit_library=plugin_library is not None,
                         embed=embed_plugin, aot=aot)
    if plugin.mode == "fallback-function":
        progress.info(f"  no plugin library: {fused} EcaAttention nodes run as native layers (their ONNX function)")

    if cache_dir is not None:
        try:
            check_output_dir(cache_dir, "engine cache")
        except EcaDeployError as error:
            progress.info(f"  {error}; building without the engine and timing caches (--cache-dir chooses another)")
            cache_dir = None
    key = engine_cache_key(model_sha256, trt, precision, precision_route, profile, plugin)
    cached = cache_dir / f"{key}.engine" if cache_dir is not None else None
    cached_layers = cached.with_suffix(".layers.json") if cached is not None else None
    provenance = read_provenance(graph)
    result = EngineResult(engine_path, trt.name, trt.version, precision, precision_route, profile, fused, plugin,
                          None if provenance is None else provenance.to_dict(), cache={"key": key, "hit": False})
    start = time.perf_counter()
    with staged_outputs(engine_path.parent) as staging:
        staged = staging / engine_path.name
        if cached is not None and cached.is_file() and cached_layers.is_file():
            shutil.copyfile(cached, staged)
            result.layers = json.loads(cached_layers.read_text())
            result.cache["hit"] = True
            progress.info(f"  engine cache hit ({cached})")
        else:
            with verbose_log(trt.module, verbose):
                parsed = parse_onnx(trt, onnx_path, plugin, strongly_typed=not fp16_flag, graph=graph)
                result.layers = parsed.layers()
                check_plugin_layers(plugin, fused, result.layers)
                embed = plugin.library if plugin.mode == "serialized-in-engine" else None
                staged.write_bytes(_build(trt, parsed, profile, fp16_flag, embed, cache_dir))
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(staged, cached)
                write_text_atomic(cached_layers, json.dumps(result.layers))
    result.build_seconds = time.perf_counter() - start
    result.size_bytes = engine_path.stat().st_size
    return result


def _build(trt: Backend, parsed: ParsedNetwork, profile: BatchProfile, fp16_flag: bool, embed: Path | None,
           cache_dir: Path | None) -> bytes:
    """Serialized engine bytes; reads and updates the timing cache in ``cache_dir``."""
    timing_path = (cache_dir / f"timing-{trt.name}-{trt.version}-{gpu_tag()}.cache"
                   if cache_dir is not None and trt.has_timing_cache else None)
    timing = timing_path.read_bytes() if timing_path is not None and timing_path.is_file() else (
        b"" if timing_path is not None else None)
    config = create_config(trt, parsed, profile, fp16_flag=fp16_flag, timing_cache=timing, embed_library=embed)
    logger = tensorrt_logger(trt.module)
    mark = logger.mark()
    serialized = parsed.builder.build_serialized_network(parsed.network, config)
    if serialized is None:
        raise EcaDeployError(f"{trt.name} failed to build the engine{logger.reason(mark)}")
    if timing_path is not None:
        timing_path.parent.mkdir(parents=True, exist_ok=True)
        timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def inspect_engine(engine_path: str | Path, backend: str = "auto", plugin_library: Path | None = None) -> str:
    """The engine inspector's JSON layer report (needs a GPU to deserialize the engine)."""
    trt = load_backend(backend)
    module = trt.module
    runtime = module.Runtime(tensorrt_logger(module))
    runtime.engine_host_code_allowed = True  # engines with an embedded plugin library
    if plugin_library is not None:
        load_plugin_library(module, runtime.get_plugin_registry(), plugin_library)
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise EcaDeployError(f"{trt.name} could not deserialize {engine_path} (it needs a GPU of the kind it was "
                             "built for, and the plugin library if the engine uses one)")
    inspector = engine.create_engine_inspector()
    return inspector.get_engine_information(module.LayerInformationFormat.JSON)
