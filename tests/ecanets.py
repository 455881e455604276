"""Test-only PyTorch modules: ECA blocks as third-party code writes them, and near-misses.

The authors' layer is ``eca_deploy.models.EcaLayer``; here are timm-style re-implementations
(no timm dependency) and blocks that look like ECA but are not, for negative controls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eca_deploy.models import EcaLayer


class EcaModule(nn.Module):
    """timm's EcaModule: mean over H, W, ``view`` to [B, 1, C], conv1d, sigmoid, ``expand_as``."""

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = torch.sigmoid(self.conv(y)).view(x.shape[0], -1, 1, 1)
        return x * y.expand_as(x)


class CecaModule(nn.Module):
    """timm's CecaModule: like EcaModule but with circular padding (explicit F.pad, conv padding 0)."""

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        self.padding = (kernel_size - 1) // 2
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = F.pad(y, (self.padding, self.padding), mode="circular")
        y = torch.sigmoid(self.conv(y)).view(x.shape[0], -1, 1, 1)
        return x * y.expand_as(x)


class SeBlock(nn.Module):
    """Squeeze-and-excitation: two 1x1 convs with a ReLU between them (not ECA)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(y))))


class BiasedEca(EcaModule):
    """An ECA gate whose conv1d has a bias."""

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__(kernel_size)
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=True)


class ReluGateEca(EcaLayer):
    """The authors' layer with a ReLU in place of the sigmoid."""

    def __init__(self, channels: int, k_size: int = 3) -> None:
        super().__init__(channels, k_size)
        self.sigmoid = nn.ReLU()


class OtherTensorEca(EcaModule):
    """Pools ``x`` but multiplies the gate with a different tensor (``x + 1``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = torch.sigmoid(self.conv(y)).view(x.shape[0], -1, 1, 1)
        return (x + 1) * y


class WidthPoolEca(nn.Module):
    """Pools over W only and gates each (C, H) row: a 1D conv gate, but not over channels."""

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, _ = x.shape
        y = x.mean(3).reshape(b, 1, c * h)
        y = torch.sigmoid(self.conv(y)).reshape(b, c, h, 1)
        return x * y


class EcaStack(nn.Module):
    """A small network with several ECA layers of different C and k, in one chosen style."""

    def __init__(self, style: str = "authors", channels: tuple[int, ...] = (8, 16, 24),
                 kernels: tuple[int, ...] = (3, 5, 1)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for c, k in zip(channels, kernels):
            layers += [nn.Conv2d(in_channels, c, 3, padding=1), nn.ReLU(), eca_block(style, c, k)]
            in_channels = c
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def eca_block(style: str, channels: int, kernel_size: int) -> nn.Module:
    """An ECA block: ``authors`` (EcaLayer), ``timm`` (EcaModule) or ``ceca`` (CecaModule)."""
    if style == "authors":
        return EcaLayer(channels, kernel_size)
    return {"timm": EcaModule, "ceca": CecaModule}[style](kernel_size)
