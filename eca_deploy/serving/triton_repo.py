"""Triton Inference Server model repository for an exported ECA model.

``write_triton_repository(repo, "model.eca.onnx", engine_path="model.engine", plugin_library=...)``
writes up to three models, each a directory Triton loads as it is:

``<name>_tensorrt``  (only with a TensorRT engine) platform ``tensorrt_plan``: ``1/model.plan`` and
                     the self-registering plugin library beside ``config.pbtxt``. Triton's TensorRT
                     backend only ``dlopen()``s plugin libraries, so it loads
                     ``libeca_plugin_autoreg.so`` via ``--backend-config=tensorrt,plugins=...``
                     or ``LD_PRELOAD``. TensorRT-RTX plans (tag ``vtrt``) are not written: that
                     backend cannot load them.
``<name>_onnx``      platform ``onnxruntime_onnx``: the fused ONNX (its EcaAttention nodes run
                     through their model-local function). CPU by default; ``onnx_device="gpu"``
                     adds the TensorRT execution provider with our plugin
                     (``trt_extra_plugin_lib_paths``) and the batch profile.
``<name>_python``    backend ``python``: the fused ONNX served by ``eca_deploy.serving`` inside
                     Triton's Python backend (servers without the onnxruntime backend, such as the
                     one bundled with nvidia-pytriton; request validation included).

A variant the server could not load (a TensorRT-RTX plan; ONNX Runtime without the plugin given a
fused model without its fallback function) is refused when asked for by name and otherwise left
out, with the reason in the result's ``skipped`` and in the README.

Every model has dynamic batching, the ONNX model's input/output names, dims and types, and
``max_batch_size``. A ``<name>.README.md`` at the repository root says what each model holds and
how to install, serve and query it.
Generated configs are parsed with Triton's own protobuf schema (``model_config_pb2`` from
tritonclient) when it is installed.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from eca_deploy._io import staged_outputs
from eca_deploy.errors import EcaDeployError, first_line
from eca_deploy.passes.fused_node import count_fused_nodes, is_fallback_function
from eca_deploy.serving.trt import engine_flavour
from eca_deploy.tensorrt.plugin_library import AUTOREG_LIBRARY, is_self_registering

VARIANTS = ("tensorrt", "onnx", "python")
ONNX_DEVICES = ("cpu", "gpu")
TRT_PRECISIONS = ("FP32", "FP16")
DEFAULT_QUEUE_DELAY_US = 100
_TRITON_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                 onnx.TensorProto.BFLOAT16: "TYPE_BF16", onnx.TensorProto.DOUBLE: "TYPE_FP64"}
_PYTHON_MODEL = Path(__file__).resolve().with_name("triton_python_model.py")
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # eca_deploy/


class _Enum(str):
    """A protobuf enum value: written bare (``TYPE_FP32``), not quoted."""


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as Triton sees it: dims without the batch axis."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class OnnxModel:
    """What the ONNX file holds, as far as serving it is concerned."""

    input: TensorInfo
    output: TensorInfo
    external_data: tuple[str, ...]
    fused_nodes: int
    has_fallback: bool

    @property
    def plugin_only(self) -> bool:
        """Fused nodes without their fallback function: they run only where the plugin is loaded."""
        return self.fused_nodes > 0 and not self.has_fallback

    def describe(self) -> str:
        """``fused ONNX (17 EcaAttention nodes ...)``, ``plain ONNX (...)`` or ``plugin-only fused ONNX (...)``."""
        nodes = f"{self.fused_nodes} EcaAttention node{'s' if self.fused_nodes != 1 else ''}"
        if not self.fused_nodes:
            return "plain ONNX (no EcaAttention nodes: its ECA blocks stay native ONNX operators)"
        if self.plugin_only:
            return f"plugin-only fused ONNX ({nodes} without their fallback function: they run only on the plugin)"
        return f"fused ONNX ({nodes}, each with its fallback function of native ONNX operators)"


@dataclass(frozen=True)
class TritonRepository:
    """What was written: the repository root, model name per variant, files, whether the schema checked
    them, and the variants left out with the reason."""

    root: Path
    models: dict[str, str]
    files: tuple[str, ...]
    schema_validated: bool
    readme: Path | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"root": str(self.root), "models": dict(self.models), "files": list(self.files),
                "schema_validated": self.schema_validated,
                "readme": None if self.readme is None else self.readme.name, "skipped": dict(self.skipped)}


# ----------------------------------------------------------------------------------------------------------------
# config.pbtxt


def _scalar(value: Any) -> str:
    if isinstance(value, _Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(str(value))


def format_pbtxt(message: dict, indent: int = 0) -> str:
    """Protobuf text format of a nested dict: dicts are messages, lists of dicts repeated messages."""
    pad, lines = "  " * indent, []
    for key, value in message.items():
        if value is None or value == [] or value == {}:
            continue
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", format_pbtxt(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and isinstance(value[0], dict):
            for item in value:
                lines += [f"{pad}{key} {{", format_pbtxt(item, indent + 1), f"{pad}}}"]
        elif isinstance(value, (list, tuple)):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(line for line in lines if line)


def _model_config_schema():
    """Triton's ``ModelConfig`` protobuf module from tritonclient, or None when it is not installed."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    return model_config_pb2


