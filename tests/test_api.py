"""The Python API as the README shows it: the README's example runs here as written, on a network of the user's
own with two ECA blocks, through export -> fuse -> build_engine -> validate; then what each step returns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- tested by tests/test_api.py -->"


def readme_example() -> str:
    """The Python block that follows the marker in README.md."""
    text = README.read_text()
    assert MARKER in text, "README lost its tested Python example"
    match = re.search(r"```python\n(.*?)```", text[text.index(MARKER):], re.S)
    return match.group(1)


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 is not installed (build_engine needs a TensorRT)")
    from plugin_build import PLUGIN_LIBRARY, plugin_build

    monkeypatch.setenv("ECA_PLUGIN_LIBRARY", str(plugin_build() / PLUGIN_LIBRARY))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_example(), str(README), "exec"), namespace)  # noqa: S102 - our own README
    exported, fused, engine, report = (namespace[name] for name in ("exported", "fused", "engine", "report"))
    assert exported.passed and exported.report["fusion"]["num_fused"] == 2
    assert fused.num_fused == 2 and fused.files["fused"].is_file()
    assert engine.report["num_plugin_layers"] == engine.report["num_fused_nodes"] == 2  # on the plugin
    assert report.passed and report.report["accuracy"]["candidates"][0]["backend"]["runtime"] == "onnxruntime"
    written = json.loads((tmp_path / "out" / "net.report.json").read_text())
    assert written["provenance"]["source"].startswith("nn.Module ")


def test_each_step_takes_what_a_user_holds_and_returns_files_report_and_summary(tmp_path):
    import onnx

    import eca_deploy
    from eca_deploy.models import create_demo_model

    lines: list[str] = []
    exported = eca_deploy.export("eca_resnet18", tmp_path / "out", input_size=64, exporter="legacy",
                                 progress=lines.append)
    assert set(exported.files) == {"onnx", "fused", "report"} and all(p.is_file() for p in exported.files.values())
    assert any(line.startswith("[1/4] Loading eca_resnet18") for line in lines)  # progress as whole lines
    assert "ECA blocks fused" in exported.summary() or "8 ECA blocks fused" in exported.summary()
    in_memory = eca_deploy.fuse(onnx.load(str(exported.onnx)))  # a ModelProto: fused in memory, nothing written
    assert in_memory.num_fused == 8 and in_memory.files == {} and in_memory.model.graph.node
    with pytest.raises(eca_deploy.EcaDeployError, match="--input-size 7 is too small"):
        eca_deploy.export(create_demo_model("eca_resnet18"), tmp_path / "bad", input_size=7)
    assert not (tmp_path / "bad").exists()
    failed = eca_deploy.export("eca_resnet18", tmp_path / "strict", input_size=64, exporter="legacy", atol=0,
                               rtol=0, check=False)
    assert not failed.passed and "parity failed" in str(failed.failure) and failed.onnx.is_file()
    with pytest.raises(eca_deploy.EcaDeployError, match="parity failed"):
        failed.raise_failure()
