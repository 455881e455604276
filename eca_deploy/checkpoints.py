"""Load a PyTorch ECA model from whatever a user has: the authors' ``.pth.tar``, a state dict,
TorchScript, a pickled module (opt-in), or a zoo name (random weights, for demos and tests).

The architecture and every ECA kernel size are read from the state dict's keys and shapes, never
guessed. Bad input raises :class:`~eca_deploy.errors.EcaDeployError` with one sentence.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from eca_deploy.errors import EcaDeployError, first_line
from eca_deploy.models import ARCHITECTURES, Architecture, EcaLayer, create_demo_model, get_architecture

StateDict = Mapping[str, torch.Tensor]

DATA_PARALLEL_PREFIX = "module."
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")  # where training scripts keep the weights
_PICKLE_PROTOCOL_MARK = 0x80
_ZIP_MAGIC = b"PK"
_MAX_LISTED_KEYS = 5


@dataclass(frozen=True)
class LoadedModel:
    """A PyTorch model in eval mode and what is known about it."""

    module: nn.Module
    arch: str | None               # zoo architecture, None when it could not be identified
    kernel_sizes: tuple[int, ...]  # one k per ECA layer, in forward order
    num_classes: int | None
    source_kind: str               # "zoo", "authors-checkpoint", "state-dict", "torchscript", "pickled-module"
    source: str

    @property
    def output_stride(self) -> int | None:
        """How many input pixels make one pixel of the last feature map, where the architecture is known."""
        return get_architecture(self.arch).output_stride if self.arch is not None else None

    def check_input_size(self, size: int) -> None:
        """Refuse a square input this network cannot take: one smaller than its output stride leaves the last
        stage no pixel (exports and parity would still pass, on a degenerate network)."""
        stride = self.output_stride
        if stride is not None and size < stride:
            raise EcaDeployError(f"--input-size {size} is too small for {self.arch}, which downsamples {stride}x: "
                                 f"give at least {stride} pixels (its released weights were trained at 224)")

    @property
    def kernel_spec(self) -> str:
        """Kernel sizes in the authors' notation (``k3557``) where it applies, else listed."""
        if not self.kernel_sizes:
            return "unknown"
        if self.arch is not None:
            arch = get_architecture(self.arch)
            per_group = {g: {k for k, gk in zip(self.kernel_sizes, arch.kernel_groups) if gk == g}
                         for g in set(arch.kernel_groups)}
            if all(len(ks) == 1 and max(ks) < 10 for ks in per_group.values()):
                return "k" + "".join(str(per_group[g].pop()) for g in sorted(per_group))
        return ",".join(map(str, self.kernel_sizes))


@dataclass(frozen=True)
class InferredArchitecture:
    """What a state dict says about its model."""

    arch: Architecture
    kernel_sizes: tuple[int, ...]
    num_classes: int


def load_model(source: str | Path, *, arch: str | None = None, kernels: str | Sequence[int] | None = None,
               num_classes: int | None = None, allow_pickle: bool = False) -> LoadedModel:
    """Load ``source`` (checkpoint path or zoo name) as an eval-mode model.

    ``arch`` overrides the inferred architecture; ``kernels`` (zoo names only) picks the ECA
    kernel sizes; ``allow_pickle`` permits checkpoints that hold pickled Python objects.
    """
    source = str(source)
    path = Path(source)
    if not path.exists() and source in ARCHITECTURES:
        if arch is not None and arch != source:
            raise EcaDeployError(f"--arch {arch} contradicts the zoo name {source}")
        model = create_demo_model(source, kernels, num_classes or 1000)
        return LoadedModel(model, source, tuple(get_architecture(source).kernel_sizes(kernels)),
                           num_classes or 1000, "zoo", source)
    _check_file(path)
    if kernels is not None:
        raise EcaDeployError("--kernels applies to zoo names only: a checkpoint's kernel sizes are read from its weights")
    if _is_torchscript(path):
        return _describe(torch.jit.load(str(path), map_location="cpu"), "torchscript", source, arch, num_classes)
    content = _torch_load(path, allow_pickle)
    if isinstance(content, nn.Module):
        return _describe(content, "pickled-module", source, arch, num_classes)
    state_dict, kind = _find_state_dict(content, path)
    inferred = infer_architecture(state_dict, arch=arch, num_classes=num_classes)
    model = inferred.arch.build(list(inferred.kernel_sizes), inferred.num_classes)
    model.load_state_dict(strip_prefix(state_dict))
    return LoadedModel(model.eval(), inferred.arch.name, inferred.kernel_sizes, inferred.num_classes, kind, source)


def strip_prefix(state_dict: StateDict, prefix: str = DATA_PARALLEL_PREFIX) -> dict[str, torch.Tensor]:
    """Keys without the DataParallel ``module.`` prefix (keys without it are kept as they are)."""
    return {key.removeprefix(prefix): value for key, value in state_dict.items()}


