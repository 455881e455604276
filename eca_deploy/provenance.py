"""Where a file came from: the model, its weights, input and preprocessing, carried inside every file we write.

Every exported, quantized or fused ONNX model holds a :class:`Provenance` as JSON in its ``metadata_props``
(key ``eca_deploy.provenance``), and every engine report repeats it. ``validate`` and ``bench`` read it: a
file named with ``-b`` and no SOURCE brings its own reference model, and a file made from another model than
the SOURCE given is refused, naming the model it came from.

The identity of a model is the SHA-256 of its weights (every tensor of its state dict, names and bytes), so
the same network from a checkpoint, a state dict or a TorchScript archive is the same model, and a checkpoint
changed since the export is not.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eca_deploy.errors import EcaDeployError

if TYPE_CHECKING:
    import onnx
    from torch import nn

METADATA_KEY = "eca_deploy.provenance"
PROVENANCE_VERSION = 1
SHORT_HASH = 12  # characters of a SHA-256 shown in messages


@dataclass(frozen=True)
class Provenance:
    """What a model file was made from. ``loader`` holds the arguments that load the model again
    (:func:`eca_deploy.checkpoints.load_model`); it is empty for an ``nn.Module`` handed over in Python."""

    source: str                      # what the user gave: a file, a zoo name, timm:NAME, or "nn.Module <class>"
    source_kind: str                 # "zoo", "timm", "authors-checkpoint", "state-dict", "torchscript", ...
    model: str                       # zoo architecture, timm model name, or the module's class name
    weights_sha256: str              # of every tensor of the state dict: the model's identity
    num_classes: int | None
    kernel_sizes: tuple[int, ...]
    input_shape: tuple[int, int, int] | None = None
    precision: str | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    weights_file: str | None = None  # the checkpoint or weights file, resolved
    weights_file_sha256: str | None = None
    loader: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """The model in a few words: ``timm:ecaresnet50d (weights /m/w.pth, sha256 1a2b3c4d5e6f)``."""
        weights = f"weights {self.weights_file}, " if self.weights_file else ""
        return f"{self.source} ({weights}sha256 {self.weights_sha256[:SHORT_HASH]})"

    def same_model(self, other: Provenance) -> bool:
        """Whether both describe the same network with the same weights."""
        return self.weights_sha256 == other.weights_sha256 and self.num_classes == other.num_classes

    def for_file(self, input_shape: tuple[int, int, int], precision: str) -> Provenance:
        """This provenance for a file of ``input_shape`` and ``precision``."""
        return replace(self, input_shape=tuple(input_shape), precision=precision)

    def to_dict(self) -> dict[str, Any]:
        return {"version": PROVENANCE_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        fields = {key: value for key, value in data.items() if key in cls.__dataclass_fields__}
        fields["kernel_sizes"] = tuple(fields.get("kernel_sizes") or ())
        if fields.get("input_shape") is not None:
            fields["input_shape"] = tuple(fields["input_shape"])
        return cls(**fields)


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 of every tensor of ``module``'s state dict (name, dtype, shape and bytes), in name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stamp(model: onnx.ModelProto, provenance: Provenance) -> onnx.ModelProto:
    """Write ``provenance`` into ``model``'s metadata (in place, replacing an earlier one); returns ``model``."""
    kept = [entry for entry in model.metadata_props if entry.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(provenance.to_dict(), sort_keys=True)
    return model


def read_provenance(model: onnx.ModelProto) -> Provenance | None:
    """The provenance a model carries, or None (a file not written by eca-deploy, or older than provenance)."""
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            try:
                return Provenance.from_dict(json.loads(entry.value))
            except (ValueError, TypeError) as error:
                raise EcaDeployError(f"the model's {METADATA_KEY} metadata is damaged: {error}") from error
    return None
