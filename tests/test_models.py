"""The model zoo: the authors' state-dict layout, parameter counts and kernel-size specs."""

from __future__ import annotations

import pytest
import torch

from eca_deploy.errors import EcaDeployError
from eca_deploy.models import (ARCHITECTURES, EcaLayer, adaptive_kernel_size, create_demo_model, create_model,
                               get_architecture)
from eca_deploy.reference import eca_reference

# Parameter counts of our definitions with 1000 classes and default kernels (the authors' thop
# counts differ by BN/ECA terms, see ECA_FACTS.md; these pin our definitions against drift).
PARAMETERS = {
    "eca_resnet18": 11_689_536, "eca_resnet34": 21_797_720, "eca_resnet50": 25_557_112,
    "eca_resnet101": 44_549_317, "eca_resnet152": 60_193_042, "eca_mobilenet_v2": 3_504_897,
}


def meta_model(name: str, kernels=None, num_classes: int = 1000) -> torch.nn.Module:
    with torch.device("meta"):
        return get_architecture(name).build(kernels, num_classes)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_parameter_count_and_eca_layers(name):
    model = meta_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name]
    layers = [m for m in model.modules() if isinstance(m, EcaLayer)]
    assert [layer.channels for layer in layers] == list(get_architecture(name).eca_channels)


def test_authors_key_names_and_shapes():
    resnet = meta_model("eca_resnet50", "k3557").state_dict()
    assert resnet["layer3.4.eca.conv.weight"].shape == (1, 1, 5)
    assert resnet["layer4.2.eca.conv.weight"].shape == (1, 1, 7)
    assert resnet["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert resnet["fc.weight"].shape == (1000, 2048)
    mobilenet = meta_model("eca_mobilenet_v2").state_dict()
    assert mobilenet["features.4.conv.4.conv.weight"].shape == (1, 1, 1)    # 32 channels: k = 1
    assert mobilenet["features.14.conv.4.conv.weight"].shape == (1, 1, 3)   # 160 channels: k = 3
    assert mobilenet["classifier.1.weight"].shape == (1000, 1280)
    assert not any(key.endswith("eca.conv.bias") for key in resnet)


@pytest.mark.parametrize(("name", "spec", "expected_per_stage"), [
    ("eca_resnet50", "k3557", [3, 5, 5, 7]),
    ("eca_resnet101", "k3357", [3, 3, 5, 7]),
    ("eca_resnet18", "k3333", [3, 3, 3, 3]),
])
def test_resnet_kernel_specs_expand_per_stage(name, spec, expected_per_stage):
    arch = get_architecture(name)
    sizes = arch.kernel_sizes(spec)
    assert len(sizes) == arch.num_eca_layers
    assert [sizes[arch.kernel_groups.index(stage)] for stage in range(4)] == expected_per_stage


def test_mobilenet_k13_follows_the_output_channels():
    arch = get_architecture("eca_mobilenet_v2")
    assert all(k == (3 if c > 96 else 1) for k, c in zip(arch.kernel_sizes("k13"), arch.eca_channels))


def test_adaptive_kernel_size_formula():
    assert [adaptive_kernel_size(c) for c in (64, 128, 256, 512, 1024, 2048)] == [3, 5, 5, 5, 5, 7]
    arch = get_architecture("eca_resnet50")
    assert arch.kernel_sizes("adaptive") == [adaptive_kernel_size(c) for c in arch.eca_channels]


@pytest.mark.parametrize(("spec", "message"), [
    ("k35", "does not fit eca_resnet50"), ("k3456", "positive odd"), ("abc", "does not fit"),
])
def test_bad_kernel_specs_are_user_errors(spec, message):
    with pytest.raises(EcaDeployError, match=message):
        get_architecture("eca_resnet50").kernel_sizes(spec)


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(EcaDeployError, match="known: eca_resnet18"):
        get_architecture("resnet50")


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_eca_layer_matches_the_numpy_reference(k):
    torch.manual_seed(k)
    layer = EcaLayer(24, k).eval()
    x = torch.randn(2, 24, 5, 7)
    with torch.no_grad():
        y = layer(x).double().numpy()
    expected = eca_reference(x.numpy(), layer.conv.weight.detach().numpy())
    assert abs(y - expected).max() < 1e-6


def test_num_classes_changes_only_the_head():
    model = create_model("eca_mobilenet_v2", num_classes=10)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_demo_weights_cache_returns_the_calibrated_model(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    built = create_demo_model("eca_resnet18", num_classes=10)
    cached_files = list((tmp_path / "eca_deploy" / "demo_models").glob("eca_resnet18-*.pt"))
    assert len(cached_files) == 1
    loaded = create_demo_model("eca_resnet18", num_classes=10)
    assert not loaded.training
    assert built.state_dict().keys() == loaded.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), loaded.state_dict().values()))
    assert create_demo_model("eca_resnet18", num_classes=10, seed=1).fc.weight.ne(built.fc.weight).any()

    cached_files[0].write_bytes(b"truncated")               # a damaged cache is rebuilt, not trusted
    rebuilt = create_demo_model("eca_resnet18", num_classes=10)
    assert torch.equal(rebuilt.layer1[0].bn1.running_var, built.layer1[0].bn1.running_var)


def test_demo_model_without_a_writable_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))      # cache_root() under a file: not creatable
    model = create_demo_model("eca_mobilenet_v2", num_classes=10)
    assert model.features[0][1].running_var.std() > 0       # BatchNorm calibrated all the same
