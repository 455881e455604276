"""Export a checkpoint to checked ONNX (plain and ECA-fused), verify parity on ONNX Runtime CPU.

Reads the architecture and every ECA kernel size from the checkpoint, exports with a dynamic batch
axis (input "input", output "logits", float32 I/O), fuses every ECA block into one EcaAttention node
(model.eca.onnx) and checks both files against PyTorch FP32 on seeded inputs (batches 1 and 3).
Exit codes: 0 success, 1 parity failed (files are kept for inspection), 2 bad input.

Examples:
  eca-export                                   # built-in ECA-MobileNetV2 demo, random weights
  eca-export eca_resnet50_k3557.pth.tar --fp16 -o out/
  eca-export model.pt --arch eca_resnet50 --engine --max-batch 64
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from eca_deploy import __version__
from eca_deploy._io import check_output_dir, staged_outputs
from eca_deploy.cli.args import (add_engine_profile_args, add_model_args, add_output_args, add_strict_images_arg,
                                 add_tolerance_args, opset, positive_int)
from eca_deploy.errors import EcaDeployError, ParityError, PluginNotUsedError
from eca_deploy.options import CALIBRATION_METHODS, DEFAULT_OPSET, EXPORTERS
from eca_deploy.progress import Progress

REPORT_SCHEMA_VERSION = 2  # 2: parity results name their errors as validate does (max_elementwise_rel_error ...)
_CHECKPOINT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar", ".ckpt", ".bin")


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
                              help="calibration images (ImageFolder or flat folder), preprocessed as the authors did; "
                                   "without it, seeded random inputs (a warning says so: real images calibrate better)")
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
    group.add_argument("--name", help="file name stem (default: the checkpoint's name)")
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


def output_stem(source: str) -> str:
    """File name stem for outputs: the checkpoint's name without its suffixes, or the zoo name."""
    name = Path(source).name
    for suffix in _CHECKPOINT_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def run(args: argparse.Namespace) -> int:
    import onnx

    check_output_dir(args.output_dir)
    if args.triton_repo:
        check_output_dir(args.triton_repo, "--triton-repo")
    if args.plugin and not args.engine:
        raise EcaDeployError("--plugin is for the engine: add --engine (the fused ONNX needs no plugin library)")
    if args.plugin_only and args.no_fuse:
        raise EcaDeployError("--plugin-only writes a variant of the fused model: drop --no-fuse")
    if args.calib and not args.int8:
        raise EcaDeployError("--calib calibrates INT8 quantization: add --int8")
    if args.strict and not args.calib:
        raise EcaDeployError("--strict applies to a calibration folder: add --calib DIR")

    from eca_deploy.checkpoints import load_model
    from eca_deploy.onnx_export import check_export_options, effective_exporter, export_onnx
    from eca_deploy.onnx_files import save_checked
    from eca_deploy.parity import check_onnx_files_parity, tolerance_for
    from eca_deploy.passes import fuse_eca
    from eca_deploy.passes.fused_node import plugin_only_path, without_fallback_function
    from eca_deploy.quantize import CalibrationImages, quantize_int8, random_calibration

    check_export_options(args.exporter, args.opset)
    calibration_images = CalibrationImages(args.calib, args.input_size, strict=args.strict) if args.calib else None
    if args.engine:
        from eca_deploy.tensorrt.engine import BatchProfile
        from eca_deploy.tensorrt.plugin_library import resolve_plugin_library

        BatchProfile(args.min_batch, args.opt_batch, args.max_batch)
        resolve_plugin_library(args.plugin)
    steps = 4 - args.no_fuse + args.int8 + args.engine + bool(args.triton_repo)
    progress = Progress(total_steps=steps, quiet=args.quiet)
    precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    tolerance = tolerance_for(precision, atol=args.atol, rtol=args.rtol)
    stem = args.name or output_stem(args.source)
    tag = stem if precision == "fp32" else f"{stem}.{precision}"
    input_shape = (3, args.input_size, args.input_size)

    with progress.step(f"Loading {args.source}"):
        loaded = load_model(args.source, arch=args.arch, kernels=args.kernels, num_classes=args.num_classes,
                            allow_pickle=args.allow_pickle)
    loaded.check_input_size(args.input_size)
    classes = f"{loaded.num_classes} classes" if loaded.num_classes else "class count unknown"
    progress.info(f"  {loaded.arch or 'unknown architecture'}, ECA kernels {loaded.kernel_spec}, {classes} "
                  f"({loaded.source_kind})")
    exporter = effective_exporter(loaded.module, args.exporter)

    report: dict = {"schema_version": REPORT_SCHEMA_VERSION, "tool": f"eca-deploy {__version__}",
                    "source": args.source, "source_kind": loaded.source_kind, "arch": loaded.arch,
                    "kernel_sizes": list(loaded.kernel_sizes), "num_classes": loaded.num_classes,
                    "precision": precision, "input_shape": list(input_shape)}
    export_precision = "fp32" if args.int8 else precision  # INT8 quantizes the FP32 export
    with staged_outputs(args.output_dir) as staging, tempfile.TemporaryDirectory(prefix="eca-export-") as scratch:
        exported_path = (Path(scratch) if args.int8 else staging) / f"{tag}.onnx"
        with progress.step(f"Exporting {export_precision.upper()} ONNX ({exporter} exporter, opset {args.opset})"):
            exported = export_onnx(loaded.module, exported_path, input_shape=input_shape, precision=export_precision,
                                   opset=args.opset, exporter=exporter, external_data=args.external_data)
        report["export"] = exported.to_dict()
        parity_inputs = None
        if args.int8:
            calibration = (calibration_images.load(args.calib_size) if calibration_images else
                           random_calibration(input_shape, args.calib_size, seed=args.seed))
            if calibration_images is None:
                progress.info(f"  warning: no --calib folder: calibrating on {args.calib_size} seeded random inputs; "
                              "ranges from real images (--calib DIR) give a more accurate INT8 model")
            with progress.step(f"Quantizing to INT8 ({args.calib_method} calibration on {calibration.samples} "
                               f"{calibration.source['kind']} samples)"):
                quantization = quantize_int8(exported_path, staging / f"{tag}.onnx", calibration,
                                             method=args.calib_method, external_data=args.external_data)
            report["quantization"] = quantization.to_dict()
            progress.info(f"  {quantization.summary()}")
            if calibration_images and calibration_images.inputs.skipped.count:
                progress.info(f"  warning: {calibration_images.inputs.skipped.summary(args.calib)}")
            exported_path = staging / f"{tag}.onnx"
            parity_inputs = calibration_images.parity_batches(args.calib_size) if calibration_images else None
        if any(exported.fp16_clamped.values()):
            clamped = exported.fp16_clamped
            progress.info(f"  FP16 weights: {clamped['underflow']} tensors held values below 1e-7 (set to +-1e-7), "
                          f"{clamped['overflow']} beyond 1e4 (clamped to +-1e4)")
        onnx_files = [exported_path]

        if not args.no_fuse:
            with progress.step("Fusing ECA blocks"):
                fused_model, fusion = fuse_eca(onnx.load(str(exported_path)))
                fused_path = staging / f"{tag}.eca.onnx"
                save_checked(fused_model, fused_path, args.external_data)
                if args.plugin_only:
                    save_checked(without_fallback_function(fused_model), plugin_only_path(fused_path),
                                 args.external_data)
            progress.info(fusion.summary_table())
            report["fusion"] = fusion.to_dict()
            onnx_files.append(fused_path)
            if args.expect is not None and fusion.num_fused != args.expect:
                raise EcaDeployError(f"fused {fusion.num_fused} ECA blocks, expected {args.expect}")

        with progress.step("Checking parity on ONNX Runtime CPU"):
            parities = check_onnx_files_parity(loaded.module, onnx_files, precision=precision,
                                               input_shape=input_shape, seed=args.seed, inputs=parity_inputs,
                                               tolerance=tolerance)
        for parity in parities:
            progress.info(f"  {parity.summary()}")
        report["parity"] = [parity.to_dict() for parity in parities]

        engine_failure = None
        if args.engine:
            from eca_deploy.tensorrt.engine import build_engine  # TensorRT is optional: import only when asked

            try:
                with progress.step("Building TensorRT engine"):
                    engine = build_engine(onnx_files[-1], staging / f"{tag}.engine", precision=precision,
                                          batch=(args.min_batch, args.opt_batch, args.max_batch),
                                          plugin_library=args.plugin, progress=progress)
                report["engine"] = engine.to_dict()
            except PluginNotUsedError as error:  # exit 1: no engine, the ONNX files and the report kept
                engine_failure = error
                report["engine"] = {"failed": str(error)}
        engine_built = args.engine and engine_failure is None

        if args.triton_repo:
            from eca_deploy.serving.triton_repo import write_triton_repository

            with progress.step(f"Writing Triton model repository {args.triton_repo}"):
                triton = write_triton_repository(
                    args.triton_repo, onnx_files[-1], engine_path=staging / f"{tag}.engine" if engine_built else None,
                    plugin_library=args.plugin if engine_built else None, model_name=tag,
                    max_batch_size=args.max_batch, opt_batch=args.opt_batch, preferred_batch_sizes=(args.opt_batch,))
            report["triton"] = triton.to_dict()
            for variant, reason in triton.skipped.items():
                progress.info(f"  Triton {variant} model not written: {reason}")

        report_path = staging / f"{tag}.report.json"
        written = sorted(p.name for p in staging.iterdir()) + [report_path.name]
        report["files"] = written
        report_path.write_text(json.dumps(report, indent=2) + "\n")

    print(f"Wrote to {args.output_dir}/:")
    for name in written:
        print(f"  {name}")
    failed = [Path(p.model).name for p in parities if not p.passed]
    if failed:
        raise ParityError(f"parity failed for {', '.join(failed)}; see {args.output_dir / report_path.name}")
    if engine_failure is not None:
        raise PluginNotUsedError(f"{engine_failure}; the ONNX files and {report_path.name} are kept")
    return 0

