"""Load a PyTorch ECA model from whatever a user has: the authors' ``.pth.tar``, a state dict (``.pth`` or
``.safetensors``), TorchScript, a pickled module (opt-in), a zoo name (random weights, for demos and tests),
a timm model (``timm:NAME``, :mod:`eca_deploy.models.timm_models`), or an ``nn.Module`` handed over in Python.

The architecture and every ECA kernel size are read from the weights' keys and shapes, never guessed. Every
loaded model knows its preprocessing and input size, and where it came from (:meth:`LoadedModel.provenance`).
Bad input raises :class:`~eca_deploy.errors.EcaDeployError` with one sentence.
"""

from __future__ import annotations

import functools
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eca_deploy.errors import EcaDeployError, first_line
from eca_deploy.models import ARCHITECTURES, Architecture, EcaLayer, create_demo_model, get_architecture
from eca_deploy.models.registry import key_difference
from eca_deploy.models.timm_models import (
    create_timm_model,
    eca_layers,
    is_timm_source,
    matching_timm_model,
    timm_name,
    timm_preprocessing,
)
from eca_deploy.options import DEFAULT_INPUT_SIZE, DEFAULT_SOURCE
from eca_deploy.preprocess import Preprocessing
from eca_deploy.provenance import Provenance, file_sha256, weights_sha256

StateDict = Mapping[str, torch.Tensor]

DATA_PARALLEL_PREFIX = "module."
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")  # where training scripts keep the weights
SAFETENSORS_SUFFIX = ".safetensors"
_PICKLE_PROTOCOL_MARK = 0x80
_ZIP_MAGIC = b"PK"


@dataclass(frozen=True)
class LoadedModel:
    """A PyTorch model in eval mode and what is known about it: architecture, ECA kernel sizes, classes, the
    preprocessing and input size it expects, and how to load it again (``loader``, empty for a module handed
    over in Python)."""

    module: nn.Module
    arch: str | None               # zoo architecture or timm model name; None when it could not be identified
    kernel_sizes: tuple[int, ...]  # one k per ECA layer, in forward order
    num_classes: int | None
    source_kind: str               # "zoo", "timm", "authors-checkpoint", "state-dict", "torchscript", ...
    source: str
    preprocessing: Preprocessing = field(default_factory=Preprocessing.from_zoo)
    input_size: int = DEFAULT_INPUT_SIZE
    output_stride: int | None = None  # input pixels per pixel of the last feature map, where known
    weights_file: Path | None = None
    loader: dict[str, Any] = field(default_factory=dict)

    @property
    def kernel_spec(self) -> str:
        """Kernel sizes in the authors' notation (``k3557``) where it applies, else listed."""
        if not self.kernel_sizes:
            return "unknown"
        if self.arch in ARCHITECTURES:
            arch = get_architecture(self.arch)
            per_group = {g: {k for k, gk in zip(self.kernel_sizes, arch.kernel_groups) if gk == g}
                         for g in set(arch.kernel_groups)}
            if all(len(ks) == 1 and max(ks) < 10 for ks in per_group.values()):
                return "k" + "".join(str(per_group[g].pop()) for g in sorted(per_group))
        return ",".join(map(str, self.kernel_sizes))

    @functools.cached_property
    def weights_sha256(self) -> str:
        """The model's identity: SHA-256 of every tensor of its state dict."""
        return weights_sha256(self.module)

    def provenance(self, input_size: int | None = None, precision: str | None = None) -> Provenance:
        """Where this model came from, for a file of ``input_size`` pixels and ``precision``."""
        size = input_size or self.input_size
        return Provenance(
            source=self.source, source_kind=self.source_kind, model=self.arch or type(self.module).__name__,
            weights_sha256=self.weights_sha256, num_classes=self.num_classes, kernel_sizes=self.kernel_sizes,
            input_shape=(3, size, size), precision=precision,
            preprocessing=self.preprocessing.for_input_size(size).to_dict(),
            weights_file=None if self.weights_file is None else str(self.weights_file),
            weights_file_sha256=None if self.weights_file is None else file_sha256(self.weights_file),
            loader=self.loader)

    def check_input_size(self, size: int) -> None:
        """Refuse a square input this network cannot take: one smaller than its output stride leaves the last
        stage no pixel (exports and parity would still pass, on a degenerate network)."""
        stride = self.output_stride
        if stride is not None and size < stride:
            raise EcaDeployError(f"--input-size {size} is too small for {self.arch}, which downsamples {stride}x: "
                                 f"give at least {stride} pixels (it expects {self.input_size})")


@dataclass(frozen=True)
class InferredArchitecture:
    """What a state dict says about its model."""

    arch: Architecture
    kernel_sizes: tuple[int, ...]
    num_classes: int


