"""Reports: versioned JSON (schema in ``report.schema.json``), CSV, Markdown, PNG plots, and ``compare``.

A report directory holds ``<kind>.json``, ``<kind>.csv``, ``<kind>.md`` and, for latency,
``latency_distribution.png``, ``batch_sweep.png`` and ``backends.png``. The JSON keys are stable
within a ``schema_version``; new keys may be added, renamed or removed ones bump the version.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eca_deploy import __version__
from eca_deploy._io import staged_outputs
from eca_deploy.errors import EcaDeployError

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")
KINDS = ("accuracy", "latency")

_ACCURACY_COLUMNS = ("backend", "precision", "passed", "samples", "max_abs_error", "max_rel_error",
                     "cosine_similarity", "top1_agreement", "top5_agreement", "smallest_atol", "smallest_rtol",
                     "top1_accuracy", "top5_accuracy", "first_diverging_layer")
_LATENCY_COLUMNS = ("backend", "precision", "batch_size", "iterations", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
                    "mean_ms", "std_ms", "min_ms", "max_ms", "throughput_images_per_s", "preprocess_ms",
                    "host_to_device_ms", "compute_ms", "device_to_host_ms", "postprocess_ms", "module_power_w",
                    "joules_per_image", "images_per_second_per_watt")


def new_report(kind: str, *, model: dict[str, Any], environment: dict[str, Any], inputs: dict[str, Any],
               skipped_backends: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    """The report dictionary with its envelope (schema version, tool, creation time)."""
    if kind not in KINDS:
        raise ValueError(f"unknown report kind {kind!r}")
    return {"schema_version": SCHEMA_VERSION, "kind": kind, "tool": f"eca-deploy {__version__}",
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "model": model,
            "environment": environment, "inputs": inputs, "skipped_backends": skipped_backends, kind: body}


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per accuracy candidate or per latency point (the CSV and Markdown tables)."""
    if report["kind"] == "accuracy":
        rows = []
        for candidate in report["accuracy"]["candidates"]:
            metrics, labels = candidate["metrics"], candidate["label_accuracy"] or {}
            smallest, localization = candidate["smallest_passing_tolerance"], candidate["localization"] or {}
            rows.append({"backend": candidate["backend"]["name"], "precision": candidate["precision"],
                         "passed": candidate["passed"], "samples": metrics["batch_size"],
                         **{key: metrics[key] for key in ("max_abs_error", "max_rel_error", "cosine_similarity",
                                                           "top1_agreement", "top5_agreement")},
                         "smallest_atol": smallest["atol"], "smallest_rtol": smallest["rtol"],
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


def to_markdown(report: dict[str, Any]) -> str:
    """A Markdown page: what ran where, then the table."""
    env, model = report["environment"], report["model"]
    gpu = (env.get("gpu") or {}).get("name") or "no GPU"
    jetson = env.get("jetson") or {}
    lines = [f"# eca-deploy {report['kind']} report", "",
             f"- model: {model.get('arch') or model.get('source')} ({model.get('source')}), input "
             f"{' x '.join(map(str, model.get('input_shape', [])))}",
             f"- host: {env.get('cpu')}, {gpu}" + (f", {jetson.get('model')}" if jetson else ""),
             f"- created {report['created']} by {report['tool']}"]
    if jetson:
        lines.append(f"- nvpmodel: {jetson.get('nvpmodel') or 'unavailable'}")
    for name, reason in report["skipped_backends"].items():
        lines.append(f"- skipped {name}: {reason}")
    rows = table_rows(report)
    columns = [c for c in _columns(report["kind"]) if any(row.get(c) is not None for row in rows)]
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    if report["kind"] == "latency":
        lines += ["", "Latencies in milliseconds per batch; throughput in images per second; power is the "
                      "module input (INA3221) averaged over the timed phase."]
    return "\n".join(lines) + "\n"


def plot_latency(report: dict[str, Any], folder: Path) -> list[Path]:
    """Write the latency PNGs into ``folder``; needs matplotlib (raises EcaDeployError without it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise EcaDeployError("PNG plots need matplotlib: pip install matplotlib "
                             "(or pip install 'eca-deploy[report]')") from error
    results = report["latency"]["results"]
    names = list(dict.fromkeys(point["backend"]["name"] for point in results))
    written = []

    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    smallest = min(point["batch_size"] for point in results)
    for point in results:
        if point["batch_size"] == smallest:
            axis.hist(point["samples_ms"], bins=40, alpha=0.6, label=point["backend"]["name"])
    axis.set(xlabel="latency per query (ms)", ylabel="queries", title=f"Latency distribution, batch {smallest}")
    axis.legend()
    written.append(_save(figure, folder / "latency_distribution.png"))

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    for name in names:
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
    figure.suptitle("Latency and throughput versus batch size")
    written.append(_save(figure, folder / "batch_sweep.png"))

    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    best = [max(p["throughput_images_per_s"] for p in results if p["backend"]["name"] == n) for n in names]
    axis.barh(names, best)
    axis.invert_yaxis()
    axis.set(xlabel="best throughput over the batch sweep (images/s)", title="Backends compared (offline scenario)")
    written.append(_save(figure, folder / "backends.png"))
    return written


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path


def write_report(report: dict[str, Any], output_dir: Path, *, plots: bool = True) -> tuple[list[Path], str | None]:
    """Write JSON, CSV, Markdown (and latency PNGs) atomically; returns the files and why plots were skipped."""
    kind, skipped = report["kind"], None
    with staged_outputs(output_dir) as staging:
        (staging / f"{kind}.json").write_text(json.dumps(report, indent=2) + "\n")
        (staging / f"{kind}.csv").write_text(to_csv(report))
        (staging / f"{kind}.md").write_text(to_markdown(report))
        if kind == "latency" and plots:
            try:
                plot_latency(report, staging)
            except EcaDeployError as error:
                skipped = str(error)
        names = sorted(path.name for path in staging.iterdir())
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
    """Rows matched by (backend, precision[, batch]) with both values and candidate/baseline ratios."""
    if baseline["kind"] != candidate["kind"]:
        raise EcaDeployError(f"cannot compare a {baseline['kind']} report with a {candidate['kind']} report")
    kind = baseline["kind"]

    def keyed(report: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
        return {(row["backend"], row["precision"], row.get("batch_size")): row for row in table_rows(report)}

    ours, theirs = keyed(baseline), keyed(candidate)
    common = [key for key in ours if key in theirs]
    if not common:
        raise EcaDeployError("the two reports share no (backend, precision, batch size) point to compare")
    rows = []
    for key in common:
        row: dict[str, Any] = {"backend": key[0], "precision": key[1], "batch_size": key[2]}
        for metric in _COMPARED[kind]:
            a, b = ours[key].get(metric), theirs[key].get(metric)
            row[metric] = (a, b, b / a if a not in (None, 0) and b is not None else None)
        rows.append(row)
    return rows


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
