"""The EcaAttention plugin library inside a real TensorRT builder, on a machine without a GPU.

TensorRT-RTX (`tensorrt-rtx-cu13`) loads libeca_plugin.so (built here with CMake and -Werror against the
TensorRT 10.3 and 11.1 headers, tests/plugin_build.py), parses fused models into PLUGIN_V3 layers and
builds engines: its builder calls the plugin's createPlugin, supportsFormatCombination, getOutputShapes,
getOutputDataTypes, configurePlugin, getWorkspaceSize, clone and getFieldsToSerialize. Running an engine
(enqueue) needs a GPU. The plugin traces its build-phase answers at VERBOSE level; `eca-deploy build
--verbose` prints them, and the tests hold them to the design.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from cli_checks import assert_refused, run_cli, tree
from ecanets import CecaModule
from plugin_build import PLUGIN_LIBRARY, plugin_build
from tensorrt_headers import CI_VERSIONS
from torch import nn

from eca_deploy.errors import EcaDeployError, PluginNotUsedError
from eca_deploy.onnx_export import export_onnx
from eca_deploy.models import EcaLayer, create_demo_model, get_architecture
from eca_deploy.onnx_files import save_onnx
from eca_deploy.passes import fuse_eca
from eca_deploy.passes.fused_node import (
    count_fused_nodes,
    eca_node_attributes,
    is_fused_eca_node,
    without_plugin_lookup,
)
from eca_deploy.tensorrt import plugin_library
from eca_deploy.tensorrt.backend import load_backend
from eca_deploy.tensorrt.engine import PluginPlan, build_engine, check_plugin_layers
from eca_deploy.tensorrt.plugin_library import (
    RTX_LOADER_NAME,
    ensure_rtx_loader_name,
    load_plugin_library,
)

trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 is not installed (pip install -e '.[test]')")

PROFILE = (1, 8, 32)
ZOO = ("eca_mobilenet_v2", "eca_resnet50")
# What the plugin admits for x (and y) per precision: ecaPlugin.cpp's kSUPPORTED_FORMATS.
FORMATS = {"fp32": {"kFLOAT/kLINEAR", "kFLOAT/kHWC"}, "fp16": {"kHALF/kLINEAR", "kHALF/kHWC8"}}
CONFIGURE = re.compile(r"configurePlugin: input 'x' (\S+) min \[(.*?)\] max \[(.*?)\], output (\S+)")
WORKSPACE = re.compile(r"getWorkspaceSize: (\d+) bytes for input 'x' max \[(.*?)\]")


@pytest.fixture(scope="module")
def library() -> Path:
    """libeca_plugin.so built against JetPack 6's TensorRT 10.3 headers."""
    return plugin_build(CI_VERSIONS[0]) / PLUGIN_LIBRARY


def expected_workspace(n: int, c: int) -> int:
    """ecaWorkspaceSize (ecaKernel.cu): one float per (n, c), at least 32 Ki of them, in 256-byte units."""
    return math.ceil(max(n * c, 32 * 1024) * 4 / 256) * 256