def infer_architecture(state_dict: StateDict, *, arch: str | None = None,
                       num_classes: int | None = None) -> InferredArchitecture:
    """Identify the zoo architecture, ECA kernel sizes and class count of ``state_dict``.

    Keys may carry the ``module.`` prefix. Raises EcaDeployError naming the missing or unexpected
    keys of the closest architecture, or the first shape that does not fit.
    """
    weights = strip_prefix(state_dict)
    candidates = [get_architecture(arch)] if arch is not None else list(ARCHITECTURES.values())
    models = {candidate.name: _meta_model(candidate) for candidate in candidates}
    keys = {name: set(model.state_dict()) for name, model in models.items()}
    fits = [c for c in candidates if keys[c.name] == set(weights)]
    if not fits:
        closest = min(candidates, key=lambda c: len(keys[c.name] ^ set(weights)))
        expected = keys[closest.name]
        detail = _key_difference(sorted(expected - set(weights)), sorted(set(weights) - expected))
        what = f"the keys do not fit {arch}" if arch else f"the keys fit no zoo model (closest: {closest.name})"
        raise EcaDeployError(f"{what}: {detail}")
    chosen = fits[0]
    modules = dict(models[chosen.name].named_modules())
    kernel_sizes = tuple(int(weights[f"{name}.conv.weight"].shape[-1])
                         for name, module in modules.items() if isinstance(module, EcaLayer))
    classifier = [name for name, module in modules.items() if isinstance(module, nn.Linear)][-1]
    classes = int(weights[f"{classifier}.weight"].shape[0])
    if num_classes is not None and num_classes != classes:
        raise EcaDeployError(f"--num-classes {num_classes} contradicts the checkpoint, whose classifier has {classes}")
    for key, value in _meta_model(chosen, kernel_sizes, classes).state_dict().items():
        if weights[key].shape != value.shape:
            raise EcaDeployError(f"shape mismatch for {chosen.name}: {key} is {list(weights[key].shape)} in the "
                                 f"checkpoint, the model expects {list(value.shape)}")
    return InferredArchitecture(chosen, kernel_sizes, classes)


def save_authors_checkpoint(model: nn.Module, path: str | Path, arch: str, epoch: int = 0) -> Path:
    """Save ``model`` the way the authors' training script did (DataParallel ``module.`` keys)."""
    state_dict = {DATA_PARALLEL_PREFIX + key: value for key, value in model.state_dict().items()}
    torch.save({"epoch": epoch, "arch": arch, "state_dict": state_dict, "best_prec1": 0.0, "optimizer": {}}, path)
    return Path(path)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise EcaDeployError(f"{path}: no such file (and not a zoo name; known: {', '.join(ARCHITECTURES)})")
    if not path.is_file():
        raise EcaDeployError(f"{path} is not a file")
    if path.stat().st_size == 0:
        raise EcaDeployError(f"{path} is empty")


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding compiled code (``<name>/code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _torch_load(path: Path, allow_pickle: bool) -> object:
    """``torch.load`` with weights_only unless ``allow_pickle``; file problems become EcaDeployError."""
    head = path.read_bytes()[:2]
    if head[:2] != _ZIP_MAGIC and (not head or head[0] != _PICKLE_PROTOCOL_MARK):
        raise EcaDeployError(f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)")
    if head[:2] == _ZIP_MAGIC and not zipfile.is_zipfile(path):
        raise EcaDeployError(f"{path} is truncated or corrupt (its zip directory is missing)")
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as error:
        if allow_pickle:
            raise EcaDeployError(f"{path} could not be unpickled: {first_line(error)}") from error
        raise EcaDeployError(f"{path} holds pickled Python objects (such as a whole nn.Module), and unpickling runs "
                             "code from the file: pass --allow-pickle if you trust it") from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise EcaDeployError(f"{path} is truncated or not a PyTorch checkpoint: {first_line(error)}") from error


def _find_state_dict(content: object, path: Path) -> tuple[StateDict, str]:
    """The tensors of ``content`` and the kind of file: the authors' dict or a bare state dict."""
    if not isinstance(content, Mapping):
        raise EcaDeployError(f"{path} holds a {type(content).__name__}, not a state dict or checkpoint dict")
    for key in STATE_DICT_KEYS:
        if isinstance(content.get(key), Mapping) and _is_state_dict(content[key]):
            return content[key], "authors-checkpoint"
    if _is_state_dict(content):
        return content, "state-dict"
    raise EcaDeployError(f"{path} holds a dict without weights (keys: {', '.join(map(str, list(content)[:8]))}); "
                         f"expected a state dict or a dict with one of {', '.join(STATE_DICT_KEYS)}")


def _is_state_dict(mapping: Mapping) -> bool:
    return bool(mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items())


def _meta_model(arch: Architecture, kernel_sizes: Sequence[int] | None = None, num_classes: int = 1000) -> nn.Module:
    """``arch`` built on the meta device: its keys and shapes without memory or init cost."""
    with torch.device("meta"):
        return arch.build(list(kernel_sizes) if kernel_sizes else None, num_classes)


def _describe(module: nn.Module, kind: str, source: str, arch: str | None, num_classes: int | None) -> LoadedModel:
    """A TorchScript or pickled model as it is; architecture and kernels read from its weights if they fit the zoo."""
    try:
        inferred = infer_architecture(module.state_dict(), arch=arch, num_classes=num_classes)
    except EcaDeployError:
        if arch is not None:
            raise
        kernel_sizes = tuple(int(v.shape[-1]) for k, v in module.state_dict().items()
                             if k.endswith("conv.weight") and v.dim() == 3 and tuple(v.shape[:2]) == (1, 1))
        return LoadedModel(module.eval(), None, kernel_sizes, num_classes, kind, source)
    return LoadedModel(module.eval(), inferred.arch.name, inferred.kernel_sizes, inferred.num_classes, kind, source)


def _key_difference(missing: list[str], unexpected: list[str]) -> str:
    def listed(keys: list[str]) -> str:
        more = f" and {len(keys) - _MAX_LISTED_KEYS} more" if len(keys) > _MAX_LISTED_KEYS else ""
        return ", ".join(keys[:_MAX_LISTED_KEYS]) + more

    parts = [f"{len(missing)} missing ({listed(missing)})" if missing else "",
             f"{len(unexpected)} unexpected ({listed(unexpected)})" if unexpected else ""]
    return "; ".join(p for p in parts if p)
