"""timm models as a source (``timm:NAME``): any timm model with ECA or CECA blocks, and its preprocessing.

Whether a timm model qualifies is read from the model (its ``EcaModule``/``CecaModule`` layers), never from a
list of names. Weights are timm's initialisation made usable (seeded, BatchNorm calibrated, as the zoo's demo
models), a file (a state dict, a ``.pth``/``.pth.tar`` dict holding ``state_dict``, or ``.safetensors``) whose
classifier gives the class count, or timm's released weights (``pretrained``, which needs a network). The
model's ``pretrained_cfg`` gives its input size and preprocessing: mean/std, crop fraction, interpolation.
timm is optional: ``pip install 'eca-deploy[timm]'``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from eca_deploy.errors import EcaDeployError, first_line
from eca_deploy.preprocess import Preprocessing
from eca_deploy.resources import cache_root

if TYPE_CHECKING:
    import torch
    from torch import nn

TIMM_PREFIX = "timm:"
TIMM_CLASSIFIER_FALLBACK = "fc"
DEMO_SEED = 0
HUB_HOST = "huggingface.co"  # where timm's released weights are


def is_timm_source(source: object) -> bool:
    """Whether ``source`` names a timm model (``timm:NAME``)."""
    return isinstance(source, str) and source.startswith(TIMM_PREFIX)


def timm_name(source: str) -> str:
    """``NAME`` of ``timm:NAME``."""
    name = source.removeprefix(TIMM_PREFIX)
    if not name:
        raise EcaDeployError("timm: needs a model name, e.g. timm:ecaresnet50d (eca-deploy zoo --timm lists them)")
    return name


def import_timm() -> ModuleType:
    """timm, or one sentence saying how to install it."""
    try:
        import timm
    except ImportError as error:
        raise EcaDeployError(f"timm models need timm ({first_line(error)}): pip install 'eca-deploy[timm]'") from error
    return timm


def eca_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every timm ECA or CECA block of ``module`` with a sigmoid gate and a single conv1d:
    the blocks the fusion pass fuses, in forward (module) order."""
    from timm.layers import CecaModule, EcaModule
    from timm.layers.activations import Sigmoid
    from torch import nn

    return [(name, layer) for name, layer in module.named_modules()
            if isinstance(layer, (EcaModule, CecaModule)) and isinstance(getattr(layer, "conv", None), nn.Conv1d)
            and isinstance(getattr(layer, "gate", None), (nn.Sigmoid, Sigmoid))]


@dataclass(frozen=True)
class TimmModel:
    """A timm model ready to export, and what the rest of the pipeline needs to know about it."""

    module: nn.Module
    name: str
    num_classes: int
    kernel_sizes: tuple[int, ...]
    preprocessing: Preprocessing
    input_size: int
    model_args: dict[str, Any] = field(default_factory=dict)


def create_timm_model(name: str, *, weights: Mapping[str, torch.Tensor] | None = None, pretrained: bool = False,
                      num_classes: int | None = None, model_args: Mapping[str, Any] | None = None) -> TimmModel:
    """timm's ``name`` with ``weights`` (a state dict: its classifier sets the class count), timm's released
    weights (``pretrained``) or seeded, BatchNorm-calibrated random weights; refuses models without ECA blocks."""
    timm = import_timm()
    model_args = dict(model_args or {})
    if not timm.is_model(name):
        raise EcaDeployError(f"timm has no model {name!r} (timm {timm.__version__}); "
                             "eca-deploy zoo --timm lists the ones with ECA blocks")
    if weights is not None and pretrained:
        raise EcaDeployError("--pretrained and --weights both give the weights: pass one")
    if pretrained:
        module = _pretrained(timm, name, num_classes, model_args)
    elif weights is not None:
        module = _with_weights(timm, name, weights, num_classes, model_args)
    else:
        module = _demo(timm, name, num_classes or 1000, model_args)
    layers = eca_layers(module)
    if not layers:
        raise EcaDeployError(f"timm model {name} has no ECA or CECA block, so there is nothing to fuse "
                             "(eca-deploy zoo --timm lists timm's models that have them)")
    config = module.pretrained_cfg
    size = int(config.get("input_size", (3, 224, 224))[-1])
    return TimmModel(module.eval(), name, int(module.num_classes),
                     tuple(int(layer.conv.weight.shape[-1]) for _, layer in layers),
                     timm_preprocessing(config, size), size, model_args)


def timm_preprocessing(config: Mapping[str, Any], size: int) -> Preprocessing:
    """timm's evaluation transform for ``config`` (a ``pretrained_cfg``) at ``size`` pixels: shorter side resized
    to ``floor(size / crop_pct)``, center crop ``size``, the model's mean/std and interpolation."""
    crop_mode = config.get("crop_mode", "center")
    if crop_mode != "center":
        raise EcaDeployError(f"timm's {crop_mode!r} crop mode is not supported here (only 'center')")
    crop_pct = float(config.get("crop_pct") or 0.875)
    return Preprocessing(resize=math.floor(size / crop_pct), crop=size, mean=tuple(config.get("mean")),
                         std=tuple(config.get("std")), interpolation=str(config.get("interpolation") or "bicubic"))