def load_model(source: str | Path | nn.Module = DEFAULT_SOURCE, *, arch: str | None = None,
               kernels: str | Sequence[int] | None = None, num_classes: int | None = None,
               allow_pickle: bool = False, weights: str | Path | None = None, pretrained: bool = False,
               timm_args: Mapping[str, Any] | None = None) -> LoadedModel:
    """Load ``source`` as an eval-mode model: a checkpoint path, a zoo name, ``timm:NAME`` or an ``nn.Module``.

    ``arch`` overrides the inferred zoo architecture; ``kernels`` (zoo names only) picks the ECA kernel sizes;
    ``allow_pickle`` permits checkpoints that hold pickled Python objects. ``weights`` (a state-dict file),
    ``pretrained`` (timm's released weights) and ``timm_args`` (keyword arguments of ``timm.create_model``)
    apply to timm models.
    """
    timm_options = {"--weights": weights is not None, "--pretrained": pretrained, "--timm-args": bool(timm_args)}
    if isinstance(source, nn.Module):
        _refuse_options(timm_options, "an nn.Module")
        return _from_module(source, arch, num_classes)
    source = str(source)
    if is_timm_source(source):
        if arch is not None or kernels is not None:
            raise EcaDeployError(f"--{'arch' if arch else 'kernels'} applies to zoo architectures, not to {source}")
        return _from_timm(source, weights, pretrained, num_classes, dict(timm_args or {}), allow_pickle)
    _refuse_options(timm_options, source)
    path = Path(source)
    if not path.exists() and source in ARCHITECTURES:
        if arch is not None and arch != source:
            raise EcaDeployError(f"--arch {arch} contradicts the zoo name {source}")
        model = create_demo_model(source, kernels, num_classes or 1000)
        return LoadedModel(model, source, tuple(get_architecture(source).kernel_sizes(kernels)),
                           num_classes or 1000, "zoo", source, output_stride=get_architecture(source).output_stride,
                           loader={"source": source, "kernels": kernels, "num_classes": num_classes or 1000})
    _check_file(path)
    if kernels is not None:
        raise EcaDeployError("--kernels applies to zoo names only: a checkpoint's kernel sizes are read from its weights")
    loader = {"source": str(path.resolve()), "arch": arch, "num_classes": num_classes, "allow_pickle": allow_pickle}
    if _is_torchscript(path):
        return _describe(torch.jit.load(str(path), map_location="cpu"), "torchscript", path, arch, num_classes, loader)
    if path.name.endswith(SAFETENSORS_SUFFIX):
        state_dict, kind = _read_safetensors(path), "safetensors"
    else:
        content = _torch_load(path, allow_pickle)
        if isinstance(content, nn.Module):
            return _describe(content, "pickled-module", path, arch, num_classes, loader)
        state_dict, kind = _find_state_dict(content, path)
    inferred = _infer_or_point_at_timm(state_dict, path, arch, num_classes)
    model = inferred.arch.build(list(inferred.kernel_sizes), inferred.num_classes)
    model.load_state_dict(strip_prefix(state_dict))
    return LoadedModel(model.eval(), inferred.arch.name, inferred.kernel_sizes, inferred.num_classes, kind, str(path),
                       output_stride=inferred.arch.output_stride, weights_file=path.resolve(), loader=loader)


def read_weights(path: str | Path, allow_pickle: bool = False) -> StateDict:
    """The state dict in a weights file: ``.safetensors``, a bare state dict, or a training checkpoint holding one."""
    path = Path(path)
    _check_file(path, "--weights")
    if path.name.endswith(SAFETENSORS_SUFFIX):
        return _read_safetensors(path)
    content = _torch_load(path, allow_pickle)
    if isinstance(content, nn.Module):
        return content.state_dict()
    return strip_prefix(_find_state_dict(content, path)[0])


def _refuse_options(given: dict[str, bool], what: str) -> None:
    names = [name for name, present in given.items() if present]
    if names:
        raise EcaDeployError(f"{' and '.join(names)} {'apply' if len(names) > 1 else 'applies'} to timm:NAME sources, "
                             f"not to {what} (a checkpoint file is the SOURCE itself)")


