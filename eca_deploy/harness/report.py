"""Reports: versioned JSON (schema in ``report.schema.json``), CSV, Markdown, PNG plots, and ``compare``.

A report directory holds ``<kind>.json``, ``<kind>.csv``, ``<kind>.md`` and, for latency,
``latency_distribution.png`` (one panel per backend), ``batch_sweep.png`` and ``backends.png`` (bars
labelled with their values), each titled with the model, precision, threads and host. The JSON keys
are stable within a ``schema_version``; new keys may be added, renamed or removed ones bump the
version. ``compare`` warns when two reports were not measured alike (:func:`comparison_warning`).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eca_deploy._version import __version__
from eca_deploy._io import staged_outputs
from eca_deploy.errors import EcaDeployError
from eca_deploy.image_folders import skipped_files_sentence

SCHEMA_VERSION = 2  # 2: metrics' max_rel_error became max_elementwise_rel_error, beside max_rel_error_vs_ref_max
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
KINDS = ("accuracy", "latency")
#: Other processes taking this fraction of the CPUs during a run make its timings suspect (bench and compare warn).
BUSY_OTHER_FRACTION = 0.1

_ACCURACY_COLUMNS = ("backend", "precision", "passed", "samples", "max_abs_error", "reference_max_abs",
                     "max_rel_error_vs_ref_max", "allowed_abs_error", "max_elementwise_rel_error",
                     "cosine_similarity", "top1_agreement", "top5_agreement", "top1_accuracy", "top5_accuracy",
                     "first_diverging_layer")
_ACCURACY_LEGEND = (
    "Each backend's logits *a* against the PyTorch FP32 reference's *ref*, over every sample. A backend passes "
    "when max_abs_error = max|a - ref| <= allowed_abs_error = atol + rtol x reference_max_abs (the tolerance of "
    "its precision), and cosine_similarity and top1_agreement reach their minimums. "
    "max_rel_error_vs_ref_max = max_abs_error / reference_max_abs, the rtol that would pass alone, as max_abs_error "
    "is the atol that would pass alone; max_elementwise_rel_error = max |a - ref| / |ref| per logit, large wherever "
    "a logit is near zero, for information only.")
_LATENCY_COLUMNS = ("backend", "precision", "batch_size", "iterations", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
                    "mean_ms", "std_ms", "min_ms", "max_ms", "throughput_images_per_s", "preprocess_ms",
                    "host_to_device_ms", "compute_ms", "device_to_host_ms", "postprocess_ms", "module_power_w",
                    "joules_per_image", "images_per_second_per_watt")
_LATENCY_LEGEND = ("Latencies in milliseconds per batch; throughput in images per second; power is the "
                   "module input (INA3221) averaged over the timed phase.")


def new_report(kind: str, *, model: dict[str, Any], environment: dict[str, Any], inputs: dict[str, Any],
               skipped_backends: dict[str, str], body: dict[str, Any],
               run: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report dictionary with its envelope (schema version, tool, creation time).

    ``run``: how the run was made, ``{"threads": N or None, "cpu_load": CpuLoad.to_dict() or None}``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown report kind {kind!r}")
    report = {"schema_version": SCHEMA_VERSION, "kind": kind, "tool": f"eca-deploy {__version__}",
              "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "model": model,
              "environment": environment, "inputs": inputs, "skipped_backends": skipped_backends, "run": run,
              kind: body}
    return {**report, "warnings": report_warnings(report)}


def report_warnings(report: dict[str, Any]) -> list[str]:
    """What makes a report's numbers less than they look, one sentence each: the top-level ``warnings`` of the
    JSON, printed by the command, listed in the Markdown and on every plot."""
    warnings = []
    other = other_cpu_load(report)
    if report["kind"] == "latency" and other is not None and other >= BUSY_OTHER_FRACTION:
        threads = (report.get("run") or {}).get("threads")
        advice = ("; with the default threads, PyTorch's intra-op threads wait for busy cores: --threads 1 or a quiet "
                  "machine gives steadier numbers" if threads is None else "")
        warnings.append(f"other processes kept {other:.0%} of the CPUs busy during the run, so these timings may be "
                        f"slower than this machine gives{advice}")
    skipped = (report.get("inputs") or {}).get("skipped_files") or {}
    if skipped.get("count"):
        warnings.append(skipped_files_sentence(skipped, report["inputs"].get("root")))
    return warnings



def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per accuracy candidate or per latency point (the CSV and Markdown tables)."""
    if report["kind"] == "accuracy":
        rows = []
        for candidate in report["accuracy"]["candidates"]:
            metrics, labels = candidate["metrics"], candidate["label_accuracy"] or {}
            tolerance, localization = candidate["tolerance"], candidate["localization"] or {}
            reference_max = metrics["reference_max_abs"]
            rows.append({"backend": candidate["backend"]["name"], "precision": candidate["precision"],
                         "passed": candidate["passed"], "samples": metrics["batch_size"],
                         "max_abs_error": metrics["max_abs_error"], "reference_max_abs": reference_max,
                         "max_rel_error_vs_ref_max": candidate["smallest_passing_tolerance"]["rtol"],
                         "allowed_abs_error": tolerance["atol"] + tolerance["rtol"] * reference_max,
                         # schema version 1 named the elementwise measure max_rel_error
                         "max_elementwise_rel_error": metrics.get("max_elementwise_rel_error",
                                                                  metrics.get("max_rel_error")),
                         **{key: metrics[key] for key in ("cosine_similarity", "top1_agreement", "top5_agreement")},
                         "top1_accuracy": labels.get("top1"), "top5_accuracy": labels.get("top5"),
                         "first_diverging_layer": localization.get("diverging_module")})
        return rows
    rows = []
    for point in report["latency"]["results"]:
        stats, stages, power = point["latency_ms"], point["stages_mean_ms"], point["power"] or {}
        rows.append({"backend": point["backend"]["name"], "precision": point["backend"]["precision"],
                     "batch_size": point["batch_size"], "iterations": point["iterations"],
                     **{f"{key}_ms": stats[key] for key in ("p50", "p90", "p95", "p99", "mean", "std", "min", "max")},
                     "throughput_images_per_s": point["throughput_images_per_s"],
                     **{f"{key}_ms": value for key, value in stages.items()},
                     "module_power_w": power.get("module_mean_w"), "joules_per_image": point["joules_per_image"],
                     "images_per_second_per_watt": point["images_per_second_per_watt"]})
    return rows


