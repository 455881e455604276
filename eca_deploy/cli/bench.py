"""Benchmark latency and throughput of every backend: percentiles, stages, batch sweep, power on Jetson.

SOURCE is any model eca-export takes; without it, the files named with -b bring their model (their
provenance), and --images are preprocessed as that model expects.

Each (backend, batch size) point warms up (--warmup-iterations and --warmup-seconds), then runs
until both --iterations and --duration are reached. One iteration is one query end to end:
preprocessing (with --images), host-to-device copy, device compute (CUDA events on GPUs), device-to-
host copy and postprocessing (softmax, top-5). Reports p50/p90/p95/p99, mean, std, min, max,
throughput, the mean time of each stage, single-stream (batch 1) and offline (best throughput)
summaries and, on Jetson, INA3221 power (module input, VDD_CPU_GPU_CV, VDD_SOC...), joules per image
and images per second per watt, with the machine (host, CPU, cores, GPU, driver, versions, nvpmodel
mode, jetson_clocks), --threads and the CPU load during the run (warned about when other processes
took over 10 % of the CPUs) in every report. Writes latency.json, latency.csv, latency.md and PNG
plots titled with the model, precision, threads and host.
Exit codes: 0 success, 2 bad input.

Examples:
  eca-deploy bench                                        # demo model: PyTorch CPU vs ONNX Runtime CPU
  eca-deploy bench model.pth.tar --batch-sizes 1 8 32 --duration 10 --cuda-graphs
  eca-deploy bench model.pth.tar -b trt=native.engine -b trt=plugin.engine --plugin libeca_plugin.so
"""

from __future__ import annotations

import argparse

from eca_deploy.cli.args import add_harness_args, add_model_args, model_options, positive_int
from eca_deploy.options import POWER_SOURCES
from eca_deploy.progress import Progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser, default_source=None)
    add_harness_args(parser, default_dir="reports/latency")
    group = parser.add_argument_group("benchmark")
    group.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 8], metavar="N",
                       help="batch sizes to sweep (default: 1 8); batch 1 is the single-stream scenario")
    group.add_argument("--warmup-iterations", type=int, default=5, metavar="N",
                       help="at least N warm-up runs (default: 5)")
    group.add_argument("--warmup-seconds", type=float, default=0.5, metavar="S",
                       help="and at least S seconds (default: 0.5)")
    group.add_argument("--iterations", type=int, default=20, metavar="N", help="at least N timed runs (default: 20)")
    group.add_argument("--duration", type=float, default=2.0, metavar="S", help="and at least S seconds (default: 2)")
    group.add_argument("--cuda-graphs", action="store_true", help="replay CUDA graphs on torch-cuda and trt backends")
    group.add_argument("--power", choices=POWER_SOURCES, default="auto",
                       help="power sampling on Jetson: INA3221 sysfs, tegrastats, or none (default: auto)")
    group.add_argument("--power-interval", type=float, default=0.05, metavar="S",
                       help="seconds between power samples (default: 0.05)")
    group.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def run(args: argparse.Namespace) -> int:
    from eca_deploy.pipeline import bench

    result = bench(args.source, args.backend, output_dir=args.output_dir, images=args.images,
                   class_index=args.class_index, limit=args.limit, strict=args.strict, batch_sizes=args.batch_sizes,
                   warmup_iterations=args.warmup_iterations, warmup_seconds=args.warmup_seconds,
                   iterations=args.iterations, duration=args.duration, cuda_graphs=args.cuda_graphs, power=args.power,
                   power_interval=args.power_interval, plots=not args.no_plots, seed=args.seed, fp16=args.fp16,
                   plugin=args.plugin, threads=args.threads, progress=Progress(quiet=args.quiet),
                   **model_options(args))
    print(result.written_line())
    print(result.summary())
    return 0
