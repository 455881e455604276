#!/usr/bin/env python3
"""Benchmark zoo models on a Jetson (or any NVIDIA GPU): FP32/FP16/INT8, native versus plugin engines, batch sweep.

For every model and precision it runs the eca-deploy pipeline as a user would:

1. ``eca-deploy export``: plain and ECA-fused ONNX, parity-checked on ONNX Runtime CPU (INT8: quantized
   to Q/DQ, calibrated on ``--calib`` images, ECA blocks kept in floating point);
2. ``eca-deploy build`` twice: a *native* engine from the plain ONNX (TensorRT's own layers) and a
   *plugin* engine from the fused ONNX with ``libeca_plugin.so`` (EcaAttention plugin layers);
3. ``eca-deploy validate``: both engines against PyTorch FP32 (random inputs, or --images);
4. ``eca-deploy bench``: both engines and PyTorch CUDA across the batch sizes, with INA3221 power,
   nvpmodel and jetson_clocks captured in the report;

and writes everything under one directory, with ``summary.md`` tabulating latency, throughput,
energy per image and the plugin/native throughput ratio of every point. Lock the clocks first
(``sudo nvpmodel -m 0 && sudo jetson_clocks``) and say which mode you ran in when publishing.

  python scripts/jetson_benchmark.py --plugin plugins/eca/build/libeca_plugin.so -o jetson-report
  python scripts/jetson_benchmark.py --models eca_mobilenet_v2 --precisions fp16 --batch-sizes 1 8 --dry-run
  python scripts/jetson_benchmark.py --precisions fp16 int8 --calib imagenet/calib --images imagenet/val ...
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from eca_deploy.cli.main import main as eca_deploy
from eca_deploy.harness.report import table_rows

DEFAULT_MODELS = ("eca_mobilenet_v2", "eca_resnet50")


@dataclass
class Step:
    """One eca-deploy command of the plan and what became of it."""

    title: str
    argv: list[str]
    exit_code: int | None = None

    def shell(self) -> str:
        return "eca-deploy " + " ".join(shlex.quote(arg) for arg in self.argv)


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    latency_reports: list[Path] = field(default_factory=list)


def plan(args: argparse.Namespace) -> Plan:
    """The commands for every model and precision (nothing runs here)."""
    result = Plan()
    size = ["--input-size", str(args.input_size)]
    max_batch = str(max(args.batch_sizes))
    for model in args.models:
        for precision in args.precisions:
            folder = args.output_dir / model / precision
            stem = model if precision == "fp32" else f"{model}.{precision}"
            models = folder / "models"
            result.steps.append(Step(f"{model} {precision}: export", ["export", model, *_precision_args(args, precision),
                                                                      *size, "-q", "-o", str(models)]))
            engines = [("native", models / f"{stem}.onnx", [])]
            if args.plugin:
                engines.append(("plugin", models / f"{stem}.eca.onnx", ["--plugin", str(args.plugin)]))
            backends = []
            for kind, onnx_path, plugin in engines:
                engine = models / f"{stem}.{kind}.engine"
                result.steps.append(Step(f"{model} {precision}: {kind} engine", [
                    "build", str(onnx_path), "-o", str(engine), "--max-batch", max_batch,
                    "--opt-batch", str(min(8, int(max_batch))), *plugin, "-q"]))
                backends += ["-b", f"trt={engine}"]
            plugin = ["--plugin", str(args.plugin)] if args.plugin else []
            images = ["--images", str(args.images)] if args.images else []
            result.steps.append(Step(f"{model} {precision}: validate", [
                "validate", model, *size, *backends, *plugin, *images, "--precision", precision, "-q",
                "-o", str(folder / "accuracy")]))
            torch_cuda = "torch-cuda-fp16" if precision == "fp16" else "torch-cuda"  # PyTorch has no INT8 path here
            result.steps.append(Step(f"{model} {precision}: bench", [
                "bench", model, *size, *backends, "-b", torch_cuda, *plugin, "--batch-sizes",
                *map(str, args.batch_sizes), "--duration", str(args.duration), "--power", args.power,
                *(["--cuda-graphs"] if args.cuda_graphs else []), "-q", "-o", str(folder / "latency")]))
            result.latency_reports.append(folder / "latency" / "latency.json")
    return result


def _precision_args(args: argparse.Namespace, precision: str) -> list[str]:
    """eca-export's flags for ``precision`` (INT8 calibrates on --calib images when given)."""
    if precision == "int8":
        return ["--int8", *(["--calib", str(args.calib)] if args.calib else [])]
    return ["--fp16"] if precision == "fp16" else []


def summary_markdown(plan_: Plan) -> str:
    """Every latency point of every report, and the plugin engine's throughput over the native one's."""
    lines = ["# eca-deploy Jetson benchmark", ""]
    for step in plan_.steps:
        status = "not run" if step.exit_code is None else ("ok" if step.exit_code == 0 else f"exit {step.exit_code}")
        lines.append(f"- {step.title}: {status}")
    lines += ["", "| model | backend | precision | batch | p50 ms | p99 ms | images/s | W | mJ/image | plugin/native |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for path in plan_.latency_reports:
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        rows = table_rows(report)
        native = {(r["batch_size"]): r["throughput_images_per_s"] for r in rows if ".native." in r["backend"]}
        for row in rows:
            ratio = ""
            if ".plugin." in row["backend"] and row["batch_size"] in native:
                ratio = f"{row['throughput_images_per_s'] / native[row['batch_size']]:.2f}x"
            joules = row["joules_per_image"]
            lines.append(f"| {report['model']['arch']} | {row['backend'].split(':')[-1]} | {row['precision']} | "
                         f"{row['batch_size']} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | "
                         f"{row['throughput_images_per_s']:.1f} | {_number(row['module_power_w'])} | "
                         f"{_number(None if joules is None else joules * 1e3)} | {ratio} |")
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="zoo names or checkpoints")
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "fp16", "int8"), default=["fp32", "fp16", "int8"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--plugin", type=Path, help="libeca_plugin.so (without it only native engines are built)")
    parser.add_argument("--images", type=Path, help="image folder for validation (default: random inputs)")
    parser.add_argument("--calib", type=Path, help="INT8 calibration images (default: random inputs, with a warning)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per benchmark point (default: 5)")
    parser.add_argument("--power", choices=("auto", "sysfs", "tegrastats", "none"), default="auto")
    parser.add_argument("--cuda-graphs", action="store_true", help="replay CUDA graphs")
    parser.add_argument("-o", "--output-dir", type=Path, default=Path("jetson-benchmark"))
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = parser.parse_args(argv)
    if args.plugin is not None and not args.plugin.is_file():
        parser.error(f"plugin library {args.plugin} does not exist; build it (plugins/eca/README.md)")
    return args


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    steps = plan(args)
    if args.dry_run:
        print("\n".join(step.shell() for step in steps.steps))
        return 0
    failed = False
    for index, step in enumerate(steps.steps, start=1):
        print(f"[{index}/{len(steps.steps)}] {step.title}", file=sys.stderr, flush=True)
        step.exit_code = eca_deploy(step.argv)
        failed |= step.exit_code != 0
        if step.exit_code == 2 and step.argv[0] in ("export", "build"):
            print("  stopping: a later step needs this one's output", file=sys.stderr)
            break
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "summary.md").write_text(summary_markdown(steps))
    print(f"Wrote {args.output_dir / 'summary.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run())
