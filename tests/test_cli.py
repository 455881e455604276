"""The command line as users meet it: help, exit codes, reports, and no half-written outputs."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from cli_checks import COMMANDS, assert_refused, full_disk_dir, read_only_dir, run_cli, tree

from eca_deploy import __version__
from eca_deploy.cli.main import SUBCOMMANDS, fuse_main, main
from eca_deploy.onnx_export import export_onnx
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
    assert listing["download"] == "https://github.com/BangguWu/ECANet"  # where the files are (not redistributed)
    assert main(["zoo"]) == 0 and "https://github.com/BangguWu/ECANet" in capsys.readouterr().out


def test_export_writes_a_triton_repository(tmp_path):
    out, repo = tmp_path / "out", tmp_path / "repo"
    assert main(["export", "eca_mobilenet_v2", "--input-size", "64", "--exporter", "legacy", "--triton-repo",
                 str(repo), "-o", str(out), "-q"]) == 0
    report = json.loads((out / "eca_mobilenet_v2.report.json").read_text())
    assert "triton" in report
    assert (repo / "eca_mobilenet_v2_onnx" / "config.pbtxt").is_file()
    assert count_fused_nodes(onnx.load(str(repo / "eca_mobilenet_v2_onnx" / "1" / "model.onnx"))) == 17
    assert not (repo / "eca_mobilenet_v2_tensorrt").exists()  # no engine asked for


# --- A user's bad day: every wrong argument and output answered with one sentence, nothing left behind ------------

QUICK_EXPORT = ("eca_resnet18", "--input-size", "32", "--exporter", "legacy", "-q")


def test_every_command_has_a_version_and_help_imports_nothing_heavy():
    for command, prefix in COMMANDS.items():
        result = run_cli(command, "--version")
        assert result.returncode == 0 and result.stdout.strip().endswith(__version__), result
    probe = ("import sys; from eca_deploy.cli.main import build_parser; build_parser(); "
             "print(sorted(m for m in ('torch', 'onnx', 'numpy', 'onnxruntime', 'tensorrt_rtx') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"  # --help, --version, zoo and argument errors stay fast (BENCHMARKS.md)


@pytest.mark.parametrize(("args", "pattern"), [
    (("--num-classes", "0"), r"--num-classes: must be at least 1, got 0"),
    (("--input-size", "-3"), r"--input-size: must be at least 1"),
    (("--opset", "12"), r"--opset: must be at least 13"),
    (("--max-batch", "x"), r"--max-batch: expected a whole number"),
])
def test_bad_arguments_are_one_sentence_before_anything_runs(tmp_path, args, pattern):
    result = run_cli("eca-export", *args, "-o", tmp_path / "out")
    assert_refused(result, pattern)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("command", "model", "size"), [("eca-export", "eca_resnet18", 7),
                                                        ("eca-validate", "eca_mobilenet_v2", 1),
                                                        ("eca-bench", "eca_resnet50", 31)])
def test_input_sizes_the_architecture_cannot_take_are_refused(tmp_path, command, model, size):
    """The zoo's networks downsample 32x: a smaller input would export, and pass parity, as a degenerate network."""
    result = run_cli(command, model, "--input-size", str(size), "-q", "-o", tmp_path / "out")
    assert_refused(result, rf"--input-size {size} is too small for {model}, which downsamples 32x: give at least 32")
    assert not (tmp_path / "out").exists()


def test_export_checks_options_and_outputs_before_loading_the_model(tmp_path):
    in_the_way = tmp_path / "file"
    in_the_way.write_text("keep me")
    cases = [
        (("-o", in_the_way), r"-o .*file: a file is in the way; pass a folder"),
        (("-o", in_the_way / "sub"), r"file is a file, so the folder cannot be created"),
        (("--triton-repo", in_the_way, "-o", tmp_path / "out"), r"--triton-repo .*: a file is in the way"),
        (("--opset", "17", "-o", tmp_path / "out"), r"the dynamo exporter needs opset >= 18 .*--exporter legacy"),
        (("--plugin", tmp_path / "lib.so", "-o", tmp_path / "out"), r"--plugin is for the engine: add --engine"),
        (("--engine", "--min-batch", "8", "--max-batch", "2", "-o", tmp_path / "out"), r"min <= opt <= max"),
    ]
    for args, pattern in cases:
        before = tree(tmp_path)
        result = run_cli("eca-export", "eca_resnet50", *args)
        line = assert_refused(result, pattern)
        assert "Loading" not in result.stderr and tree(tmp_path) == before, line
    assert in_the_way.read_text() == "keep me"


