"""Argument groups shared by subcommands, so a flag means the same thing everywhere."""

from __future__ import annotations

import argparse
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


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Where the PyTorch model comes from: checkpoint file or zoo name, and overrides."""
    group = parser.add_argument_group("model")
    group.add_argument("source", nargs="?", default=DEFAULT_SOURCE,
                       help="checkpoint (.pth.tar in the authors' format, state dict, TorchScript) or a zoo "
                            f"name for random weights (default: {DEFAULT_SOURCE}); zoo: {', '.join(ARCHITECTURES)}")
    group.add_argument("--arch", choices=sorted(ARCHITECTURES), help="architecture (default: inferred from the keys)")
    group.add_argument("--kernels", metavar="SPEC",
                       help="ECA kernel sizes for zoo names, e.g. k3557 or adaptive (checkpoints: read from the weights)")
    group.add_argument("--num-classes", type=positive_int, metavar="N",
                       help="classes (default: from the checkpoint, or 1000)")
    group.add_argument("--allow-pickle", action="store_true",
                       help="allow checkpoints holding a pickled nn.Module; unpickling runs code from the file, "
                            "so only use it for files you trust")
    group.add_argument("--input-size", type=positive_int, default=224, metavar="PX",
                       help="square input resolution (default: 224)")


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
                            "model and use every backend this machine has); files must take SOURCE's input and "
                            "give its classes")
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
                        help="folder of images (ImageFolder class folders, or flat), preprocessed as the authors did "
                             "(default: seeded random inputs)")
    inputs.add_argument("--class-index", type=Path, metavar="FILE",
                        help="with --images: class folder name per line in model order, or imagenet_class_index.json "
                             "(default: sorted class folders)")
    inputs.add_argument("--limit", type=positive_int, metavar="N", help="with --images: use at most N images")
    add_strict_images_arg(inputs, "--images")
    inputs.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    add_output_args(parser, default_dir)
