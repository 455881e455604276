"""The ECA layer exactly as the authors define it (state-dict keys ``conv.weight``, shape [1, 1, k])."""

from __future__ import annotations


import torch
from torch import nn


class EcaLayer(nn.Module):
    """Efficient Channel Attention: x * sigmoid(conv1d_k(mean_hw(x))) across channels."""

    def __init__(self, channels: int, k_size: int = 3) -> None:
        super().__init__()
        if k_size < 1 or k_size % 2 == 0:
            raise ValueError(f"ECA kernel size must be a positive odd number, got {k_size}")
        self.channels = channels
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    @property
    def k_size(self) -> int:
        return self.conv.kernel_size[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.avg_pool(x)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * self.sigmoid(y).expand_as(x)
