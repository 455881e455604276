#!/usr/bin/env python3
"""Time the fused ECA kernel against PyTorch eager and torch.compile, layer shape by layer shape, on one GPU.

The shapes are every ECA layer of ECA-ResNet-50 and ECA-MobileNetV2 at 224 x 224, read from the
models with forward hooks (meta device, no compute), deduplicated with a count of the layers each
stands for, at every batch, dtype and layout asked for. For each case:

* correctness first: our kernel (NaN-poisoned output), the eager ``EcaLayer`` and the compiled one
  against the layer computed in float64, as |y - ref| / (1 + |ref|) (the criterion of
  ``scripts/gpu_check.py``); a case whose kernel output is wrong is not timed;
* timing with CUDA events after warm-up, median, with the inputs rotated through a pool of distinct
  buffers more than twice the L2 cache so none sits in L2. At batch 1 all three run under CUDA
  graphs: one graph per callable holds one call per pool buffer, and a call's time is the replay's
  over the calls in it (median over replays). Larger batches are timed call by call, unrolled;
* our time's achieved GB/s for the bytes our design moves (x read ``--reads-of-x`` times, y written
  once) and its fraction of the device-to-device copy bandwidth measured in the same run;
* ratios: eager / ours and compile / ours (above 1: ours is faster).

torch.compile runs with ``mode="max-autotune-no-cudagraphs"``: the autotuning of ``max-autotune``
without inductor's own CUDA graphs, because this script captures every callable in a graph itself
at batch 1 (inductor's graphs would copy each rotated input into a static buffer and could not be
captured inside ours). The model-level section times ECA-ResNet-50 and ECA-MobileNetV2 (FP16,
batch 1 and 64) eager, with every ECA layer replaced by our kernel, with every ECA layer replaced by
``nn.Identity`` (so the ECA share of time), and compiled.

  python scripts/bench_eca_kernel.py --dry-run                 # the plan and byte model, no GPU
  python scripts/bench_eca_kernel.py --json bench.json --markdown bench.md
  python scripts/bench_eca_kernel.py --quick                   # a smoke subset
  python scripts/bench_eca_kernel.py --from-json a.json b.json --markdown bench.md   # merge runs

A full run (176 cases, each compiled) can outlast one 10-minute device command: split it with
``--dtypes``/``--layouts``/``--only`` into several ``--json`` files and merge them with ``--from-json``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from eca_deploy.models import EcaLayer, create_demo_model, create_model, get_architecture  # noqa: E402

MODELS = ("eca_resnet50", "eca_mobilenet_v2")
BATCHES = (1, 8, 64, 256)
DTYPES = ("fp16", "fp32")
LAYOUTS = ("nchw", "channels_last")
MODEL_BATCHES = (1, 64)
COMPILE_MODES = ("max-autotune-no-cudagraphs", "default")
TORCH_DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}
ELEMENT_BYTES = {"fp16": 2, "fp32": 4, "bf16": 2}
TOLERANCE = {"fp32": 2e-5, "fp16": 2e-3, "bf16": 1.6e-2}  # max |y - ref| / (1 + |ref|), as scripts/gpu_check.py
#: eca_forward reads x once where it launches once (NCHW; channels-last maps of up to 256 pixels), twice where
#: it pools in one launch and scales in another (larger channels-last maps: --reads-of-x 2)
DEFAULT_READS_OF_X = 1
IMAGE_SIZE = 224
POOL_L2_MULTIPLE = 2       # the input pool holds more than this many L2 caches' worth of bytes
POOL_MAX_BUFFERS = 4096
MIN_GRAPH_REPLAYS = 20
GRAPH_WARMUP_REPLAYS = 3
COPY_BYTES = 1 << 30       # each side of the bandwidth-probe copy
MODEL_MIN_COSINE = 0.999   # logits of a variant against eager FP16

# Issue 7's targets (H100, FP16)
TARGET_BATCH1_VS_COMPILE = 1.5
TARGET_BATCH1_VS_EAGER = 3.0
TARGET_LARGE_BATCH = 64
TARGET_COPY_FRACTION = 0.8
TARGET_SHARE_DIVISOR = 2.0


# ---- plan and bookkeeping (pure: the tests import these) ---------------------------------------

@dataclass(frozen=True)
class LayerShape:
    """One ECA layer's input: channels, spatial size, and the layer's 1D kernel size."""

    channels: int
    height: int
    width: int
    kernel_size: int

    @property
    def label(self) -> str:
        return f"C={self.channels} {self.height}x{self.width} k={self.kernel_size}"


@dataclass(frozen=True)
class Case:
    """One timed configuration; ``layers`` counts the model layers it stands for, ``models`` names them."""

    shape: LayerShape
    batch: int
    dtype: str
    layout: str
    layers: int
    models: tuple[str, ...]

    @property
    def elements(self) -> int:
        return self.batch * self.shape.channels * self.shape.height * self.shape.width

    @property
    def tensor_bytes(self) -> int:
        """Bytes of one x (and of one y)."""
        return self.elements * ELEMENT_BYTES[self.dtype]

    def bytes_moved(self, reads_of_x: int = DEFAULT_READS_OF_X) -> int:
        """DRAM bytes the design moves per call: ``reads_of_x`` reads of x and one write of y
        (the k taps and the N x C means are a rounding error next to them)."""
        return (reads_of_x + 1) * self.tensor_bytes


def eca_layer_shapes(arch: str, image_size: int = IMAGE_SIZE) -> list[LayerShape]:
    """The input shape and k of every ECA layer of ``arch``, in forward order, found by a forward
    pre-hook on each ``EcaLayer`` during one forward pass on the meta device."""
    with torch.device("meta"):
        model = create_model(arch)
    shapes: list[LayerShape] = []

    def record(module: EcaLayer, inputs: tuple[torch.Tensor, ...]) -> None:
        _, channels, height, width = inputs[0].shape
        shapes.append(LayerShape(channels, height, width, module.k_size))

    for layer in model.modules():
        if isinstance(layer, EcaLayer):
            layer.register_forward_pre_hook(record)
    with torch.no_grad():
        model(torch.empty(1, 3, image_size, image_size, device="meta"))
    return shapes


def build_plan(models: Sequence[str] = MODELS, batches: Sequence[int] = BATCHES, dtypes: Sequence[str] = DTYPES,
               layouts: Sequence[str] = LAYOUTS) -> list[Case]:
    """Every distinct layer shape of ``models`` (first-seen order) at every batch, dtype and layout."""
    owners: dict[LayerShape, list[str]] = {}
    for arch in models:
        for shape in eca_layer_shapes(arch):
            owners.setdefault(shape, []).append(arch)
    return [Case(shape, batch, dtype, layout, len(archs), tuple(dict.fromkeys(archs)))
            for shape, archs in owners.items() for batch in batches for dtype in dtypes for layout in layouts]


def plan_summary(plan: Sequence[Case], models: Sequence[str]) -> list[str]:
    """Lines saying how many distinct shapes and layers each model contributes, and the case count."""
    shapes = {case.shape: case for case in plan}
    lines = []
    for arch in models:
        mine = [case for case in shapes.values() if arch in case.models]
        lines.append(f"{arch}: {len(mine)} distinct ECA layer shapes covering {sum(c.layers for c in mine)} layers")
    factors = [len({getattr(c, f) for c in plan}) for f in ("batch", "dtype", "layout")]
    lines.append(f"{len(plan)} cases: {len(shapes)} distinct layer shapes covering "
                 f"{sum(c.layers for c in shapes.values())} ECA layers, x {factors[0]} batches x {factors[1]} dtypes "
                 f"x {factors[2]} layouts")
    return lines


def pool_buffers(tensor_bytes: int, l2_bytes: int, multiple: int = POOL_L2_MULTIPLE,
                 cap: int = POOL_MAX_BUFFERS) -> int:
    """How many distinct inputs to rotate through so that together they exceed ``multiple`` L2 caches
    (at least 2, at most ``cap``)."""
    return max(2, min(cap, multiple * l2_bytes // tensor_bytes + 1))


def gigabytes_per_second(num_bytes: int, seconds: float) -> float:
    return num_bytes / seconds / 1e9


def ratio(reference: float, ours: float) -> float:
    """How many times faster ours is than the reference (above 1: ours wins)."""
    return reference / ours


def case_metrics(bytes_moved: int, seconds: dict[str, float], copy_gbps: float) -> dict[str, float | None]:
    """Times in microseconds, speedups of ours over eager and compile, our GB/s and its fraction of copy."""
    achieved = gigabytes_per_second(bytes_moved, seconds["ours"])
    return {**{f"{name}_us": value * 1e6 for name, value in seconds.items()},
            "speedup_vs_eager": ratio(seconds["eager"], seconds["ours"]),
            "speedup_vs_compile": ratio(seconds["compile"], seconds["ours"]) if "compile" in seconds else None,
            "achieved_gbps": achieved, "copy_fraction": achieved / copy_gbps}


def model_metrics(seconds: dict[str, float]) -> dict[str, float | bool | None]:
    """From model times (eager, ours, no_eca, optional compile): milliseconds, the ECA share of each
    forward (time minus the ECA-free time, over the time), and what our kernel saves."""
    eca_eager = seconds["eager"] - seconds["no_eca"]
    eca_ours = seconds["ours"] - seconds["no_eca"]
    share_eager, share_ours = eca_eager / seconds["eager"], eca_ours / seconds["ours"]
    return {**{f"{name}_ms": value * 1e3 for name, value in seconds.items()},
            "eca_share_eager": share_eager, "eca_share_ours": share_ours,
            "eca_share_halved": share_ours <= share_eager / TARGET_SHARE_DIVISOR,
            "eca_time_saved": 1 - eca_ours / eca_eager if eca_eager > 0 else None,
            "model_time_saved": 1 - seconds["ours"] / seconds["eager"],
            "speedup_vs_compile": ratio(seconds["compile"], seconds["ours"]) if "compile" in seconds else None}


def _worst(rows: list[dict], key: str) -> tuple[float | None, str]:
    if not rows:
        return None, "-"
    row = min(rows, key=lambda r: r[key])
    shape = LayerShape(**row["shape"])
    return row[key], f"{shape.label} N={row['batch']} {row['layout']}"


def target_rows(layers: Sequence[dict], models: Sequence[dict], reads_of_x: int) -> list[tuple]:
    """One row per target of issue 7: (target, cases, met, worst value, where)."""
    fp16 = [r for r in layers if r["dtype"] == "fp16" and r["correct"] and "ours_us" in r]
    batch1 = [r for r in fp16 if r["batch"] == 1]
    compiled = [r for r in batch1 if r.get("speedup_vs_compile") is not None]
    large = [r for r in fp16 if r["batch"] >= TARGET_LARGE_BATCH]
    rows = []
    for title, subset, key, goal in (
            (f"batch 1 FP16, ours >= {TARGET_BATCH1_VS_COMPILE}x faster than torch.compile", compiled,
             "speedup_vs_compile", TARGET_BATCH1_VS_COMPILE),
            (f"batch 1 FP16, ours >= {TARGET_BATCH1_VS_EAGER}x faster than eager", batch1,
             "speedup_vs_eager", TARGET_BATCH1_VS_EAGER),
            (f"batch >= {TARGET_LARGE_BATCH} FP16, >= {TARGET_COPY_FRACTION:.0%} of copy bandwidth "
             f"(bytes model: x read {reads_of_x}x, y written once)", large, "copy_fraction", TARGET_COPY_FRACTION)):
        worst, where = _worst(subset, key)
        rows.append((title, len(subset), sum(r[key] >= goal for r in subset), worst, where))
    rows.append(("x read from DRAM once per call (the design's byte model, not a measurement)", "-",
                 "yes" if reads_of_x == 1 else f"no: the design reads x {reads_of_x}x", "-", "-"))
    halved = [m for m in models if m.get("correct", True)]
    worst_model = min(halved, key=lambda m: m["eca_share_eager"] - TARGET_SHARE_DIVISOR * m["eca_share_ours"],
                      default=None)
    rows.append(("model ECA share of time at most half of eager's", len(halved),
                 sum(m["eca_share_halved"] for m in halved),
                 f"{percent(worst_model['eca_share_ours'])} vs {percent(worst_model['eca_share_eager'])}"
                 if worst_model else None,
                 f"{worst_model['model']} N={worst_model['batch']} {worst_model['layout']}" if worst_model else "-"))
    return rows


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; floats get three significant digits (whole numbers from 1000 up), None is '-'."""
    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


