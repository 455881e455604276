"""timm models as users hold them: ``timm:NAME --weights FILE`` through export (FP32, FP16, INT8), fusion of every
ECA block, parity with the same timm model in PyTorch, engines with one plugin layer per block (TensorRT-RTX),
validate with timm's preprocessing, and the messages that point a timm state dict at the right route.

Weights come from ``timm.create_model(...).state_dict()`` saved to files (timm's hub is out of reach here), as a
bare state dict, a training checkpoint dict and ``.safetensors``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import onnx
import pytest
import torch
from cli_checks import assert_refused, required, run_cli, tree
from real_images import write_photographs

from eca_deploy.models.timm_models import eca_layers, timm_eca_models
from eca_deploy.passes import count_fused_nodes
from eca_deploy.provenance import read_provenance

timm = required("timm")
SIZE = 128  # pixels: every model below downsamples 32x; small enough for CI, and not any model's default

MODELS = {  # name -> (create_model keyword arguments, how the weights file is written)
    "ecaresnet50d": ({}, "state_dict.pth"),
    "eca_nfnet_l0": ({}, "safetensors"),
    "ecaresnetlight": ({}, "checkpoint.pth.tar"),
    "ecaresnet26t": ({}, "state_dict.pth"),
    "resnet18": ({"block_args": {"attn_layer": "ceca"}}, "state_dict.pth"),
}


def _save(module: torch.nn.Module, folder: Path, name: str, form: str) -> Path:
    state = module.state_dict()
    if form == "safetensors":
        from safetensors.torch import save_file

        path = folder / f"{name}.safetensors"
        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    elif form == "checkpoint.pth.tar":
        path = folder / f"{name}.pth.tar"
        torch.save({"epoch": 3, "state_dict": state}, path)
    else:
        path = folder / f"{name}.pth"
        torch.save(state, path)
    return path


@pytest.fixture(scope="module", params=sorted(MODELS))
def timm_weights(request, tmp_path_factory):
    """(name, timm_args JSON, weights file, the timm module with those weights, its ECA layer count) per model:
    10 classes, so the class count must come from the weights."""
    name = request.param
    kwargs, form = MODELS[name]
    torch.manual_seed(1)
    module = timm.create_model(name, num_classes=10, **kwargs).eval()
    folder = tmp_path_factory.mktemp(name)
    return name, json.dumps(kwargs), _save(module, folder, name, form), module, len(eca_layers(module))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photographs(tmp_path_factory.mktemp("photos") / "images")[0].parent


def _timm_args(kwargs_json: str) -> list[str]:
    return ["--timm-args", kwargs_json] if kwargs_json != "{}" else []


@pytest.mark.slow
def test_every_timm_model_exports_fuses_every_block_and_matches_pytorch(timm_weights, photos, tmp_path):
    """FP32 (dynamo exporter), FP16 and INT8 (legacy exporter, calibrated on photographs): every ECA block fused,
    parity with the timm model (ONNX Runtime CPU, batches 1 and 3), provenance in every file."""
    name, kwargs, weights, module, blocks = timm_weights
    assert blocks > 0
    for precision, extra in (("fp32", []), ("fp16", ["--fp16", "--exporter", "legacy"]),
                             ("int8", ["--int8", "--calib", str(photos), "--calib-size", "8", "--exporter", "legacy"])):
        out = tmp_path / precision
        result = run_cli("eca-export", f"timm:{name}", "--weights", weights, *_timm_args(kwargs), "--input-size",
                         str(SIZE), "--expect", str(blocks), *extra, "-q", "-o", out)
        assert result.returncode == 0, f"{name} {precision}: {result.stderr[-3000:]}"
        tag = name if precision == "fp32" else f"{name}.{precision}"
        report = json.loads((out / f"{tag}.report.json").read_text())
        assert report["num_classes"] == 10 and report["arch"] == name and report["source_kind"] == "timm"
        assert report["fusion"]["num_fused"] == blocks and all(p["passed"] for p in report["parity"])
        fused = onnx.load(str(out / f"{tag}.eca.onnx"))
        assert count_fused_nodes(fused) == blocks
        for file in (out / f"{tag}.onnx", out / f"{tag}.eca.onnx"):
            provenance = read_provenance(onnx.load(str(file), load_external_data=False))
            assert (provenance.source, provenance.model, provenance.precision) == (f"timm:{name}", name, precision)
            assert provenance.weights_file == str(weights.resolve()) and provenance.input_shape == (3, SIZE, SIZE)


@pytest.mark.slow
def test_timm_engines_have_one_plugin_layer_per_fused_block(timm_weights, tmp_path):
    """eca-deploy build --plugin with TensorRT-RTX: the parsed network holds one plugin layer per fused block, and
    the engine report repeats the model's provenance."""
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 is not installed")
    from plugin_build import PLUGIN_LIBRARY, plugin_build

    name, kwargs, weights, _, blocks = timm_weights
    library = plugin_build() / PLUGIN_LIBRARY
    out = tmp_path / "out"
    exported = run_cli("eca-export", f"timm:{name}", "--weights", weights, *_timm_args(kwargs), "--input-size",
                       str(SIZE), "--fp16", "--exporter", "legacy", "-q", "-o", out)
    assert exported.returncode == 0, exported.stderr[-3000:]
    engine = tmp_path / f"{name}.engine"
    built = run_cli("eca-deploy", "build", out / f"{name}.fp16.eca.onnx", "--plugin", library, "--max-batch", "2",
                    "--opt-batch", "1", "--no-cache", "-q", "-o", engine)
    assert built.returncode == 0, built.stderr[-3000:]
    report = json.loads((tmp_path / f"{name}.engine.json").read_text())
    assert report["num_plugin_layers"] == report["num_fused_nodes"] == blocks
    assert report["provenance"]["source"] == f"timm:{name}" and report["provenance"]["precision"] == "fp16"


