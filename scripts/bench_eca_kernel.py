#!/usr/bin/env python3
"""Time the fused ECA kernel against PyTorch eager and torch.compile, shape by shape, on one GPU.

Shapes are every ECA layer of ECA-ResNet-50 and ECA-MobileNetV2 at 224 x 224 (read from the
models with forward hooks), deduplicated, at each batch, dtype and layout. For each case:
correctness against the PyTorch module first, then CUDA-event timing (warm-up, median of
``--iters`` runs, inputs rotated through a pool larger than twice the L2 cache, CUDA graphs at
batch 1 for all three), the ratios ours/eager and ours/compile, achieved GB/s for the bytes our
design moves, and that as a fraction of the device-to-device copy bandwidth measured in the same
run. A model-level section times whole models with ECA eager, replaced by our kernel, removed
(identity: the ECA share of time), and under torch.compile.

  python scripts/bench_eca_kernel.py --dry-run                 # the plan, no GPU needed
  python scripts/bench_eca_kernel.py --json bench.json --markdown bench.md
  python scripts/bench_eca_kernel.py --quick                   # a smoke subset
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from eca_deploy.models import EcaLayer, create_model

MODELS = ("eca_resnet50", "eca_mobilenet_v2")
BATCHES = (1, 8, 64, 256)
DTYPES = ("fp16", "fp32")
LAYOUTS = ("nchw", "channels_last")
TORCH_DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}
ELEMENT_BYTES = {"fp16": 2, "fp32": 4, "bf16": 2}
DESIGN_READS_OF_X = 2  # the two-launch kernel reads x in the pooling pass and in the scaling pass
IMAGE_SIZE = 224


@dataclass(frozen=True)
class LayerShape:
    """One ECA layer's input: channels, spatial size and kernel size."""

    channels: int
    height: int
    width: int
    kernel_size: int


@dataclass(frozen=True)
class Case:
    """One timed configuration; ``layers`` counts the model layers it stands for."""

    shape: LayerShape
    batch: int
    dtype: str
    layout: str
    layers: int
    models: tuple[str, ...]

    @property
    def elements(self) -> int:
        return self.batch * self.shape.channels * self.shape.height * self.shape.width

    def bytes_moved(self, reads_of_x: int = DESIGN_READS_OF_X) -> int:
        """DRAM bytes of the design: ``reads_of_x`` reads of x plus one write of y (taps and means are noise)."""
        return (reads_of_x + 1) * self.elements * ELEMENT_BYTES[self.dtype]


def eca_layer_shapes(arch: str, image_size: int = IMAGE_SIZE) -> list[LayerShape]:
    """The input shape and k of every ECA layer of ``arch``, in forward order (meta device: no compute)."""
    with torch.device("meta"):
        model = create_model(arch)
    shapes: list[LayerShape] = []

    def record(module: EcaLayer, inputs: tuple[torch.Tensor]) -> None:
        _, channels, height, width = inputs[0].shape
        shapes.append(LayerShape(channels, height, width, module.k_size))

    for layer in (m for m in model.modules() if isinstance(m, EcaLayer)):
        layer.register_forward_pre_hook(record)
    with torch.no_grad():
        model(torch.empty(1, 3, image_size, image_size, device="meta"))
    return shapes


def build_plan(models: Sequence[str] = MODELS, batches: Sequence[int] = BATCHES, dtypes: Sequence[str] = DTYPES,
               layouts: Sequence[str] = LAYOUTS) -> list[Case]:
    """Every distinct layer shape of ``models`` at every batch, dtype and layout, with its layer count."""
    counts: dict[LayerShape, list[str]] = {}
    for arch in models:
        for shape in eca_layer_shapes(arch):
            counts.setdefault(shape, []).append(arch)
    return [Case(shape, batch, dtype, layout, len(owners), tuple(sorted(set(owners))))
            for shape, owners in counts.items() for batch in batches for dtype in dtypes for layout in layouts]


def gigabytes_per_second(num_bytes: int, seconds: float) -> float:
    return num_bytes / seconds / 1e9