def validate_model_config(text: str, expected_name: str | None = None):
    """Parse ``config.pbtxt`` text with Triton's schema and check what Triton requires of it.

    Returns the ``ModelConfig`` message, or None when tritonclient (which ships the schema) is missing.
    Raises :class:`EcaDeployError` on unknown fields, bad values or missing parts.
    """
    schema = _model_config_schema()
    if schema is None:
        return None
    from google.protobuf import text_format

    config = schema.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise EcaDeployError(f"config.pbtxt does not fit Triton's schema: {first_line(error)}") from error
    where = f"config of {config.name!r}"
    if expected_name is not None and config.name != expected_name:
        raise EcaDeployError(f"{where}: name must match its directory {expected_name!r}")
    if not (config.platform or config.backend):
        raise EcaDeployError(f"{where} names neither a platform nor a backend")
    if config.max_batch_size < 1:
        raise EcaDeployError(f"{where}: max_batch_size must be at least 1")
    if not config.input or not config.output:
        raise EcaDeployError(f"{where} needs inputs and outputs")
    for tensor in [*config.input, *config.output]:
        if not tensor.name or tensor.data_type == schema.TYPE_INVALID or not tensor.dims or min(tensor.dims) < 1:
            raise EcaDeployError(f"{where}: tensor {tensor.name!r} needs a name, a type and positive dims")
    batching = config.dynamic_batching
    if config.HasField("dynamic_batching") and any(size > config.max_batch_size
                                                   for size in batching.preferred_batch_size):
        raise EcaDeployError(f"{where}: preferred batch sizes exceed max_batch_size {config.max_batch_size}")
    return config


# ----------------------------------------------------------------------------------------------------------------
# Reading the model