PLAN_HEADERS = ("C", "HxW", "k", "layers", "models", "N", "dtype", "layout", "x MB", "MB moved")
LAYER_HEADERS = ("C", "HxW", "k", "layers", "N", "dtype", "layout", "graphs", "ours us", "eager us", "compile us",
                 "eager/ours", "compile/ours", "GB/s", "of copy")
MODEL_HEADERS = ("model", "layout", "N", "graphs", "eager ms", "ours ms", "no-ECA ms", "compile ms",
                 "ECA share eager", "ECA share ours", "ECA time saved", "model time saved", "compile/ours")
TARGET_HEADERS = ("target", "cases", "met", "worst", "where")


def plan_rows(plan: Sequence[Case], reads_of_x: int) -> list[tuple]:
    return [(c.shape.channels, f"{c.shape.height}x{c.shape.width}", c.shape.kernel_size, c.layers, ",".join(c.models),
             c.batch, c.dtype, c.layout, f"{c.tensor_bytes / 1e6:.3f}", f"{c.bytes_moved(reads_of_x) / 1e6:.3f}")
            for c in plan]


def layer_rows(results: Sequence[dict]) -> list[tuple]:
    rows = []
    for r in results:
        shape = r["shape"]
        timing = ((r["ours_us"], r["eager_us"], r.get("compile_us"), r["speedup_vs_eager"], r.get("speedup_vs_compile"),
                   r["achieved_gbps"], percent(r["copy_fraction"])) if r["correct"]
                  else (f"WRONG (error {r['error_ours']:.3g})", None, None, None, None, None, None))
        rows.append((shape["channels"], f"{shape['height']}x{shape['width']}", shape["kernel_size"], r["layers"],
                     r["batch"], r["dtype"], r["layout"], "yes" if r["cuda_graphs"] else "no", *timing))
    return rows


