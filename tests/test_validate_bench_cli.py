"""`validate` and `bench` on a bad day: wrong paths, mismatched files and Ctrl-C answered before any work,
in one sentence (exit 2), with nothing left behind; and what their reports record about the run.

Bad input runs without --quiet, so the single line on stderr also proves that the refusal came before
"Loading ..." (the model) was printed. Most cases run in-process (fast); the output-folder cases run as
a user would, in a fresh process.
"""

from __future__ import annotations

import functools
import json
import platform
import subprocess

import pytest
from cli_checks import assert_refused, read_only_dir, run_cli, tree
from test_harness import write_images
from test_runtime import NUM_CLASSES, export_demo_64

from eca_deploy.cli.main import main
from eca_deploy.errors import EcaDeployError
from eca_deploy.harness.backends import OnnxRuntimeBackend, available_backends
from eca_deploy.harness.targets import ReferenceShape, onnx_io_shape

SMALL = ["eca_mobilenet_v2", "--num-classes", str(NUM_CLASSES), "--input-size", "64"]
QUICK_BENCH = ["--batch-sizes", "1", "2", "--iterations", "3", "--duration", "0", "--warmup-iterations", "1",
               "--warmup-seconds", "0", "--no-plots"]


@pytest.fixture(scope="module")
def mnv2(tmp_path_factory):
    """(module, plain ONNX, fused ONNX) of the 64 x 64, 10-class ECA-MobileNetV2 demo model."""
    return export_demo_64(tmp_path_factory.getbasetemp(), "eca_mobilenet_v2", "mnv2")


def refused(argv: list[str], capsys, pattern: str) -> str:
    """Run ``eca-deploy argv`` in-process and check the refusal as :func:`cli_checks.assert_refused` does."""
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's errors
        code = exit.code
    captured = capsys.readouterr()
    return assert_refused(subprocess.CompletedProcess(argv, code, captured.out, captured.err), pattern)


# Output folders


def test_a_file_or_a_read_only_folder_as_output_is_refused_before_loading(tmp_path, capsys):
    """One of each in a fresh process, as a user runs it; the others in-process."""
    in_the_way = tmp_path / "report.json"
    in_the_way.write_text("keep me")
    line = assert_refused(run_cli("eca-validate", "-o", in_the_way), r"-o .*report.json: a file is in the way")
    assert "pass a folder" in line
    refused(["bench", "-o", str(in_the_way)], capsys, r"-o .*report.json: a file is in the way")
    assert in_the_way.read_text() == "keep me" and tree(tmp_path) == {"report.json"}
    with read_only_dir(tmp_path / "read-only") as read_only:
        assert_refused(run_cli("eca-bench", "-o", read_only), r"cannot write to .*read-only")
        refused(["validate", "-o", str(read_only / "reports")], capsys, r"cannot write to .*read-only")
        assert tree(read_only) == set()


# Every argument and path before the model loads


def test_every_path_and_flag_is_checked_before_the_model_loads(mnv2, tmp_path, capsys):
    """The default backends would export the model: each refusal must come first (one line, no "Loading")."""
    _, _, fused = mnv2
    (tmp_path / "empty").mkdir()
    unreadable = tmp_path / "unreadable"
    (unreadable / "cls").mkdir(parents=True)
    (unreadable / "cls/broken.jpg").write_text("not an image")
    images = write_images(tmp_path / "images", {"n01440764": 1})
    flat = write_images(tmp_path / "flat", None)
    cases = [
        (["validate", "--images", tmp_path / "missing"], "image folder .*missing does not exist or is not a folder"),
        (["bench", "--images", tmp_path / "missing"], "image folder .*missing does not exist"),
        (["validate", "--images", tmp_path / "empty"], "no images in"),
        (["validate", "--images", unreadable], "no readable image in .*unreadable: .*broken.jpg"),
        (["bench", "--images", unreadable], "no readable image in .*unreadable: .*broken.jpg"),
        (["validate", "--images", images, "--class-index", tmp_path / "none.txt"], "index .*none.txt does not exist"),
        (["validate", "--images", flat, "--class-index", tmp_path / "none.txt"], "has none"),
        (["validate", "--class-index", tmp_path / "none.txt"], "--class-index applies to an image folder"),
        (["bench", "--limit", "3"], "--limit applies to an image folder"),
        (["validate", "-b", f"ort-cpu={tmp_path / 'none.onnx'}"], "none.onnx does not exist"),
        (["validate", "-b", "tensorflow"], "unknown backend 'tensorflow'"),
        (["validate", "-b", f"ort-trt={fused}", "--plugin", tmp_path / "none.so"], "plugin library .*none.so does not"),
        (["bench", "-b", f"ort-cpu={fused}", "--plugin", fused], "--plugin applies to ort-trt, trt, trt-rtx"),
        (["validate", "-b", f"ort-cpu={fused}", "--fp16"], "drop --fp16"),
        (["bench", "-b", f"ort-cpu={fused}", "--cuda-graphs"], "--cuda-graphs applies to"),
        (["validate", "--threads", "0"], "--threads: must be at least 1"),
        (["validate", "--num-batches", "0"], "--num-batches: must be at least 1"),
        (["bench", "--batch-sizes", "1", "0"], "--batch-sizes: must be at least 1"),
        (["bench", "--iterations", "0"], "iterations must be at least 1"),
    ]
    if available_backends()["torch-cuda"] is not None:
        cases.append((["validate", "--reference", "torch-cuda"], "--reference torch-cuda cannot run here"))
    for index, (command, pattern) in enumerate(cases):
        output = tmp_path / f"out{index}"
        refused([command[0], *SMALL, *map(str, command[1:]), "-o", str(output)], capsys, pattern)
        assert not output.exists(), command