def eca_input_shapes(module: nn.Module, size: int) -> set[tuple[int, int, int]]:
    """(C, H, W) of the input of every ECA layer of ``module`` at ``size`` x ``size``."""
    shapes = set()
    hooks = [layer.register_forward_hook(lambda _, inputs, __: shapes.add(tuple(inputs[0].shape[1:])))
             for layer in module.modules() if isinstance(layer, EcaLayer)]
    with torch.no_grad():
        module(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return shapes


@pytest.fixture(scope="module")
def zoo_models(tmp_path_factory) -> dict[tuple[str, str], tuple[Path, set]]:
    """(arch, precision) -> (fused ONNX at 224 x 224, ECA input shapes), exported once."""
    folder = tmp_path_factory.mktemp("zoo")
    models = {}
    for arch in ZOO:
        module = create_demo_model(arch)
        shapes = eca_input_shapes(module, 224)
        for precision in ("fp32", "fp16"):
            plain = folder / f"{arch}.{precision}.onnx"
            export_onnx(module, plain, precision=precision, exporter="legacy")
            fused, report = fuse_eca(onnx.load(str(plain)))
            assert report.num_fused == get_architecture(arch).num_eca_layers
            save_onnx(fused, folder / f"{arch}.{precision}.eca.onnx")
            models[arch, precision] = (folder / f"{arch}.{precision}.eca.onnx", shapes)
    return models


def load_in_fresh_process(path: Path) -> subprocess.CompletedProcess:
    """load_plugin_library into TensorRT-RTX in a new process (a process holds one EcaAttention library);
    prints the creator, or the error sentence with exit code 2."""
    code = ("import sys, tensorrt_rtx as trt; from eca_deploy.errors import EcaDeployError; "
            "from eca_deploy.tensorrt.plugin_library import load_plugin_library; registry = trt.get_plugin_registry()\n"
            "try:\n    load_plugin_library(trt, registry, sys.argv[1])\n"
            "except EcaDeployError as error:\n    sys.exit(str(error))\n"
            "creator = registry.get_creator('EcaAttention', '1', 'eca_deploy')\n"
            "print(type(creator).__name__, [(f.name, f.type.name) for f in creator.field_names])")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("version", CI_VERSIONS)
def test_rtx_loads_the_library_and_lists_its_v3_creator(version):
    run = load_in_fresh_process(plugin_build(version) / PLUGIN_LIBRARY)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "IPluginCreatorV3One [('kernel_size', 'INT32'), ('pad_mode', 'CHAR')]"


def test_a_second_library_with_the_same_creator_is_refused(tmp_path, library):
    registry = trt.get_plugin_registry()
    assert load_plugin_library(trt, registry, library) is load_plugin_library(trt, registry, library)
    copy = tmp_path / "libeca_plugin_copy.so"
    copy.write_bytes(library.read_bytes())
    with pytest.raises(EcaDeployError, match="another library already registered the EcaAttention creator"):
        load_plugin_library(trt, registry, copy)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ZOO)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_zoo_engines_have_one_plugin_layer_per_fused_node(tmp_path, zoo_models, library, arch, precision):
    fused, _ = zoo_models[arch, precision]
    result = build_engine(fused, tmp_path / "model.engine", batch=PROFILE, plugin_library=library, cache_dir=None)
    expected = get_architecture(arch).num_eca_layers
    assert (result.plugin.mode, result.precision, result.backend) == ("library", precision, "tensorrt_rtx")
    assert result.num_fused_nodes == expected
    assert [layer["type"] for layer in result.layers].count("PLUGIN_V3") == result.num_plugin_layers == expected
    assert result.to_dict()["plugin"]["path"] == str(library)
    engine = result.path.read_bytes()
    assert engine[:4] == b"vtrt" and len(engine) == result.size_bytes
    # Every plugin layer's getFieldsToSerialize output is in the plan, to recreate it at run time.
    assert engine.count(b"kernel_size") >= expected and engine.count(b"pad_mode") >= expected


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_phase_answers_follow_the_design(tmp_path, zoo_models, library, precision):
    """Through the CLI in a fresh process (as a user runs it): formats, the profile and the workspace."""
    fused, shapes = zoo_models["eca_resnet50", precision]
    engine = tmp_path / "model.engine"
    run = subprocess.run([sys.executable, "-m", "eca_deploy", "build", str(fused), "-o", str(engine),
                          "--min-batch", str(PROFILE[0]), "--opt-batch", str(PROFILE[1]), "--max-batch",
                          str(PROFILE[2]), "--plugin", str(library), "--no-cache", "--verbose", "-q"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    configured = CONFIGURE.findall(run.stderr)
    workspaces = WORKSPACE.findall(run.stderr)
    assert configured and workspaces, run.stderr[-3000:]
    seen = set()
    for x_format, low, high, y_format in configured:
        low, high = [tuple(map(int, dims.split(", "))) for dims in (low, high)]
        assert x_format in FORMATS[precision] and y_format == x_format
        assert (low[0], high[0]) == (PROFILE[0], PROFILE[2]) and low[1:] == high[1:]
        seen.add(high[1:])
    assert seen == shapes  # every fused node was configured with the profile's range
    for size, high in workspaces:
        n, c, _, _ = map(int, high.split(", "))
        assert (n, int(size)) == (PROFILE[2], expected_workspace(n, c))
    assert f"{get_architecture('eca_resnet50').num_eca_layers} plugin layers" in run.stdout


def _eca_module(kernel_size: int, pad_mode: str) -> nn.Module:
    """A conv feeding one ECA block: the authors' layer (zero padding) or timm's CecaModule (circular)."""
    block = EcaLayer(12, kernel_size) if pad_mode == "constant" else CecaModule(kernel_size)
    return nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), block).eval()


