"""Real photographs for tests: the color and grayscale images scikit-image ships inside its wheel.

No dataset can be downloaded here, so calibration and agreement checks use these (astronaut, chelsea, coffee,
rocket and the others that load without a network), written as JPEG files into a folder, RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_checks import required

COLOR = ("astronaut", "cat", "chelsea", "coffee", "colorwheel", "hubble_deep_field", "immunohistochemistry", "logo",
         "retina", "rocket")
GRAY = ("brick", "camera", "cell", "coins", "grass", "gravel", "moon", "page", "text")


def photographs() -> dict[str, np.ndarray]:
    """name -> H x W x 3 uint8 image, for every shipped image that loads offline (at least 12, else skip)."""
    data = required("skimage.data")
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


#: A real folder's awkward files (write_awkward_folder): name -> readable by the preprocessing.
AWKWARD_FILES = {"truncated.jpg": False, "notes.jpg": False, "tiny.png": True, "cmyk.jpg": True, "deep.png": True,
                 "gray.png": True, "rgba.png": True, "small.jpg": True}


def write_awkward_folder(folder: Path) -> Path:
    """The files one meets in real image folders, made from the photographs: a truncated JPEG, a text file named
    .jpg, a 1 x 1 PNG, a CMYK JPEG, a 16-bit grayscale PNG and its 8-bit twin (``gray.png``), an RGBA PNG and a
    102 x 102 JPEG (smaller than the 256-pixel resize)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    images = photographs()
    Image.fromarray(images["astronaut"]).save(folder / "whole.jpg", quality=92)
    whole = (folder / "whole.jpg").read_bytes()
    (folder / "whole.jpg").unlink()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.jpg").write_text("meeting notes, not an image\n")
    Image.fromarray(images["coffee"][:1, :1]).save(folder / "tiny.png")
    Image.fromarray(images["chelsea"]).convert("CMYK").save(folder / "cmyk.jpg")
    gray = images["camera"][..., 0]
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "deep.png")
    Image.fromarray(gray).save(folder / "gray.png")
    alpha = np.full(images["rocket"].shape[:2], 128, np.uint8)
    Image.fromarray(np.dstack([images["rocket"], alpha])).save(folder / "rgba.png")
    Image.fromarray(images["coffee"]).resize((102, 102)).save(folder / "small.jpg")
    assert sorted(p.name for p in folder.iterdir()) == sorted(AWKWARD_FILES)
    return folder
