"""Inputs for validation and benchmarks: seeded random batches, or a folder of images.

Image folders come in two layouts, as torchvision reads them:

- ImageFolder: ``root/<class>/<image>``; labels are the class folders in sorted order (ImageNet's
  ``n01440764`` ... folders give the standard indices), or positions in ``--class-index``
  (a text file with one class folder name per line in model order, or Keras'
  ``imagenet_class_index.json``) when the folder holds a subset of the classes;
- flat: ``root/<image>``; no labels, so only agreement with the reference is reported.

Images are preprocessed with the authors' transforms (:mod:`eca_deploy.preprocess`) scaled to
the model's input size. Every image is opened (its header, no decoding) when the folder is read, so
a file that is not an image is reported before any model is loaded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eca_deploy.errors import EcaDeployError, first_line
from eca_deploy.parity import seeded_inputs
from eca_deploy.preprocess import Preprocessing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class Batch:
    """One batch of model input, its labels (-1 where unknown) and the seconds preprocessing took."""

    images: np.ndarray
    labels: np.ndarray | None
    preprocess_s: float = 0.0


class RandomInputs:
    """``num_batches`` seeded standard-normal batches (reproducible from ``seed``)."""

    def __init__(self, sample_shape: Sequence[int], *, batch_size: int, num_batches: int, seed: int = 0) -> None:
        if batch_size < 1 or num_batches < 1:
            raise EcaDeployError(f"batch size and batch count must be positive, got {batch_size} and {num_batches}")
        self.sample_shape, self.seed = tuple(sample_shape), seed
        self.batch_size, self.num_batches = batch_size, num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        for index in range(self.num_batches):
            yield Batch(self.batch(self.batch_size, index), None)

    def batch(self, batch_size: int, index: int = 0) -> np.ndarray:
        """The ``index``-th batch of ``batch_size`` samples (batch 0 is the one ``eca-export`` checks parity on)."""
        return seeded_inputs(batch_size, self.sample_shape, self.seed, index)

    def describe(self) -> dict[str, Any]:
        return {"kind": "random", "distribution": "standard normal", "seed": self.seed,
                "sample_shape": list(self.sample_shape), "batch_size": self.batch_size,
                "num_batches": self.num_batches, "samples": self.batch_size * self.num_batches}


class ImageFolderInputs:
    """Images under ``root`` (ImageFolder or flat layout), preprocessed in batches of ``batch_size``.

    ``num_classes``: how many classes the labels index (the class index's length, else the number of
    class folders); None for a flat folder.
    """

    def __init__(self, root: str | Path, preprocessing: Preprocessing, *, batch_size: int,
                 class_index: str | Path | None = None, limit: int | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise EcaDeployError(f"image folder {self.root} does not exist or is not a folder")
        if batch_size < 1:
            raise EcaDeployError(f"batch size must be positive, got {batch_size}")
        self.preprocessing, self.batch_size = preprocessing, batch_size
        folders = sorted(d for d in self.root.iterdir() if d.is_dir())
        class_images = {d.name: images for d in folders if (images := _images_in(d))}
        if class_images:
            self.layout = "imagefolder"
            index = load_class_index(class_index) if class_index else {name: i for i, name in enumerate(class_images)}
            unknown = [name for name in class_images if name not in index]
            if unknown:
                raise EcaDeployError(f"class folders {', '.join(unknown[:5])} are not in the class index "
                                     f"{class_index}")
            self.samples = [(path, index[name]) for name, images in class_images.items() for path in images]
            self.num_classes: int | None = len(index)
        else:
            if class_index:
                raise EcaDeployError(f"the class index {class_index} labels class folders, and {self.root} has none "
                                     f"(its images are not in <class>/<image> folders)")
            self.layout, self.num_classes = "flat", None
            self.samples = [(path, -1) for path in _images_in(self.root)]
        if not self.samples:
            raise EcaDeployError(f"no images in {self.root} (looked for {', '.join(IMAGE_SUFFIXES)} files, "
                                 f"directly or in class folders)")
        if limit is not None:
            self.samples = self.samples[:limit]
        for path, _ in self.samples:
            _check_image(path)

    @property
    def has_labels(self) -> bool:
        return self.layout == "imagefolder"

    def __len__(self) -> int:
        return -(-len(self.samples) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for start in range(0, len(self.samples), self.batch_size):
            yield self.load(self.samples[start:start + self.batch_size])

    def load(self, samples: Sequence[tuple[Path, int]]) -> Batch:
        """Decode and preprocess ``samples``, timing it."""
        begin = time.perf_counter()
        images = self.preprocessing.batch(path for path, _ in samples)
        labels = np.array([label for _, label in samples], dtype=np.int64) if self.has_labels else None
        return Batch(images, labels, time.perf_counter() - begin)

    def batch_of(self, batch_size: int, index: int) -> Batch:
        """The ``index``-th batch of ``batch_size`` images, cycling through the folder (for benchmarks)."""
        count = len(self.samples)
        start = index * batch_size
        return self.load([self.samples[(start + i) % count] for i in range(batch_size)])

    def describe(self) -> dict[str, Any]:
        return {"kind": "images", "root": str(self.root), "layout": self.layout, "samples": len(self.samples),
                "labels": self.has_labels, "num_classes": self.num_classes, "batch_size": self.batch_size,
                "preprocessing": {"resize": self.preprocessing.resize, "crop": self.preprocessing.crop,
                                  "mean": list(self.preprocessing.mean), "std": list(self.preprocessing.std),
                                  "interpolation": self.preprocessing.interpolation}}


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _check_image(path: Path) -> None:
    """Open ``path`` and read its header (no decoding): unreadable and non-image files fail here."""
    from PIL import Image

    try:
        with Image.open(path):
            pass
    except (OSError, ValueError) as error:
        raise EcaDeployError(f"cannot read image {path}: {first_line(error)}") from error


def load_class_index(path: str | Path) -> dict[str, int]:
    """Class folder name -> model output index, from a text file (one name per line) or Keras' JSON index."""
    path = Path(path)
    if not path.is_file():
        raise EcaDeployError(f"class index {path} does not exist")
    if path.suffix == ".json":
        try:
            content = json.loads(path.read_text())
            return {entry[0]: int(key) for key, entry in content.items()}
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
            raise EcaDeployError(f"{path} is not a class index like imagenet_class_index.json "
                                 f'({{"0": ["n01440764", "tench"], ...}}): {error}') from error
    names = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise EcaDeployError(f"class index {path} is empty")
    return {name: index for index, name in enumerate(names)}
