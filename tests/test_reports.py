"""Report files: JSON against its schema, CSV and Markdown tables, real PNG plots, `compare`."""

from __future__ import annotations

import copy
import csv
import io
import json
import platform
import shlex
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image
from test_power import fake_orin_sysfs
from test_runtime import INPUT_SHAPE, export_demo_64

from eca_deploy.cli.main import main
from eca_deploy.harness.backends import OnnxRuntimeBackend
from eca_deploy.harness.data import RandomInputs
from eca_deploy.image_folders import Batch
from eca_deploy.harness.environment import PowerSampler, capture_environment
from eca_deploy.harness.latency import LatencySettings, measure_latency
from eca_deploy.harness.report import (PANEL_HEIGHT_IN, PANEL_MARGIN_IN, PLOT_DPI, SCHEMA_PATH, compare_reports,
                                       distribution_panels, load_report, new_report, offline_bars, plot_caption,
                                       plot_latency, report_warnings, to_markdown, write_report)

# latency_distribution.png has one panel per backend: two in these reports
PLOT_SIZES = {"latency_distribution.png": (800, round(PLOT_DPI * (PANEL_MARGIN_IN + 2 * PANEL_HEIGHT_IN))),
              "batch_sweep.png": (1100, 450), "backends.png": (800, 450)}


@pytest.fixture(scope="module")
def schema():
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """One accuracy and one latency report written by the CLI on ONNX Runtime CPU and PyTorch CPU."""
    root = tmp_path_factory.mktemp("reports")
    _, plain, fused = export_demo_64(tmp_path_factory.getbasetemp(), "eca_mobilenet_v2", "mnv2")
    common = ["eca_mobilenet_v2", "--num-classes", "10", "--input-size", "64", "-q"]
    assert main(["validate", *common, "-b", f"ort-cpu={fused}", "-b", "torch-cpu", "--num-batches", "1",
                 "-o", str(root / "accuracy")]) == 0
    assert main(["bench", *common, "-b", f"ort-cpu={plain}", "-b", "torch-cpu", "--batch-sizes", "1", "4",
                 "--iterations", "4", "--duration", "0", "--warmup-seconds", "0", "-o", str(root / "latency")]) == 0
    return root


def test_reports_validate_against_the_schema(reports, schema):
    for kind in ("accuracy", "latency"):
        report = json.loads((reports / kind / f"{kind}.json").read_text())
        jsonschema.validate(report, schema)
        assert report["schema_version"] == 2 and report["kind"] == kind
        assert report["environment"]["versions"]["onnxruntime"]
        assert report["run"]["threads"] is None and report["run"]["cpu_load"]["seconds"] > 0
    broken = json.loads((reports / "latency/latency.json").read_text())
    del broken["latency"]["results"][0]["latency_ms"]["p99"]
    with pytest.raises(jsonschema.ValidationError, match="p99"):
        jsonschema.validate(broken, schema)
    broken = json.loads((reports / "latency/latency.json").read_text())
    broken["run"]["threads"] = 0
    with pytest.raises(jsonschema.ValidationError, match="0 is less than the minimum of 1"):
        jsonschema.validate(broken, schema)
    del broken["environment"]["host"]
    with pytest.raises(jsonschema.ValidationError, match="'host' is a required property"):
        jsonschema.validate(broken, schema)


