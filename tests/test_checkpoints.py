"""Checkpoint loading: every format users bring, architecture and kernel inference, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from eca_deploy.checkpoints import infer_architecture, load_model, save_authors_checkpoint
from eca_deploy.cli.main import export_main
from eca_deploy.errors import EcaDeployError
from eca_deploy.models import ARCHITECTURES, create_demo_model, get_architecture


@pytest.fixture(scope="module")
def resnet18():
    """ECA-ResNet-18 with non-default kernels (k3557) and 10 classes: nothing about it is a default."""
    return create_demo_model("eca_resnet18", kernels="k3557", num_classes=10, seed=3)


def same_function(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("spec", [None, "adaptive"])
def test_architecture_and_kernels_are_inferred_from_keys_and_shapes(name, spec):
    arch = get_architecture(name)
    with torch.device("meta"):
        state_dict = arch.build(spec, 37).state_dict()
    prefixed = {f"module.{key}": value for key, value in state_dict.items()}
    inferred = infer_architecture(prefixed)
    assert inferred.arch.name == name
    assert list(inferred.kernel_sizes) == arch.kernel_sizes(spec)
    assert inferred.num_classes == 37


def test_authors_checkpoint_round_trip(tmp_path, resnet18):
    path = save_authors_checkpoint(resnet18, tmp_path / "eca_resnet18_k3557.pth.tar", "eca_resnet18")
    assert all(key.startswith("module.") for key in torch.load(path, weights_only=True)["state_dict"])
    loaded = load_model(path)
    assert (loaded.arch, loaded.kernel_spec, loaded.num_classes, loaded.source_kind) == (
        "eca_resnet18", "k3557", 10, "authors-checkpoint")
    assert not loaded.module.training
    assert same_function(loaded.module, resnet18)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_bare_state_dict_with_or_without_prefix(tmp_path, resnet18, prefix):
    torch.save({prefix + key: value for key, value in resnet18.state_dict().items()}, tmp_path / "weights.pth")
    loaded = load_model(tmp_path / "weights.pth")
    assert (loaded.source_kind, loaded.kernel_spec) == ("state-dict", "k3557")
    assert same_function(loaded.module, resnet18)


def test_safetensors_weights_of_a_zoo_model(tmp_path, resnet18):
    """A .safetensors state dict (the format hubs share weights in) loads like a .pth one, the same model."""
    from safetensors.torch import save_file

    save_file({key: value.contiguous() for key, value in resnet18.state_dict().items()}, tmp_path / "r18.safetensors")
    loaded = load_model(tmp_path / "r18.safetensors")
    assert (loaded.arch, loaded.source_kind, loaded.kernel_spec, loaded.num_classes) == (
        "eca_resnet18", "safetensors", "k3557", 10)
    assert same_function(loaded.module, resnet18)
    assert loaded.weights_sha256 == load_model(save_authors_checkpoint(resnet18, tmp_path / "r18.pth.tar",
                                                                       "eca_resnet18")).weights_sha256
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(EcaDeployError, match="broken.safetensors is not a readable .safetensors file"):
        load_model(tmp_path / "broken.safetensors")


def test_torchscript_archive(tmp_path, resnet18):
    torch.jit.script(resnet18).save(str(tmp_path / "model.ts"))
    loaded = load_model(tmp_path / "model.ts")
    assert (loaded.source_kind, loaded.arch, loaded.kernel_spec) == ("torchscript", "eca_resnet18", "k3557")
    assert same_function(loaded.module, resnet18)


def test_pickled_module_needs_the_opt_in(tmp_path, resnet18):
    torch.save(resnet18, tmp_path / "model.pt")
    with pytest.raises(EcaDeployError, match="--allow-pickle"):
        load_model(tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt", allow_pickle=True)
    assert (loaded.source_kind, loaded.arch) == ("pickled-module", "eca_resnet18")
    assert same_function(loaded.module, resnet18)


def test_zoo_names_give_seeded_demo_models():
    loaded = load_model("eca_resnet50", kernels="k3357", num_classes=5)
    assert (loaded.source_kind, loaded.arch, loaded.kernel_spec, loaded.num_classes) == (
        "zoo", "eca_resnet50", "k3357", 5)
    assert same_function(loaded.module, load_model("eca_resnet50", kernels="k3357", num_classes=5).module)


def test_arch_override_is_checked(tmp_path, resnet18):
    torch.save(resnet18.state_dict(), tmp_path / "weights.pth")
    assert load_model(tmp_path / "weights.pth", arch="eca_resnet18").arch == "eca_resnet18"
    with pytest.raises(EcaDeployError, match="do not fit eca_resnet34: .* missing .*layer1.2"):
        load_model(tmp_path / "weights.pth", arch="eca_resnet34")


def _corrupt(tmp_path, resnet18, case: str):
    path = tmp_path / f"{case}.pth.tar"
    state_dict = dict(resnet18.state_dict())
    if case == "truncated":
        save_authors_checkpoint(resnet18, path, "eca_resnet18")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "text":
        path.write_text("not a checkpoint\n")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "not_a_dict":
        torch.save([torch.zeros(3)], path)
    elif case == "dict_without_weights":
        torch.save({"epoch": 3, "arch": "eca_resnet18"}, path)
    elif case == "keys":
        state_dict["extra.weight"] = state_dict.pop("fc.weight")
        torch.save(state_dict, path)
    elif case == "shape":
        state_dict["conv1.weight"] = torch.zeros(64, 3, 5, 5)
        torch.save(state_dict, path)
    return path


@pytest.mark.parametrize(("case", "message"), [
    ("truncated", "truncated or corrupt"),
    ("text", "not a PyTorch checkpoint"),
    ("empty", "is empty"),
    ("not_a_dict", "holds a list, not a state dict"),
    ("dict_without_weights", "without weights"),
    ("keys", r"fit no zoo model \(closest: eca_resnet18\): 1 missing \(fc.weight\); 1 unexpected \(extra.weight\)"),
    ("shape", r"shape mismatch for eca_resnet18: conv1.weight is \[64, 3, 5, 5\]"),
])
def test_bad_checkpoints_are_one_sentence_errors(tmp_path, resnet18, case, message):
    with pytest.raises(EcaDeployError, match=message):
        load_model(_corrupt(tmp_path, resnet18, case))


def test_missing_file_and_contradicting_options(tmp_path, resnet18):
    with pytest.raises(EcaDeployError, match="no such file .*known: eca_resnet18"):
        load_model(tmp_path / "missing.pth")
    path = save_authors_checkpoint(resnet18, tmp_path / "model.pth.tar", "eca_resnet18")
    with pytest.raises(EcaDeployError, match="--num-classes 1000 contradicts"):
        load_model(path, num_classes=1000)
    with pytest.raises(EcaDeployError, match="--kernels applies to zoo names only"):
        load_model(path, kernels="k3333")


@pytest.mark.slow
def test_export_cli_on_an_authors_checkpoint(tmp_path, capsys):
    model = create_demo_model("eca_mobilenet_v2", num_classes=10, seed=1)
    checkpoint = save_authors_checkpoint(model, tmp_path / "eca_mobilenet_v2_k13.pth.tar", "eca_mobilenet_v2")
    out = tmp_path / "out"
    assert export_main([str(checkpoint), "--input-size", "64", "--expect", "17", "-o", str(out), "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "eca_mobilenet_v2_k13.eca.onnx", "eca_mobilenet_v2_k13.onnx", "eca_mobilenet_v2_k13.report.json"]
    report = json.loads((out / "eca_mobilenet_v2_k13.report.json").read_text())
    assert (report["arch"], report["num_classes"], report["source_kind"]) == ("eca_mobilenet_v2", 10,
                                                                              "authors-checkpoint")
    assert report["fusion"]["num_fused"] == 17
    assert all(parity["passed"] for parity in report["parity"])
    assert report["schema_version"] == 2  # one vocabulary with validate's reports:
    for result in (r for parity in report["parity"] for r in parity["results"]):
        assert "max_rel_error" not in result
        assert result["max_rel_error_vs_ref_max"] == pytest.approx(result["max_abs_error"] / result["reference_max_abs"])
        assert result["max_elementwise_rel_error"] >= 0
    assert "eca_mobilenet_v2_k13.eca.onnx" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["truncated", "keys"])
def test_export_cli_rejects_bad_checkpoints_with_exit_2_and_no_files(tmp_path, resnet18, capsys, case):
    out = tmp_path / "out"
    assert export_main([str(_corrupt(tmp_path, resnet18, case)), "-o", str(out), "-q"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("eca-export: error: ") and "Traceback" not in error
    assert not out.exists()  # no folder left behind, not even an empty one
