"""Engine building through the project's own code with a real TensorRT-family builder.

TensorRT-RTX (`tensorrt-rtx-cu13`) builds serialized engines without a GPU; deserializing and
running them needs one (scripts/gpu_check.py and the harness do that on GPU machines).
"""

from __future__ import annotations

import functools
import json

import pytest

from eca_deploy.cli.main import main
from eca_deploy.errors import EcaDeployError
from eca_deploy.onnx_export import export_onnx
from eca_deploy.models import create_demo_model, get_architecture
from eca_deploy.passes import fuse_eca
from eca_deploy.tensorrt.backend import load_backend
from eca_deploy.tensorrt.engine import BatchProfile, PluginPlan, build_engine, inspect_engine

trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 is not installed (pip install -e '.[test]')")
PROFILE = BatchProfile(1, 2, 4)


@pytest.fixture(scope="session", params=["eca_mobilenet_v2", "eca_resnet18"])
def exported(request, tmp_path_factory):
    """(arch, {precision: (plain path, fused path)}) at 64 x 64, exported once per session."""
    import onnx

    folder = tmp_path_factory.mktemp(request.param)
    paths = {}
    for precision in ("fp32", "fp16"):
        plain = folder / f"model.{precision}.onnx"
        export_onnx(create_demo_model(request.param), plain, input_shape=(3, 64, 64), precision=precision,
                    exporter="legacy")
        fused, report = fuse_eca(onnx.load(str(plain)))
        assert report.num_fused == get_architecture(request.param).num_eca_layers
        fused_path = folder / f"model.{precision}.eca.onnx"
        onnx.save(fused, str(fused_path))
        paths[precision] = (plain, fused_path)
    return request.param, paths


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_plain_and_fused_models_build_with_a_dynamic_batch_profile(tmp_path, exported, precision):
    arch, paths = exported
    plain, fused = paths[precision]
    plain_result = build_engine(plain, tmp_path / "plain.engine", batch=PROFILE, cache_dir=None)
    fused_result = build_engine(fused, tmp_path / "fused.engine", batch=PROFILE, cache_dir=None)
    for result in (plain_result, fused_result):
        assert result.path.stat().st_size == result.size_bytes > 100_000
        assert (result.precision, result.backend) == (precision, "tensorrt_rtx")
        assert result.to_dict()["profile"] == {"min": 1, "opt": 2, "max": 4}
    assert plain_result.plugin.mode == "none"
    # Without a plugin library the fused nodes are inlined from their function: native layers only.
    assert fused_result.plugin.mode == "fallback-function"
    assert fused_result.num_fused_nodes == get_architecture(arch).num_eca_layers
    assert fused_result.num_plugin_layers == 0
    types = [layer["type"] for layer in fused_result.layers]
    assert types.count("REDUCE") >= fused_result.num_fused_nodes  # one pooling per inlined ECA function
    assert "ACTIVATION" in types and "CONVOLUTION" in types


def test_engine_cache_hits_and_invalidates(tmp_path, exported):
    _, paths = exported
    plain, _ = paths["fp32"]
    cache = tmp_path / "cache"
    first = build_engine(plain, tmp_path / "a.engine", batch=PROFILE, cache_dir=cache)
    second = build_engine(plain, tmp_path / "b.engine", batch=PROFILE, cache_dir=cache)
    assert not first.cache["hit"] and second.cache["hit"] and first.cache["key"] == second.cache["key"]
    assert (tmp_path / "a.engine").read_bytes() == (tmp_path / "b.engine").read_bytes()
    assert second.layers == first.layers and first.layers  # a hit reports the layers without re-parsing
    other_profile = build_engine(plain, tmp_path / "c.engine", batch=(1, 4, 8), cache_dir=cache)
    other_model = build_engine(paths["fp16"][0], tmp_path / "d.engine", batch=PROFILE, cache_dir=cache)
    assert not other_profile.cache["hit"] and not other_model.cache["hit"]
    assert len({first.cache["key"], other_profile.cache["key"], other_model.cache["key"]}) == 3
    # TensorRT keeps a timing cache beside the engines; TensorRT-RTX has none (its cache calls are no-ops).
    assert any(p.name.startswith("timing-") for p in cache.iterdir()) == load_backend().has_timing_cache


