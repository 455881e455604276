"""One registry of zoo architectures: name -> layout of its ECA layers and how to build it.

Free of PyTorch until a model is built, so the command line lists and checks architectures instantly.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from eca_deploy.errors import EcaDeployError
from eca_deploy.models.specs import (RESNET_BLOCK_NAMES, RESNET_EXPANSION, RESNET_WIDTHS, adaptive_kernel_size,
                                     block_output_channels)
from eca_deploy.resources import cache_root

if TYPE_CHECKING:
    from torch import nn

KernelSpec = str | Sequence[int]
MAX_LISTED_KEYS = 5  # state-dict keys named in a message


@dataclass(frozen=True)
class Architecture:
    """A zoo architecture.

    ``eca_channels`` lists the channel count of every ECA layer in forward order and
    ``kernel_groups`` the group each belongs to, so that a spec like ``k3557`` (one digit per
    group: ResNet stages; for MobileNetV2 the blocks with <= 96 and > 96 output channels)
    expands to one kernel size per ECA layer.
    """

    name: str
    description: str
    default_kernels: str
    eca_channels: tuple[int, ...]
    kernel_groups: tuple[int, ...]
    family: str  # "resnet" or "mobilenet_v2"
    layers: tuple[int, ...] = ()  # ResNet: blocks per stage
    block: str = ""  # ResNet: "basic" or "bottleneck"
    output_stride: int = 32  # input pixels per pixel of the last feature map: the smallest input side

    @property
    def num_eca_layers(self) -> int:
        return len(self.eca_channels)

    def kernel_sizes(self, spec: KernelSpec | None = None) -> list[int]:
        """Expand ``spec`` ("k3557", "adaptive", or one int per ECA layer) to one k per ECA layer."""
        spec = self.default_kernels if spec is None else spec
        if not isinstance(spec, str):
            sizes = [int(k) for k in spec]
            if len(sizes) != self.num_eca_layers:
                raise EcaDeployError(f"{self.name} has {self.num_eca_layers} ECA layers, got {len(sizes)} kernel sizes")
        elif spec == "adaptive":
            sizes = [adaptive_kernel_size(c) for c in self.eca_channels]
        else:
            num_groups = max(self.kernel_groups) + 1
            match = re.fullmatch(r"k(\d{%d})" % num_groups, spec)
            if match is None:
                raise EcaDeployError(
                    f"kernel spec {spec!r} does not fit {self.name}: use 'adaptive' or 'k' and {num_groups} "
                    f"digits (e.g. {self.default_kernels})")
            per_group = [int(d) for d in match.group(1)]
            sizes = [per_group[g] for g in self.kernel_groups]
        if any(k < 1 or k % 2 == 0 for k in sizes):
            raise EcaDeployError(f"ECA kernel sizes must be positive odd numbers, got {sorted(set(sizes))}")
        return sizes

    def build(self, kernels: KernelSpec | None = None, num_classes: int = 1000) -> nn.Module:
        """Construct the model with randomly initialised weights."""
        sizes = self.kernel_sizes(kernels)
        if self.family == "resnet":
            from eca_deploy.models.resnet import BLOCKS, EcaResNet

            return EcaResNet(BLOCKS[self.block], self.layers, sizes, num_classes)
        from eca_deploy.models.mobilenetv2 import EcaMobileNetV2

        return EcaMobileNetV2(sizes, num_classes)


def _resnet(name: str, block: str, layers: tuple[int, ...], default_kernels: str) -> Architecture:
    return Architecture(
        name=name,
        description=f"ECA-ResNet-{name.removeprefix('eca_resnet')} ({RESNET_BLOCK_NAMES[block]} {list(layers)})",
        default_kernels=default_kernels,
        eca_channels=tuple(w * RESNET_EXPANSION[block] for w, n in zip(RESNET_WIDTHS, layers) for _ in range(n)),
        kernel_groups=tuple(stage for stage, n in enumerate(layers) for _ in range(n)),
        family="resnet", layers=layers, block=block,
    )


def _mobilenet_v2() -> Architecture:
    channels = tuple(block_output_channels())
    return Architecture(
        name="eca_mobilenet_v2",
        description="ECA-MobileNetV2 (17 inverted residual blocks, width 1.0)",
        default_kernels="k13",
        eca_channels=channels,
        kernel_groups=tuple(int(c > 96) for c in channels),
        family="mobilenet_v2",
    )


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        _resnet("eca_resnet18", "basic", (2, 2, 2, 2), "k3333"),
        _resnet("eca_resnet34", "basic", (3, 4, 6, 3), "k3333"),
        _resnet("eca_resnet50", "bottleneck", (3, 4, 6, 3), "k3557"),
        _resnet("eca_resnet101", "bottleneck", (3, 4, 23, 3), "k3357"),
        _resnet("eca_resnet152", "bottleneck", (3, 8, 36, 3), "k3357"),
        _mobilenet_v2(),
    )
}


def get_architecture(name: str) -> Architecture:
    """Look up a zoo architecture by name; unknown names raise with the list of known ones."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise EcaDeployError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None


