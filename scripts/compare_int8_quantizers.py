#!/usr/bin/env python3
"""Compare two INT8 post-training quantizers on zoo networks, side by side in one run.

1. ``ort-<method>``: ``eca_deploy.quantize.quantize_int8``, ONNX Runtime's ``quantize_static`` in QDQ format
   with TensorRT's settings (symmetric, per-channel weights, Q/DQ on the inputs of Conv/Gemm/MatMul/Add,
   float bias, ECA blocks left out), for each calibration method (entropy, percentile, minmax).
2. ``modelopt``: NVIDIA ModelOpt's ONNX PTQ, ``modelopt.onnx.quantization.quantize(quantize_mode="int8")``
   with its defaults, as a user would call it: entropy calibration, every op type it supports quantized,
   nothing excluded, what stays unquantized converted to FP16 (``high_precision_dtype="fp16"``).
   ``modelopt-fp32`` keeps that part FP32 (like route 1); ``modelopt-no-eca`` is the default call with
   the ECA block nodes in ``nodes_to_exclude``.

ModelOpt pins its own onnx/onnxruntime, so it runs in a separate virtual environment through a subprocess
(``--modelopt-python``), and this project's environment is never modified; when that interpreter is
missing, only route 1 is measured. Every model is exported FP32 (legacy exporter by default: about 15x
faster), calibrated on alternate files of the photographs scikit-image ships (the authors' preprocessing),
and evaluated on ONNX Runtime CPU against PyTorch FP32 on the other half and on all of them: max abs
error, cosine of logits, top-1 agreement, top-1 within top-5, and a noise floor (the model against itself
on its inputs plus noise far below one pixel level: the demo models' random weights make INT8 logits that
sensitive). Also: Q/DQ counts, Q/DQ inside ECA blocks, placement (op types reading a DequantizeLinear, op
types feeding a QuantizeLinear), file size, quantizer wall time, and what ``eca_deploy.passes.fuse_eca``
makes of each quantized model (blocks fused, Q/DQ dropped, near-misses, agreement of the fused model).
Ends with ModelOpt's dependencies against this project's.

Setup of the ModelOpt environment (about 2 GB):
  python -m venv /tmp/modelopt-venv && /tmp/modelopt-venv/bin/pip install "nvidia-modelopt[onnx]" torch
Usage: python scripts/compare_int8_quantizers.py [--arch eca_resnet50 eca_mobilenet_v2]
       [--methods entropy percentile minmax] [--modelopt-python /tmp/modelopt-venv/bin/python]
       [--calib-size N] [--out DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.real_images: the shipped photographs

from eca_deploy.onnx_export import export_onnx  # noqa: E402
from eca_deploy.models import create_demo_model  # noqa: E402
from eca_deploy.options import CALIBRATION_METHODS, EXPORTERS, INPUT_NAME  # noqa: E402
from eca_deploy.parity import ParityMetrics, compare_outputs  # noqa: E402
from eca_deploy.passes import fuse_eca  # noqa: E402
from eca_deploy.preprocess import Preprocessing  # noqa: E402
from eca_deploy.quantize import (  # noqa: E402
    eca_block_nodes,
    image_calibration,
    qdq_inside_eca_blocks,
    quantize_int8,
)
from tests.real_images import photographs, write_photographs  # noqa: E402

INPUT_SIZE = 224
NOISE = 1e-3  # one 8-bit pixel level is 1 / 255 / std, about 0.017, after the authors' normalization

# Run by the ModelOpt interpreter: argv[1] is a JSON job; writes {"seconds": ...} to job["result"].
_MODELOPT_QUANTIZE = """
import json, sys, time
import numpy as np
from modelopt.onnx.quantization import quantize
job = json.loads(sys.argv[1])
start = time.perf_counter()
quantize(job["model"], quantize_mode="int8", calibration_data=np.load(job["calibration"]),
         output_path=job["output"], **job["options"])