def classifier_key(timm: ModuleType, name: str) -> str:
    """The state-dict prefix of ``name``'s classifier (``fc``, ``head.fc``), from its pretrained config."""
    classifier = timm.models.get_pretrained_cfg(name)
    value = getattr(classifier, "classifier", None) if classifier is not None else None
    return value[0] if isinstance(value, (list, tuple)) else (value or TIMM_CLASSIFIER_FALLBACK)


def _build(timm: ModuleType, name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)``; arguments it does not take (from --timm-args) are one sentence."""
    try:
        return timm.create_model(name, **kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as error:
        raise EcaDeployError(f"timm cannot build {name} with {json.dumps(kwargs, sort_keys=True)}: "
                             f"{first_line(error)}") from error


def _pretrained(timm: ModuleType, name: str, num_classes: int | None, model_args: dict) -> nn.Module:
    """timm's released weights, from the Hugging Face hub (or its cache with ``HF_HUB_OFFLINE=1``). Where the hub
    cannot be reached, say so at once instead of letting the hub client retry for a minute."""
    remedy = ("download them on a machine that has a network and pass the file with --weights FILE (or, where "
              "they are in the Hugging Face cache, run with HF_HUB_OFFLINE=1)")
    if not os.environ.get("HF_HUB_OFFLINE") and not _reachable(HUB_HOST):
        raise EcaDeployError(f"{HUB_HOST} cannot be reached (no network?), so timm cannot fetch the released weights "
                             f"of {name}: {remedy}")
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry messages would break into the progress line
    try:
        return timm.create_model(name, pretrained=True, **({"num_classes": num_classes} if num_classes else {}),
                                 **model_args)
    except Exception as error:  # noqa: BLE001 - hub and network failures come as many exception types
        raise EcaDeployError(f"timm could not fetch the released weights of {name} ({first_line(error)}): "
                             f"{remedy}") from error
    finally:
        hub_logger.setLevel(level)


def _reachable(host: str, port: int = 443, timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _with_weights(timm: ModuleType, name: str, weights: Mapping[str, torch.Tensor], num_classes: int | None,
                  model_args: dict) -> nn.Module:
    from eca_deploy.models.registry import key_difference

    classifier = f"{classifier_key(timm, name)}.weight"
    if classifier not in weights:
        raise EcaDeployError(f"these weights have no {classifier} (the classifier of timm's {name}): they are not "
                             f"{name}'s, or were saved without its head")
    classes = int(weights[classifier].shape[0])
    if num_classes is not None and num_classes != classes:
        raise EcaDeployError(f"--num-classes {num_classes} contradicts the weights, whose classifier has {classes}")
    module = _build(timm, name, num_classes=classes, **model_args)
    expected = set(module.state_dict())
    if expected != set(weights):
        raise EcaDeployError(f"the weights do not fit timm's {name}: "
                             f"{key_difference(sorted(expected - set(weights)), sorted(set(weights) - expected))}")
    try:
        module.load_state_dict(weights)
    except RuntimeError as error:
        raise EcaDeployError(f"the weights do not fit timm's {name}: {first_line(error)}") from error
    return module


def _demo(timm: ModuleType, name: str, num_classes: int, model_args: dict) -> nn.Module:
    """Seeded timm initialisation with BatchNorm calibrated, cached like the zoo's demo models."""
    import torch

    from eca_deploy.models.registry import demo_weights

    torch.manual_seed(DEMO_SEED)
    module = _build(timm, name, num_classes=num_classes, **model_args)
    key = f"timm-{name}|{json.dumps(model_args, sort_keys=True)}|{num_classes}|{DEMO_SEED}|{timm.__version__}"
    return demo_weights(module, key, seed=DEMO_SEED)


def matching_timm_model(keys: set[str]) -> str | None:
    """The timm model with ECA blocks whose state-dict keys are exactly ``keys``, if timm is installed."""
    try:
        timm = import_timm()
    except EcaDeployError:
        return None
    for entry in timm_eca_models():
        if _meta_keys(timm, entry["name"]) == keys:
            return entry["name"]
    return None


def _meta_keys(timm: ModuleType, name: str) -> set[str]:
    import torch

    with torch.device("meta"):
        return set(timm.create_model(name).state_dict())


def timm_eca_models() -> list[dict[str, Any]]:
    """The models of timm's registry named ``*eca*`` whose network has ECA or CECA blocks, each verified by
    building it on the meta device (no memory, no weights): name, ECA blocks, input size; cached per timm
    version. A scan of the whole registry (1,200+ models) takes over ten minutes on two cores and found no other
    one in timm 1.0.31; any timm model with ECA blocks loads as ``timm:NAME`` whether listed or not."""
    timm = import_timm()
    cache = cache_root() / "timm" / f"eca-models-{timm.__version__}.json"
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    models = [entry for name in timm.list_models("*eca*") if (entry := _eca_summary(timm, name)) is not None]
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(models))
    except OSError:  # an unwritable cache only costs the next scan
        pass
    return models


def _eca_summary(timm: ModuleType, name: str) -> dict[str, Any] | None:
    import torch

    try:
        with torch.device("meta"):
            module = timm.create_model(name)
    except Exception:  # noqa: BLE001 - a model timm cannot build with defaults is not one of ours
        return None
    blocks = len(eca_layers(module))
    size = int(module.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    return {"name": name, "eca_blocks": blocks, "input_size": size} if blocks else None