def ratio(reference: float, ours: float) -> float:
    """How many times faster ours is than the reference (> 1 means ours wins)."""
    return reference / ours


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats get three significant digits."""
    def cell(value: object) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def plan_rows(plan: Sequence[Case]) -> list[tuple]:
    return [(c.shape.channels, f"{c.shape.height}x{c.shape.width}", c.shape.kernel_size, c.batch, c.dtype, c.layout,
             c.layers, ",".join(c.models), f"{c.bytes_moved() / 1e6:.2f}") for c in plan]


PLAN_HEADERS = ("C", "HxW", "k", "N", "dtype", "layout", "layers", "models", "MB moved")


# ---- GPU measurement ----------------------------------------------------------------------------

def _make_input(case: Case, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    shape = (case.batch, case.shape.channels, case.shape.height, case.shape.width)
    x = torch.randn(shape, device=device, dtype=TORCH_DTYPES[case.dtype], generator=generator)
    return x.contiguous(memory_format=torch.channels_last) if case.layout == "channels_last" else x


def time_cuda(fn: Callable[[torch.Tensor], torch.Tensor], inputs: Sequence[torch.Tensor], iters: int, warmup: int,
              graphs: bool) -> float:
    """Median seconds of ``fn`` over ``iters`` calls, rotating through ``inputs`` (one CUDA event pair per call).
    With ``graphs`` every input gets its own captured CUDA graph, so launch overhead is the graph's."""
    calls: list[Callable[[], object]]
    if graphs:
        calls = []
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for x in inputs[:2]:
                fn(x)  # warm up outside capture (allocator, autotuning)
        torch.cuda.current_stream().wait_stream(stream)
        for x in inputs:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn(x)
            calls.append(graph.replay)
    else:
        calls = [lambda x=x: fn(x) for x in inputs]
    for i in range(warmup):
        calls[i % len(calls)]()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for i, (start, end) in enumerate(events):
        start.record()
        calls[i % len(calls)]()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events) / 1e3