json.dump({"seconds": time.perf_counter() - start}, open(job["result"], "w"))
"""

# Run by the ModelOpt interpreter: prints its versions, requirements (onnx extra, this platform) and weight.
_MODELOPT_ENVIRONMENT = """
import importlib.metadata as md, json, os, sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
requirements = [Requirement(text) for text in md.requires("nvidia-modelopt")]
wanted = [f"{canonicalize_name(r.name)}{r.specifier}" for r in requirements
          if r.marker is None or r.marker.evaluate({"extra": "onnx"})]
modules = {}
for module, dists in md.packages_distributions().items():
    for dist in dists:
        modules.setdefault(canonicalize_name(dist), []).append(module)
size = sum(os.lstat(os.path.join(root, name)).st_size for root, _, names in os.walk(sys.prefix) for name in names)
print(json.dumps({"python": sys.version.split()[0], "prefix": sys.prefix, "bytes": size,
                  "distributions": {canonicalize_name(d.metadata["Name"]): d.version for d in md.distributions()},
                  "requirements": wanted, "modules": modules}))
"""


def _modelopt_variants(eca_nodes: list[str]) -> dict[str, dict]:
    """Route name -> keyword arguments of ``modelopt.onnx.quantization.quantize`` besides model, data and mode."""
    return {"modelopt": {}, "modelopt-fp32": {"high_precision_dtype": "fp32"},
            "modelopt-no-eca": {"nodes_to_exclude": [re.escape(node) + "$" for node in eca_nodes]}}  # re.match


def _split_photographs(out: Path, calib_size: int | None) -> tuple[Path, list[Path], list[int]]:
    """Write the photographs: alternate files (by name) calibrate, the others are held out.

    Returns the calibration folder, every photograph's path and the indices of the held-out ones."""
    names = sorted(photographs())
    calibration = names[::2][:calib_size]
    write_photographs(out / "calibration", calibration)
    paths = write_photographs(out / "photographs")
    return out / "calibration", paths, [i for i, name in enumerate(names) if name not in calibration]


def _ort_logits(path: Path, inputs: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # FP16 models: one "cannot constant fold" warning per FP16 Mul
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: inputs})[0]


def _metrics(metrics: ParityMetrics) -> dict:
    return {"max_abs_error": metrics.max_abs_error, "cosine": metrics.cosine_similarity,
            "top1": metrics.top1_agreement, "top1_in_top5": metrics.top5_agreement, "images": metrics.batch_size,
            "reference_max_abs": metrics.reference_max_abs}


def _agreement(logits: np.ndarray, reference: np.ndarray, held_out: list[int]) -> dict:
    return {"held_out": _metrics(compare_outputs(reference[held_out], logits[held_out])),
            "all": _metrics(compare_outputs(reference, logits))}


def _noise_floor(path: Path, inputs: np.ndarray) -> dict:
    """The model against itself on inputs plus seeded noise of sigma ``NOISE`` (a sixteenth of one 8-bit pixel level
    after normalization): differences between routes below this are noise."""
    noisy = inputs + np.random.default_rng(0).normal(0, NOISE, inputs.shape).astype(np.float32)
    return _metrics(compare_outputs(_ort_logits(path, inputs), _ort_logits(path, noisy)))


def _placement(model: onnx.ModelProto) -> dict:
    """Q/DQ counts and where they sit: op types reading a DequantizeLinear, op types feeding a QuantizeLinear."""
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    producers |= {init.name: "(initializer)" for init in model.graph.initializer}
    producers |= {value.name: "(graph input)" for value in model.graph.input}
    dequantized = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    ops = Counter(node.op_type for node in model.graph.node)
    return {
        "quantize_linear": ops["QuantizeLinear"], "dequantize_linear": ops["DequantizeLinear"],
        "cast": ops["Cast"], "nodes": sum(ops.values()),
        "megabytes": round(model.ByteSize() / 1e6, 1),
        "qdq_inside_eca": len(qdq_inside_eca_blocks(model)),
        "dq_consumers": dict(Counter(node.op_type for node in model.graph.node
                                     for name in node.input if name in dequantized).most_common()),
        "q_producers": dict(Counter(producers.get(node.input[0], "?") for node in model.graph.node
                                    if node.op_type == "QuantizeLinear").most_common()),
    }


