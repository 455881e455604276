"""Real photographs for tests: the color and grayscale images scikit-image ships inside its wheel.

No dataset can be downloaded here, so calibration and agreement checks use these (astronaut, chelsea, coffee,
rocket and the others that load without a network), written as JPEG files into a folder, RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

COLOR = ("astronaut", "cat", "chelsea", "coffee", "colorwheel", "hubble_deep_field", "immunohistochemistry", "logo",
         "retina", "rocket")
GRAY = ("brick", "camera", "cell", "coins", "grass", "gravel", "moon", "page", "text")


def photographs() -> dict[str, np.ndarray]:
    """name -> H x W x 3 uint8 image, for every shipped image that loads offline (at least 12, else skip)."""
    data = pytest.importorskip("skimage.data", reason="scikit-image is not installed (pip install -e '.[test]')")
    images = {}
    for name in (*COLOR, *GRAY):
        try:
            image = np.asarray(getattr(data, name)())
        except Exception:  # a few images are fetched from the network by recent scikit-image releases
            continue
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            continue
        images[name] = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]
    if len(images) < 12:
        pytest.skip(f"scikit-image ships only {len(images)} usable photographs here")
    return images


def write_photographs(folder: Path, names: list[str] | None = None) -> list[Path]:
    """The photographs (all, or ``names``) as JPEG files in ``folder``; returns their paths in name order."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    images = photographs()
    paths = []
    for name in sorted(names or images):
        path = folder / f"{name}.jpg"
        Image.fromarray(images[name]).save(path, quality=92)
        paths.append(path)
    return paths
