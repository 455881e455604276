"""Fuse every ECA block of an ONNX model into one EcaAttention plugin node.

Finds global-average-pool -> 1D conv across channels -> sigmoid -> multiply chains in the shapes
PyTorch's exporters and simplifiers produce, replaces each with an EcaAttention node (TensorRT maps
it to libeca_plugin.so; without the plugin, TensorRT and ONNX Runtime run the model-local function
carried in the same file), reports near-misses with their reason, and checks on ONNX Runtime CPU
that the fused model computes the same outputs (1e-5 FP32, 2e-3 FP16).
Exit codes: 0 success, 1 outputs differ, 2 bad input, --expect mismatch, or no ECA block to fuse
(unless --allow-unfused).

Examples:
  eca-fuse model.onnx                      # writes model.eca.onnx and model.eca.fusion.json
  eca-fuse model.onnx -o fused.onnx --expect 16
  eca-fuse model.onnx --plugin-only        # also model.eca.plugin.onnx, for trtexec on TensorRT 10.3-10.6
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eca_deploy._io import check_output_file, staged_outputs, write_text_atomic
from eca_deploy.errors import EcaDeployError, ParityError
from eca_deploy.progress import Progress

FP32_ATOL = 1e-5
FP16_ATOL = 2e-3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="ONNX model to fuse")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE",
                        help="fused model file, not a folder (default: <model>.eca.onnx beside it)")
    parser.add_argument("--report", type=Path, metavar="FILE",
                        help="JSON report file (default: <output stem>.fusion.json beside the output)")
    parser.add_argument("--expect", type=int, metavar="N", help="fail unless exactly N ECA blocks are fused")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime equivalence check")
    parser.add_argument("--plugin-only", action="store_true",
                        help="also write <output stem>.plugin.onnx: the fused model without the fallback function, "
                             "for trtexec, DeepStream and C++ on TensorRT 10.3-10.6 (JetPack 6), whose parser "
                             "inlines the function instead of using the plugin; it runs only where the plugin is "
                             "loaded (not on ONNX Runtime)")
    parser.add_argument("--external-data", action="store_true", help="store weights in <output>.data")
    parser.add_argument("--allow-unfused", action="store_true",
                        help="write the output even when no ECA block is found (an unchanged copy) and exit 0")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors and the summary table")


def run(args: argparse.Namespace) -> int:
    default_output = f"{args.model.name.removesuffix('.onnx')}.eca.onnx"
    output = check_output_file(args.output or args.model.with_name(default_output), "-o", default_output)
    default_report = f"{output.name.removesuffix('.onnx')}.fusion.json"
    report_path = check_output_file(args.report or output.with_name(default_report), "--report", default_report)
    if output.resolve() == args.model.resolve():
        raise EcaDeployError("the output would overwrite the input model: pass another -o")

    from eca_deploy.onnx_files import load_onnx, onnx_precision, save_checked
    from eca_deploy.parity import check_onnx_equivalence
    from eca_deploy.passes import fuse_eca
    from eca_deploy.passes.fused_node import plugin_only_path, without_fallback_function

    progress = Progress(total_steps=2 + (not args.no_verify), quiet=args.quiet)
    with progress.step(f"Loading {args.model}"):
        model = load_onnx(args.model)
    with progress.step("Fusing ECA blocks"):
        fused, report = fuse_eca(model)
    print(report.summary_table())
    if args.expect is not None and report.num_fused != args.expect:
        raise EcaDeployError(f"fused {report.num_fused} ECA blocks, expected {args.expect}")
    if report.num_fused == 0 and not (args.allow_unfused or args.expect == 0):
        why = f"{len(report.near_misses)} near-misses are listed above" if report.near_misses else "no candidate found"
        raise EcaDeployError(f"no ECA block to fuse in {args.model.name} ({why}); nothing written (--allow-unfused "
                             "writes an unchanged copy)")

    result = report.to_dict()
    written = [output]
    together = report_path.parent.resolve() == output.parent.resolve()
    with staged_outputs(output.parent) as staging:
        staged = staging / output.name
        save_checked(fused, staged, args.external_data)
        if args.plugin_only:
            save_checked(without_fallback_function(fused), plugin_only_path(staged), args.external_data)
            result["plugin_only"] = plugin_only_path(output).name
            written.append(plugin_only_path(output))
        failure = None
        if not args.no_verify and report.num_fused:
            try:
                with progress.step("Checking the fused model against the original on ONNX Runtime CPU"):
                    atol = FP16_ATOL if onnx_precision(model) == "fp16" else FP32_ATOL
                    equivalence = check_onnx_equivalence(args.model, staged, atol=atol)
            except ParityError as error:  # exit 1, the files kept for inspection (README)
                failure = error
                result["verification_failed"] = str(error)
            else:
                result["max_abs_difference"] = equivalence.max_abs_difference
                result["verified_batches"] = list(equivalence.batches)
                batches = " and ".join(map(str, equivalence.batches))
                progress.info(f"  same outputs at batch {batches} (max abs difference "
                              f"{equivalence.max_abs_difference:.2g})")
                for size, reason in equivalence.skipped.items():
                    progress.info(f"  not checked at batch {size}: the original model itself fails there ({reason})")
        if together:  # the report lands with the models, all or nothing
            (staging / report_path.name).write_text(json.dumps(result, indent=2) + "\n")
    if not together:
        write_text_atomic(report_path, json.dumps(result, indent=2) + "\n")
    print(f"Wrote {', '.join(map(str, written))} and {report_path}")
    if failure is not None:
        raise ParityError(f"{failure}; the files are kept for inspection")
    return 0