# Named files against the reference model


def test_a_named_file_must_take_the_reference_input_and_give_its_classes(mnv2, tmp_path, capsys):
    """Files without provenance (exported here with export_onnx alone) need SOURCE, and must then take its input
    and give its classes (checked once the model says its class count, before any backend runs: -q keeps
    "Loading ..." off stderr)."""
    _, plain, fused = mnv2
    assert onnx_io_shape(fused) == ([3, 64, 64], 10)
    refused(["validate", "-q", "-b", f"ort-cpu={fused}", "-o", str(tmp_path / "a")], capsys,
            r"ort-cpu=.*mnv2.eca.onnx does not say which model it was made from \(no eca-deploy provenance\): pass "
            r"that model as SOURCE")
    line = refused(["validate", "-q", "eca_mobilenet_v2", "-b", f"ort-cpu={fused}", "-o", str(tmp_path / "b")], capsys,
                   r"ort-cpu=.*mnv2.eca.onnx maps N x 3 x 64 x 64 to 10 classes, but the reference model "
                   r"eca_mobilenet_v2 maps N x 3 x 224 x 224 to 1000 classes")
    assert "pass the model the file was exported from as SOURCE" in line
    refused(["bench", "-q", "eca_mobilenet_v2", "-b", "torch-cpu", "-b", f"ort-cpu={plain}", "-o", str(tmp_path / "c")],
            capsys, "mnv2.onnx maps N x 3 x 64 x 64 to 10 classes")
    refused(["validate", "-q", "eca_mobilenet_v2", "--num-classes", "10", "--input-size", "32", "-b",
             f"ort-cpu={fused}", "-o", str(tmp_path / "d")], capsys,
            r"but the reference model eca_mobilenet_v2 maps N x 3 x 32 x 32 to 10 classes")
    assert tree(tmp_path) == set()


def test_symbolic_dimensions_fit_any_reference():
    reference = ReferenceShape((3, 64, 64), 10, "m")
    reference.check("dynamic", [3, None, None], None)
    reference.check("unknown classes", [3, 64, 64], None)
    ReferenceShape((3, 64, 64), None, "m").check("any classes", [3, 64, 64], 7)
    for shape, classes in (([3, None, 32], 10), ([1, 64, 64], 10), ([3, 64, 64], 7), ([3, 64], 10)):
        with pytest.raises(EcaDeployError, match="but the reference model m maps N x 3 x 64 x 64 to 10 classes"):
            reference.check("file", shape, classes)


# Ctrl-C


@pytest.fixture
def quick_export(monkeypatch):
    """The default backends' export with the legacy exporter (seconds instead of tens of seconds)."""
    from eca_deploy.pipeline import steps

    monkeypatch.setattr(steps, "export_onnx", functools.partial(steps.export_onnx, exporter="legacy"))


