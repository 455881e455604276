"""What each step of the Python API returns: the files written, the report, whether its checks passed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eca_deploy.errors import EcaDeployError

if TYPE_CHECKING:
    import onnx


@dataclass
class StepResult:
    """Files by role (``onnx``, ``fused``, ``engine``, ``report`` ...), the report as a dict and, where a check of
    the result failed (parity, equivalence, plugin layers), the error: the files are kept for inspection."""

    files: dict[str, Path] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    failure: EcaDeployError | None = None

    @property
    def passed(self) -> bool:
        return self.failure is None

    def raise_failure(self) -> None:
        """Raise the failed check's error (exit code 1 on the command line), if any."""
        if self.failure is not None:
            raise self.failure

    def written(self) -> str:
        """``Wrote to DIR/: a, b`` lines, as the commands print them."""
        folders = sorted({path.parent for path in self.files.values()})
        if len(folders) == 1:
            return "\n".join([f"Wrote to {folders[0]}/:", *(f"  {p.name}" for p in sorted(self.files.values()))])
        return "\n".join(["Wrote:", *(f"  {path}" for path in sorted(self.files.values()))])


@dataclass
class Exported(StepResult):
    """:func:`eca_deploy.export`: the plain (``onnx``) and fused (``fused``) ONNX models, ``plugin_only``,
    ``engine``, ``report`` and the Triton repository (``triton_repo``), each where written."""

    @property
    def onnx(self) -> Path:
        return self.files["onnx"]

    @property
    def fused(self) -> Path | None:
        return self.files.get("fused")

    @property
    def engine(self) -> Path | None:
        return self.files.get("engine")

    def summary(self) -> str:
        fusion = self.report.get("fusion")
        fused = f", {fusion['num_fused']} ECA blocks fused" if fusion else ""
        parity = "parity passed" if all(p["passed"] for p in self.report.get("parity", [])) else "parity FAILED"
        return f"{self.report['source']} -> {self.onnx.name} ({self.report['precision']}{fused}, {parity})"


@dataclass
class Fused(StepResult):
    """:func:`eca_deploy.fuse`: the fused model (in memory, and ``files['fused']`` where written)."""

    model: onnx.ModelProto | None = None

    @property
    def num_fused(self) -> int:
        return self.report["num_fused"]

    def summary(self) -> str:
        return f"{self.num_fused} ECA blocks fused, {len(self.report['near_misses'])} near-misses"


@dataclass
class Measured(StepResult):
    """:func:`eca_deploy.validate` (``report['kind'] == 'accuracy'``) and :func:`eca_deploy.bench` (latency):
    the report, its files (JSON, CSV, Markdown, plots) and the lines the commands print."""

    lines: list[str] = field(default_factory=list)
    output_dir: Path | None = None

    def summary(self) -> str:
        return "\n".join(self.lines)

    def written_line(self) -> str:
        """``Wrote to DIR/: accuracy.csv, accuracy.json, accuracy.md, models/``."""
        names = sorted({path.relative_to(self.output_dir).parts[0] + ("/" if len(path.relative_to(
            self.output_dir).parts) > 1 else "") for path in self.files.values()})
        return f"Wrote to {self.output_dir}/: {', '.join(names)}"
