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
from pathlib import Path

from eca_deploy.progress import Progress


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
    from eca_deploy.pipeline import fuse

    result = fuse(args.model, args.output, report=args.report, expect=args.expect, verify=not args.no_verify,
                  plugin_only=args.plugin_only, external_data=args.external_data, allow_unfused=args.allow_unfused,
                  progress=Progress(quiet=args.quiet), check=False)
    models = [path for role, path in result.files.items() if role != "report"]
    print(f"Wrote {', '.join(map(str, models))} and {result.files['report']}")
    result.raise_failure()
    return 0