def test_power_report_validates_and_shows_in_the_tables(tmp_path, schema):
    _, _, fused = export_demo_64(tmp_path.parent, "eca_mobilenet_v2", "mnv2")
    inputs = RandomInputs(INPUT_SHAPE, batch_size=1, num_batches=1)
    result = measure_latency(OnnxRuntimeBackend(fused), 1, lambda n, i: Batch(inputs.batch(n), None),
                             settings=LatencySettings(1, 0, 3, 0.05),
                             sampler=PowerSampler("sysfs", 0.005, root=fake_orin_sysfs(tmp_path / "orin")))
    report = new_report("latency", model={"source": "x", "arch": None, "input_shape": list(INPUT_SHAPE)},
                        environment=capture_environment(tmp_path / "orin"), inputs=inputs.describe(),
                        skipped_backends={}, body={"settings": {"warmup_iterations": 1, "warmup_seconds": 0,
                                                                "iterations": 3, "duration_seconds": 0.05},
                                                   "results": [result.to_dict()], "summary": {}})
    jsonschema.validate(report, schema)
    assert report["environment"]["jetson"]["model"] == "NVIDIA Jetson Orin Nano Developer Kit"
    files, skipped = write_report(report, tmp_path / "out", plots=False)
    assert skipped is None and sorted(p.name for p in files) == ["latency.csv", "latency.json", "latency.md"]
    (row,) = csv.DictReader(io.StringIO((tmp_path / "out/latency.csv").read_text()))
    assert float(row["module_power_w"]) == pytest.approx(5.0)
    assert float(row["joules_per_image"]) == pytest.approx(5.0 / result.throughput)
    assert "Jetson Orin Nano" in to_markdown(report)


def test_csv_and_markdown_tables(reports):
    rows = list(csv.DictReader(io.StringIO((reports / "latency/latency.csv").read_text())))
    assert [(r["backend"], r["batch_size"]) for r in rows] == [("ort-cpu:mnv2.onnx", "1"), ("ort-cpu:mnv2.onnx", "4"),
                                                               ("torch-cpu", "1"), ("torch-cpu", "4")]
    report = json.loads((reports / "latency/latency.json").read_text())
    assert float(rows[0]["p50_ms"]) == pytest.approx(report["latency"]["results"][0]["latency_ms"]["p50"])
    markdown = (reports / "latency/latency.md").read_text()
    assert markdown.count("| ort-cpu:mnv2.onnx |") == 2 and "| p50_ms |" in markdown
    rows = list(csv.DictReader(io.StringIO((reports / "accuracy/accuracy.csv").read_text())))
    assert [r["backend"] for r in rows] == ["ort-cpu:mnv2.eca.onnx", "torch-cpu"]
    assert all(r["passed"] == "True" and float(r["cosine_similarity"]) > 0.99999 for r in rows)
    assert "| yes |" in (reports / "accuracy/accuracy.md").read_text()


def test_accuracy_columns_say_what_the_tolerance_judges(reports):
    """The relative error beside the tolerance is the tolerance's own (max|a - ref| / max|ref|); the elementwise one
    is named as such, and the Markdown explains both above the table."""
    report = load_report(reports / "accuracy")
    rows = list(csv.DictReader(io.StringIO((reports / "accuracy/accuracy.csv").read_text())))
    for row, candidate in zip(rows, report["accuracy"]["candidates"]):
        metrics, tolerance = candidate["metrics"], candidate["tolerance"]
        assert float(row["max_abs_error"]) == pytest.approx(metrics["max_abs_error"])
        assert float(row["max_rel_error_vs_ref_max"]) == pytest.approx(
            metrics["max_abs_error"] / metrics["reference_max_abs"])
        assert float(row["allowed_abs_error"]) == pytest.approx(
            tolerance["atol"] + tolerance["rtol"] * metrics["reference_max_abs"])
        assert float(row["max_elementwise_rel_error"]) == pytest.approx(metrics["max_elementwise_rel_error"])
        assert "smallest_rtol" not in row and "max_rel_error" not in row
    markdown = (reports / "accuracy/accuracy.md").read_text()
    legend = markdown.index("max_rel_error_vs_ref_max = max_abs_error / reference_max_abs")
    assert legend < markdown.index("| backend")
    assert "max_elementwise_rel_error = max |a - ref| / |ref| per logit" in markdown