def model_rows(results: Sequence[dict]) -> list[tuple]:
    return [(m["model"], m["layout"], m["batch"], "yes" if m["cuda_graphs"] else "no", m["eager_ms"], m["ours_ms"],
             m["no_eca_ms"], m.get("compile_ms"), percent(m["eca_share_eager"]), percent(m["eca_share_ours"]),
             percent(m["eca_time_saved"]), percent(m["model_time_saved"]), m.get("speedup_vs_compile"))
            for m in results]


def environment_line(env: dict) -> str:
    return (f"{env['device']} ({env['l2_bytes'] / 2**20:.0f} MiB L2, {env['multiprocessors']} SMs), {env['date']}, "
            f"commit {env['commit']}, torch {env['torch']} (CUDA {env['cuda']}, cuDNN {env['cudnn']}, "
            f"Triton {env['triton']}), device-to-device copy {env['copy_bandwidth_gbps']:.0f} GB/s, "
            f"{env['iters']} timed calls, torch.compile mode {env['compile_mode']}, bytes model: x read "
            f"{env['reads_of_x']}x + y written once")


def render_markdown(runs: Sequence[dict]) -> str:
    """The tables of one or more runs (each as written by ``--json``), merged, ready for BENCHMARKS.md."""
    layers = [r for run in runs for r in run["layers"]]
    models = [m for run in runs for m in run["models"]]
    reads = {run["environment"]["reads_of_x"] for run in runs}
    if len(reads) != 1:
        raise ValueError(f"runs with different byte models (reads_of_x {sorted(reads)}) cannot be merged")
    parts = ["Runs:\n\n" + "\n".join(f"- {environment_line(run['environment'])}" for run in runs)]
    if layers:
        parts.append("Per layer shape (times are medians per call; eager/ours and compile/ours above 1: ours faster; "
                     "GB/s and 'of copy' for our kernel's bytes model):\n\n"
                     + markdown_table(LAYER_HEADERS, layer_rows(layers)))
    if models:
        parts.append("Model level, FP16 (ECA share = (time - no-ECA time) / time):\n\n"
                     + markdown_table(MODEL_HEADERS, model_rows(models)))
    parts.append("Targets:\n\n" + markdown_table(TARGET_HEADERS, target_rows(layers, models, reads.pop())))
    return "\n\n".join(parts) + "\n"


