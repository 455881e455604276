"""Provenance: every file says which model it came from, and validate/bench use it.

A file named with ``-b`` and no SOURCE brings its own reference model (zoo, checkpoint, timm); a file from another
model than the SOURCE given, files from two models, a file without provenance, a checkpoint changed since the
export and a model that was an nn.Module in Python are each one sentence (exit 2), naming the model.
"""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from cli_checks import assert_refused, run_cli

from eca_deploy.checkpoints import load_model, save_authors_checkpoint
from eca_deploy.models import create_demo_model
from eca_deploy.provenance import METADATA_KEY, read_provenance

QUICK = ["--input-size", "64", "--exporter", "legacy", "-q"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Exports of two zoo models and of an authors' checkpoint, at 64 x 64."""
    root = tmp_path_factory.mktemp("provenance")
    checkpoint = save_authors_checkpoint(create_demo_model("eca_resnet18", num_classes=10, seed=3),
                                         root / "r18_k3333.pth.tar", "eca_resnet18")
    for source, folder in (("eca_resnet18", "zoo"), ("eca_mobilenet_v2", "mnv2"), (checkpoint, "checkpoint")):
        result = run_cli("eca-export", source, *QUICK, "-o", root / folder)
        assert result.returncode == 0, result.stderr[-3000:]
    return root, checkpoint


def test_every_exported_file_carries_where_it_came_from(exports):
    root, checkpoint = exports
    for name in ("r18_k3333.onnx", "r18_k3333.eca.onnx"):
        model = onnx.load(str(root / "checkpoint" / name))
        assert [entry.key for entry in model.metadata_props].count(METADATA_KEY) == 1
        provenance = read_provenance(model)
        loaded = load_model(checkpoint)
        assert provenance.weights_sha256 == loaded.weights_sha256 and provenance.source == str(checkpoint)
        assert provenance.weights_file == str(checkpoint.resolve()) and len(provenance.weights_file_sha256) == 64
        assert (provenance.model, provenance.num_classes, provenance.kernel_sizes) == ("eca_resnet18", 10, (3,) * 8)
        assert provenance.input_shape == (3, 64, 64) and provenance.precision == "fp32"
        assert provenance.preprocessing["crop"] == 64 and provenance.preprocessing["interpolation"] == "bilinear"
    report = json.loads((root / "checkpoint" / "r18_k3333.report.json").read_text())
    assert report["provenance"]["weights_sha256"] == provenance.weights_sha256


@pytest.mark.parametrize("folder, file, model", [("zoo", "eca_resnet18.eca.onnx", "eca_resnet18"),
                                                 ("checkpoint", "r18_k3333.eca.onnx", "eca_resnet18")])
def test_a_named_file_without_source_brings_its_model(exports, tmp_path, folder, file, model):
    root, _ = exports
    result = run_cli("eca-validate", "-b", f"ort-cpu={root / folder / file}", "--num-batches", "1", "-q",
                     "-o", tmp_path / "acc")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "acc/accuracy.json").read_text())
    assert report["model"]["arch"] == model and report["model"]["input_shape"] == [3, 64, 64]
    assert report["accuracy"]["candidates"][0]["passed"]
    bench = run_cli("eca-bench", "-b", f"ort-cpu={root / folder / file}", "--batch-sizes", "1", "--iterations", "2",
                    "--duration", "0", "--warmup-seconds", "0", "--no-plots", "-q", "-o", tmp_path / "lat")
    assert bench.returncode == 0, bench.stderr[-3000:]


def test_files_from_another_model_are_refused_naming_it(exports, tmp_path):
    root, checkpoint = exports
    resnet, mobilenet = root / "zoo/eca_resnet18.eca.onnx", root / "mnv2/eca_mobilenet_v2.eca.onnx"
    assert_refused(run_cli("eca-validate", "eca_mobilenet_v2", "--input-size", "64", "-b", f"ort-cpu={resnet}",
                           "-q", "-o", tmp_path / "a"),
                   r"ort-cpu=.*eca_resnet18.eca.onnx was exported from eca_resnet18 \(sha256 [0-9a-f]{12}\), not from "
                   r"eca_mobilenet_v2 \(sha256 [0-9a-f]{12}\): pass the model it was exported from as SOURCE")
    assert_refused(run_cli("eca-validate", "-b", f"ort-cpu={resnet}", "-b", f"ort-cpu={mobilenet}", "-q",
                           "-o", tmp_path / "b"),
                   r"the named files come from different models \(eca_resnet18 .* and eca_mobilenet_v2 .*\)")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_checkpoint_changed_since_the_export_is_refused(exports, tmp_path):
    root, checkpoint = exports
    fused = root / "checkpoint" / "r18_k3333.eca.onnx"
    original = checkpoint.read_bytes()
    try:
        save_authors_checkpoint(create_demo_model("eca_resnet18", num_classes=10, seed=4), checkpoint, "eca_resnet18")
        assert_refused(run_cli("eca-validate", "-b", f"ort-cpu={fused}", "-q", "-o", tmp_path / "a"),
                       r"was exported from .*r18_k3333.pth.tar .*, whose weights have changed since")
    finally:
        checkpoint.write_bytes(original)


def test_a_file_exported_from_a_python_module_needs_it_as_source(tmp_path):
    import eca_deploy

    net = create_demo_model("eca_resnet18", num_classes=10)
    exported = eca_deploy.export(net, tmp_path / "out", input_size=64, exporter="legacy", name="net")
    assert read_provenance(onnx.load(str(exported.fused))).source == "nn.Module EcaResNet"
    assert_refused(run_cli("eca-validate", "-b", f"ort-cpu={exported.fused}", "-q", "-o", tmp_path / "a"),
                   r"was exported from nn.Module EcaResNet in Python, which cannot be loaded again from here: pass "
                   r"that model \(eca_deploy.validate\(module, ...\)\) or its checkpoint as SOURCE")
    report = eca_deploy.validate(net, [f"ort-cpu={exported.fused}"], input_size=64, output_dir=tmp_path / "acc",
                                 num_batches=1)
    assert report.passed and report.report["model"]["provenance"]["source"] == "nn.Module EcaResNet"
    torch.save(net.state_dict(), tmp_path / "net.pth")  # the same weights from a file: the same model
    assert run_cli("eca-validate", tmp_path / "net.pth", "--input-size", "64", "-b", f"ort-cpu={exported.fused}",
                   "--num-batches", "1", "-q", "-o", tmp_path / "b").returncode == 0