# Circular padding of one tap pads nothing: the pass reports k = 1 as "constant", so (1, wrap) never occurs.
FUSED_ATTRIBUTES = [(k, "constant") for k in (1, 3, 5, 7, 9)] + [(k, "wrap") for k in (3, 5, 7, 9)]


@pytest.mark.parametrize(("kernel_size", "pad_mode"), FUSED_ATTRIBUTES)
def test_every_attribute_the_fusion_pass_emits_builds_on_the_plugin(tmp_path, library, kernel_size, pad_mode):
    torch.manual_seed(kernel_size)
    plain = tmp_path / "block.onnx"
    export_onnx(_eca_module(kernel_size, pad_mode), plain, input_shape=(3, 9, 7), exporter="legacy", opset=19)
    fused, report = fuse_eca(onnx.load(str(plain)))
    (node,) = [node for node in fused.graph.node if is_fused_eca_node(node)]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    expected = eca_node_attributes(kernel_size, pad_mode)
    assert attributes == {key: value.encode() if isinstance(value, str) else value for key, value in expected.items()}
    save_onnx(fused, tmp_path / "block.eca.onnx")
    result = build_engine(tmp_path / "block.eca.onnx", tmp_path / "block.engine", batch=(1, 2, 4),
                          plugin_library=library, cache_dir=None)
    assert result.num_plugin_layers == result.num_fused_nodes == report.num_fused == 1
    assert pad_mode.encode() in result.path.read_bytes()


def test_engines_hold_the_layers_their_plan_promises(tmp_path, zoo_models, library):
    """Native layers where the plugin was asked for, or plugin layers where none was, fail with exit code 1."""
    fused, _ = zoo_models["eca_mobilenet_v2", "fp32"]
    load_plugin_library(trt, trt.get_plugin_registry(), library)
    # The creator is registered in this process, yet a build without --plugin still inlines the function.
    native = build_engine(fused, tmp_path / "native.engine", batch=PROFILE, cache_dir=None)
    assert native.plugin.mode == "fallback-function" and native.num_plugin_layers == 0
    with pytest.raises(PluginNotUsedError, match="has 0 plugin layers for 17 EcaAttention nodes") as error:
        check_plugin_layers(PluginPlan("library"), native.num_fused_nodes, native.layers)
    assert error.value.exit_code == 1
    plugged = build_engine(fused, tmp_path / "plugin.engine", batch=PROFILE, plugin_library=library, cache_dir=None)
    with pytest.raises(PluginNotUsedError, match="no plugin was requested .* has 17 plugin layers"):
        check_plugin_layers(PluginPlan("fallback-function"), plugged.num_fused_nodes, plugged.layers)


def _parses_to_native_layers(fused: Path, destination: Path) -> Path:
    """``fused`` as a tool that renames domains and drops unknown attributes might leave it: its EcaAttention nodes
    without plugin_namespace/plugin_version, their function copied into another domain. TensorRT's parser keys
    functions by name only and, without plugin_namespace, prefers the function to the registered plugin: with
    the plugin loaded and our function removed, the nodes still parse to native layers."""
    model = without_plugin_lookup(onnx.load(str(fused)))
    renamed = onnx.FunctionProto()
    renamed.CopyFrom(model.functions[0])
    renamed.domain = "renamed"
    model.functions.append(renamed)
    model.opset_import.append(onnx.helper.make_opsetid("renamed", 1))
    onnx.save(model, str(destination))
    return destination


