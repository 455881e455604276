"""NumPy reference of the fused ECA operator (float64), the ground truth for kernels and graphs.

Like Polygraphy's ``pluginref``: the fused node can be checked without the plugin.
"""

from __future__ import annotations

import numpy as np

from eca_deploy.schema import eca_schema


def eca_reference(x: np.ndarray, weight: np.ndarray, pad_mode: str = "constant",
                  channels_last: bool = False) -> np.ndarray:
    """y = x * sigmoid(conv1d_k(mean_hw(x))) across channels, computed in float64.

    ``x`` is N x C x H x W (or N x H x W x C with ``channels_last``); ``weight`` holds the k taps
    (any shape with k elements, e.g. [1, 1, k]); ``pad_mode`` is "constant" (zero padding) or
    "wrap" (circular).
    """
    if pad_mode not in eca_schema().pad_modes:
        raise ValueError(f"pad_mode must be one of {eca_schema().pad_modes}, got {pad_mode!r}")
    x64 = np.asarray(x, dtype=np.float64)
    if channels_last:
        x64 = x64.transpose(0, 3, 1, 2)
    taps = np.asarray(weight, dtype=np.float64).reshape(-1)
    k = taps.size
    if k % 2 == 0:
        raise ValueError(f"kernel size must be odd, got {k}")
    pooled = x64.mean(axis=(2, 3))                                   # N x C
    pad = (k - 1) // 2
    padded = np.pad(pooled, ((0, 0), (pad, pad)), mode=pad_mode)     # numpy's "constant"/"wrap"
    windows = np.lib.stride_tricks.sliding_window_view(padded, k, axis=1)  # N x C x k
    gate = 1.0 / (1.0 + np.exp(-(windows @ taps)))                   # N x C
    y = x64 * gate[:, :, None, None]
    return y.transpose(0, 2, 3, 1) if channels_last else y