def _fusion(path: Path, inputs: np.ndarray, reference: np.ndarray) -> dict:
    """Fuse the ECA blocks of a quantized model; agreement of the fused model with PyTorch on all images."""
    fused, report = fuse_eca(onnx.load(str(path)))
    fused_path = path.with_suffix(".eca.onnx")
    onnx.save(fused, fused_path)
    return {"num_fused": report.num_fused, "dropped_qdq": sum(block.dropped_qdq for block in report.fused),
            "near_misses": [f"{miss.nodes[0]}: {miss.reason}" for miss in report.near_misses],
            "fused_agreement": _metrics(compare_outputs(reference, _ort_logits(fused_path, inputs)))}


def _run_modelopt(python: Path, fp32_path: Path, calibration: Path, output: Path, options: dict) -> dict:
    """Quantize in the ModelOpt interpreter; its log goes to ``<output>.log``. Returns seconds (quantize call
    and whole process), or the error."""
    result = output.with_suffix(".result.json")
    job = {"model": str(fp32_path), "calibration": str(calibration), "output": str(output),
           "result": str(result), "options": options}
    start = time.perf_counter()
    with open(output.with_suffix(".log"), "w") as log:
        completed = subprocess.run([str(python), "-c", _MODELOPT_QUANTIZE, json.dumps(job)], stdout=log,
                                   stderr=subprocess.STDOUT, check=False)
    if completed.returncode != 0 or not result.exists():
        return {"error": f"exit {completed.returncode}, see {output.with_suffix('.log')}"}
    return json.loads(result.read_text()) | {"process_seconds": time.perf_counter() - start}