def _assert_drawn(path: Path, size: tuple[int, int], bands: int = 1) -> None:
    """A real PNG of ``size`` with something drawn in each of ``bands`` horizontal bands below the title."""
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
        pixels = np.asarray(image.convert("L"))
    body = pixels[round(PLOT_DPI * PANEL_MARGIN_IN * 0.6):]
    for band in np.array_split(body, bands):
        assert len(np.unique(band)) > 10  # drawn, not blank


def test_plots_are_real_png_images(reports):
    for name, size in PLOT_SIZES.items():
        _assert_drawn(reports / "latency" / name, size, bands=2 if name == "latency_distribution.png" else 1)


def test_plots_name_the_run_and_show_every_backend_and_its_values(reports, tmp_path):
    report = load_report(reports / "latency")
    caption = plot_caption(report)
    assert caption.startswith("eca_mobilenet_v2 3x64x64, fp32, threads default | ")
    assert f"{platform.node()}: {report['environment']['cpu']}" in caption
    results = report["latency"]["results"]
    batch, panels = distribution_panels(report)
    assert batch == 1 and [panel["name"] for panel in panels] == ["ort-cpu:mnv2.onnx", "torch-cpu"]
    for panel, point in zip(panels, [p for p in results if p["batch_size"] == 1]):
        assert panel["samples_ms"] == point["samples_ms"]
        assert f"p50 {point['latency_ms']['p50']:.3g} ms, p99 {point['latency_ms']['p99']:.3g} ms" in panel["title"]
    for name, value, label in offline_bars(report):
        best = max((p for p in results if p["backend"]["name"] == name), key=lambda p: p["throughput_images_per_s"])
        assert value == best["throughput_images_per_s"]
        assert label == f"{value:.4g} images/s (batch {best['batch_size']})"

    # A backend a hundred times slower than the other gets its own panel and range, not a corner of a shared axis.
    slow = copy.deepcopy(report)
    for point in slow["latency"]["results"]:
        if point["backend"]["name"] == "torch-cpu":
            point["samples_ms"] = [value * 100 for value in point["samples_ms"]]
    plot_latency(slow, tmp_path)
    _assert_drawn(tmp_path / "latency_distribution.png", PLOT_SIZES["latency_distribution.png"], bands=2)


def test_a_busy_machine_is_warned_about_in_the_json_the_markdown_and_every_plot(reports, tmp_path, schema):
    """Other processes holding the CPUs slow PyTorch's default intra-op threads by tens of times: the warning
    travels with the numbers (JSON warnings, Markdown, each plot's title), with the --threads advice."""
    busy = copy.deepcopy(load_report(reports / "latency"))
    busy["run"]["cpu_load"]["other_fraction"] = 0.45
    (warning,) = busy["warnings"] = report_warnings(busy)
    assert warning.startswith("other processes kept 45% of the CPUs busy during the run") and "--threads 1" in warning
    jsonschema.validate(busy, schema)
    assert f"- **warning**: {warning}" in to_markdown(busy)
    assert "WARNING: other processes kept 45% of the CPUs busy" in plot_caption(busy)
    written = plot_latency(busy, tmp_path)
    assert len(written) == len(PLOT_SIZES)
    for path in written:
        _assert_drawn(path, PLOT_SIZES[path.name], bands=2 if path.name == "latency_distribution.png" else 1)

    busy["run"]["threads"] = 1
    (warning,) = report_warnings(busy)
    assert "--threads" not in warning  # the advice is for the default setting only
    quiet = load_report(reports / "latency")
    assert quiet["warnings"] == report_warnings(quiet)
    accuracy = copy.deepcopy(load_report(reports / "accuracy"))
    accuracy["run"]["cpu_load"]["other_fraction"] = 0.45
    assert report_warnings(accuracy) == []  # agreement does not depend on the load


