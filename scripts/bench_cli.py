"""Time the command line as a user meets it: instant commands, and the default eca-export stage by stage.

    python scripts/bench_cli.py                      # 5 runs of each instant command, 2 default exports
    python scripts/bench_cli.py --exports 3 --json cli.json

Instant commands (``--help``, ``--version``, ``zoo``, an argument error) run in fresh processes; their
median wall time is what a user waits. The default ``eca-export`` (ECA-MobileNetV2, dynamo exporter,
224x224) runs into a temporary folder; its total wall time and the seconds each step prints
(``[i/n] step ... done (s)``) show where the time goes, with the interpreter's start-up and imports as
what is left. The first export of a fresh machine also fills Python's bytecode caches ("cold"); the
script reports every run. Record the numbers with the machine and date in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INSTANT = {
    "eca-deploy --help": ["--help"],
    "eca-export --help": ["export", "--help"],
    "eca-deploy --version": ["--version"],
    "eca-deploy zoo": ["zoo"],
    "argument error (--num-classes 0)": ["export", "--num-classes", "0"],
}
STEP = re.compile(r"^\[\d+/\d+\] (.+?) \.\.\.")
DONE = re.compile(r"done \(([\d.]+) s\)$")


def step_seconds(stderr: str) -> dict[str, float]:
    """Seconds of every ``[i/n] title ... done (s)`` step, the outcome on the same line or after info lines."""
    steps, title = {}, None
    for line in stderr.splitlines():
        if match := STEP.match(line):
            title = match.group(1)
        if title and (done := DONE.search(line)):
            steps[title] = float(done.group(1))
            title = None
    return steps


def run(args: list[str], cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "eca_deploy", *args], capture_output=True, text=True, cwd=cwd)
    return time.perf_counter() - start, result


def instant_commands(repeats: int) -> dict[str, float]:
    """Median wall seconds of each instant command over ``repeats`` fresh processes."""
    return {name: round(statistics.median(run(args)[0] for _ in range(repeats)), 3) for name, args in INSTANT.items()}


def default_export(runs: int) -> list[dict]:
    """Total seconds and per-step seconds of ``eca-export`` with its defaults."""
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as folder:
            seconds, result = run(["export", "-o", folder])
        if result.returncode != 0:
            raise SystemExit(f"eca-export failed:\n{result.stderr[-2000:]}")
        steps = step_seconds(result.stderr)
        results.append({"total_s": round(seconds, 1), "steps_s": steps,
                        "outside_steps_s": round(seconds - sum(steps.values()), 1)})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each instant command (default: 5)")
    parser.add_argument("--exports", type=int, default=2, help="default eca-export runs (default: 2)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    results = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores, {platform.system()} {platform.release()}",
               "python": platform.python_version(), "instant_s": instant_commands(args.repeats),
               "default_export": default_export(args.exports)}
    print(f"{results['date']}, {results['machine']}, Python {results['python']}")
    print("| command | median s |\n|---|---|")
    for name, seconds in results["instant_s"].items():
        print(f"| `{name}` | {seconds:.2f} |")
    print("\n| default eca-export run | total s | " + " | ".join(results["default_export"][0]["steps_s"]) +
          " | start-up, imports, writing |")
    print("|---" * (len(results["default_export"][0]["steps_s"]) + 3) + "|")
    for index, export in enumerate(results["default_export"], 1):
        print(f"| {index} | {export['total_s']} | " + " | ".join(f"{s:.1f}" for s in export["steps_s"].values()) +
              f" | {export['outside_steps_s']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