def test_every_input_of_the_engine_cache_key_misses_on_its_own(tmp_path, exported, monkeypatch):
    """A cached engine is reused only for the same model bytes, profile, TensorRT version, GPU, precision, route
    and plugin: each of them changed alone is a miss (the plugin library's bytes: test_engine_plugin.py)."""
    from eca_deploy.tensorrt import engine as engine_module

    _, paths = exported
    plain, _ = paths["fp32"]
    cache = tmp_path / "cache"

    def build(name: str):
        return build_engine(plain, tmp_path / f"{name}.engine", batch=PROFILE, cache_dir=cache)

    assert not build("first").cache["hit"] and build("again").cache["hit"]
    with monkeypatch.context() as patch:  # the same machine with another GPU
        patch.setattr(engine_module, "gpu_tag", lambda: "sm_87")
        assert not build("other_gpu").cache["hit"]
    with monkeypatch.context() as patch:  # an upgraded TensorRT
        patch.setattr(trt, "__version__", f"{trt.__version__}.1")
        assert not build("other_tensorrt").cache["hit"]
    assert build("again_after").cache["hit"]

    backend = load_backend()
    key = functools.partial(engine_module.engine_cache_key, engine_module.read_model(plain)[1], backend)
    library = tmp_path / "libeca_plugin.so"
    library.write_bytes(b"stands for a plugin library: only its hash enters the key")
    plans = [PluginPlan("none"), PluginPlan("fallback-function"), PluginPlan("library", library, "a" * 64),
             PluginPlan("library", library, "b" * 64), PluginPlan("serialized-in-engine", library, "a" * 64),
             PluginPlan("aot-ptx")]
    keys = [key(precision, route, PROFILE, PluginPlan("none"))
            for precision in ("fp32", "fp16", "int8") for route in ("strongly-typed", "builder-flag")]
    keys += [key("fp32", "strongly-typed", profile, PluginPlan("none")) for profile in (BatchProfile(1, 2, 8),
                                                                                       BatchProfile(2, 2, 4))]
    keys += [key("fp32", "strongly-typed", PROFILE, plan) for plan in plans[1:]]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch": (4, 2, 8)}, "min <= opt <= max"),
    ({"plugin_library": "missing.so"}, "does not exist"),
    ({"precision_route": "builder-flag", "precision": "fp16"}, "strongly typed only"),
    ({"precision": "fp16"}, "the ONNX model is fp32, not fp16"),
    ({"aot": True}, r"ahead-of-time plugin needs TensorRT >= 10\.9 .*this is tensorrt_rtx"),
])
def test_bad_requests_fail_without_an_engine(tmp_path, exported, kwargs, message):
    _, paths = exported
    if "plugin_library" in kwargs:
        kwargs = {**kwargs, "plugin_library": tmp_path / kwargs["plugin_library"]}
    with pytest.raises(EcaDeployError, match=message):
        build_engine(paths["fp32"][1], tmp_path / "out" / "model.engine", cache_dir=None, **kwargs)
    assert not (tmp_path / "out" / "model.engine").exists()


def test_engine_inspection_needs_a_gpu(tmp_path, exported):
    _, paths = exported
    result = build_engine(paths["fp32"][0], tmp_path / "model.engine", batch=PROFILE, cache_dir=None)
    import torch

    if torch.cuda.is_available():
        assert "Layers" in inspect_engine(result.path)
    else:
        with pytest.raises(EcaDeployError, match="could not deserialize"):
            inspect_engine(result.path)


def test_missing_backend_names_what_to_install():
    with pytest.raises(EcaDeployError, match=r"pip install 'eca-deploy\[trt\]'"):
        load_backend("tensorrt") if not _installed("tensorrt") else pytest.skip("TensorRT is installed")


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_build_cli_end_to_end(tmp_path, exported, capsys):
    _, paths = exported
    fused = paths["fp16"][1]
    engine = tmp_path / "model.engine"
    assert main(["build", str(fused), "-o", str(engine), "--max-batch", "4", "--opt-batch", "2", "--no-cache",
                 "-q"]) == 0
    report = json.loads((tmp_path / "model.engine.json").read_text())
    assert report["precision"] == "fp16" and report["plugin"]["mode"] == "fallback-function"
    assert engine.stat().st_size == report["size_bytes"]
    assert "plugin: fallback-function" in capsys.readouterr().out
    bad = tmp_path / "bad.onnx"
    bad.write_text("not onnx")
    assert main(["build", str(bad), "--no-cache", "-q"]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err and not (tmp_path / "bad.engine").exists()


@pytest.mark.slow
def test_export_cli_with_engine(tmp_path):
    out = tmp_path / "out"
    assert main(["export", "eca_mobilenet_v2", "--input-size", "64", "--exporter", "legacy", "--engine",
                 "--max-batch", "4", "--opt-batch", "2", "-o", str(out), "-q"]) == 0
    report = json.loads((out / "eca_mobilenet_v2.report.json").read_text())
    assert report["engine"]["plugin"]["mode"] == "fallback-function"
    assert (out / "eca_mobilenet_v2.engine").stat().st_size == report["engine"]["size_bytes"]