def test_build_and_export_exit_1_without_an_engine_when_the_plugin_layers_are_missing(tmp_path, zoo_models,
                                                                                      library):
    """The plugin-layer check as users meet it: eca-deploy build on a model whose nodes parse to native layers,
    eca-export --engine with a library that registers no creator: exit 1, one sentence, no engine; export keeps
    its ONNX files and report."""
    fused, _ = zoo_models["eca_mobilenet_v2", "fp32"]
    odd = _parses_to_native_layers(fused, tmp_path / "odd.onnx")
    engine = tmp_path / "odd.engine"
    result = run_cli("eca-deploy", "build", odd, "--plugin", library, "--max-batch", "2", "--opt-batch", "1",
                     "--no-cache", "-q", "-o", engine)
    assert_refused(result, r"the plugin was requested \(library\) but the parsed network has 0 plugin layers for "
                           r"17 EcaAttention nodes; no engine was written", code=1)
    assert tree(tmp_path) == {"odd.onnx"}

    silent = _library_from_c(tmp_path, "silent", "__attribute__((constructor)) static void registration(void) {}\n")
    out = tmp_path / "out"
    result = run_cli("eca-export", "eca_resnet18", "--input-size", "64", "--exporter", "legacy", "--engine",
                     "--plugin", silent, "--max-batch", "2", "--opt-batch", "1", "-q", "-o", out)
    assert_refused(result, r"libsilent.so loaded but registered no EcaAttention version 1 creator .*; the ONNX files "
                           r"and eca_resnet18.report.json are kept", code=1)
    assert tree(out) == {"eca_resnet18.onnx", "eca_resnet18.eca.onnx", "eca_resnet18.report.json"}
    report = json.loads((out / "eca_resnet18.report.json").read_text())
    assert "registered no EcaAttention" in report["engine"]["failed"]


def test_a_rebuilt_plugin_library_never_reuses_a_cached_engine(tmp_path, zoo_models, library):
    """The engine cache keys the library's bytes: the same library (even at another path) hits, a rebuilt one
    (here the same library with bytes appended, which still loads) misses. Each build runs in its own process
    (one EcaAttention library per process)."""
    fused, _ = zoo_models["eca_mobilenet_v2", "fp32"]
    cache, rebuilt = tmp_path / "cache", tmp_path / "rebuilt" / PLUGIN_LIBRARY
    rebuilt.parent.mkdir()
    rebuilt.write_bytes(library.read_bytes() + b"\0rebuilt")

    def build(name: str, plugin: Path) -> dict:
        engine = tmp_path / f"{name}.engine"
        result = run_cli("eca-deploy", "build", fused, "--plugin", plugin, "--max-batch", "2", "--opt-batch", "1",
                         "--cache-dir", cache, "-q", "-o", engine)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(engine.with_name(engine.name + ".json").read_text())

    first, same = build("first", library), build("same", library)
    assert not first["cache"]["hit"] and same["cache"]["hit"]
    other = build("rebuilt", rebuilt)
    assert not other["cache"]["hit"] and other["plugin"]["sha256"] != first["plugin"]["sha256"]
    assert other["num_plugin_layers"] == 17


def _library_from_c(tmp_path: Path, name: str, source: str, *flags: str) -> Path:
    """A shared library compiled from C ``source`` (stands for a broken or foreign plugin library)."""
    c_file, library = tmp_path / f"{name}.c", tmp_path / f"lib{name}.so"
    c_file.write_text(source)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(c_file), *flags], check=True)
    return library


def test_a_library_without_our_creator_is_refused(tmp_path):
    """A self-registering library (no getCreators) that registers nothing, and a loader library with no creator."""
    silent = _library_from_c(tmp_path, "silent", "__attribute__((constructor)) static void registration(void) {}\n")
    run = load_in_fresh_process(silent)
    assert run.returncode == 1 and "registered no EcaAttention version 1 creator" in run.stderr, run.stderr
    empty = _library_from_c(tmp_path, "no_creators", "int getCreators(int* count) { *count = 0; return 0; }\n")
    run = load_in_fresh_process(empty)
    assert run.returncode == 1 and f"tensorrt_rtx could not load plugin library {empty}" in run.stderr, run.stderr


def test_a_library_tensorrt_cannot_load_is_refused(tmp_path):
    """TensorRT's load_library returns None (an unresolved symbol here): one sentence, not a crash."""
    broken = _library_from_c(tmp_path, "unresolved", "extern int missing(void);\n"
                             "int getCreators(int* count) { return missing(); }\n", "-Wl,--allow-shlib-undefined")
    run = load_in_fresh_process(broken)
    assert run.returncode == 1 and f"tensorrt_rtx could not load plugin library {broken}" in run.stderr, run.stderr


