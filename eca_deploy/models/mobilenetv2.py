"""ECA-MobileNetV2 with the authors' module names (``features.I.conv.J.conv.weight``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from eca_deploy.models.layers import EcaLayer
from eca_deploy.models.specs import INVERTED_RESIDUAL_SETTING, block_output_channels

class ConvBNReLU(nn.Sequential):
    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, k_size: int) -> None:
        super().__init__()
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(inp, hidden_dim, kernel_size=1))
        layers += [
            ConvBNReLU(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
            EcaLayer(oup, k_size),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class EcaMobileNetV2(nn.Module):
    """MobileNetV2 with an ECA layer closing every inverted-residual block.

    ``kernel_sizes`` holds one odd k per block (17 at width 1.0), in forward order.
    """

    def __init__(self, kernel_sizes: Sequence[int], num_classes: int = 1000,
                 width_mult: float = 1.0) -> None:
        super().__init__()
        channels = block_output_channels(width_mult)
        if len(kernel_sizes) != len(channels):
            raise ValueError(f"need {len(channels)} ECA kernel sizes (one per block), got {len(kernel_sizes)}")
        input_channel = int(32 * width_mult)
        self.last_channel = int(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU(3, input_channel, stride=2)]
        sizes = iter(kernel_sizes)
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            output_channel = int(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t, next(sizes)))
                input_channel = output_channel
        features.append(ConvBNReLU(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.25), nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x.mean(-1).mean(-1))
