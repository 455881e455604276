"""What ``validate`` and ``bench`` share: the model, the backends and the report envelope."""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from eca_deploy.checkpoints import LoadedModel, load_model
from eca_deploy.harness.backends import Backend
from eca_deploy.harness.data import ImageFolderInputs
from eca_deploy.harness.environment import capture_environment
from eca_deploy.harness.report import new_report, write_report
from eca_deploy.harness.targets import BackendPlan, instantiate, plan_backends
from eca_deploy.preprocess import Preprocessing
from eca_deploy.progress import Progress


@dataclass
class HarnessRun:
    """The loaded model, the planned backends, and where the run writes."""

    args: argparse.Namespace
    loaded: LoadedModel
    plan: BackendPlan
    progress: Progress

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.args.input_size, self.args.input_size)

    def module(self) -> nn.Module:
        """A fresh FP32 copy of the PyTorch model (backends may move or cast theirs)."""
        return copy.deepcopy(self.loaded.module).float().eval()

    def images(self, batch_size: int) -> ImageFolderInputs:
        preprocessing = Preprocessing.from_zoo().for_input_size(self.args.input_size)
        return ImageFolderInputs(self.args.images, preprocessing, batch_size=batch_size,
                                 class_index=self.args.class_index, limit=self.args.limit)

    @contextmanager
    def backends(self, *, cuda_graphs: bool = False) -> Iterator[list[Backend]]:
        created = instantiate(self.plan, module_factory=self.module, cuda_graphs=cuda_graphs,
                              threads=self.args.threads)
        try:
            yield created
        finally:
            for backend in created:
                backend.close()

    def write(self, kind: str, inputs: dict[str, Any], body: dict[str, Any], *, plots: bool = True) -> dict:
        report = new_report(kind, model=self.model_info(), environment=capture_environment(), inputs=inputs,
                            skipped_backends=self.plan.skipped, body=body)
        files, plots_skipped = write_report(report, self.args.output_dir, plots=plots)
        for name, reason in self.plan.skipped.items():
            self.progress.info(f"skipped {name}: {reason}")
        if plots_skipped:
            self.progress.info(f"skipped plots: {plots_skipped}")
        print(f"Wrote to {self.args.output_dir}/: {', '.join(path.name for path in files)}")
        return report

    def model_info(self) -> dict[str, Any]:
        return {"source": self.args.source, "arch": self.loaded.arch, "kernel_sizes": list(self.loaded.kernel_sizes),
                "num_classes": self.loaded.num_classes, "input_shape": list(self.input_shape), "onnx": self.plan.files}


def start(args: argparse.Namespace, *, include_torch_cpu: bool, engine_max_batch: int) -> HarnessRun:
    """Load the model and plan the backends (exporting the model when no backend is named)."""
    progress = Progress(quiet=args.quiet)
    with progress.step(f"Loading {args.source}"):
        loaded = load_model(args.source, arch=args.arch, kernels=args.kernels, num_classes=args.num_classes,
                            allow_pickle=args.allow_pickle)
    work_dir = Path(args.output_dir) / "models"
    plan = plan_backends(args.backend, module=loaded.module, work_dir=work_dir,
                         input_shape=(3, args.input_size, args.input_size), precision="fp16" if args.fp16 else "fp32",
                         include_torch_cpu=include_torch_cpu, plugin_library=args.plugin,
                         engine_batch=(1, min(8, engine_max_batch), engine_max_batch), progress=progress)
    return HarnessRun(args, loaded, plan, progress)
