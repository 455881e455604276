"""Benchmark latency and throughput of every backend: percentiles, stages, batch sweep, power on Jetson.

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
from dataclasses import asdict

from eca_deploy.cli.args import add_harness_args, add_model_args, positive_int
from eca_deploy.errors import EcaDeployError
from eca_deploy.options import POWER_SOURCES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
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
    from eca_deploy.cli import _harness
    from eca_deploy.harness.data import RandomInputs
    from eca_deploy.image_folders import Batch
    from eca_deploy.harness.environment import PowerSampler
    from eca_deploy.harness.latency import LatencySettings, measure_latency, scenario_summary

    try:
        settings = LatencySettings(args.warmup_iterations, args.warmup_seconds, args.iterations, args.duration)
    except ValueError as error:
        raise EcaDeployError(str(error)) from error
    batch_sizes = sorted(set(args.batch_sizes))
    sampler = PowerSampler(args.power, interval_s=args.power_interval)
    with _harness.start(args, include_torch_cpu=True, batch_size=max(batch_sizes),
                        cuda_graphs=args.cuda_graphs) as session:
        random = RandomInputs(session.input_shape, batch_size=max(batch_sizes), num_batches=1, seed=args.seed)
        if session.images:
            next_batch = session.images.batch_of
        else:
            pool = {size: [random.batch(size, index) for index in range(2)] for size in batch_sizes}

            def next_batch(size: int, index: int) -> Batch:
                return Batch(pool[size][index % 2], None)
        results = []
        with session.backends() as backends:
            with session.progress.bar(len(backends) * len(batch_sizes), "Benchmarking") as bar:
                for backend in backends:
                    for size in batch_sizes:
                        results.append(measure_latency(backend, size, next_batch, settings=settings, sampler=sampler,
                                                       bar=bar))
        summary = scenario_summary(results)
        body = {"settings": asdict(settings) | {"batch_sizes": batch_sizes, "cuda_graphs": args.cuda_graphs,
                                                "power_source": sampler.source},
                "results": [result.to_dict() for result in results], "summary": summary}
        inputs = (session.images or random).describe() | {"batch_sizes": batch_sizes}  # after the run: its skips
        session.write("latency", inputs, body, plots=not args.no_plots)
    for name, figures in summary.items():
        single, offline = figures["single_stream"], figures["offline"]
        line = f"{name}: "
        if single:
            line += f"single-stream p50 {single['p50_ms']:.3f} ms, p99 {single['p99_ms']:.3f} ms; "
        line += (f"offline {offline['throughput_images_per_s']:.1f} images/s at batch {offline['batch_size']}")
        if offline["joules_per_image"] is not None:
            line += f", {offline['joules_per_image'] * 1e3:.2f} mJ/image"
        print(line)
    return 0