def test_a_folder_where_a_file_is_written_is_refused_before_any_work(tmp_path, mobilenet_onnx):
    """One rule for every file option (README, --help): an existing folder is exit 2 with the file name to use,
    before the model is read, and nothing is written into the folder."""
    folder = tmp_path / "existing"
    folder.mkdir()
    cases = [
        (("eca-fuse", mobilenet_onnx, "-o", folder), r"-o .*existing is a folder; name the file to write, e\.g\. "
                                                     r".*existing/mnv2\.eca\.onnx"),
        (("eca-fuse", mobilenet_onnx, "--report", folder), r"--report .*existing is a folder"),
        (("eca-deploy", "build", mobilenet_onnx, "-o", folder), r"-o .*existing is a folder; .*mnv2\.engine"),
        (("eca-deploy", "build", mobilenet_onnx, "-o", tmp_path / "m.engine", "--report", folder),
         r"--report .*existing is a folder; .*m\.engine\.json"),
        (("eca-deploy", "compare", mobilenet_onnx, mobilenet_onnx, "--json", folder), r"--json .*existing is a folder"),
    ]
    for (command, *args), pattern in cases:
        before = tree(tmp_path)
        result = run_cli(command, *args, timeout=60)
        assert_refused(result, pattern)
        assert "Loading" not in result.stderr and "Building" not in result.stderr
        assert tree(tmp_path) == before


def test_read_only_and_full_output_folders_are_one_sentence(tmp_path):
    with read_only_dir(tmp_path / "ro") as folder:
        result = run_cli("eca-export", *QUICK_EXPORT, "-o", folder / "out")
        assert_refused(result, r"cannot write to .*ro: (Read-only file system|Permission denied|Operation not permitted)")
        assert tree(folder) == set()
    with full_disk_dir(tmp_path / "full", size="64k") as folder:  # the ONNX files do not fit
        result = run_cli("eca-export", *QUICK_EXPORT, "-o", folder / "out")
        assert_refused(result, r"cannot write to .*: No space left on device; free some space")
        assert tree(folder) == set()  # staging folder and the created output folder are gone


