"""The authors' evaluation transforms: Resize(256) -> CenterCrop(224) -> ToTensor -> Normalize.

ECA-Net was evaluated on ImageNet with torchvision's transforms on PIL images (ECA_FACTS.md, the
``preprocessing`` block of models/zoo.yaml). This module reproduces them without torchvision:

- ``Resize(256)``: the shorter side becomes 256, the longer one ``int(256 * long / short)``,
  resampled by Pillow's antialiased bilinear filter (what torchvision calls on PIL images);
- ``CenterCrop(224)``: offsets ``round((size - 224) / 2)``, zero padding when the image is smaller;
- ``ToTensor``: RGB uint8 HWC -> float32 CHW in [0, 1];
- ``Normalize``: ``(x - mean) / std`` per channel, in float32.

Images can be file paths, PIL images or RGB uint8 HWC arrays; they are converted to RGB as the
authors' loader did (grayscale is replicated, alpha dropped, CMYK converted), except 16-bit images,
which Pillow's RGB conversion would saturate: they keep their top 8 bits. Any size is accepted (a
1 x 1 image is resized like any other). Pillow is needed for decoding and resizing
(``pip install pillow``).

Models exported at another resolution (``--input-size``) keep the authors' resize/crop ratio:
``Preprocessing.for_input_size(64)`` resizes to 73 and crops 64.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from eca_deploy.errors import EcaDeployError, UnreadableImageError, first_line
from eca_deploy.resources import resource_path

ImageLike = Any  # str | Path | PIL.Image.Image | np.ndarray (H x W x 3 uint8, RGB)

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise EcaDeployError("image preprocessing needs Pillow: pip install pillow") from None
    return Image


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize``, center-crop ``crop`` x ``crop``, scale to [0, 1], normalize."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.resize < 1 or self.crop < 1:
            raise EcaDeployError(f"resize and crop must be positive, got {self.resize} and {self.crop}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise EcaDeployError(f"mean and std need 3 values each (std > 0), got {self.mean} and {self.std}")
        if self.interpolation not in _INTERPOLATIONS:
            raise EcaDeployError(f"interpolation must be one of {', '.join(_INTERPOLATIONS)}, "
                                 f"got {self.interpolation!r}")

    @classmethod
    def from_zoo(cls) -> Preprocessing:
        """The ImageNet preprocessing of the released checkpoints (models/zoo.yaml)."""
        return _zoo_preprocessing()

    def for_input_size(self, size: int) -> Preprocessing:
        """The same transforms for a model whose input is ``size`` x ``size`` (same resize/crop ratio)."""
        if size == self.crop:
            return self
        return replace(self, crop=int(size), resize=max(int(size), round(size * self.resize / self.crop)))

    def __call__(self, image: ImageLike) -> np.ndarray:
        """One image -> a float32 ``3 x crop x crop`` array."""
        array = center_crop(np.asarray(resize_shorter_side(load_image(image), self.resize, self.interpolation)),
                            self.crop)
        return normalize(array, self.mean, self.std)

    def to_dict(self) -> dict[str, Any]:
        """The settings, as reports and provenance record them."""
        return {"resize": self.resize, "crop": self.crop, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}

    def batch(self, images: Iterable[ImageLike]) -> np.ndarray:
        """Several images -> a contiguous float32 ``N x 3 x crop x crop`` batch."""
        arrays = [self(image) for image in images]
        if not arrays:
            raise EcaDeployError("no images to preprocess")
        return np.stack(arrays)


@functools.cache
def _zoo_preprocessing() -> Preprocessing:
    block = yaml.safe_load(resource_path("models/zoo.yaml").read_text())["preprocessing"]
    return Preprocessing(resize=int(block["resize"]), crop=int(block["center_crop"]),
                         mean=tuple(float(v) for v in block["mean"]), std=tuple(float(v) for v in block["std"]),
                         interpolation=str(block.get("interpolation", "bilinear")))


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # Pillow's modes for 16-bit grayscale files


def load_image(image: ImageLike):
    """Open ``image`` (path, PIL image or RGB uint8 H x W x 3 array) as an RGB PIL image; a file that cannot be
    decoded raises :class:`UnreadableImageError`."""
    Image = _pil()
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as opened:
                opened.load()  # decode now: the file closes when the block ends
                return to_rgb(opened)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise UnreadableImageError(image, first_line(error)) from error
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise EcaDeployError(f"image arrays must be RGB uint8 H x W x 3, got {image.dtype} of shape {image.shape}")
        return Image.fromarray(np.ascontiguousarray(image))
    raise EcaDeployError(f"cannot preprocess a {type(image).__name__}: pass a path, a PIL image or an RGB uint8 array")


def to_rgb(image):
    """A PIL image in RGB: 16-bit grayscale scaled to 8 bits first (Pillow's own conversion clips it at 255)."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        eight_bit = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return _pil().fromarray(eight_bit).convert("RGB")
    return image.convert("RGB")


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after torchvision's ``Resize(size)``: shorter side ``size``, aspect kept (truncated)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def resize_shorter_side(image, size: int, interpolation: str = "bilinear"):
    """Resize a PIL image so its shorter side is ``size`` (antialiased, as torchvision does for PIL)."""
    Image = _pil()
    target = resized_size(image.width, image.height, size)
    if target == image.size:
        return image
    resample = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                "bicubic": Image.Resampling.BICUBIC}[interpolation]
    return image.resize(target, resample)


def center_crop(array: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` window of an H x W x C array; zero-padded first when smaller."""
    height, width = array.shape[:2]
    if height < size or width < size:
        pad_h, pad_w = max(size - height, 0), max(size - width, 0)
        array = np.pad(array, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)))
        height, width = array.shape[:2]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return array[top:top + size, left:left + size]


def normalize(array: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """RGB uint8 H x W x 3 -> float32 3 x H x W: ``(x / 255 - mean) / std`` (ToTensor + Normalize)."""
    chw = np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)
    mean_ = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_ = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray((chw - mean_) / std_, dtype=np.float32)