def read_onnx_model(onnx_path: Path) -> OnnxModel:
    """Input and output of an exported model (dims without the batch axis), its external data files and
    its EcaAttention nodes."""
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as error:
        raise EcaDeployError(f"cannot read ONNX model {onnx_path}: {first_line(error)}") from error
    initializers = {init.name for init in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    outputs = list(model.graph.output)
    if len(inputs) != 1 or len(outputs) != 1:
        raise EcaDeployError(f"{onnx_path.name} must have one input and one output, "
                             f"has {len(inputs)} and {len(outputs)}")
    infos = []
    for value, rank in ((inputs[0], 4), (outputs[0], 2)):
        tensor_type = value.type.tensor_type
        dims = list(tensor_type.shape.dim)
        if len(dims) != rank or dims[0].HasField("dim_value") or not all(d.HasField("dim_value") for d in dims[1:]):
            raise EcaDeployError(f"{onnx_path.name}'s {value.name!r} must have a dynamic batch axis and {rank - 1} "
                                 f"fixed dims (export with eca-export)")
        if tensor_type.elem_type not in _TRITON_TYPES:
            raise EcaDeployError(f"{onnx_path.name}'s {value.name!r} has an unsupported element type")
        infos.append(TensorInfo(value.name, _TRITON_TYPES[tensor_type.elem_type], tuple(d.dim_value for d in dims[1:])))
    external = sorted({entry.value for init in model.graph.initializer
                       if init.data_location == onnx.TensorProto.EXTERNAL
                       for entry in init.external_data if entry.key == "location"})
    return OnnxModel(infos[0], infos[1], tuple(external), fused_nodes=count_fused_nodes(model),
                     has_fallback=any(is_fallback_function(function) for function in model.functions))


def triton_model_name(name: str) -> str:
    """A model name Triton and every filesystem accept: letters, digits, ``_``, ``-`` and ``.``."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    if not cleaned:
        raise EcaDeployError(f"{name!r} cannot be a Triton model name")
    return cleaned


def _triton_plugin(plugin_library: Path) -> Path:
    """The library Triton can load: the self-registering one (Triton only dlopen()s plugin libraries),
    given directly or found beside the loadLibrary-style ``libeca_plugin.so`` CMake builds with it."""
    if not plugin_library.is_file():
        raise EcaDeployError(f"plugin library {plugin_library} does not exist")
    if is_self_registering(plugin_library):
        return plugin_library
    sibling = plugin_library.with_name(AUTOREG_LIBRARY)
    if sibling.is_file() and is_self_registering(sibling):
        return sibling
    raise EcaDeployError(f"Triton only dlopen()s plugin libraries, so it needs the self-registering "
                         f"{AUTOREG_LIBRARY} (built beside {plugin_library.name} when CMake finds libnvinfer); "
                         f"{plugin_library.name} only hands its creator to IPluginRegistry::loadLibrary")


# ----------------------------------------------------------------------------------------------------------------
# Configs


def _tensor(info: TensorInfo, labels: bool = False) -> dict:
    return {"name": info.name, "data_type": _Enum(info.data_type), "dims": list(info.dims),
            "label_filename": "labels.txt" if labels else None}


def _common(name: str, inp: TensorInfo, out: TensorInfo, max_batch_size: int, preferred: Sequence[int],
            queue_delay_us: int, labels: bool) -> dict:
    return {"name": name, "max_batch_size": max_batch_size, "input": [_tensor(inp)], "output": [_tensor(out, labels)],
            "dynamic_batching": {"preferred_batch_size": list(preferred),
                                 "max_queue_delay_microseconds": queue_delay_us}}


def _shape_spec(inp: TensorInfo, batch: int) -> str:
    return f"{inp.name}:{'x'.join(str(d) for d in (batch, *inp.dims))}"


def tensorrt_config(name: str, inp: TensorInfo, out: TensorInfo, *, max_batch_size: int, preferred: Sequence[int],
                    queue_delay_us: int, instances: int, labels: bool) -> dict:
    config = _common(name, inp, out, max_batch_size, preferred, queue_delay_us, labels)
    return {"name": name, "platform": "tensorrt_plan", **{k: v for k, v in config.items() if k != "name"},
            "instance_group": [{"count": instances, "kind": _Enum("KIND_GPU")}]}


def onnx_config(name: str, inp: TensorInfo, out: TensorInfo, *, max_batch_size: int, preferred: Sequence[int],
                queue_delay_us: int, instances: int, labels: bool, device: str, trt_precision: str,
                plugin_path: str | None, opt_batch: int) -> dict:
    config = {"name": name, "platform": "onnxruntime_onnx",
              **{k: v for k, v in _common(name, inp, out, max_batch_size, preferred, queue_delay_us, labels).items()
                 if k != "name"},
              "instance_group": [{"count": instances, "kind": _Enum("KIND_GPU" if device == "gpu" else "KIND_CPU")}]}
    if device == "gpu":
        parameters = {"precision_mode": trt_precision, "trt_extra_plugin_lib_paths": plugin_path,
                      "trt_profile_min_shapes": _shape_spec(inp, 1),
                      "trt_profile_opt_shapes": _shape_spec(inp, opt_batch),
                      "trt_profile_max_shapes": _shape_spec(inp, max_batch_size)}
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [{
            "name": "tensorrt",
            "parameters": [{"key": key, "value": value} for key, value in parameters.items() if value is not None]}]}}
    return config


def python_config(name: str, inp: TensorInfo, out: TensorInfo, *, max_batch_size: int, preferred: Sequence[int],
                  queue_delay_us: int, labels: bool) -> dict:
    parameters = {"model_file": "model.onnx", "providers": "CPUExecutionProvider", "check_finite": "true"}
    return {"name": name, "backend": "python",
            **{k: v for k, v in _common(name, inp, out, max_batch_size, preferred, queue_delay_us, labels).items()
               if k != "name"},
            "instance_group": [{"count": 1, "kind": _Enum("KIND_CPU")}],
            "parameters": [{"key": key, "value": {"string_value": value}} for key, value in parameters.items()]}


# ----------------------------------------------------------------------------------------------------------------
# What each model holds, and what a server cannot load


def unservable_reason(variant: str, model: OnnxModel, engine: Path | None, onnx_device: str,
                      plugin_given: bool) -> str | None:
    """Why Triton could not load ``variant`` of these files, or None when it can."""
    if variant == "tensorrt" and engine_flavour(engine) == "tensorrt_rtx":
        return (f"{engine.name} is a TensorRT-RTX plan, which Triton's TensorRT backend cannot load; build the "
                f"engine with TensorRT (eca-deploy build MODEL.onnx where TensorRT is installed) or run this plan "
                f"with eca_deploy.serving.EcaRuntime")
    on_gpu_with_plugin = variant == "onnx" and onnx_device == "gpu" and plugin_given
    if model.plugin_only and variant in ("onnx", "python") and not on_gpu_with_plugin:
        runner = ("ONNX Runtime without the plugin library" if variant == "onnx" and onnx_device == "gpu"
                  else "ONNX Runtime CPU")
        return (f"{runner} cannot run EcaAttention nodes without their fallback function; give the fused model "
                f"that keeps it (model.eca.onnx, not model.eca.plugin.onnx)")
    return None


@dataclass(frozen=True)
class _Contents:
    """What the README describes: the models written and left out, their files and where the server sees them."""

    base: str
    models: dict[str, str]
    skipped: dict[str, str]
    model: OnnxModel
    plugin_names: dict[str, str]
    onnx_device: str
    serving_root: str
    max_batch_size: int

    def plugin_path(self, variant: str) -> str:
        return f"{self.serving_root}/{self.models[variant]}/{self.plugin_names[variant]}"


_PLATFORMS = {"tensorrt": ("`tensorrt_plan`", "GPU"), "onnx": ("`onnxruntime_onnx`", None),
              "python": ("`python` backend", "CPU")}


def _holds(variant: str, contents: _Contents) -> str:
    """One sentence: what the model's files are and how its EcaAttention nodes run."""
    plugin = contents.plugin_names.get(variant)
    if variant == "tensorrt":
        layers = (f"its EcaAttention plugin layers, if it has any, run on `{plugin}` (copied beside the config)"
                  if plugin else "no plugin library was given, so the plan must hold native layers only or embed "
                                 "the plugin")
        return f"a TensorRT plan (its tag says TensorRT, not TensorRT-RTX); {layers}"
    described = contents.model.describe()
    if variant == "python":
        return f"{described}, run by `eca_deploy.serving` on ONNX Runtime CPU with request checks"
    if contents.onnx_device == "cpu":
        return f"{described}, run by ONNX Runtime CPU"
    library = f"with `{plugin}` (copied beside the config)" if plugin else "without a plugin library"
    return f"{described}, run by ONNX Runtime's TensorRT execution provider {library}"


def _source_checkout() -> Path | None:
    """The eca-deploy checkout this module runs from (an editable install), or None for an installed wheel."""
    root = _PACKAGE_ROOT.parent
    return root if (root / "pyproject.toml").is_file() else None


def _readme(contents: _Contents) -> str:
    inp, out, models, root = contents.model.input, contents.model.output, contents.models, contents.serving_root
    shape = " x ".join(str(d) for d in inp.dims)
    lines = [f"# Triton models for {contents.base}", "",
             f"Written by eca-deploy. Input `{inp.name}`: N x {shape} {inp.data_type.removeprefix('TYPE_')} "
             f"(N <= {contents.max_batch_size}, ImageNet-normalized RGB); output `{out.name}`: N x {out.dims[0]} "
             f"logits.", "", "| model | platform | runs on | holds |", "|---|---|---|---|"]
    for variant, model in models.items():
        platform, device = _PLATFORMS[variant]
        device = device or contents.onnx_device.upper()
        lines.append(f"| `{model}` | {platform} | {device} | {_holds(variant, contents)} |")
    lines.append("")
    if contents.skipped:
        lines += ["Not written:", ""]
        lines += [f"- `{contents.base}_{variant}`: {reason}." for variant, reason in contents.skipped.items()]
        lines.append("")

    if "python" in models:
        checkout = _source_checkout()
        where = str(checkout) if checkout else "/path/to/eca-deploy"
        lines += ["## Install", "",
                  f"`{models['python']}` imports eca-deploy inside Triton's Python backend, so the Python environment "
                  "its stub runs needs it. eca-deploy is not on the package index: install it from a clone of its "
                  "repository" + (f" (this repository was written from the checkout at `{checkout}`)" if checkout
                                  else "") + ":", "", "```bash",
                  f"pip install {where}    # or: pip install -e {where}, to edit the checkout in place", "```", ""]

    command = [f"tritonserver --model-repository={root}"]
    if "tensorrt" in contents.plugin_names:
        command.append(f'--backend-config=tensorrt,plugins="{contents.plugin_path("tensorrt")}"')
    lines += ["## Serve", "", f"Paths below assume the server sees this repository at `{root}`.", "", "```bash",
              " \\\n    ".join(command), "```", "",
              "It answers HTTP on port 8000 and gRPC on 8001; "
              f"`curl localhost:8000/v2/models/{next(iter(models.values()))}/ready` says when a model is loaded.", ""]
    if "tensorrt" in models:
        lines += ["The plan only runs with the TensorRT version and GPU it was built for (unless it was built "
                  "version- and hardware-compatible); its layers are not inspected here."]
        if "tensorrt" in contents.plugin_names:
            lines += ["Triton's TensorRT backend only `dlopen()`s plugin libraries: `--backend-config` above loads "
                      "the self-registering one copied beside the config; "
                      f"`LD_PRELOAD={contents.plugin_path('tensorrt')}` does the same."]
        else:
            lines += ["A plan that embeds the plugin (version-compatible) also needs "
                      "`--backend-config=tensorrt,version-compatible=true`."]
        lines.append("")
    if "onnx" in models:
        lines += [f"`{models['onnx']}` needs the server's onnxruntime backend (the Triton containers have it; the "
                  "server bundled with nvidia-pytriton has only the Python backend)."]
        if "onnx" in contents.plugin_names:
            lines += ["Its TensorRT execution provider loads the plugin library named in `trt_extra_plugin_lib_paths` "
                      "itself: no server flag is needed for it."]
        lines.append("")

    datatype = inp.data_type.removeprefix("TYPE_")
    lines += ["## Query", "", "```python", "import numpy as np", "import tritonclient.http as httpclient", "",
              'client = httpclient.InferenceServerClient("localhost:8000")',
              f'batch = np.zeros((2, {", ".join(map(str, inp.dims))}), dtype=np.float32)  # preprocessed images',
              f'request = httpclient.InferInput("{inp.name}", list(batch.shape), "{datatype}")',
              "request.set_data_from_numpy(batch)",
              f'logits = client.infer("{next(iter(models.values()))}", [request]).as_numpy("{out.name}")', "```", "",
              f"A request of the wrong shape or data type, or of more than {contents.max_batch_size} images, is "
              "answered with HTTP 400 (gRPC INVALID_ARGUMENT) and the reason"
              + (f"; `{models['python']}` also refuses NaN and Inf values that way" if "python" in models else "")
              + ".", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Writing


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_triton_repository(repo_dir: str | Path, onnx_path: str | Path, *, engine_path: str | Path | None = None,
                            plugin_library: str | Path | None = None, model_name: str | None = None,
                            max_batch_size: int = 32, opt_batch: int | None = None,
                            preferred_batch_sizes: Sequence[int] = (), max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
                            variants: Sequence[str] | None = None, onnx_device: str = "cpu",
                            onnx_trt_precision: str = "FP32", instances: int = 1,
                            class_names: Sequence[str] | None = None,
                            serving_root: str | None = None) -> TritonRepository:
    """Write Triton models for the fused ``onnx_path`` (and ``engine_path``) into ``repo_dir``.

    Args:
        repo_dir: the model repository (created; other models in it are left alone, ours replaced).
        onnx_path: the fused ONNX model (``*.eca.onnx``; plain ONNX works too).
        engine_path: a serialized TensorRT engine built from it: adds ``<name>_tensorrt`` (TensorRT-RTX
            plans are left out, see ``variants``).
        plugin_library: ``libeca_plugin_autoreg.so`` (or ``libeca_plugin.so`` with the autoreg one beside it),
            copied beside the configs that load it.
        model_name: base model name (default: the ONNX file's stem without ``.eca``).
        max_batch_size: Triton's ``max_batch_size``; must be within the engine's profile.
        opt_batch: the batch the TensorRT execution provider's profile is tuned for (default ``max_batch_size``).
        preferred_batch_sizes, max_queue_delay_us: the dynamic batcher's settings.
        variants: which of ``tensorrt``, ``onnx``, ``python`` to write. Default: all that apply, leaving out
            (with the reason in ``skipped``) those the server could not load; named here, such a variant is
            an error.
        onnx_device: ``cpu`` or ``gpu`` (TensorRT execution provider, with the plugin when given).
        onnx_trt_precision: ``FP32`` or ``FP16`` for the TensorRT execution provider.
        instances: model instances per device (TensorRT and ONNX Runtime variants).
        class_names: one name per class: written as ``labels.txt`` for Triton's classification extension.
        serving_root: where the server will see ``repo_dir`` (e.g. ``/models`` in a container), for the
            absolute plugin paths in configs and README (default: ``repo_dir``'s absolute path).
    """
    repo_dir, onnx_path = Path(repo_dir), Path(onnx_path)
    if not onnx_path.is_file():
        raise EcaDeployError(f"ONNX model {onnx_path} does not exist")
    engine = Path(engine_path) if engine_path is not None else None
    if engine is not None and not engine.is_file():
        raise EcaDeployError(f"TensorRT engine {engine} does not exist")
    if max_batch_size < 1:
        raise EcaDeployError(f"max_batch_size must be at least 1, got {max_batch_size}")
    if any(not 1 <= size <= max_batch_size for size in preferred_batch_sizes):
        raise EcaDeployError(f"preferred batch sizes must be between 1 and max_batch_size {max_batch_size}")
    opt_batch = max_batch_size if opt_batch is None else opt_batch
    if not 1 <= opt_batch <= max_batch_size:
        raise EcaDeployError(f"opt_batch must be between 1 and max_batch_size {max_batch_size}, got {opt_batch}")
    if onnx_device not in ONNX_DEVICES:
        raise EcaDeployError(f"onnx_device must be one of {', '.join(ONNX_DEVICES)}, got {onnx_device!r}")
    if onnx_trt_precision not in TRT_PRECISIONS:
        raise EcaDeployError(f"onnx_trt_precision must be one of {', '.join(TRT_PRECISIONS)}, "
                             f"got {onnx_trt_precision!r}")
    if instances < 1 or max_queue_delay_us < 0:
        raise EcaDeployError("instances must be at least 1 and max_queue_delay_us at least 0")
    chosen = list(variants) if variants is not None else [v for v in VARIANTS if v != "tensorrt" or engine]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown or not chosen:
        raise EcaDeployError(f"variants must be some of {', '.join(VARIANTS)}, got {chosen}")
    if "tensorrt" in chosen and engine is None:
        raise EcaDeployError("the tensorrt variant needs engine_path")

    model = read_onnx_model(onnx_path)
    inp, out = model.input, model.output
    if class_names is not None and len(class_names) != out.dims[0]:
        raise EcaDeployError(f"{len(class_names)} class names for {out.dims[0]} classes")
    plugin = Path(plugin_library) if plugin_library is not None else None
    skipped: dict[str, str] = {}
    for variant in chosen:
        reason = unservable_reason(variant, model, engine, onnx_device, plugin_given=plugin is not None)
        if reason is not None and variants is not None:
            raise EcaDeployError(f"cannot write the {variant} variant: {reason}")
        if reason is not None:
            skipped[variant] = reason
    chosen = [v for v in chosen if v not in skipped]
    if not chosen:
        raise EcaDeployError(f"Triton could load none of the models: {'; '.join(skipped.values())}")
    base = triton_model_name(model_name or onnx_path.name.removesuffix(".onnx").removesuffix(".eca"))
    names = {variant: f"{base}_{variant}" for variant in chosen}
    triton_plugin = _triton_plugin(plugin) if plugin is not None and (
        "tensorrt" in chosen or ("onnx" in chosen and onnx_device == "gpu")) else None
    root_seen = (serving_root or str(repo_dir.resolve())).rstrip("/") or "/"
    common = dict(max_batch_size=max_batch_size, preferred=list(preferred_batch_sizes),
                  queue_delay_us=max_queue_delay_us, labels=class_names is not None)

    plugin_names: dict[str, str] = {}
    configs: dict[str, dict] = {}
    readme = f"{base}.README.md"
    with staged_outputs(repo_dir) as staging:
        for variant, name in names.items():
            model_dir = staging / name
            if variant == "tensorrt":
                _copy(engine, model_dir / "1" / "model.plan")
                configs[name] = tensorrt_config(name, inp, out, instances=instances, **common)
            else:
                _copy(onnx_path, model_dir / "1" / "model.onnx")
                for location in model.external_data:
                    _copy(onnx_path.parent / location, model_dir / "1" / location)
                if variant == "python":
                    _copy(_PYTHON_MODEL, model_dir / "1" / "model.py")
                    configs[name] = python_config(name, inp, out, **common)
            needs_plugin = triton_plugin is not None and (variant == "tensorrt" or
                                                          (variant == "onnx" and onnx_device == "gpu"))
            if needs_plugin:
                _copy(triton_plugin, model_dir / triton_plugin.name)
                plugin_names[variant] = triton_plugin.name
            if variant == "onnx":
                plugin_path = f"{root_seen}/{name}/{triton_plugin.name}" if needs_plugin else None
                configs[name] = onnx_config(name, inp, out, instances=instances, device=onnx_device,
                                            trt_precision=onnx_trt_precision, plugin_path=plugin_path,
                                            opt_batch=opt_batch, **common)
            if class_names is not None:
                (model_dir / "labels.txt").write_text("\n".join(class_names) + "\n")
        validated = True
        for name, config in configs.items():
            text = format_pbtxt(config) + "\n"
            validated &= validate_model_config(text, expected_name=name) is not None
            (staging / name / "config.pbtxt").write_text(text)
        contents = _Contents(base=base, models=names, skipped=skipped, model=model, plugin_names=plugin_names,
                             onnx_device=onnx_device, serving_root=root_seen, max_batch_size=max_batch_size)
        (staging / readme).write_text(_readme(contents))
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        for item in staging.iterdir():  # ours replace the previous ones as the block ends; other models stay
            _remove(repo_dir / item.name)
    return TritonRepository(root=repo_dir, models=names, files=tuple(files), schema_validated=validated,
                            readme=repo_dir / readme, skipped=skipped)
