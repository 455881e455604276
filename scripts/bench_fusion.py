#!/usr/bin/env python3
"""Time the ECA fusion pass on every zoo model, as exported by both PyTorch exporters.

Exports each model once per exporter (not timed), then times ``fuse_eca`` (pattern search,
rewrite and the ONNX checker on the fused graph) as the median of several runs, and checks the
fused count against the number of ECA layers. Prints a Markdown table for BENCHMARKS.md.

  python scripts/bench_fusion.py                       # all zoo models, both exporters
  python scripts/bench_fusion.py --models eca_resnet152 --exporters legacy --repeats 3
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import tempfile
import time
from pathlib import Path

import onnx

from eca_deploy.onnx_export import EXPORTERS, export_onnx
from eca_deploy.models import ARCHITECTURES, create_model, get_architecture
from eca_deploy.passes import fuse_eca


def time_fusion(path: Path, repeats: int) -> tuple[float, int, int]:
    """(median seconds of fuse_eca, fused blocks, graph nodes before fusion) for the model at ``path``."""
    model = onnx.load(str(path))
    seconds, fused = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        _, report = fuse_eca(model)
        seconds.append(time.perf_counter() - start)
        fused = report.num_fused
    return statistics.median(seconds), fused, len(model.graph.node)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--exporters", nargs="+", default=list(EXPORTERS), choices=list(EXPORTERS))
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model (median reported)")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            model = create_model(name)
            for exporter in args.exporters:
                path = Path(scratch) / f"{name}.{exporter}.onnx"
                export_onnx(model, path, exporter=exporter)
                seconds, fused, nodes = time_fusion(path, args.repeats)
                expected = get_architecture(name).num_eca_layers
                status = "ok" if fused == expected else f"MISMATCH (expected {expected})"
                rows.append(f"| {name} | {exporter} | {nodes} | {fused} {status} | {seconds * 1000:.0f} ms |")
                print(rows[-1], flush=True)

    print(f"\nFusion pass timing, {platform.processor() or platform.machine()}, "
          f"{datetime.date.today().isoformat()}, median of {args.repeats} runs:\n")
    print("| model | exporter | ONNX nodes | ECA blocks fused | fuse_eca time |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