# ---- GPU measurement -----------------------------------------------------------------------------

def scaled_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    """max |y - ref| / (1 + |ref|) in float64; NaN anywhere (an unwritten element) gives NaN."""
    error = (y.double() - reference).abs() / (1 + reference.abs())
    return float("nan") if error.isnan().any() else error.max().item()


def _make_input(case: Case, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    shape = (case.batch, case.shape.channels, case.shape.height, case.shape.width)
    x = torch.randn(shape, device=device, dtype=TORCH_DTYPES[case.dtype], generator=generator)
    return x.contiguous(memory_format=torch.channels_last) if case.layout == "channels_last" else x


def _events(count: int) -> list[tuple[torch.cuda.Event, torch.cuda.Event]]:
    return [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(count)]


def capture(fn: Callable[[torch.Tensor], object], inputs: Sequence[torch.Tensor]) -> torch.cuda.CUDAGraph:
    """One CUDA graph calling ``fn`` once on every input in turn (three warm-up calls on a side stream first)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(3):
            fn(inputs[i % len(inputs)])
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for x in inputs:
            fn(x)
    return graph


def seconds_per_call(fn: Callable[[torch.Tensor], object], inputs: Sequence[torch.Tensor], iters: int, warmup: int,
                     graphs: bool) -> float:
    """Median seconds per call of ``fn``, rotating through ``inputs``.

    With ``graphs``: the replay time of a graph holding one call per input, over the number of
    inputs (median of at least MIN_GRAPH_REPLAYS replays after GRAPH_WARMUP_REPLAYS). Without:
    ``warmup`` untimed calls, then one event pair per call.
    """
    if graphs:
        graph = capture(fn, inputs)
        for _ in range(GRAPH_WARMUP_REPLAYS):
            graph.replay()
        events = _events(max(MIN_GRAPH_REPLAYS, math.ceil(iters / len(inputs))))
        for start, end in events:
            start.record()
            graph.replay()
            end.record()
        torch.cuda.synchronize()
        del graph
        return statistics.median(s.elapsed_time(e) for s, e in events) / 1e3 / len(inputs)
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    events = _events(iters)
    for i, (start, end) in enumerate(events, warmup):
        start.record()
        fn(inputs[i % len(inputs)])
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events) / 1e3


def copy_bandwidth(device: torch.device, iters: int = 50) -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    src = torch.randn(COPY_BYTES // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    seconds = seconds_per_call(dst.copy_, [src], iters, warmup=5, graphs=False)
    return gigabytes_per_second(2 * COPY_BYTES, seconds)


def compile_module(module: nn.Module, mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.compile with static shapes, after clearing dynamo's caches (so no recompile limit is hit)."""
    torch._dynamo.reset()
    return torch.compile(module, mode=mode, dynamic=False, fullgraph=True)


def bench_case(case: Case, args: argparse.Namespace, device: torch.device, l2_bytes: int, copy_gbps: float) -> dict:
    """Check then time one case: ours, eager and (unless --no-compile) torch.compile."""
    from eca_deploy.cuda_kernel import eca_forward

    torch.manual_seed(0)
    layer = EcaLayer(case.shape.channels, case.shape.kernel_size).to(device, TORCH_DTYPES[case.dtype]).eval()
    weight = layer.conv.weight.detach()
    generator = torch.Generator(device=device).manual_seed(0)
    inputs = [_make_input(case, device, generator) for _ in range(pool_buffers(case.tensor_bytes, l2_bytes))]
    graphs = case.batch == 1
    callables: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "ours": lambda x: eca_forward(x, weight), "eager": layer}
    if not args.no_compile:
        callables["compile"] = compile_module(layer, args.compile_mode)
    result = {**asdict(case), "elements": case.elements, "bytes_moved": case.bytes_moved(args.reads_of_x),
              "reads_of_x": args.reads_of_x, "pool_buffers": len(inputs), "cuda_graphs": graphs,
              "tolerance": TOLERANCE[case.dtype]}
    with torch.no_grad():
        x = inputs[0]
        reference = copy.deepcopy(layer).double()(x.double())
        poisoned = torch.full_like(x, float("nan"))
        result["error_ours"] = scaled_error(eca_forward(x, weight, out=poisoned), reference)
        for name in callables.keys() - {"ours"}:
            result[f"error_{name}"] = scaled_error(callables[name](x), reference)
        del reference, poisoned
        result["correct"] = result["error_ours"] <= TOLERANCE[case.dtype]  # False for NaN
        if result["correct"]:
            seconds = {name: seconds_per_call(fn, inputs, args.iters, args.warmup, graphs)
                       for name, fn in callables.items()}
            result.update(case_metrics(case.bytes_moved(args.reads_of_x), seconds, copy_gbps))
    del inputs, callables
    torch.cuda.empty_cache()
    return result


