"""Argument groups shared by subcommands, so a flag means the same thing everywhere."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eca_deploy.models.registry import ARCHITECTURES
from eca_deploy.options import DEFAULT_SOURCE, MIN_OPSET


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def opset(text: str) -> int:
    """argparse type: an ONNX opset the fusion pass handles (the upper bound is the installed onnx's)."""
    value = positive_int(text)
    if value < MIN_OPSET:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_OPSET} (the fusion pass handles {MIN_OPSET} and "
                                         f"newer), got {value}")
    return value


def timm_args(text: str) -> dict:
    """argparse type: keyword arguments of ``timm.create_model`` as a JSON object."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"drop_rate\": 0.0}}': {error}") \
            from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_model_args(parser: argparse.ArgumentParser, *, default_source: str | None = DEFAULT_SOURCE) -> None:
    """Where the PyTorch model comes from: a checkpoint file, a zoo name or timm:NAME, and overrides.
    ``default_source=None``: SOURCE may be left out for the files' own provenance to name the model."""
    group = parser.add_argument_group("model")
    default = (f"default: {default_source}" if default_source else
               f"default: the model the -b files were exported from, else {DEFAULT_SOURCE}")
    group.add_argument("source", nargs="?", default=default_source, metavar="SOURCE",
                       help="checkpoint (.pth.tar in the authors' format, state dict .pth or .safetensors, TorchScript), "
                            f"a zoo name for random weights, or timm:NAME ({default}); zoo: {', '.join(ARCHITECTURES)}")
    group.add_argument("--arch", choices=sorted(ARCHITECTURES), help="architecture (default: inferred from the keys)")
    group.add_argument("--kernels", metavar="SPEC",
                       help="ECA kernel sizes for zoo names, e.g. k3557 or adaptive (checkpoints: read from the weights)")
    group.add_argument("--num-classes", type=positive_int, metavar="N",
                       help="classes (default: from the checkpoint, or 1000)")
    group.add_argument("--allow-pickle", action="store_true",
                       help="allow checkpoints holding a pickled nn.Module; unpickling runs code from the file, "
                            "so only use it for files you trust")
    group.add_argument("--input-size", type=positive_int, metavar="PX",
                       help="square input resolution (default: the model's: 224, or a timm model's pretrained_cfg)")
    timm = parser.add_argument_group("timm models (SOURCE timm:NAME, needs pip install 'eca-deploy[timm]')")
    timm.add_argument("--weights", type=Path, metavar="FILE",
                      help="the model's weights: a state dict (.pth, .pth.tar with state_dict, .safetensors); the class "
                           "count is read from them (default: seeded random weights)")
    timm.add_argument("--pretrained", action="store_true",
                      help="timm's released weights, downloaded from the Hugging Face hub (needs a network)")
    timm.add_argument("--timm-args", type=timm_args, metavar="JSON",
                      help='keyword arguments of timm.create_model, e.g. \'{"block_args": {"attn_layer": "ceca"}}\'')


def model_options(args: argparse.Namespace) -> dict:
    """The model arguments as the Python API takes them."""
    return {"input_size": args.input_size, "arch": args.arch, "kernels": args.kernels,
            "num_classes": args.num_classes, "weights": args.weights, "pretrained": args.pretrained,
            "timm_args": args.timm_args, "allow_pickle": args.allow_pickle}


def add_strict_images_arg(group: argparse._ArgumentGroup, folder_option: str) -> None:
    """``--strict``: what an image folder's unreadable files do (the same for --images and --calib)."""
    group.add_argument("--strict", action="store_true",
                       help=f"with {folder_option}: refuse the folder when a file in it cannot be read as an image "
                            "(default: skip it, count it and name it in the report and on the terminal)")


def add_tolerance_args(group: argparse._ArgumentGroup) -> None:
    """``--atol``/``--rtol``: the parity criterion max|a - ref| <= atol + rtol x max|ref|, per precision by default."""
    group.add_argument("--atol", type=float, metavar="A",
                       help="absolute tolerance of the parity check (default: the precision's, README \"Validate\")")
    group.add_argument("--rtol", type=float, metavar="R",
                       help="relative tolerance, times max|reference logit| (default: the precision's)")


def add_output_args(parser: argparse.ArgumentParser, default_dir: str = "exported") -> None:
    """Where results go and how chatty the command is."""
    group = parser.add_argument_group("output")
    group.add_argument("-o", "--output-dir", type=Path, default=Path(default_dir),
                       help=f"folder for the files written (default: ./{default_dir})")
    group.add_argument("-q", "--quiet", action="store_true", help="print only errors and the final summary")


def add_engine_profile_args(parser: argparse.ArgumentParser) -> None:
    """The dynamic-batch optimisation profile of a TensorRT engine."""
    group = parser.add_argument_group("engine profile")
    group.add_argument("--min-batch", type=positive_int, default=1, metavar="N", help="smallest batch (default: 1)")
    group.add_argument("--opt-batch", type=positive_int, default=8, metavar="N", help="batch tuned for (default: 8)")
    group.add_argument("--max-batch", type=positive_int, default=32, metavar="N", help="largest batch (default: 32)")
    group.add_argument("--plugin", type=Path, metavar="SO",
                       help="libeca_plugin.so for fused EcaAttention nodes (default: $ECA_PLUGIN_LIBRARY)")


def add_harness_args(parser: argparse.ArgumentParser, default_dir: str) -> None:
    """Backends, inputs and outputs of ``validate`` and ``bench``."""
    group = parser.add_argument_group("backends")
    group.add_argument("-b", "--backend", action="append", default=[], metavar="NAME[=FILE]",
                       help="backend to run, repeatable: torch-cpu, torch-cuda, torch-cuda-fp16, ort-cpu=M.onnx, "
                            "ort-cuda=M.onnx, ort-trt=M.onnx, trt=M.engine, trt-rtx=M.engine (default: export the "
                            "model and use every backend this machine has); files must come from SOURCE (their "
                            "provenance says), and without SOURCE they name the model")
    group.add_argument("--fp16", action="store_true",
                       help="with the default backends: export and run FP16 models (named files carry their own "
                            "precision)")
    group.add_argument("--plugin", type=Path, metavar="SO",
                       help="plugin library for trt engines with EcaAttention layers and for ort-trt "
                            "(default: $ECA_PLUGIN_LIBRARY)")
    group.add_argument("--threads", type=positive_int, metavar="N",
                       help="intra-op threads of one inference on the CPU: torch.set_num_threads for PyTorch and "
                            "intra_op_num_threads for ONNX Runtime sessions (default: each runtime's own, about one "
                            "per core); recorded in the report")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--images", type=Path, metavar="DIR",
                        help="folder of images (ImageFolder class folders, or flat), preprocessed as the model expects: "
                             "the authors' transforms, or a timm model's (default: seeded random inputs)")
    inputs.add_argument("--class-index", type=Path, metavar="FILE",
                        help="with --images: class folder name per line in model order, or imagenet_class_index.json "
                             "(default: sorted class folders)")
    inputs.add_argument("--limit", type=positive_int, metavar="N", help="with --images: use at most N images")
    add_strict_images_arg(inputs, "--images")
    inputs.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    add_output_args(parser, default_dir)
