"""List the zoo architectures and the authors' released checkpoints, and with --timm timm's ECA models.

timm's models are found from the models themselves: those of timm's registry named *eca* whose network has ECA
or CECA blocks (built on the meta device, a few seconds the first time, then cached). Any timm model with ECA
blocks loads as timm:NAME, listed or not.

Examples:
  eca-deploy zoo
  eca-deploy zoo --json
  eca-deploy zoo --timm
"""

from __future__ import annotations

import argparse
import json

import yaml

from eca_deploy.models.registry import ARCHITECTURES
from eca_deploy.resources import resource_path


def _zoo() -> dict:
    """``models/zoo.yaml``: the released ECA-Net checkpoints, their published accuracy and where to get them."""
    return yaml.safe_load(resource_path("models/zoo.yaml").read_text())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--timm", action="store_true",
                        help="also list timm's models with ECA blocks (needs pip install 'eca-deploy[timm]')")


def run(args: argparse.Namespace) -> int:
    architectures = [
        {"name": a.name, "description": a.description, "default_kernels": a.default_kernels,
         "eca_layers": a.num_eca_layers}
        for a in ARCHITECTURES.values()
    ]
    zoo = _zoo()
    checkpoints, download = zoo["checkpoints"], zoo["download"]
    timm_models = None
    if args.timm:
        from eca_deploy.models.timm_models import timm_eca_models

        timm_models = timm_eca_models()
    if args.json:
        print(json.dumps({"architectures": architectures, "checkpoints": checkpoints, "download": download,
                          **({"timm": timm_models} if timm_models is not None else {})}, indent=2))
        return 0
    print("Architectures (random weights by name, or load a checkpoint of that shape):")
    for a in architectures:
        print(f"  {a['name']:<18} {a['default_kernels']:<8} {a['eca_layers']:>3} ECA layers  {a['description']}")
    print("\nReleased checkpoints (ImageNet 224x224, published accuracy):")
    print(f"  {'file':<30} {'arch':<18} {'kernels':<8} {'top-1':>6} {'top-5':>6}")
    for c in checkpoints:
        print(f"  {c['file']:<30} {c['arch']:<18} {c['kernels']:<8} {c['top1']:>6.2f} {c['top5']:>6.2f}")
    print(f"\nDownload them from the authors' repository, whose README links each file: {download}")
    if timm_models is not None:
        print("\ntimm models with ECA blocks (SOURCE timm:NAME; --weights FILE or --pretrained):")
        for entry in timm_models:
            print(f"  {entry['name']:<24} {entry['eca_blocks']:>3} ECA blocks  {entry['input_size']} px")
    return 0