def case_line(result: dict) -> str:
    """One printed line per case."""
    head = (f"{LayerShape(**result['shape']).label} N={result['batch']} {result['dtype']} {result['layout']}"
            f"{' graphs' if result['cuda_graphs'] else ''}: ")
    if not result["correct"]:
        return head + f"WRONG: error {result['error_ours']:.3g} > {result['tolerance']:g}, not timed"
    compile_part = (f", compile {result['compile_us']:.1f} us" if "compile_us" in result else "")
    ratio_part = (f", compile/ours {result['speedup_vs_compile']:.2f}x" if result["speedup_vs_compile"] else "")
    return (head + f"ours {result['ours_us']:.1f} us, eager {result['eager_us']:.1f} us{compile_part}; "
            f"eager/ours {result['speedup_vs_eager']:.2f}x{ratio_part}; {result['achieved_gbps']:.0f} GB/s "
            f"({percent(result['copy_fraction'])} of copy)")


def strip_eca(model: nn.Module) -> int:
    """Replace every EcaLayer inside ``model`` with nn.Identity in place; returns the count."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, EcaLayer):
                setattr(parent, name, nn.Identity())
                count += 1
    return count


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def bench_models(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Whole-model FP16 forward: eager, ECA replaced by our kernel, ECA removed, torch.compile."""
    from eca_deploy.cuda_kernel import replace_eca_modules

    rows = []
    for arch in args.models:
        expected_layers = get_architecture(arch).num_eca_layers
        for layout in args.model_layouts:
            memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            base = create_demo_model(arch).to(device, torch.float16).to(memory_format=memory_format).eval()
            ours, without = copy.deepcopy(base), copy.deepcopy(base)
            if replace_eca_modules(ours) != expected_layers or strip_eca(without) != expected_layers:
                raise RuntimeError(f"{arch}: expected {expected_layers} ECA layers to replace")
            for batch in MODEL_BATCHES:
                variants: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
                    "eager": base, "ours": ours, "no_eca": without}
                if not args.no_compile:
                    variants["compile"] = compile_module(base, args.compile_mode)
                generator = torch.Generator(device=device).manual_seed(batch)
                x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, device=device, dtype=torch.float16,
                                generator=generator).contiguous(memory_format=memory_format)
                with torch.no_grad():
                    logits = base(x)
                    similarity = {f"cosine_{name}": cosine(variants[name](x), logits)
                                  for name in variants.keys() - {"eager", "no_eca"}}
                    seconds = {name: seconds_per_call(fn, [x], args.iters, args.warmup, graphs=batch == 1)
                               for name, fn in variants.items()}
                row = {"model": arch, "layout": layout, "batch": batch, "cuda_graphs": batch == 1, **similarity,
                       "correct": all(v >= MODEL_MIN_COSINE for v in similarity.values()), **model_metrics(seconds)}
                rows.append(row)
                print(f"{arch} {layout} N={batch}: eager {row['eager_ms']:.3f} ms, ours {row['ours_ms']:.3f} ms, "
                      f"no ECA {row['no_eca_ms']:.3f} ms" + (f", compile {row['compile_ms']:.3f} ms"
                                                            if "compile_ms" in row else "")
                      + f"; ECA share {percent(row['eca_share_eager'])} -> {percent(row['eca_share_ours'])}"
                      + ("" if row["correct"] else f"; LOGITS DIFFER {similarity}"), flush=True)
                del variants
            del base, ours, without
            torch.cuda.empty_cache()
    return rows


