"""The command line as users meet it: help, exit codes, reports, and no half-written outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from eca_deploy.cli.main import SUBCOMMANDS, fuse_main, main
from eca_deploy.export import export_onnx
from eca_deploy.models import create_demo_model
from eca_deploy.passes import count_fused_nodes


@pytest.fixture(scope="module")
def mobilenet_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "mnv2.onnx"
    export_onnx(create_demo_model("eca_mobilenet_v2"), path, input_shape=(3, 64, 64), exporter="legacy")
    return path


def test_help_lists_every_subcommand():
    result = subprocess.run([sys.executable, "-m", "eca_deploy", "--help"], capture_output=True, text=True,
                            check=True)
    for name in SUBCOMMANDS:
        assert name in result.stdout
    for name in SUBCOMMANDS:
        sub = subprocess.run([sys.executable, "-m", "eca_deploy", name, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0 and "usage: eca-deploy " + name in sub.stdout


def test_fuse_writes_model_and_report(tmp_path, mobilenet_onnx, capsys):
    output = tmp_path / "fused.onnx"
    assert fuse_main([str(mobilenet_onnx), "-o", str(output), "--expect", "17", "-q"]) == 0
    assert count_fused_nodes(onnx.load(str(output))) == 17
    report = json.loads((tmp_path / "fused.fusion.json").read_text())
    assert report["num_fused"] == 17 and report["near_misses"] == []
    assert report["max_abs_difference"] < 1e-5
    assert "ECA blocks fused: 17" in capsys.readouterr().out


def test_fuse_expect_mismatch_fails_without_output(tmp_path, mobilenet_onnx, capsys):
    output = tmp_path / "fused.onnx"
    assert fuse_main([str(mobilenet_onnx), "-o", str(output), "--expect", "16", "-q"]) == 2
    assert "fused 17 ECA blocks, expected 16" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("content", "message"), [
    (b"this is not onnx", "not a readable ONNX model"),
    (None, "truncated"),
])
def test_fuse_rejects_bad_files_with_exit_2_and_no_output(tmp_path, mobilenet_onnx, capsys, content, message):
    bad = tmp_path / "bad.onnx"
    data = mobilenet_onnx.read_bytes()
    bad.write_bytes(content if content is not None else data[: len(data) // 3])
    assert fuse_main([str(bad), "-q"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("eca-fuse: error: ") and "Traceback" not in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_fuse_refuses_to_overwrite_its_input(mobilenet_onnx, capsys):
    assert fuse_main([str(mobilenet_onnx), "-o", str(mobilenet_onnx)]) == 2
    assert "overwrite the input" in capsys.readouterr().err


def test_zoo_lists_architectures_and_released_checkpoints(capsys):
    assert main(["zoo", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {a["name"] for a in listing["architectures"]} >= {"eca_resnet50", "eca_mobilenet_v2"}
    assert any(c["kernels"] == "k3557" for c in listing["checkpoints"])


def test_export_writes_a_triton_repository(tmp_path):
    out, repo = tmp_path / "out", tmp_path / "repo"
    assert main(["export", "eca_mobilenet_v2", "--input-size", "64", "--exporter", "legacy", "--triton-repo",
                 str(repo), "-o", str(out), "-q"]) == 0
    report = json.loads((out / "eca_mobilenet_v2.report.json").read_text())
    assert "triton" in report
    assert (repo / "eca_mobilenet_v2_onnx" / "config.pbtxt").is_file()
    assert count_fused_nodes(onnx.load(str(repo / "eca_mobilenet_v2_onnx" / "1" / "model.onnx"))) == 17
    assert not (repo / "eca_mobilenet_v2_tensorrt").exists()  # no engine asked for
