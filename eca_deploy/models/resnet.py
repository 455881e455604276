"""ECA-ResNet-18/34/50/101/152 with the authors' module names (``layerS.B.eca.conv.weight``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from eca_deploy.models.layers import EcaLayer


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class EcaBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, k_size: int = 3) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.eca = EcaLayer(planes, k_size)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.eca(self.bn2(self.conv2(out)))
        return self.relu(out + residual)


class EcaBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, k_size: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.eca = EcaLayer(planes * 4, k_size)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.eca(self.bn3(self.conv3(out)))
        return self.relu(out + residual)


class EcaResNet(nn.Module):
    """ResNet with an ECA layer after the last BN of every block.

    ``kernel_sizes`` holds one odd k per block, in forward order (stages flattened).
    """

    def __init__(self, block: type[EcaBasicBlock] | type[EcaBottleneck], layers: Sequence[int],
                 kernel_sizes: Sequence[int], num_classes: int = 1000) -> None:
        super().__init__()
        if len(kernel_sizes) != sum(layers):
            raise ValueError(f"need {sum(layers)} ECA kernel sizes (one per block), got {len(kernel_sizes)}")
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        sizes = iter(kernel_sizes)
        self.layer1 = self._make_layer(block, 64, layers[0], 1, sizes)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, sizes)
        self.layer3 = self._make_layer(block, 256, layers[2], 2, sizes)
        self.layer4 = self._make_layer(block, 512, layers[3], 2, sizes)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block: type[EcaBasicBlock] | type[EcaBottleneck], planes: int,
                    blocks: int, stride: int, sizes: "iter[int]") -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, k_size=next(sizes))]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, k_size=next(sizes)) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


BLOCKS = {"basic": EcaBasicBlock, "bottleneck": EcaBottleneck}  # the registry's block names (models/specs.py)