def _columns(kind: str) -> tuple[str, ...]:
    return _ACCURACY_COLUMNS if kind == "accuracy" else _LATENCY_COLUMNS


def to_csv(report: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(report["kind"]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table_rows(report))
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _percent(fraction: float | None) -> str:
    return "unknown" if fraction is None else f"{fraction:.0%}"


def precisions(report: dict[str, Any]) -> list[str]:
    """The precisions of the report's backends, sorted (``["fp16", "fp32"]`` when both ran)."""
    return sorted({row["precision"] for row in table_rows(report)})


def threads_setting(report: dict[str, Any]) -> str:
    """``--threads`` as the report recorded it: a number, ``default`` (each runtime's own), or ``not recorded``."""
    run = report.get("run")
    if run is None:
        return "not recorded"
    return "default" if run["threads"] is None else str(run["threads"])


def other_cpu_load(report: dict[str, Any]) -> float | None:
    """The fraction of the CPUs other processes kept busy during the run, where the report recorded it."""
    cpu_load = (report.get("run") or {}).get("cpu_load") or {}
    return cpu_load.get("other_fraction")


def host_line(report: dict[str, Any]) -> str:
    """``host: CPU model (N cores), GPU`` of the machine the report was made on."""
    env = report["environment"]
    gpu = (env.get("gpu") or {}).get("name") or "no GPU"
    jetson = (env.get("jetson") or {}).get("model")
    return f"{env.get('host')}: {env.get('cpu')} ({env.get('cpu_cores')} cores), {gpu}" + (
        f", {jetson}" if jetson else "")


def plot_caption(report: dict[str, Any]) -> str:
    """What every plot's title names: the model and its input, the precisions, the thread setting and the host."""
    model = report["model"]
    size = "x".join(map(str, model.get("input_shape", [])))
    caption = (f"{model.get('arch') or model.get('source')} {size}, {'/'.join(precisions(report))}, "
               f"threads {threads_setting(report)} | {host_line(report)}")
    return "\n".join([caption, *(textwrap.fill(f"WARNING: {warning}", PLOT_CAPTION_WIDTH)
                                  for warning in report.get("warnings", []))])


def to_markdown(report: dict[str, Any]) -> str:
    """A Markdown page: what ran where and how, what each column means, then the table."""
    model = report["model"]
    cpu_load = (report.get("run") or {}).get("cpu_load")
    lines = [f"# eca-deploy {report['kind']} report", "",
             f"- model: {model.get('arch') or model.get('source')} ({model.get('source')}), input "
             f"{' x '.join(map(str, model.get('input_shape', [])))}, precision {'/'.join(precisions(report))}",
             f"- host {host_line(report)}",
             f"- threads (PyTorch CPU and ONNX Runtime intra-op): {threads_setting(report)}",
             f"- created {report['created']} by {report['tool']}"]
    if cpu_load:
        lines.append(f"- CPU load during the run: {_percent(cpu_load['busy_fraction'])} of {cpu_load['cpus']} CPUs "
                     f"busy, {_percent(cpu_load['other_fraction'])} by other processes; 1-minute load average "
                     f"{cpu_load['load_average_1min_before']} before, {cpu_load['load_average_1min_after']} after")
    jetson = report["environment"].get("jetson")
    if jetson:
        lines.append(f"- nvpmodel: {jetson.get('nvpmodel') or 'unavailable'}")
    for name, reason in report["skipped_backends"].items():
        lines.append(f"- skipped {name}: {reason}")
    lines += [f"- **warning**: {warning}" for warning in report.get("warnings", [])]
    rows = table_rows(report)
    columns = [c for c in _columns(report["kind"]) if any(row.get(c) is not None for row in rows)]
    lines += ["", _ACCURACY_LEGEND if report["kind"] == "accuracy" else _LATENCY_LEGEND, ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- plots

PLOT_DPI = 100
PLOT_CAPTION_WIDTH = 110  # characters per line of a plot's warning lines
PANEL_HEIGHT_IN = 1.6  # latency_distribution.png: one panel per backend
PANEL_MARGIN_IN = 1.0  # and room for the title


def distribution_panels(report: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """The batch size latency_distribution.png shows (the smallest) and one panel per backend at it:
    its name, latency samples (ms), p50 and p99, and the panel title."""
    results = report["latency"]["results"]
    smallest = min(point["batch_size"] for point in results)
    panels = []
    for point in results:
        if point["batch_size"] == smallest:
            stats = point["latency_ms"]
            panels.append({"name": point["backend"]["name"], "samples_ms": point["samples_ms"],
                           "p50": stats["p50"], "p99": stats["p99"],
                           "title": f"{point['backend']['name']} ({point['backend']['precision']}): p50 "
                                    f"{stats['p50']:.3g} ms, p99 {stats['p99']:.3g} ms, {point['iterations']} queries"})
    return smallest, panels


def offline_bars(report: dict[str, Any]) -> list[tuple[str, float, str]]:
    """backends.png: (backend, best throughput over the batch sweep, the label on its bar)."""
    results = report["latency"]["results"]
    bars = []
    for name in dict.fromkeys(point["backend"]["name"] for point in results):
        best = max((p for p in results if p["backend"]["name"] == name), key=lambda p: p["throughput_images_per_s"])
        value = best["throughput_images_per_s"]
        bars.append((name, value, f"{value:.4g} images/s (batch {best['batch_size']})"))
    return bars


def plot_latency(report: dict[str, Any], folder: Path) -> list[Path]:
    """Write the latency PNGs into ``folder``; needs matplotlib (raises EcaDeployError without it).

    Every title names the model, precision, threads and host (:func:`plot_caption`). The latency
    distribution has one panel per backend with its own range, so none hides another whatever their speeds.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise EcaDeployError("PNG plots need matplotlib: pip install matplotlib "
                             "(or pip install 'eca-deploy[report]')") from error
    results = report["latency"]["results"]
    caption = plot_caption(report)
    written = []

    batch, panels = distribution_panels(report)
    figure, axes = plt.subplots(len(panels), 1, squeeze=False, dpi=PLOT_DPI,
                                figsize=(8, PANEL_MARGIN_IN + PANEL_HEIGHT_IN * len(panels)))
    for axis, panel in zip(axes[:, 0], panels):
        axis.hist(panel["samples_ms"], bins=40, color="tab:blue")
        for value, style in ((panel["p50"], "-"), (panel["p99"], "--")):
            axis.axvline(value, color="black", linestyle=style, linewidth=1)
        axis.set_title(panel["title"], fontsize=9)
        axis.set_ylabel("queries")
    axes[-1, 0].set_xlabel("latency per query (ms); solid line p50, dashed p99")
    figure.suptitle(f"Latency distribution at batch {batch}\n{caption}", fontsize=10)
    written.append(_save(figure, folder / "latency_distribution.png"))

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=PLOT_DPI)
    for name in dict.fromkeys(point["backend"]["name"] for point in results):
        points = sorted((p for p in results if p["backend"]["name"] == name), key=lambda p: p["batch_size"])
        batches = [p["batch_size"] for p in points]
        left.plot(batches, [p["latency_ms"]["p50"] for p in points], marker="o", label=name)
        right.plot(batches, [p["throughput_images_per_s"] for p in points], marker="o", label=name)
    batch_sizes = sorted({p["batch_size"] for p in results})
    for axis, label in ((left, "p50 latency (ms)"), (right, "throughput (images/s)")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
        axis.minorticks_off()
        axis.set(xlabel="batch size", ylabel=label)
        axis.legend()
    figure.suptitle(f"Latency and throughput versus batch size\n{caption}", fontsize=10)
    written.append(_save(figure, folder / "batch_sweep.png"))

    bars = offline_bars(report)
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=PLOT_DPI)
    drawn = axis.barh([name for name, _, _ in bars], [value for _, value, _ in bars])
    axis.bar_label(drawn, labels=[label for _, _, label in bars], padding=3, fontsize=9)
    axis.set_xlim(0, 1.45 * max(value for _, value, _ in bars))  # room for the labels
    axis.invert_yaxis()
    axis.set(xlabel="best throughput over the batch sweep (images/s)")
    figure.suptitle(f"Backends compared (offline scenario)\n{caption}", fontsize=10)
    written.append(_save(figure, folder / "backends.png"))
    return written


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path


def write_report_files(report: dict[str, Any], folder: Path, *, plots: bool = True) -> tuple[list[str], str | None]:
    """Write JSON, CSV, Markdown (and latency PNGs) into ``folder``; returns the file names and why plots were
    skipped. The caller stages ``folder`` (:func:`write_report` does)."""
    kind, skipped = report["kind"], None
    (folder / f"{kind}.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / f"{kind}.csv").write_text(to_csv(report))
    (folder / f"{kind}.md").write_text(to_markdown(report))
    names = [f"{kind}.json", f"{kind}.csv", f"{kind}.md"]
    if kind == "latency" and plots:
        try:
            names += [path.name for path in plot_latency(report, folder)]
        except EcaDeployError as error:
            skipped = str(error)
    return sorted(names), skipped


def write_report(report: dict[str, Any], output_dir: Path, *, plots: bool = True) -> tuple[list[Path], str | None]:
    """Write the report files atomically into ``output_dir``; returns the files and why plots were skipped."""
    with staged_outputs(output_dir) as staging:
        names, skipped = write_report_files(report, staging, plots=plots)
    return [output_dir / name for name in names], skipped


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a report JSON, checking that it is one and that this version can read it."""
    path = Path(path)
    if path.is_dir():
        found = [path / f"{kind}.json" for kind in KINDS if (path / f"{kind}.json").is_file()]
        if len(found) != 1:
            raise EcaDeployError(f"{path} holds {len(found)} report files; name the JSON file")
        path = found[0]
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise EcaDeployError(f"report {path} does not exist") from None
    except (OSError, ValueError) as error:
        raise EcaDeployError(f"{path} is not a JSON report: {error}") from error
    if not isinstance(report, dict) or report.get("kind") not in KINDS or "schema_version" not in report:
        raise EcaDeployError(f"{path} is not an eca-deploy report (no schema_version/kind)")
    if report["schema_version"] > SCHEMA_VERSION:
        raise EcaDeployError(f"{path} has schema version {report['schema_version']}; this eca-deploy reads up to "
                             f"{SCHEMA_VERSION}: upgrade eca-deploy")
    return report


_COMPARED = {"latency": ("p50_ms", "p99_ms", "throughput_images_per_s", "joules_per_image"),
             "accuracy": ("max_abs_error", "cosine_similarity", "top1_agreement", "top1_accuracy")}


def compare_reports(baseline: dict[str, Any], candidate: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows matched by (backend, precision[, batch]) with both values and candidate/baseline ratios.

    Reports that share no such point but run one file per backend kind (an FP16 and an INT8 engine, say)
    are matched by (backend kind, batch): each row then names both files and both precisions.
    """
    if baseline["kind"] != candidate["kind"]:
        raise EcaDeployError(f"cannot compare a {baseline['kind']} report with a {candidate['kind']} report")
    kind = baseline["kind"]

    def keyed(report: dict[str, Any], by_kind: bool) -> dict[tuple, dict[str, Any]]:
        rows = table_rows(report)
        keys = [(row["backend"].split(":")[0], row.get("batch_size")) if by_kind else
                (row["backend"], row["precision"], row.get("batch_size")) for row in rows]
        return dict(zip(keys, rows)) if len(set(keys)) == len(keys) else {}

    for by_kind in (False, True):
        ours, theirs = keyed(baseline, by_kind), keyed(candidate, by_kind)
        common = [key for key in ours if key in theirs]
        if common:
            break
    else:
        raise EcaDeployError("the two reports share no (backend, precision, batch size) point to compare, nor one "
                             "file per backend kind")
    rows = []
    for key in common:
        a, b = ours[key], theirs[key]
        row: dict[str, Any] = {"backend": _either(a["backend"], b["backend"]),
                               "precision": _either(a["precision"], b["precision"]), "batch_size": key[-1]}
        for metric in _COMPARED[kind]:
            first, second = a.get(metric), b.get(metric)
            row[metric] = (first, second, second / first if first not in (None, 0) and second is not None else None)
        rows.append(row)
    return rows


def _either(a: str, b: str) -> str:
    return a if a == b else f"{a} -> {b}"


def comparison_warning(baseline: dict[str, Any], candidate: dict[str, Any]) -> str | None:
    """One sentence naming what makes the ratios of two reports measure more than the change, or None: a
    different host, CPU, GPU, --threads or precision, and other processes keeping the CPUs busy during a run."""

    def conditions(report: dict[str, Any]) -> dict[str, str]:
        env = report["environment"]
        return {"host": str(env.get("host")), "CPU": f"{env.get('cpu')} ({env.get('cpu_cores')} cores)",
                "GPU": (env.get("gpu") or {}).get("name") or "none", "threads": threads_setting(report),
                "precision": "/".join(precisions(report))}

    ours, theirs = conditions(baseline), conditions(candidate)
    problems = []
    differences = [f"{key} (a: {ours[key]}, b: {theirs[key]})" for key in ours if ours[key] != theirs[key]]
    if differences:
        problems.append(f"the runs differ in {', '.join(differences)}")
    loads = other_cpu_load(baseline), other_cpu_load(candidate)
    if any(load is not None and load >= BUSY_OTHER_FRACTION for load in loads):
        problems.append(f"other processes kept the CPUs busy (a: {_percent(loads[0])}, b: {_percent(loads[1])})")
    return f"{'; '.join(problems)}: the ratios measure that too" if problems else None


def format_comparison(rows: Sequence[dict[str, Any]], kind: str, names: tuple[str, str]) -> str:
    """The comparison as an aligned text table: ``a``, ``b`` and ``b/a`` per metric."""
    metrics = _COMPARED[kind]
    header = ["backend", "precision", "batch"] + [f"{m} ({suffix})" for m in metrics for suffix in ("a", "b", "b/a")]
    body = []
    for row in rows:
        cells = [row["backend"], row["precision"], _cell(row["batch_size"])]
        for metric in metrics:
            a, b, ratio = row[metric]
            cells += [_cell(a), _cell(b), "–" if ratio is None else f"{ratio:.2f}x"]
        body.append(cells)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    text = [f"a = {names[0]}", f"b = {names[1]}", ""]
    text += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *body]]
    return "\n".join(text) + "\n"