def git_commit() -> str:
    result = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], capture_output=True,
                            text=True, cwd=REPO_ROOT)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def environment(device: torch.device, args: argparse.Namespace, copy_gbps: float) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    properties = torch.cuda.get_device_properties(device)
    return {"device": properties.name, "multiprocessors": properties.multi_processor_count,
            "l2_bytes": properties.L2_cache_size, "memory_bytes": properties.total_memory,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": args.commit or git_commit(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "triton": triton_version, "copy_bandwidth_gbps": copy_gbps,
            "iters": args.iters, "warmup": args.warmup, "compile_mode": None if args.no_compile else args.compile_mode,
            "reads_of_x": args.reads_of_x, "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "argv": sys.argv[1:]}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="print the plan and byte bookkeeping; no GPU needed")
    parser.add_argument("--quick", action="store_true", help="smoke subset: batch 1 and 64, FP16, NCHW")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(TORCH_DTYPES))
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    parser.add_argument("--model-layouts", nargs="+", default=["channels_last"], choices=LAYOUTS,
                        help="layouts of the model-level section (default channels_last)")
    parser.add_argument("--only", choices=("layers", "models"), help="run one section only")
    parser.add_argument("--iters", type=int, default=200, help="timed calls per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=25, help="untimed calls first (call-by-call timing)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--compile-mode", default=COMPILE_MODES[0], choices=COMPILE_MODES)
    parser.add_argument("--reads-of-x", type=int, default=DEFAULT_READS_OF_X, choices=(1, 2),
                        help="reads of x in the bytes model: 1 (default) where the kernel launches once, 2 for "
                             "its two-launch path (channels-last maps above 256 pixels)")
    parser.add_argument("--commit", help="commit to record (default: git describe of this checkout)")
    parser.add_argument("--json", type=Path, help="write all results as JSON")
    parser.add_argument("--markdown", type=Path, help="write the tables as Markdown (for BENCHMARKS.md)")
    parser.add_argument("--from-json", nargs="+", type=Path, metavar="PATH",
                        help="measure nothing: merge these --json files into the tables")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.dtypes, args.layouts = [1, 64], ["fp16"], ["nchw"]
    if min(args.batches) < 1 or args.iters < 1 or args.warmup < 0:
        parser.error("batches and --iters must be positive, --warmup not negative")
    return args


def write_run(run: dict, json_path: Path | None, markdown_path: Path | None,
              render: Callable[[Sequence[dict]], str]) -> None:
    """Write ``run`` as JSON and its tables (``render([run])``) as Markdown where asked, and print the tables."""
    if json_path:
        json_path.write_text(json.dumps(run, indent=1) + "\n")
    text = render([run])
    if markdown_path:
        markdown_path.write_text(text)
    print("\n" + text, end="")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        text = render_markdown([json.loads(path.read_text()) for path in args.from_json])
        print(text, end="")
        if args.markdown:
            args.markdown.write_text(text)
        return 0
    plan = build_plan(args.models, args.batches, args.dtypes, args.layouts) if args.only != "models" else []
    if args.dry_run:
        print(markdown_table(PLAN_HEADERS, plan_rows(plan, args.reads_of_x)))
        print("\n" + "\n".join(plan_summary(plan, args.models)))
        print(f"bytes model: (reads_of_x = {args.reads_of_x}) + 1 passes of N*C*H*W*element bytes per call; "
              f"{sum(c.bytes_moved(args.reads_of_x) for c in plan) / 1e9:.2f} GB over one call of every case")
        if args.only != "layers":
            print(f"model level: {', '.join(args.models)} FP16 at batch {MODEL_BATCHES}, layouts "
                  f"{', '.join(args.model_layouts)}: eager, ours, no ECA"
                  + ("" if args.no_compile else f", torch.compile ({args.compile_mode})"))
        return 0
    if not torch.cuda.is_available():
        print("bench_eca_kernel: error: no CUDA GPU visible, so nothing can be timed; "
              "--dry-run prints the plan without one", file=sys.stderr)
        return 2
    from eca_deploy.cuda_kernel import build_kernel_library
    from eca_deploy.errors import EcaDeployError

    try:
        library = build_kernel_library()
    except EcaDeployError as error:
        print(f"bench_eca_kernel: error: {error}", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    copy_gbps = copy_bandwidth(device)
    env = environment(device, args, copy_gbps)
    print(f"{environment_line(env)}\nkernel library {library}", flush=True)
    started = time.monotonic()
    layers = []
    for index, case in enumerate(plan, 1):
        layers.append(bench_case(case, args, device, env["l2_bytes"], copy_gbps))
        print(f"[{index}/{len(plan)} {time.monotonic() - started:.0f}s] {case_line(layers[-1])}", flush=True)
    models = bench_models(args, device) if args.only != "layers" else []
    run = {"environment": env, "layers": layers, "models": models}
    write_run(run, args.json, args.markdown, render_markdown)
    return 1 if any(not r["correct"] for r in layers) or any(not m["correct"] for m in models) else 0


if __name__ == "__main__":
    raise SystemExit(main())
