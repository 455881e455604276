"""Compare two reports side by side: values of A and B and the ratio B/A for every shared point.

Latency reports: p50 and p99 latency, throughput and joules per image per (backend, precision,
batch size). Accuracy reports: max abs error, cosine similarity, top-1 agreement and accuracy per
(backend, precision). Give report JSON files or the folders holding them. A warning line names what
the two runs did not share (host, CPU, GPU, --threads, precisions, a busy machine), since the
ratios then measure that too.
Exit codes: 0 success, 2 unreadable or incompatible reports.

Examples:
  eca-deploy compare reports/orin-fp32/latency.json reports/orin-fp16/latency.json
  eca-deploy compare before/ after/ --json ratios.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eca_deploy._io import check_output_file, write_text_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("baseline", type=Path, help="report A (JSON file or report folder)")
    parser.add_argument("candidate", type=Path, help="report B (JSON file or report folder)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the comparison as JSON to this file (not a folder)")


def run(args: argparse.Namespace) -> int:
    from eca_deploy.harness.report import compare_reports, comparison_warning, format_comparison, load_report

    if args.json is not None:
        check_output_file(args.json, "--json", "comparison.json")
    baseline, candidate = load_report(args.baseline), load_report(args.candidate)
    rows = compare_reports(baseline, candidate)
    warning = comparison_warning(baseline, candidate)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(format_comparison(rows, baseline["kind"], (str(args.baseline), str(args.candidate))), end="")
    if args.json:
        write_text_atomic(args.json, json.dumps({"baseline": str(args.baseline), "candidate": str(args.candidate),
                                                 "kind": baseline["kind"], "warning": warning,
                                                 "rows": rows}, indent=2) + "\n")
    return 0