def test_compare_reads_a_version_1_accuracy_report(reports, tmp_path):
    """Version 2 renamed the metrics' max_rel_error; a report written before still compares."""
    old = json.loads((reports / "accuracy/accuracy.json").read_text())
    old["schema_version"] = 1
    for candidate in old["accuracy"]["candidates"]:
        metrics = candidate["metrics"]
        metrics["max_rel_error"] = metrics.pop("max_elementwise_rel_error")
        del metrics["max_rel_error_vs_ref_max"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old/accuracy.json").write_text(json.dumps(old))
    rows = compare_reports(load_report(tmp_path / "old"), load_report(reports / "accuracy"))
    assert rows and all(row["max_abs_error"][0] == row["max_abs_error"][1] for row in rows)  # same run, both ends


def test_compare_prints_ratios_side_by_side(reports, tmp_path, capsys):
    faster = json.loads((reports / "latency/latency.json").read_text())
    for point in faster["latency"]["results"]:
        point["throughput_images_per_s"] *= 2
        point["latency_ms"] = {key: value / 2 for key, value in point["latency_ms"].items()}
    (tmp_path / "faster").mkdir()
    (tmp_path / "faster/latency.json").write_text(json.dumps(faster))
    rows = compare_reports(load_report(reports / "latency"), load_report(tmp_path / "faster"))
    assert len(rows) == 4
    for row in rows:
        assert row["throughput_images_per_s"][2] == pytest.approx(2.0)
        assert row["p50_ms"][2] == pytest.approx(0.5)
        assert row["joules_per_image"] == (None, None, None)
    assert main(["compare", str(reports / "latency/latency.json"), str(tmp_path / "faster"),
                 "--json", str(tmp_path / "ratios.json")]) == 0
    out = capsys.readouterr().out
    assert "2.00x" in out and "0.50x" in out and "ort-cpu:mnv2.onnx" in out
    assert len(json.loads((tmp_path / "ratios.json").read_text())["rows"]) == 4
    assert main(["compare", str(reports / "accuracy"), str(reports / "accuracy")]) == 0
    assert "1.00x" in capsys.readouterr().out


def test_compare_warns_in_one_line_when_the_runs_differ(reports, tmp_path, capsys):
    quiet = load_report(reports / "latency")
    quiet["run"]["cpu_load"]["other_fraction"] = 0.0
    elsewhere = copy.deepcopy(quiet)
    elsewhere["environment"]["host"] = "orin-nano"
    elsewhere["run"]["threads"] = 4
    for point in elsewhere["latency"]["results"]:
        if point["backend"]["name"] == "torch-cpu":
            point["backend"]["precision"] = "fp16"

    def compare(a: dict, b: dict) -> str:
        (tmp_path / "a.json").write_text(json.dumps(a))
        (tmp_path / "b.json").write_text(json.dumps(b))
        assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
        return capsys.readouterr().err

    assert compare(quiet, quiet) == ""
    (line,) = compare(quiet, elsewhere).splitlines()
    assert line.startswith("warning: the runs differ in ") and line.endswith("the ratios measure that too")
    assert f"host (a: {platform.node()}, b: orin-nano)" in line and "threads (a: default, b: 4)" in line
    assert "precision (a: fp32, b: fp16/fp32)" in line
    busy = copy.deepcopy(quiet)
    busy["run"]["cpu_load"]["other_fraction"] = 0.5
    (line,) = compare(quiet, busy).splitlines()
    assert "other processes kept the CPUs busy (a: 0%, b: 50%)" in line
    older = copy.deepcopy(quiet)
    del older["run"]  # a version-1 report written before runs were recorded
    (line,) = compare(older, quiet).splitlines()
    assert "threads (a: not recorded, b: default)" in line


def test_compare_refuses_what_it_cannot_compare(reports, tmp_path, capsys):
    future = copy.deepcopy(load_report(reports / "latency"))
    future["schema_version"] = 99
    (tmp_path / "future.json").write_text(json.dumps(future))
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    (tmp_path / "garbage.json").write_text("{not json")
    latency = str(reports / "latency/latency.json")
    cases = [([str(reports / "accuracy"), latency], "cannot compare a accuracy report with a latency report"),
             ([latency, str(tmp_path / "future.json")], "schema version 99"),
             ([latency, str(tmp_path / "other.json")], "is not an eca-deploy report"),
             ([latency, str(tmp_path / "garbage.json")], "is not a JSON report"),
             ([latency, str(tmp_path / "missing.json")], "does not exist"),
             ([latency, latency, "--json", str(tmp_path)], "is a folder; name the file to write")]
    for args, message in cases:
        assert main(["compare", *args]) == 2
        assert message in capsys.readouterr().err


def test_plots_skip_with_the_reason_when_matplotlib_is_missing(reports, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_matplotlib)
    files, skipped = write_report(load_report(reports / "latency"), tmp_path / "out")
    assert "PNG plots need matplotlib: pip install matplotlib" in skipped
    assert not any(path.suffix == ".png" for path in files)
    assert Path(tmp_path / "out/latency.json").is_file()


def _jetson_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("jetson_benchmark",
                                                  Path(__file__).parents[1] / "scripts/jetson_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_jetson_script_plans_valid_commands(tmp_path, capsys):
    from eca_deploy.cli.main import build_parser

    script = _jetson_script()
    plugin = tmp_path / "libeca_plugin.so"
    plugin.write_bytes(b"")
    assert script.run(["--plugin", str(plugin), "--batch-sizes", "1", "8", "-o", str(tmp_path / "out"),
                       "--dry-run"]) == 0
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == 2 * 3 * 5  # 2 models x 3 precisions x (export, 2 builds, validate, bench)
    parser = build_parser()
    for command in commands:
        parser.parse_args(shlex.split(command)[1:])  # every planned command is valid eca-deploy syntax
    assert any("eca_resnet50.fp16.plugin.engine" in c and c.startswith("eca-deploy build") for c in commands)
    bench = next(c for c in commands if " bench eca_mobilenet_v2 " in c and "torch-cuda-fp16" in c)
    assert "--batch-sizes 1 8" in bench and "--power auto" in bench
    int8 = [c for c in commands if "eca_resnet50.int8" in c or " export eca_resnet50 --int8" in c]
    assert any(c.startswith("eca-deploy export eca_resnet50 --int8") for c in int8)
    assert any("eca_resnet50.int8.plugin.engine" in c and c.startswith("eca-deploy build") for c in commands)
    assert any(" validate eca_resnet50 " in c and "--precision int8" in c for c in commands)
    assert not (tmp_path / "out").exists()


def test_jetson_summary_tabulates_native_versus_plugin(tmp_path):
    """The summary of a real bench report whose two backends stand for the native and plugin engines."""
    script = _jetson_script()
    _, plain, fused = export_demo_64(tmp_path.parent, "eca_mobilenet_v2", "mnv2")
    native, plugin = tmp_path / "m.native.onnx", tmp_path / "m.plugin.onnx"
    native.write_bytes(plain.read_bytes())
    plugin.write_bytes(fused.read_bytes())
    assert main(["bench", "eca_mobilenet_v2", "--num-classes", "10", "--input-size", "64", "-q", "-b",
                 f"ort-cpu={native}", "-b", f"ort-cpu={plugin}", "--batch-sizes", "1", "2", "--iterations", "3",
                 "--duration", "0", "--warmup-seconds", "0", "--no-plots", "-o", str(tmp_path / "lat")]) == 0
    plan = script.Plan(steps=[script.Step("bench", ["bench"], exit_code=0)],
                       latency_reports=[tmp_path / "lat/latency.json", tmp_path / "missing/latency.json"])
    summary = script.summary_markdown(plan)
    assert "- bench: ok" in summary
    plugin_rows = [line for line in summary.splitlines() if "m.plugin.onnx" in line]
    assert len(plugin_rows) == 2 and all(line.rstrip(" |").endswith("x") for line in plugin_rows)