def test_self_registering_and_loader_libraries_are_told_apart_by_their_symbols(tmp_path, library):
    assert not plugin_library.is_self_registering(library)
    assert "getCreators" in plugin_library.exported_symbols(library)
    autoreg = _library_from_c(tmp_path, "autoreg", "__attribute__((constructor)) static void registration(void) {}\n")
    assert plugin_library.is_self_registering(autoreg)
    not_elf = tmp_path / "libeca_plugin_autoreg.so"
    not_elf.write_text("renamed text file")
    with pytest.raises(EcaDeployError, match="not a 64-bit little-endian ELF"):
        plugin_library.is_self_registering(not_elf)


def _rtx_wheel_link() -> Path:
    return Path(trt.__file__).resolve().parents[1] / "tensorrt_rtx_libs" / RTX_LOADER_NAME


def _remove_wheel_link() -> None:
    """Undo what ensure_rtx_loader_name did to the wheel folder, for a clean-machine check."""
    link = _rtx_wheel_link()
    if link.is_symlink():
        link.unlink()


@pytest.mark.slow
def test_build_cli_with_plugin_handles_the_rtx_loader_trap_itself(tmp_path, zoo_models, library):
    """On a fresh installation libtensorrt_rtx.so is missing and the parser's dlopen() would abort the process."""
    fused, _ = zoo_models["eca_mobilenet_v2", "fp16"]
    _remove_wheel_link()
    engine = tmp_path / "model.engine"
    run = subprocess.run([sys.executable, "-m", "eca_deploy", "build", str(fused), "-o", str(engine), "--plugin",
                          str(library), "--max-batch", "4", "--opt-batch", "2", "--no-cache", "-q"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "plugin: library, 17 plugin layers" in run.stdout
    assert _rtx_wheel_link().is_symlink() and engine.is_file()


@pytest.mark.slow
def test_read_only_rtx_folder_gets_a_remedy_that_works(tmp_path, zoo_models, library, monkeypatch):
    """Where the wheel's folder cannot take the link: the error names LD_LIBRARY_PATH, and following it works."""
    real = Path(trt.__file__).resolve().parents[1] / "tensorrt_rtx_libs" / f"{RTX_LOADER_NAME}.1"
    unwritable = Path("/proc/self/tensorrt_rtx_libs") / real.name  # /proc takes no symlink, even from root
    monkeypatch.setattr(plugin_library, "_loaded_library", lambda prefix: unwritable)
    fallback = tmp_path / "rtx-loader"
    with pytest.raises(EcaDeployError, match=f"start the process with LD_LIBRARY_PATH={fallback}"):
        ensure_rtx_loader_name(fallback)
    assert os.readlink(fallback / RTX_LOADER_NAME) == str(unwritable)
    (fallback / RTX_LOADER_NAME).unlink()
    (fallback / RTX_LOADER_NAME).symlink_to(real)  # the same link, to the library this machine has

    _remove_wheel_link()
    fused, _ = zoo_models["eca_mobilenet_v2", "fp32"]
    code = ("from eca_deploy.tensorrt.engine import build_engine; "
            f"r = build_engine({str(fused)!r}, {str(tmp_path / 'm.engine')!r}, batch=(1, 2, 4), "
            f"plugin_library={str(library)!r}, cache_dir=None); print(r.num_plugin_layers)")
    env = {**os.environ, "LD_LIBRARY_PATH": str(fallback)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0 and run.stdout.strip() == "17", run.stderr[-2000:]
    assert not _rtx_wheel_link().exists()
    monkeypatch.undo()
    ensure_rtx_loader_name()  # leave the installation as the package leaves it
    assert _rtx_wheel_link().is_symlink()


def test_model_without_fused_nodes_refuses_an_explicit_plugin(tmp_path, library):
    plain = tmp_path / "conv.onnx"
    export_onnx(nn.Sequential(nn.Conv2d(3, 4, 3)).eval(), plain, input_shape=(3, 8, 8), exporter="legacy")
    assert count_fused_nodes(onnx.load(str(plain))) == 0
    with pytest.raises(EcaDeployError, match="no EcaAttention node, so there is nothing for the plugin to run"):
        build_engine(plain, tmp_path / "conv.engine", plugin_library=library, cache_dir=None)
    assert not (tmp_path / "conv.engine").exists()


def test_backend_capabilities_of_tensorrt_rtx():
    backend = load_backend("tensorrt_rtx")
    assert backend.is_rtx and not backend.has_aot_plugins and not backend.has_fp16_builder_flag
