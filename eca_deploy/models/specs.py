"""Layer layouts of the zoo architectures and the paper's kernel-size rule, free of PyTorch.

The registry describes every architecture from these numbers alone, so listing the zoo, parsing
``--arch`` or a kernel spec never imports PyTorch; the model definitions build from the same numbers.
"""

from __future__ import annotations

import math

RESNET_WIDTHS = (64, 128, 256, 512)  # output channels of a block's last conv per stage, before expansion
RESNET_EXPANSION = {"basic": 1, "bottleneck": 4}  # EcaBasicBlock.expansion, EcaBottleneck.expansion
RESNET_BLOCK_NAMES = {"basic": "BasicBlock", "bottleneck": "Bottleneck"}

# ECA-MobileNetV2: t (expansion), c (output channels), n (repeats), s (first stride)
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def block_output_channels(width_mult: float = 1.0) -> list[int]:
    """Output channels of every inverted-residual block of ECA-MobileNetV2, in forward order."""
    return [int(c * width_mult) for _, c, n, _ in INVERTED_RESIDUAL_SETTING for _ in range(n)]


def adaptive_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """The paper's psi(C): |log2(C)/gamma + b/gamma|, rounded up to an odd number."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1