def test_expect_mismatch_and_ctrl_c_leave_no_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "a" / "b"
    result = run_cli("eca-export", *QUICK_EXPORT, "--expect", "3", "-o", out)
    assert_refused(result, r"fused 8 ECA blocks, expected 3")
    assert not (tmp_path / "a").exists()

    from eca_deploy.pipeline import steps

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(steps, "export_onnx", interrupted)
    assert main(["export", *QUICK_EXPORT, "-o", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err and not (tmp_path / "a").exists()


def test_a_failed_check_is_exit_1_with_the_files_kept(tmp_path, mobilenet_onnx, monkeypatch, capsys):
    """README's exit code 1: export's parity check (here made to fail with a zero tolerance) and fuse's
    verification (here given a fusion that computes the gate with negated taps) keep their files."""
    out = tmp_path / "export"
    result = run_cli("eca-export", *QUICK_EXPORT, "--atol", "0", "--rtol", "0", "-o", out)
    assert_refused(result, r"parity failed for eca_resnet18.onnx, eca_resnet18.eca.onnx; see .*report.json", code=1)
    assert tree(out) == {"eca_resnet18.onnx", "eca_resnet18.eca.onnx", "eca_resnet18.report.json"}
    report = json.loads((out / "eca_resnet18.report.json").read_text())
    assert [parity["passed"] for parity in report["parity"]] == [False, False]
    assert report["parity"][0]["tolerance"]["atol"] == report["parity"][0]["tolerance"]["rtol"] == 0

    import onnx_graphsurgeon as gs

    from eca_deploy.passes import eca_fusion

    make_node = eca_fusion.make_eca_node

    def negated_taps(name, x, weight, y, pad_mode):
        return make_node(name, x, gs.Constant(f"{weight.name}_negated", -np.asarray(weight.values)), y, pad_mode)

    monkeypatch.setattr(eca_fusion, "make_eca_node", negated_taps)
    fused = tmp_path / "fuse" / "m.eca.onnx"
    assert fuse_main([str(mobilenet_onnx), "-o", str(fused), "-q"]) == 1
    error = capsys.readouterr().err
    assert re.search(r"m.eca.onnx differs from mnv2.onnx on output .* the files are kept for inspection", error)
    assert tree(fused.parent) == {"m.eca.onnx", "m.eca.fusion.json"}
    assert "differs from" in json.loads((fused.parent / "m.eca.fusion.json").read_text())["verification_failed"]


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("command", ["export", "fuse", "build", "bench"])
def test_ctrl_c_after_files_are_staged_leaves_nothing_behind(tmp_path, mobilenet_onnx, monkeypatch, capsys, command):
    """Ctrl-C in the last step of each command, when its files are already staged: exit 130, the output folder as it
    was before (an earlier file kept), no staging folder, no folder the command created."""
    import eca_deploy.tensorrt.engine
    from eca_deploy.pipeline import convert
    from eca_deploy.harness.backends import OnnxRuntimeBackend

    earlier = tmp_path / "out"
    earlier.mkdir()
    (earlier / "earlier.txt").write_text("an earlier run's file")
    created = tmp_path / "new" / "folder"
    if command == "export":  # interrupted while checking parity: both ONNX files are staged
        monkeypatch.setattr(convert, "check_onnx_files_parity", _interrupt)
        runs = [["export", *QUICK_EXPORT, "-o", str(folder)] for folder in (earlier, created)]
    elif command == "fuse":  # interrupted while verifying: the fused model is staged
        monkeypatch.setattr(convert, "check_onnx_equivalence", _interrupt)
        runs = [["fuse", str(mobilenet_onnx), "-o", str(folder / "m.eca.onnx"), "-q"] for folder in (earlier, created)]
    elif command == "build":  # interrupted inside TensorRT's build
        pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 is not installed")
        monkeypatch.setattr(eca_deploy.tensorrt.engine, "_build", _interrupt)
        runs = [["build", str(mobilenet_onnx), "--no-cache", "-q", "-o", str(folder / "m.engine")]
                for folder in (earlier, created)]
    else:  # interrupted while timing: the default backends' exports are staged
        monkeypatch.setattr(OnnxRuntimeBackend, "run_timed", _interrupt)
        runs = [["bench", "eca_resnet18", "--input-size", "32", "--iterations", "1", "--duration", "0", "-q",
                 "-o", str(folder)] for folder in (earlier, created)]
    for argv in runs:
        assert main(argv) == 130
        assert "interrupted" in capsys.readouterr().err
    assert tree(tmp_path) == {"out", "out/earlier.txt"}
    assert (earlier / "earlier.txt").read_text() == "an earlier run's file"


def test_torchscript_source_names_the_exporter_it_uses(tmp_path):
    import torch

    from eca_deploy.models import create_demo_model

    scripted = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(create_demo_model("eca_resnet18")), str(scripted))
    result = run_cli("eca-export", scripted, "--input-size", "32", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(legacy exporter, opset 18)" in result.stderr and "dynamo" not in result.stderr
    assert "None classes" not in result.stderr
    report = json.loads((tmp_path / "out" / "model.report.json").read_text())
    assert report["export"]["exporter"] == "legacy"
    for line in result.stderr.splitlines():  # warnings come after a step's outcome, never inside its line
        assert "Warning" not in line or line.startswith("  warning: "), line


def _bake_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """``model`` whose output goes through a Reshape to a fixed ``batch``, while its input still declares a
    symbolic one (what some dynamo exports do in a Reshape or Expand)."""
    baked = onnx.ModelProto()
    baked.CopyFrom(model)
    (output,) = baked.graph.output
    dims = [d.dim_value for d in output.type.tensor_type.shape.dim[1:]]
    shape = onnx.numpy_helper.from_array(np.array([batch, *dims], dtype=np.int64), "baked_shape")
    baked.graph.initializer.append(shape)
    for node in baked.graph.node:
        node.output[:] = ["pre_baked" if name == output.name else name for name in node.output]
    baked.graph.node.append(onnx.helper.make_node("Reshape", ["pre_baked", "baked_shape"], [output.name]))
    return baked


def test_fuse_verifies_at_a_batch_the_original_accepts(tmp_path, mobilenet_onnx):
    baked = tmp_path / "baked.onnx"
    onnx.save(_bake_batch(onnx.load(str(mobilenet_onnx)), 1), str(baked))
    result = run_cli("eca-fuse", baked)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "same outputs at batch 1 " in result.stderr
    assert "not checked at batch 3: the original model itself fails there" in result.stderr
    assert json.loads((tmp_path / "baked.eca.fusion.json").read_text())["verified_batches"] == [1]

    never = tmp_path / "never.onnx"
    onnx.save(_bake_batch(onnx.load(str(mobilenet_onnx)), 2), str(never))
    line = assert_refused(run_cli("eca-fuse", never, "-q"), r"never.onnx itself does not run on ONNX Runtime CPU at "
                          r"batch 1 or 3 \(Reshape node: The input tensor cannot be reshaped .*--no-verify")
    assert "onnxruntime_src" not in line
    assert not (tmp_path / "never.eca.onnx").exists()


def test_fuse_without_eca_blocks_says_so_and_writes_nothing(tmp_path):
    import torch

    plain = tmp_path / "plain.onnx"
    export_onnx(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()), plain, input_shape=(3, 8, 8),
                exporter="legacy")
    result = run_cli("eca-fuse", plain, "-q")
    assert_refused(result, r"no ECA block to fuse in plain.onnx \(no candidate found\); nothing written")
    assert "ECA blocks fused: 0" in result.stdout and tree(tmp_path) == {"plain.onnx"}
    allowed = run_cli("eca-fuse", plain, "--allow-unfused", "-q")
    assert allowed.returncode == 0 and (tmp_path / "plain.eca.onnx").is_file()


def test_fuse_plugin_only_writes_the_model_without_its_function(tmp_path, mobilenet_onnx):
    output = tmp_path / "m.eca.onnx"
    assert fuse_main([str(mobilenet_onnx), "-o", str(output), "--plugin-only", "-q"]) == 0
    plugin_only = onnx.load(str(tmp_path / "m.eca.plugin.onnx"))
    fused = onnx.load(str(output))
    assert [f.name for f in fused.functions] == ["EcaAttention"] and not plugin_only.functions
    assert list(plugin_only.graph.node) == list(fused.graph.node)
    assert json.loads((tmp_path / "m.eca.fusion.json").read_text())["plugin_only"] == "m.eca.plugin.onnx"


def test_build_refuses_aot_for_an_unfused_model_and_falls_back_without_a_writable_cache(tmp_path, mobilenet_onnx):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 is not installed")
    assert_refused(run_cli("eca-deploy", "build", mobilenet_onnx, "--aot", "-o", tmp_path / "m.engine", "-q"),
                   r"no EcaAttention node, so there is nothing for the plugin to run")
    with read_only_dir(tmp_path / "cache") as cache:
        result = run_cli("eca-deploy", "build", mobilenet_onnx, "-o", tmp_path / "m.engine", "--max-batch", "2",
                         "--opt-batch", "1", env={"XDG_CACHE_HOME": str(cache)})
        assert result.returncode == 0, result.stderr[-2000:]
        assert "building without the engine and timing caches" in result.stderr
        assert (tmp_path / "m.engine").is_file() and tree(cache) == set()