def _dependencies(python: Path | None) -> dict:
    """ModelOpt's install weight and requirements, and which of them this project's environment contradicts."""
    ours = {canonicalize_name(dist.metadata["Name"]): dist.version for dist in importlib.metadata.distributions()}
    report: dict = {"project_requires": importlib.metadata.requires("eca-deploy"),
                    "onnxruntime": f"already a dependency of eca-deploy ({ours['onnxruntime']} installed)"}
    if python is None:
        return report
    venv = json.loads(subprocess.run([str(python), "-c", _MODELOPT_ENVIRONMENT], capture_output=True, text=True,
                                     check=True).stdout)
    module_owner = {module: canonicalize_name(dists[0])
                    for module, dists in importlib.metadata.packages_distributions().items()}
    conflicts = []
    for text in venv["requirements"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name in ours and not requirement.specifier.contains(ours[name], prereleases=True):
            conflicts.append(f"{text}: this environment has {requirement.name} {ours[name]}")
        for module in venv["modules"].get(name, []):
            owner = module_owner.get(module)
            if owner and owner != name:
                conflicts.append(f"{text}: installs the module `{module}`, which this environment's "
                                 f"{owner} {ours.get(owner)} also provides (the two overwrite each other)")
    report["modelopt"] = {
        "version": venv["distributions"].get("nvidia-modelopt"), "python": venv["python"], "prefix": venv["prefix"],
        "size_gb": round(venv["bytes"] / 1e9, 2), "distributions": len(venv["distributions"]),
        "requirements": venv["requirements"], "conflicts_with_this_environment": sorted(set(conflicts)),
        "versions": {name: venv["distributions"].get(name) for name in
                     ("onnx", "onnxruntime", "onnxruntime-gpu", "torch", "numpy", "onnx-graphsurgeon")},
    }
    return report


def _measure_model(arch: str, args: argparse.Namespace, calibration_dir: Path, paths: list[Path],
                   held_out: list[int], modelopt: Path | None) -> dict:
    out = args.out / arch
    out.mkdir(parents=True, exist_ok=True)
    model = create_demo_model(arch)
    fp32_path = out / "fp32.onnx"
    export_onnx(model, fp32_path, input_shape=(3, INPUT_SIZE, INPUT_SIZE), exporter=args.exporter)
    inputs = Preprocessing.from_zoo().for_input_size(INPUT_SIZE).batch(paths)
    with torch.no_grad():
        reference = model(torch.from_numpy(inputs)).numpy()
    calibration = image_calibration(calibration_dir, Preprocessing.from_zoo().for_input_size(INPUT_SIZE), len(paths))
    result: dict = {"arch": arch, "eca_blocks": fuse_eca(onnx.load(str(fp32_path)), verify=False)[1].num_fused,
                    "calibration": calibration.source, "fp32": _agreement(_ort_logits(fp32_path, inputs), reference,
                                                                          held_out), "routes": []}

    quantized: list[tuple[str, str, Path, dict]] = []  # route, calibration method, file, timing
    for method in args.methods:
        path = out / f"ort-{method}.onnx"
        start = time.perf_counter()
        report = quantize_int8(fp32_path, path, calibration, method=method)
        quantized.append((f"ort-{method}", method, path, {"seconds": time.perf_counter() - start,
                                                          "quantizer": report.quantizer}))
    if modelopt is not None:
        calibration_npy = out / "calibration.npy"
        np.save(calibration_npy, np.concatenate(calibration.batches))
        for name, options in _modelopt_variants(eca_block_nodes(onnx.load(str(fp32_path)))).items():
            path = out / f"{name}.onnx"
            timing = _run_modelopt(modelopt, fp32_path, calibration_npy, path, options)
            quantized.append((name, "entropy (default)", path, timing | {"options": options}))

    for route, method, path, timing in quantized:
        row = {"route": route, "calibration_method": method, "file": str(path)} | timing
        if "error" not in timing:
            row |= {"agreement": _agreement(_ort_logits(path, inputs), reference, held_out),
                    "noise_floor": _noise_floor(path, inputs),
                    "placement": _placement(onnx.load(str(path))), "fusion": _fusion(path, inputs, reference)}
        print(f"{arch} {route}: {'failed: ' + timing['error'] if 'error' in timing else 'measured'}", flush=True)
        result["routes"].append(row)
    return result


def _pair(agreement: dict, key: str, spec: str) -> str:
    return f"{agreement['held_out'][key]:{spec}} / {agreement['all'][key]:{spec}}"


def _markdown(results: list[dict], held_out: int, total: int) -> str:
    lines = []
    for result in results:
        blocks = result["eca_blocks"]
        lines += [(f"\n### {result['arch']} ({INPUT_SIZE}x{INPUT_SIZE}, {result['calibration']['samples']} "
                   f"calibration images; held-out {held_out} / all {total} photographs; PyTorch logits up to "
                   f"{result['fp32']['all']['reference_max_abs']:.1f}; FP32 ONNX cosine "
                   f"{result['fp32']['all']['cosine']:.6f})\n"),
                  ("| route | calib | max abs err | cosine | top-1 | top-1 in top-5 | Q | DQ | Q/DQ in ECA | "
                   "fused / blocks | dropped Q/DQ | near-misses | fused cosine (all) | noise cosine / top-1 | MB | "
                   "time s |"),
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in result["routes"]:
            if "error" in row:
                lines.append(f"| {row['route']} | {row['calibration_method']} | failed: {row['error']} |"
                             + " |" * 13)
                continue
            agreement, placement, fusion = row["agreement"], row["placement"], row["fusion"]
            lines.append(
                f"| {row['route']} | {row['calibration_method']} | {_pair(agreement, 'max_abs_error', '.3f')} | "
                f"{_pair(agreement, 'cosine', '.4f')} | {_pair(agreement, 'top1', '.0%')} | "
                f"{_pair(agreement, 'top1_in_top5', '.0%')} | {placement['quantize_linear']} | "
                f"{placement['dequantize_linear']} | {placement['qdq_inside_eca']} | "
                f"{fusion['num_fused']} / {blocks} | {fusion['dropped_qdq']} | {len(fusion['near_misses'])} | "
                f"{fusion['fused_agreement']['cosine']:.4f} | {row['noise_floor']['cosine']:.4f} / "
                f"{row['noise_floor']['top1']:.0%} | {placement['megabytes']} | {row['seconds']:.1f} |")
        lines += ["", "| route | op types reading a DequantizeLinear | op types feeding a QuantizeLinear | Cast |",
                  "|---|---|---|---|"]
        for row in result["routes"]:
            if "error" not in row:
                placement = row["placement"]
                lines.append(f"| {row['route']} | {_counts(placement['dq_consumers'])} | "
                             f"{_counts(placement['q_producers'])} | {placement['cast']} |")
    return "\n".join(lines)


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if line.startswith("model name")]
    return names[0] if names else platform.machine()


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{op} {n}" for op, n in counts.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["eca_resnet50", "eca_mobilenet_v2"])
    parser.add_argument("--methods", nargs="+", choices=CALIBRATION_METHODS, default=list(CALIBRATION_METHODS),
                        help="calibration methods of our route")
    parser.add_argument("--modelopt-python", type=Path, default=Path("/tmp/modelopt-venv/bin/python"),
                        help="interpreter of a virtual environment with nvidia-modelopt[onnx]")
    parser.add_argument("--calib-size", type=int, default=None,
                        help="calibration images (default: every other photograph, about 10)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="legacy")
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="int8-quantizers-")))
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args = parser.parse_args()
    if args.calib_size is not None and args.calib_size < 1:
        parser.error(f"--calib-size must be at least 1, got {args.calib_size}")
    args.out.mkdir(parents=True, exist_ok=True)
    modelopt: Path | None = args.modelopt_python
    if not modelopt.exists():
        print(f"ModelOpt: no interpreter at {modelopt} (see the setup above): measuring only our route")
        modelopt = None

    start = time.perf_counter()
    calibration_dir, paths, held_out = _split_photographs(args.out, args.calib_size)
    results = [_measure_model(arch, args, calibration_dir, paths, held_out, modelopt) for arch in args.arch]
    dependencies = _dependencies(modelopt)
    environment = {"date": datetime.date.today().isoformat(),
                   "machine": f"{_cpu_model()}, {os.cpu_count()} CPUs, no GPU used (ONNX Runtime CPU)",
                   "python": platform.python_version(), "onnxruntime": ort.__version__, "onnx": onnx.__version__,
                   "torch": torch.__version__, "exporter": args.exporter, "seconds": time.perf_counter() - start}

    versions = f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, torch {torch.__version__}"
    if modelopt:
        venv = dependencies["modelopt"]["versions"]
        versions += (f"; ModelOpt {dependencies['modelopt']['version']} with onnxruntime-gpu "
                     f"{venv['onnxruntime-gpu']}, onnx {venv['onnx']}, torch {venv['torch']}")
    print(f"\n## INT8 quantizers ({environment['date']}; {environment['machine']}; {versions})")
    print("Agreement with PyTorch FP32 on ONNX Runtime CPU as held-out / all photographs. Noise: the same model "
          f"against itself on inputs plus Gaussian noise of sigma {NOISE} (all photographs).")
    print(_markdown(results, len(held_out), len(paths)))
    print(f"\nonnxruntime: {dependencies['onnxruntime']}")
    if modelopt:
        info = dependencies["modelopt"]
        print(f"ModelOpt {info['version']}: {info['size_gb']} GB venv, {info['distributions']} distributions; "
              f"requires {', '.join(info['requirements'])}")
        print("Conflicts with this environment:")
        print("\n".join(f"- {conflict}" for conflict in info["conflicts_with_this_environment"]))
    if args.json:
        args.json.write_text(json.dumps({"environment": environment, "dependencies": dependencies,
                                         "models": results}, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