def create_model(name: str, kernels: KernelSpec | None = None, num_classes: int = 1000) -> nn.Module:
    """Build a zoo model (random weights) in eval mode."""
    return get_architecture(name).build(kernels, num_classes).eval()


def calibrate_batchnorm(model: nn.Module, image_size: int = 224, seed: int = 0, batches: int = 2) -> nn.Module:
    """Re-estimate BatchNorm statistics on seeded random images so random weights give sane logits.

    With default BN buffers a randomly initialised MobileNetV2 produces logits around 1e-12,
    which makes parity checks meaningless; after calibration activations have unit scale.
    """
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(8, 3, image_size, image_size, generator=generator))
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


def create_demo_model(name: str, kernels: KernelSpec | None = None, num_classes: int = 1000,
                      seed: int = 0) -> nn.Module:
    """A zoo model with seeded random weights and calibrated BatchNorm: for demos and tests (:func:`demo_weights`)."""
    import torch

    torch.manual_seed(seed)
    model = create_model(name, kernels, num_classes)
    key = f"{name}|{get_architecture(name).kernel_sizes(kernels)}|{num_classes}|{seed}"
    return demo_weights(model, key, seed=seed)


def demo_weights(model: nn.Module, key: str, seed: int = 0) -> nn.Module:
    """``model`` (seeded random weights) with BatchNorm calibrated on seeded images (:func:`calibrate_batchnorm`).

    The calibration dominates building on a CPU, so the weights are cached under ``cache_root()/demo_models``,
    keyed by ``key`` (what built the model), the torch version and this package's model sources; an unreadable or
    unwritable cache only costs the calibration.
    """
    import torch

    cached = _demo_weights_path(key)
    try:
        model.load_state_dict(torch.load(cached, weights_only=True))
    except Exception:  # noqa: BLE001 - missing, truncated or foreign: any unusable cache file is rebuilt
        calibrate_batchnorm(model, image_size=112, seed=seed)
        staging = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
        with contextlib.suppress(OSError, RuntimeError):  # RuntimeError: torch's writer on a full disk
            cached.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.save(model.state_dict(), staging)
                os.replace(staging, cached)
            finally:
                staging.unlink(missing_ok=True)
    return model.eval()


def _demo_weights_path(key: str) -> Path:
    import torch

    digest = hashlib.sha256(f"{key}|{torch.__version__}".encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", key.split("|")[0])
    return cache_root() / "demo_models" / f"{name}-{digest.hexdigest()[:16]}.pt"


def key_difference(missing: list[str], unexpected: list[str]) -> str:
    """How two key sets differ, in a few words: ``37 missing (a, b ...); 2 unexpected (c, d)``."""
    def listed(keys: list[str]) -> str:
        more = f" and {len(keys) - MAX_LISTED_KEYS} more" if len(keys) > MAX_LISTED_KEYS else ""
        return ", ".join(keys[:MAX_LISTED_KEYS]) + more

    parts = [f"{len(missing)} missing ({listed(missing)})" if missing else "",
             f"{len(unexpected)} unexpected ({listed(unexpected)})" if unexpected else ""]
    return "; ".join(p for p in parts if p)
