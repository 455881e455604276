"""Export a model to checked ONNX (plain and ECA-fused), verify parity on ONNX Runtime CPU.

SOURCE is a checkpoint (the authors' .pth.tar, a state dict .pth or .safetensors, TorchScript), a zoo name or
timm:NAME. Reads the architecture and every ECA kernel size from the weights, exports with a dynamic batch
axis (input "input", output "logits", float32 I/O), fuses every ECA block into one EcaAttention node
(model.eca.onnx) and checks both files against PyTorch FP32 on seeded inputs (batches 1 and 3). Every file
records where it came from (model, weights SHA-256, input, preprocessing, precision).
Exit codes: 0 success, 1 parity failed or the engine did not get its plugin layers (files are kept for
inspection), 2 bad input.

Examples:
  eca-export                                   # built-in ECA-MobileNetV2 demo, random weights
  eca-export eca_resnet50_k3557.pth.tar --fp16 -o out/
  eca-export timm:ecaresnet50d --weights ecaresnet50d.safetensors --fp16
  eca-export model.pt --arch eca_resnet50 --engine --max-batch 64
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eca_deploy.cli.args import (add_engine_profile_args, add_model_args, add_output_args, add_strict_images_arg,
                                 add_tolerance_args, model_options, opset, positive_int)
from eca_deploy.options import CALIBRATION_METHODS, DEFAULT_OPSET, EXPORTERS
from eca_deploy.progress import Progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    group = parser.add_argument_group("export")
    precision = group.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true",
                           help="write an FP16 model (FP16 compute, float32 input/output with one Cast at each edge)")
    precision.add_argument("--int8", action="store_true",
                           help="write an INT8 model: post-training quantization to explicit Q/DQ (symmetric, "
                                "per-channel weights, float32 input/output), ECA blocks kept in floating point")
    quantization = parser.add_argument_group("INT8 calibration (with --int8)")
    quantization.add_argument("--calib", type=Path, metavar="DIR",
                              help="calibration images (ImageFolder or flat folder), preprocessed as the model "
                                   "expects; without it, seeded random inputs (a warning says so: real images "
                                   "calibrate better)")
    quantization.add_argument("--calib-size", type=positive_int, default=64, metavar="N",
                              help="calibrate on at most N images (default: 64)")
    quantization.add_argument("--calib-method", choices=CALIBRATION_METHODS, default=CALIBRATION_METHODS[0],
                              help=f"activation range estimate (default: {CALIBRATION_METHODS[0]}, chosen by "
                                   "measurement, BENCHMARKS.md)")
    add_strict_images_arg(quantization, "--calib")
    group.add_argument("--opset", type=opset, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    group.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                       help="PyTorch exporter (default: dynamo, the cleanest graph; legacy is faster and is "
                            "always used for TorchScript)")
    group.add_argument("--external-data", action="store_true",
                       help="store weights in <model>.onnx.data beside the model (needed above 2 GB)")
    group.add_argument("--name", help="file name stem (default: the checkpoint's or model's name)")
    fusion = parser.add_argument_group("ECA fusion")
    fusion.add_argument("--no-fuse", action="store_true", help="skip the ECA fusion pass (no model.eca.onnx)")
    fusion.add_argument("--expect", type=int, metavar="N", help="fail unless exactly N ECA blocks are fused")
    fusion.add_argument("--plugin-only", action="store_true",
                        help="also write <stem>.eca.plugin.onnx without the fallback function, for trtexec, "
                             "DeepStream and C++ on TensorRT 10.3-10.6 (JetPack 6), which would otherwise inline it")
    parity = parser.add_argument_group("parity")
    parity.add_argument("--seed", type=int, default=0, help="seed of the random parity inputs (default: 0)")
    add_tolerance_args(parity)
    engine = parser.add_argument_group("engine")
    engine.add_argument("--engine", action="store_true",
                        help="also build a TensorRT engine from the fused model (needs TensorRT)")
    triton = parser.add_argument_group("Triton")
    triton.add_argument("--triton-repo", type=Path, metavar="DIR",
                        help="also write a Triton model repository: the fused ONNX as onnxruntime and python-backend "
                             "models, and with --engine the engine as a tensorrt_plan model")
    add_engine_profile_args(parser)
    add_output_args(parser)


def run(args: argparse.Namespace) -> int:
    from eca_deploy.pipeline import export

    result = export(args.source, args.output_dir, precision="int8" if args.int8 else "fp16" if args.fp16 else "fp32",
                    name=args.name, opset=args.opset, exporter=args.exporter, external_data=args.external_data,
                    fuse=not args.no_fuse, expect=args.expect, plugin_only=args.plugin_only, calib=args.calib,
                    calib_size=args.calib_size, calib_method=args.calib_method, strict=args.strict, seed=args.seed,
                    atol=args.atol, rtol=args.rtol, engine=args.engine,
                    batch=(args.min_batch, args.opt_batch, args.max_batch), plugin=args.plugin,
                    triton_repo=args.triton_repo, progress=Progress(quiet=args.quiet), check=False,
                    **model_options(args))
    print(result.written())
    result.raise_failure()
    return 0