@pytest.fixture
def interrupted(monkeypatch):
    """Ctrl-C while ONNX Runtime runs a batch, inside the backends loop of validate."""
    def interrupt(self, batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(OnnxRuntimeBackend, "run", interrupt)


def test_ctrl_c_during_validate_leaves_nothing_behind(quick_export, interrupted, tmp_path, capsys):
    """The default backends export into OUTPUT/models/ before they run: Ctrl-C removes the exports, the
    staged report and every folder the run created, and leaves an earlier run's files as they were."""
    fresh = tmp_path / "fresh" / "reports"
    assert main(["validate", *SMALL, "--num-batches", "1", "-o", str(fresh)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert tree(tmp_path) == set()

    earlier = tmp_path / "earlier"
    (earlier / "models").mkdir(parents=True)
    (earlier / "models/model.onnx").write_text("earlier model")
    (earlier / "accuracy.json").write_text("earlier report")
    before = tree(earlier)
    assert main(["validate", *SMALL, "--num-batches", "1", "-o", str(earlier)]) == 130
    assert tree(earlier) == before
    assert (earlier / "models/model.onnx").read_text() == "earlier model"
    assert (earlier / "accuracy.json").read_text() == "earlier report"


# What the reports record


def test_bench_records_and_applies_threads_and_records_the_machine_and_cpu_load(mnv2, tmp_path, capsys):
    import torch

    _, plain, _ = mnv2
    saved = torch.get_num_threads()
    try:
        assert main(["bench", *SMALL, "-q", "-b", "torch-cpu", "-b", f"ort-cpu={plain}", "--threads", "1",
                     *QUICK_BENCH, "-o", str(tmp_path / "lat")]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(saved)
    report = json.loads((tmp_path / "lat/latency.json").read_text())
    assert report["run"]["threads"] == 1
    assert {point["backend"]["threads"] for point in report["latency"]["results"]} == {1}
    load = report["run"]["cpu_load"]
    assert load["seconds"] > 0 and load["cpus"] >= 1 and 0 < load["own_fraction"] <= 1
    if load["busy_fraction"] is not None:  # Linux
        assert load["other_fraction"] == pytest.approx(max(0.0, load["busy_fraction"] - load["own_fraction"]))
    environment = report["environment"]
    assert environment["host"] == platform.node() and environment["cpu"] and environment["cpu_cores"] >= 1
    markdown = (tmp_path / "lat/latency.md").read_text()
    assert "- threads (PyTorch CPU and ONNX Runtime intra-op): 1" in markdown and "CPU load during the run" in markdown

    assert main(["validate", *SMALL, "-q", "-b", f"ort-cpu={plain}", "--num-batches", "1",
                 "-o", str(tmp_path / "acc")]) == 0
    report = json.loads((tmp_path / "acc/accuracy.json").read_text())
    assert report["run"]["threads"] is None and report["run"]["cpu_load"]["seconds"] > 0


def test_validate_warns_when_the_image_folder_has_other_classes_than_the_model(mnv2, tmp_path, capsys):
    _, _, fused = mnv2
    two_classes = write_images(tmp_path / "images", {"n01440764": 1, "n01443537": 1})
    common = [*SMALL, "-q", "-b", f"ort-cpu={fused}", "--images", str(two_classes)]
    assert main(["validate", *common, "-o", str(tmp_path / "a")]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: ") and "has 2 class folders but the model has 10 classes" in line
    assert "--class-index" in line

    index = tmp_path / "classes.txt"
    index.write_text("".join(f"n0144{i:04d}\n" for i in range(9)) + "n01440764\nn01443537\n")  # 11 classes
    assert main(["validate", *common, "--class-index", str(index), "-o", str(tmp_path / "b")]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    assert "lists 11 classes but the model has 10" in line

    index.write_text("".join(f"n0144{i:04d}\n" for i in range(8)) + "n01440764\nn01443537\n")  # 10 classes
    assert main(["validate", *common, "--class-index", str(index), "-o", str(tmp_path / "c")]) == 0
    assert capsys.readouterr().err == ""


def test_a_failing_comparison_against_a_torchscript_reference_writes_its_report(mnv2, tmp_path):
    """TorchScript modules take no forward hooks: the first diverging layer is not searched, the report says
    why, and everything else (metrics, verdict, exit code 1) is written as for any failing backend."""
    import numpy as np
    import onnx
    import torch

    module, plain, _ = mnv2
    scripted = tmp_path / "mnv2.ts.pt"
    torch.jit.save(torch.jit.trace(module.eval(), torch.randn(1, 3, 64, 64)), str(scripted))
    broken = onnx.load(str(plain))
    weight = max(broken.graph.initializer, key=lambda t: np.prod(t.dims))  # the classifier: outputs change
    values = onnx.numpy_helper.to_array(weight) * -1.0
    weight.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), weight.name))
    other = tmp_path / "other.onnx"
    onnx.save(broken, str(other))

    result = run_cli("eca-validate", scripted, "--input-size", "64", "-b", f"ort-cpu={other}", "--num-batches", "1",
                     "-o", tmp_path / "acc")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    report = json.loads((tmp_path / "acc/accuracy.json").read_text())
    (candidate,) = report["accuracy"]["candidates"]
    assert candidate["passed"] is False and candidate["metrics"]["cosine_similarity"] < 0.99
    assert "TorchScript module takes no forward hooks" in candidate["localization"]["not_searched"]
    assert candidate["localization"]["summary"].startswith("first diverging layer not searched")
    assert "first diverging layer not searched" in result.stdout + result.stderr
