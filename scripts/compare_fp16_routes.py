#!/usr/bin/env python3
"""Compare three ways to get an FP16 ONNX model of a zoo network, side by side in one run.

1. ``half-export``: export ``module.half()`` behind FP32 I/O casts.
2. ``modelopt-autocast``: NVIDIA ModelOpt's ``modelopt.onnx.autocast.convert_to_mixed_precision``
   on the FP32 ONNX (TensorRT 11's documented route), ``keep_io_types=True``.
3. ``onnxconverter-common``: ``float16.convert_float_to_float16(keep_io_types=True)``, the route
   ``eca_deploy.onnx_export`` takes for ``--fp16``.

For each: parity against PyTorch FP32 on ONNX Runtime CPU (max abs error, cosine, top-1), Cast node
count, total node count and conversion time. Routes whose package is missing are reported as such.
Usage: python scripts/compare_fp16_routes.py [--arch eca_resnet50] [--out DIR]
"""

from __future__ import annotations

import argparse
import collections
import copy
import tempfile
import time
from pathlib import Path

import onnx
import torch
from torch import nn

from eca_deploy.onnx_export import export_onnx
from eca_deploy.models import create_demo_model
from eca_deploy.parity import check_onnx_parity


class _HalfPrecision(nn.Module):
    """Run ``module`` in FP16 behind FP32 inputs and outputs (one Cast at each edge of the graph)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.half()).float()


def _modelopt(fp32_path: Path) -> onnx.ModelProto:
    from modelopt.onnx.autocast import convert_to_mixed_precision

    return convert_to_mixed_precision(str(fp32_path), low_precision_type="fp16", keep_io_types=True)


def _onnxconverter_common(fp32_path: Path) -> onnx.ModelProto:
    from onnxconverter_common import float16

    return float16.convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="eca_resnet50")
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="fp16-routes-")))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = create_demo_model(args.arch)
    fp32_path = args.out / "fp32.onnx"
    export_onnx(model, fp32_path)

    rows = []
    start = time.perf_counter()
    export_onnx(_HalfPrecision(copy.deepcopy(model)).eval(), args.out / "half-export.onnx")
    rows.append(("half-export", args.out / "half-export.onnx", time.perf_counter() - start))
    for name, convert in (("modelopt-autocast", _modelopt), ("onnxconverter-common", _onnxconverter_common)):
        start = time.perf_counter()
        try:
            converted = convert(fp32_path)
        except ImportError as error:
            print(f"{name}: not installed ({error})")
            continue
        path = args.out / f"{name}.onnx"
        onnx.save(converted, path)
        rows.append((name, path, time.perf_counter() - start))

    print(f"\n{args.arch}, FP16 routes (parity vs PyTorch FP32 on ONNX Runtime CPU, batches 1 and 3)")
    print(f"{'route':<22} {'max abs err':>11} {'cosine':>9} {'top-1':>6} {'Casts':>6} {'nodes':>6} {'time s':>7}")
    for name, path, seconds in rows:
        parity = check_onnx_parity(model, path, precision="fp16")
        ops = collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)
        worst = max(parity.results, key=lambda r: r.max_abs_error)
        print(f"{name:<22} {worst.max_abs_error:>11.2e} {min(r.cosine_similarity for r in parity.results):>9.6f} "
              f"{min(r.top1_agreement for r in parity.results):>6.0%} {ops['Cast']:>6} {sum(ops.values()):>6} "
              f"{seconds:>7.1f}")


if __name__ == "__main__":
    main()