def test_validate_preprocesses_images_the_way_timm_does(tmp_path, photos):
    """ecaresnet26t: 256 pixels, crop fraction 0.875, bicubic, ImageNet mean/std from its pretrained_cfg; at 128
    pixels the shorter side goes to floor(128 / 0.875) = 146."""
    module = timm.create_model("ecaresnet26t", num_classes=10).eval()
    weights = _save(module, tmp_path, "ecaresnet26t", "state_dict.pth")
    out = tmp_path / "acc"
    result = run_cli("eca-validate", "timm:ecaresnet26t", "--weights", weights, "--input-size", str(SIZE), "-b",
                     "torch-cpu", "--images", photos, "-q", "-o", out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "accuracy.json").read_text())
    config = module.pretrained_cfg
    assert report["inputs"]["preprocessing"] == {
        "resize": math.floor(SIZE / config["crop_pct"]), "crop": SIZE, "mean": list(config["mean"]),
        "std": list(config["std"]), "interpolation": config["interpolation"]}
    assert report["model"]["provenance"]["preprocessing"]["interpolation"] == "bicubic"
    assert report["model"]["input_shape"] == [3, SIZE, SIZE] and report["model"]["num_classes"] == 10


def test_a_timm_state_dict_without_timm_prefix_names_the_route(tmp_path):
    module = timm.create_model("ecaresnetlight", num_classes=10)
    weights = _save(module, tmp_path, "ecaresnetlight", "state_dict.pth")
    result = run_cli("eca-export", weights, "-q", "-o", tmp_path / "out")
    assert_refused(result, rf"{weights} holds the weights of timm's ecaresnetlight, not of a zoo model: load them "
                           rf"with timm:ecaresnetlight --weights {weights}")
    assert tree(tmp_path) == {"ecaresnetlight.pth"}


@pytest.mark.parametrize(("args", "pattern"), [
    (("timm:resnet18",), r"timm model resnet18 has no ECA or CECA block, so there is nothing to fuse"),
    (("timm:no_such_model",), r"timm has no model 'no_such_model'"),
    (("timm:ecaresnetlight", "--pretrained"), r"huggingface.co cannot be reached \(no network\?\), so timm cannot "
                                              r"fetch the released weights of ecaresnetlight: .*--weights FILE"),
    (("eca_resnet18", "--weights", "w.pth"), r"--weights applies to timm:NAME sources, not to eca_resnet18"),
    (("timm:ecaresnetlight", "--arch", "eca_resnet50"), r"--arch applies to zoo architectures, not to timm:"),
    (("timm:ecaresnetlight", "--timm-args", "[1]"), r"--timm-args: expected a JSON object"),
    (("timm:ecaresnetlight", "--timm-args", '{"nope": 1}'),
     r"timm cannot build ecaresnetlight with \{\"nope\": 1, .*unexpected keyword argument 'nope'"),
    (("timm:ecaresnetlight", "--weights", "missing.pth"), r"--weights missing.pth: no such file$"),
    (("timm:",), r"timm: needs a model name"),
])
def test_timm_requests_that_cannot_work_are_one_sentence(tmp_path, args, pattern, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if "--pretrained" in args and _hub_reachable():
        pytest.skip("this machine reaches huggingface.co: timm would download the weights")
    result = run_cli("eca-export", *args, "-q", "-o", tmp_path / "out", cwd=tmp_path, timeout=120)
    assert_refused(result, pattern)
    assert not (tmp_path / "out").exists()


def _hub_reachable() -> bool:
    from eca_deploy.models.timm_models import HUB_HOST, _reachable

    return _reachable(HUB_HOST)


def test_the_timm_models_with_eca_blocks_are_found_from_the_models():
    found = {entry["name"]: entry for entry in timm_eca_models()}
    assert {"ecaresnet50d", "eca_nfnet_l0", "ecaresnetlight", "ecaresnet26t", "eca_botnext26ts_256"} <= set(found)
    assert found["ecaresnet50d"]["eca_blocks"] == 16 and found["eca_botnext26ts_256"]["input_size"] == 256
    assert "resnet50" not in found and all(entry["eca_blocks"] > 0 for entry in found.values())
    listed = run_cli("eca-deploy", "zoo", "--timm")
    assert listed.returncode == 0 and "ecaresnet50d" in listed.stdout and "eca_nfnet_l0" in listed.stdout