def _from_timm(source: str, weights: str | Path | None, pretrained: bool, num_classes: int | None,
               timm_args: dict[str, Any], allow_pickle: bool) -> LoadedModel:
    state_dict = read_weights(weights, allow_pickle) if weights is not None else None
    path = Path(weights).resolve() if weights is not None else None
    model = create_timm_model(timm_name(source), weights=state_dict, pretrained=pretrained, num_classes=num_classes,
                              model_args=timm_args)
    loader = {"source": source, "weights": None if path is None else str(path), "pretrained": pretrained,
              "num_classes": num_classes if path is None else None, "timm_args": timm_args,
              "allow_pickle": allow_pickle}
    return LoadedModel(model.module, model.name, model.kernel_sizes, model.num_classes, "timm", source,
                       model.preprocessing, model.input_size, _timm_stride(model.module), path, loader)


def _timm_stride(module: nn.Module) -> int | None:
    """The total stride of a timm network, from its feature_info."""
    info = getattr(module, "feature_info", None)
    try:
        return int(info[-1]["reduction"])
    except (TypeError, KeyError, IndexError):
        return None


def _from_module(module: nn.Module, arch: str | None, num_classes: int | None) -> LoadedModel:
    """An ``nn.Module`` handed over in Python: a zoo model, a timm model (its pretrained_cfg gives the
    preprocessing), or any network with ECA blocks."""
    source = f"nn.Module {type(module).__name__}"
    config = getattr(module, "pretrained_cfg", None)
    if isinstance(config, Mapping) and config.get("architecture") and eca_layers(module):
        size = int(config.get("input_size", (3, DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE))[-1])
        kernel_sizes = tuple(int(layer.conv.weight.shape[-1]) for _, layer in eca_layers(module))
        return LoadedModel(module.eval(), config["architecture"], kernel_sizes, getattr(module, "num_classes", None),
                           "module", source, timm_preprocessing(config, size), size, _timm_stride(module))
    return _describe(module, "module", None, arch, num_classes, {}, source=source)
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
        detail = key_difference(sorted(expected - set(weights)), sorted(set(weights) - expected))
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


def _infer_or_point_at_timm(state_dict: StateDict, path: Path, arch: str | None,
                            num_classes: int | None) -> InferredArchitecture:
    """:func:`infer_architecture`, or where the keys are a timm model's, the sentence naming that route."""
    try:
        return infer_architecture(state_dict, arch=arch, num_classes=num_classes)
    except EcaDeployError as error:
        name = None if arch is not None else matching_timm_model(set(strip_prefix(state_dict)))
        if name is None:
            raise
        raise EcaDeployError(f"{path} holds the weights of timm's {name}, not of a zoo model: load them with "
                             f"timm:{name} --weights {path}") from error


def save_authors_checkpoint(model: nn.Module, path: str | Path, arch: str, epoch: int = 0) -> Path:
    """Save ``model`` the way the authors' training script did (DataParallel ``module.`` keys)."""
    state_dict = {DATA_PARALLEL_PREFIX + key: value for key, value in model.state_dict().items()}
    torch.save({"epoch": epoch, "arch": arch, "state_dict": state_dict, "best_prec1": 0.0, "optimizer": {}}, path)
    return Path(path)


def _check_file(path: Path, option: str | None = None) -> None:
    """A readable, non-empty file; ``option`` names the flag that gave it (else it was SOURCE)."""
    if not path.exists():
        if option is not None:
            raise EcaDeployError(f"{option} {path}: no such file")
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


def _read_safetensors(path: Path) -> StateDict:
    try:
        from safetensors.torch import load_file
    except ImportError as error:
        raise EcaDeployError(f".safetensors files need safetensors: pip install safetensors ({first_line(error)})") \
            from error
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise EcaDeployError(f"{path} is not a readable .safetensors file: {first_line(error)}") from error


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


def _describe(module: nn.Module, kind: str, path: Path | None, arch: str | None, num_classes: int | None,
              loader: dict[str, Any], source: str | None = None) -> LoadedModel:
    """A TorchScript, pickled or handed-over model as it is; architecture and kernels read from its weights if
    they fit the zoo, else its ECA kernel sizes from every [1, 1, k] weight and its classes from its last Linear."""
    source = source or str(path)
    weights_file = None if path is None else path.resolve()
    try:
        inferred = infer_architecture(module.state_dict(), arch=arch, num_classes=num_classes)
    except EcaDeployError:
        if arch is not None:
            raise
        kernel_sizes = tuple(int(v.shape[-1]) for v in module.state_dict().values()
                             if v.dim() == 3 and tuple(v.shape[:2]) == (1, 1))
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        classes = num_classes or (linears[-1].out_features if linears else None)
        return LoadedModel(module.eval(), None, kernel_sizes, classes, kind, source, weights_file=weights_file,
                           loader=loader)
    return LoadedModel(module.eval(), inferred.arch.name, inferred.kernel_sizes, inferred.num_classes, kind, source,
                       output_stride=inferred.arch.output_stride, weights_file=weights_file, loader=loader)
