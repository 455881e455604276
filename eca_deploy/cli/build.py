"""Build a TensorRT engine from a plain or ECA-fused ONNX model.

Precision comes from the ONNX types (an `eca-export --fp16` model builds a strongly typed FP16
engine); `--precision-route builder-flag` builds FP16 from the FP32 model with TensorRT 10's FP16
flag. Fused EcaAttention nodes run on libeca_plugin.so when --plugin (or $ECA_PLUGIN_LIBRARY) is
given, on the kernel's PTX baked into the engine with --aot (TensorRT >= 10.9), and otherwise as
native layers through the model-local function the fused ONNX carries. With a plugin, the engine
has one plugin layer per fused node on every TensorRT from 10.3 (the parser gets the model without
the fallback function), or the build fails. Works with TensorRT and, without a GPU, TensorRT-RTX.
Engines are cached by model, TensorRT version, GPU, precision, profile and plugin hash.
Exit codes: 0 success, 1 the plugin was asked for and the network did not get one plugin layer per
fused node, 2 bad input or missing TensorRT.

Examples:
  eca-deploy build exported/eca_mobilenet_v2.eca.onnx --plugin build/libeca_plugin.so
  eca-deploy build model.fp16.eca.onnx --max-batch 64 --embed-plugin --plugin libeca_plugin.so
  eca-deploy build model.eca.onnx --aot -o model.aot.engine
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eca_deploy.cli.args import add_engine_profile_args
from eca_deploy.options import PRECISION_ROUTES, TENSORRT_FLAVOURS
from eca_deploy.progress import Progress
from eca_deploy.resources import cache_root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="ONNX model (plain or fused by eca-fuse / eca-export)")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE",
                        help="engine file, not a folder (default: <model stem>.engine beside it)")
    add_engine_profile_args(parser)
    group = parser.add_argument_group("engine")
    group.add_argument("--precision-route", choices=PRECISION_ROUTES, default="strongly-typed",
                       help="strongly-typed (precision from the ONNX types; the only route on TensorRT 11) or "
                            "builder-flag (TensorRT 10: FP16 flag on the FP32 model)")
    group.add_argument("--fp16", action="store_true", help="with --precision-route builder-flag: build FP16")
    group.add_argument("--embed-plugin", action="store_true",
                       help="serialize the plugin library into a version-compatible engine (no .so at deploy time; "
                            "the runtime must allow engine host code)")
    group.add_argument("--aot", action="store_true",
                       help="use the Quickly Deployable Plugin with the kernel's PTX in the engine (TensorRT >= 10.7)")
    group.add_argument("--backend", choices=("auto", *TENSORRT_FLAVOURS), default="auto",
                       help="TensorRT flavour (default: tensorrt if installed, else tensorrt_rtx)")
    group.add_argument("--cache-dir", type=Path, default=cache_root() / "engines",
                       help=f"engine and timing cache (default: {cache_root() / 'engines'})")
    group.add_argument("--no-cache", action="store_true", help="always build; no engine or timing cache")
    parser.add_argument("--report", type=Path, metavar="FILE", help="JSON report file (default: <engine>.json beside it)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors and the summary")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print TensorRT's verbose log, with the plugin's answers to the builder (formats, "
                             "profile, workspace)")


def run(args: argparse.Namespace) -> int:
    from eca_deploy.pipeline import build_engine

    result = build_engine(args.model, args.output, report=args.report, precision="fp16" if args.fp16 else None,
                          batch=(args.min_batch, args.opt_batch, args.max_batch), plugin_library=args.plugin,
                          embed_plugin=args.embed_plugin, aot=args.aot, precision_route=args.precision_route,
                          backend=args.backend, cache_dir=None if args.no_cache else args.cache_dir,
                          verbose=args.verbose, progress=Progress(quiet=args.quiet))
    built = result.report
    print(f"Wrote {result.files['engine']} ({built['size_bytes'] / 1e6:.1f} MB, {built['backend']} "
          f"{built['backend_version']}, {built['precision']}, plugin: {built['plugin']['mode']}, "
          f"{built['num_plugin_layers']} plugin layers, cache {'hit' if built['cache']['hit'] else 'miss'}) and "
          f"{result.files['report']}")
    return 0
