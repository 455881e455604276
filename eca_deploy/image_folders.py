"""Folders of images as users have them, read for validation, benchmarks and INT8 calibration.

Two layouts, as torchvision reads them:

- ImageFolder: ``root/<class>/<image>``; labels are the class folders in sorted order (ImageNet's
  ``n01440764`` ... folders give the standard indices), or positions in a class index (a text file with
  one class folder name per line in model order, or Keras' ``imagenet_class_index.json``) when the folder
  holds a subset of the classes;
- flat: ``root/<image>``; no labels, so only agreement with a reference can be measured.

Images go through a model's preprocessing (:mod:`eca_deploy.preprocess`: the authors' transforms, or timm's).
Every file is opened (its header, no decoding) when the folder is read, so files that are not images are
known before any model is loaded. A large folder should survive one bad file without shrinking silently:
files that cannot be read (there, or when a truncated one fails to decode later) are skipped, counted and
the first few named (:class:`SkippedFiles`, in reports); ``strict=True`` refuses the folder at the first one.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from eca_deploy.errors import EcaDeployError, UnreadableImageError, first_line
from eca_deploy.preprocess import Preprocessing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def skipped_files_sentence(skipped: dict[str, Any], root: str | Path | None) -> str:
    """The unreadable files an image folder skipped (``SkippedFiles.to_dict()``): how many, the first few and why."""
    count = skipped["count"]
    names = "; ".join(f"{Path(item['file']).name}: {item['reason']}" for item in skipped["first"])
    more = f" and {count - len(skipped['first'])} more" if count > len(skipped["first"]) else ""
    return (f"skipped {count} unreadable file{'s' if count > 1 else ''} in {root} ({names}{more}); "
            "--strict refuses the folder instead")


@dataclass
class SkippedFiles:
    """Files of an image folder that could not be read as images: counted, the first few named with why."""

    count: int = 0
    first: list[dict[str, str]] = field(default_factory=list)
    named: ClassVar[int] = 5  #: how many are named

    def add(self, error: UnreadableImageError) -> None:
        self.count += 1
        if len(self.first) < self.named:
            self.first.append({"file": str(error.path), "reason": error.reason})

    def summary(self, root: Path) -> str:
        """One line for the terminal, empty when nothing was skipped."""
        return skipped_files_sentence(self.to_dict(), root) if self.count else ""

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "first": self.first}


@dataclass
class Batch:
    """One batch of model input, its labels (-1 where unknown) and the seconds preprocessing took."""

    images: np.ndarray
    labels: np.ndarray | None
    preprocess_s: float = 0.0


class ImageFolderInputs:
    """Images under ``root`` (ImageFolder or flat layout), preprocessed in batches of ``batch_size``.

    ``num_classes``: how many classes the labels index (the class index's length, else the number of
    class folders); None for a flat folder. Unreadable files are skipped and counted in ``skipped``
    (``strict``: refused with one sentence); ``limit`` counts the readable ones. The folder is read before
    the model is loaded, so ``preprocessing`` may be set afterwards (it must be before any image is decoded).
    """

    def __init__(self, root: str | Path, preprocessing: Preprocessing | None, *, batch_size: int,
                 class_index: str | Path | None = None, limit: int | None = None, strict: bool = False) -> None:
        self.root, self.strict, self.skipped = Path(root), strict, SkippedFiles()
        self._unreadable: set[Path] = set()
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
        readable = (sample for sample in self.samples if self._readable_header(sample[0]))
        self.samples = list(itertools.islice(readable, limit))
        if not self.samples:
            raise EcaDeployError(f"no readable image in {self.root}: {self.skipped.summary(self.root)}")

    @property
    def has_labels(self) -> bool:
        return self.layout == "imagefolder"

    def __len__(self) -> int:
        return -(-len(self.samples) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        """Batches of ``batch_size`` decoded images in folder order (the last one smaller); files that fail to
        decode are skipped and the batch filled from the next ones."""
        return self.batches(self.samples, self.batch_size)

    def batches(self, samples: Iterable[tuple[Path, int]], batch_size: int) -> Iterator[Batch]:
        """``samples`` decoded and preprocessed in batches of ``batch_size``, each timed."""
        samples = iter(samples)
        while True:
            begin = time.perf_counter()
            decoded = list(itertools.islice(self._decoded(samples), batch_size))
            if not decoded:
                return
            labels = np.array([label for _, label in decoded], dtype=np.int64) if self.has_labels else None
            yield Batch(np.stack([image for image, _ in decoded]), labels, time.perf_counter() - begin)

    def batch_of(self, batch_size: int, index: int) -> Batch:
        """The ``index``-th batch of ``batch_size`` images, cycling through the folder (for benchmarks)."""
        readable = [sample for sample in self.samples if sample[0] not in self._unreadable]
        start = index * batch_size
        cycled = (readable[(start + i) % len(readable)] for i in itertools.count()) if readable else iter(())
        batch = next(self.batches(cycled, batch_size), None)
        if batch is None:
            raise EcaDeployError(f"no image in {self.root} could be decoded: {self.skipped.summary(self.root)}")
        return batch

    def describe(self) -> dict[str, Any]:
        return {"kind": "images", "root": str(self.root), "layout": self.layout,
                "samples": len(self.samples) - len(self._unreadable), "skipped_files": self.skipped.to_dict(),
                "labels": self.has_labels, "num_classes": self.num_classes, "batch_size": self.batch_size,
                "preprocessing": None if self.preprocessing is None else self.preprocessing.to_dict()}

    def _decoded(self, samples: Iterator[tuple[Path, int]]) -> Iterator[tuple[np.ndarray, int]]:
        if self.preprocessing is None:
            raise ValueError("set the image folder's preprocessing (the model's) before decoding images")
        for path, label in samples:
            if path in self._unreadable:
                continue
            try:
                yield self.preprocessing(path), label
            except UnreadableImageError as error:  # a truncated file passes the header check, fails here
                self._skip(error)
                self._unreadable.add(path)

    def _readable_header(self, path: Path) -> bool:
        """Whether ``path`` opens as an image (header only, no decoding); else skipped, or refused when strict."""
        from PIL import Image

        try:
            with Image.open(path):
                return True
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            self._skip(UnreadableImageError(path, first_line(error)))
            return False

    def _skip(self, error: UnreadableImageError) -> None:
        if self.strict:
            raise EcaDeployError(f"{error} (--strict refuses a folder with unreadable files)") from error
        self.skipped.add(error)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


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