def copy_bandwidth(device: torch.device, num_bytes: int = 1 << 30, iters: int = 20) -> float:
    """Device-to-device copy bandwidth in GB/s (read + write counted)."""
    src = torch.empty(num_bytes // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    seconds = time_cuda(lambda x: dst.copy_(x), [src], iters, warmup=3, graphs=False)
    return gigabytes_per_second(2 * num_bytes, seconds)


def input_pool(case: Case, device: torch.device, l2_bytes: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Enough distinct inputs that the pool is larger than twice the L2 cache (at least 2)."""
    size = case.elements * ELEMENT_BYTES[case.dtype]
    return [_make_input(case, device, generator) for _ in range(max(2, min(64, -(-2 * l2_bytes // size))))]


def bench_case(case: Case, args: argparse.Namespace, device: torch.device, l2_bytes: int, copy_gbps: float) -> dict:
    from eca_deploy.cuda_kernel import eca_forward

    generator = torch.Generator(device=device).manual_seed(0)
    layer = EcaLayer(case.shape.channels, case.shape.kernel_size).to(device, TORCH_DTYPES[case.dtype]).eval()
    weight = layer.conv.weight.detach()
    inputs = input_pool(case, device, l2_bytes, generator)
    outputs = [torch.empty_like(x) for x in inputs]
    slots = {x.data_ptr(): out for x, out in zip(inputs, outputs)}

    def ours(x: torch.Tensor) -> torch.Tensor:
        return eca_forward(x, weight, out=slots[x.data_ptr()])

    with torch.no_grad():
        expected = copy.deepcopy(layer).float()(inputs[0].float())
        error = (ours(inputs[0]).float() - expected).abs().max().item()
    tolerance = 1e-4 if case.dtype == "fp32" else 2e-2
    graphs = case.batch == 1
    result = {**asdict(case), "shape": asdict(case.shape), "max_abs_error": error, "correct": error <= tolerance}
    if not result["correct"]:
        return result
    with torch.no_grad():
        times = {"ours": time_cuda(ours, inputs, args.iters, args.warmup, graphs),
                 "eager": time_cuda(layer, inputs, args.iters, args.warmup, graphs)}
        if not args.no_compile:
            compiled = torch.compile(layer, mode="max-autotune-no-cudagraphs")
            times["compile"] = time_cuda(compiled, inputs, args.iters, args.warmup, graphs)
    achieved = gigabytes_per_second(case.bytes_moved(), times["ours"])
    result.update({f"{name}_us": seconds * 1e6 for name, seconds in times.items()},
                  speedup_vs_eager=ratio(times["eager"], times["ours"]),
                  speedup_vs_compile=ratio(times["compile"], times["ours"]) if "compile" in times else None,
                  achieved_gbps=achieved, copy_fraction=achieved / copy_gbps, cuda_graphs=graphs)
    return result


def bench_models(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Whole-model FP16 forward: eager, ECA replaced by our kernel, ECA removed, torch.compile."""
    from eca_deploy.cuda_kernel import replace_eca_modules

    rows = []
    for arch in args.models:
        base = create_model(arch).to(device, torch.float16).to(memory_format=torch.channels_last).eval()
        ours = copy.deepcopy(base)
        replace_eca_modules(ours)
        without = copy.deepcopy(base)
        for name, module in list(without.named_modules()):
            for child_name, child in module.named_children():
                if isinstance(child, EcaLayer):
                    setattr(module, child_name, nn.Identity())
        variants = {"eager": base, "ours": ours, "no_eca": without}
        if not args.no_compile:
            variants["compile"] = torch.compile(base, mode="max-autotune-no-cudagraphs")
        for batch in (1, 64):
            x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, device=device, dtype=torch.float16)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                times = {name: time_cuda(model, [x], args.iters, args.warmup, graphs=batch == 1)
                         for name, model in variants.items()}
            eca_eager = times["eager"] - times["no_eca"]
            eca_ours = times["ours"] - times["no_eca"]
            rows.append({"model": arch, "batch": batch, **{f"{k}_ms": v * 1e3 for k, v in times.items()},
                         "eca_share_eager": eca_eager / times["eager"], "eca_share_ours": eca_ours / times["ours"],
                         "eca_time_saving": 1 - eca_ours / eca_eager if eca_eager > 0 else None})
    return rows


def environment(device: torch.device) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {"device": torch.cuda.get_device_name(device), "date": datetime.date.today().isoformat(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "commit": commit or "unknown"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="print the plan and byte bookkeeping; no GPU needed")
    parser.add_argument("--quick", action="store_true", help="batch 1 and 64, FP16, NCHW only")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(TORCH_DTYPES))
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    parser.add_argument("--iters", type=int, default=200, help="timed calls per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=25)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (faster)")
    parser.add_argument("--json", type=Path, help="write all results as JSON")
    parser.add_argument("--markdown", type=Path, help="write the tables as Markdown (for BENCHMARKS.md)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.dtypes, args.layouts = [1, 64], ["fp16"], ["nchw"]

    plan = build_plan(args.models, args.batches, args.dtypes, args.layouts)
    if args.dry_run:
        print(markdown_table(PLAN_HEADERS, plan_rows(plan)))
        shapes = {c.shape: c.layers for c in plan}
        print(f"\n{len(plan)} cases: {len(shapes)} distinct layer shapes covering {sum(shapes.values())} ECA layers, "
              f"x {len(args.batches)} batches x {len(args.dtypes)} dtypes x {len(args.layouts)} layouts")
        return 0
    if not torch.cuda.is_available():
        print("bench_eca_kernel: error: no CUDA GPU visible; use --dry-run to see the plan", file=sys.stderr)
        return 2

    device = torch.device("cuda")
    l2_bytes = torch.cuda.get_device_properties(device).L2_cache_size
    copy_gbps = copy_bandwidth(device)
    env = {**environment(device), "copy_bandwidth_gbps": copy_gbps, "l2_bytes": l2_bytes}
    print(f"{env['device']}, {env['date']}, torch {env['torch']}, copy bandwidth {copy_gbps:.0f} GB/s", flush=True)
    results = []
    for index, case in enumerate(plan, 1):
        results.append(bench_case(case, args, device, l2_bytes, copy_gbps))
        r = results[-1]
        print(f"[{index}/{len(plan)}] C={case.shape.channels} {case.shape.height}x{case.shape.width} k="
              f"{case.shape.kernel_size} N={case.batch} {case.dtype} {case.layout}: " +
              (f"ours {r['ours_us']:.1f} us, x{r['speedup_vs_eager']:.2f} vs eager, "
               f"{r['achieved_gbps']:.0f} GB/s ({r['copy_fraction']:.0%} of copy)" if r["correct"]
               else f"WRONG (max abs error {r['max_abs_error']:.3g})"), flush=True)
    models = bench_models(args, device)
    headers = ("C", "HxW", "k", "N", "dtype", "layout", "ours us", "eager us", "compile us", "x eager", "x compile",
               "GB/s", "of copy")
    rows = [(r["shape"]["channels"], f"{r['shape']['height']}x{r['shape']['width']}", r["shape"]["kernel_size"],
             r["batch"], r["dtype"], r["layout"], r.get("ours_us"), r.get("eager_us"), r.get("compile_us", "-"),
             r.get("speedup_vs_eager"), r.get("speedup_vs_compile") or "-", r.get("achieved_gbps"),
             r.get("copy_fraction")) for r in results]
    tables = markdown_table(headers, rows) + "\n\n" + markdown_table(
        tuple(models[0]), [tuple(m.values()) for m in models]) if models else markdown_table(headers, rows)
    print(tables)
    if args.markdown:
        args.markdown.write_text(f"{env['device']}, {env['date']}, commit {env['commit']}\n\n{tables}\n")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "layers": results, "models": models}, indent=2) + "\n")
    return 1 if any(not r["correct"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
