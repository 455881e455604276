"""What ``validate`` and ``bench`` share: arguments checked before any work, the model, the backends, the report.

:func:`start` checks the output folder, backend names and files, plugin library and image folder
before it loads the model. Everything a run writes (the exported models under ``models/``, the
report files) is staged inside the output folder and moved into place when the run completes, so a
failure or Ctrl-C leaves the folder as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eca_deploy._io import check_output_dir, staged_outputs
from eca_deploy.errors import EcaDeployError
from eca_deploy.options import DEFAULT_SOURCE

if TYPE_CHECKING:  # the heavy modules are imported when a run starts, so that --help stays instant
    from torch import nn

    from eca_deploy.checkpoints import LoadedModel
    from eca_deploy.harness.backends import Backend
    from eca_deploy.image_folders import ImageFolderInputs
    from eca_deploy.harness.environment import CpuLoad
    from eca_deploy.harness.targets import BackendPlan, ReferenceShape
    from eca_deploy.progress import Progress

MODELS_DIR = "models"  # the automatic plan's exports and engines, inside the output folder


@dataclass
class HarnessRun:
    """The loaded model, the planned backends, the image inputs and the staging folder of one run."""

    args: argparse.Namespace
    loaded: LoadedModel
    plan: BackendPlan
    reference: ReferenceShape
    images: ImageFolderInputs | None
    progress: Progress
    staging: Path
    cuda_graphs: bool = False
    cpu_load: CpuLoad | None = None  # measured while the backends are open
    written: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.reference.sample_shape

    def module(self) -> nn.Module:
        """A fresh FP32 copy of the PyTorch model (backends may move or cast theirs)."""
        return copy.deepcopy(self.loaded.module).float().eval()

    @contextlib.contextmanager
    def backends(self) -> Iterator[list[Backend]]:
        """The planned backends, open for the block, which is measured for CPU load."""
        from eca_deploy.harness.environment import measure_cpu_load
        from eca_deploy.harness.targets import instantiate

        created = instantiate(self.plan, module_factory=self.module, cuda_graphs=self.cuda_graphs,
                              threads=self.args.threads, reference=self.reference)
        try:
            with measure_cpu_load() as cpu_load:
                yield created
        finally:
            for backend in created:
                backend.close()
        self.cpu_load = cpu_load[0]

    def write(self, kind: str, inputs: dict[str, Any], body: dict[str, Any], *, plots: bool = True) -> dict:
        """Write the report into the staging folder; it reaches the output folder when the run completes."""
        from eca_deploy.harness.environment import capture_environment
        from eca_deploy.harness.report import new_report, write_report_files

        run = {"threads": self.args.threads, "cpu_load": self.cpu_load.to_dict() if self.cpu_load else None}
        report = new_report(kind, model=self.model_info(), environment=capture_environment(), inputs=inputs,
                            skipped_backends=self.plan.skipped, body=body, run=run)
        self.written, plots_skipped = write_report_files(report, self.staging, plots=plots)
        for name, reason in self.plan.skipped.items():
            self.progress.info(f"skipped {name}: {reason}")
        if plots_skipped:
            self.progress.info(f"skipped plots: {plots_skipped}")
        for warning in report["warnings"]:
            warn(warning)
        return report

    def model_info(self) -> dict[str, Any]:
        models = Path(self.args.output_dir) / MODELS_DIR  # where the staged files end up
        files = {role: str(models / path.name) for role, path in self.plan.files.items()}
        return {"source": self.args.source, "arch": self.loaded.arch, "kernel_sizes": list(self.loaded.kernel_sizes),
                "num_classes": self.loaded.num_classes, "input_shape": list(self.input_shape), "onnx": files}


def warn(message: str) -> None:
    """One warning line on stderr (shown with --quiet too)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _check_flags(args: argparse.Namespace, names: list[str], cuda_graphs: bool) -> None:
    """Refuse flags that would be ignored: each applies to something the command line does not ask for."""
    from eca_deploy.harness.backends import CUDA_GRAPH_BACKENDS, PLUGIN_BACKENDS

    if names and args.fp16:
        raise EcaDeployError("--fp16 exports FP16 models for the default backends; the files named with -b carry "
                             "their own precision: drop --fp16")
    if names and args.plugin and not set(names) & set(PLUGIN_BACKENDS):
        raise EcaDeployError(f"--plugin applies to {', '.join(PLUGIN_BACKENDS)} backends, and none is named")
    if names and cuda_graphs and not set(names) & set(CUDA_GRAPH_BACKENDS):
        raise EcaDeployError(f"--cuda-graphs applies to {', '.join(CUDA_GRAPH_BACKENDS)} backends, and none is named")
    image_flags = [flag for flag, given in (("--class-index", args.class_index), ("--limit", args.limit),
                                            ("--strict", args.strict)) if given]
    if not args.images and image_flags:
        raise EcaDeployError(f"{image_flags[0]} applies to an image folder: add --images DIR")


def _open_images(args: argparse.Namespace, batch_size: int) -> ImageFolderInputs:
    from eca_deploy.image_folders import ImageFolderInputs
    from eca_deploy.preprocess import Preprocessing

    preprocessing = Preprocessing.from_zoo().for_input_size(args.input_size)
    return ImageFolderInputs(args.images, preprocessing, batch_size=batch_size, class_index=args.class_index,
                             limit=args.limit, strict=args.strict)


def _warn_on_class_count(args: argparse.Namespace, images: ImageFolderInputs, num_classes: int | None) -> None:
    """Labels index the model's classes: say so when the image folder's classes cannot be the model's."""
    if images.num_classes is None or num_classes is None or images.num_classes == num_classes:
        return
    if args.class_index:
        warn(f"the class index {args.class_index} lists {images.num_classes} classes but the model has "
             f"{num_classes}: top-1/top-5 accuracy is only right if line i names the model's class i")
    else:
        warn(f"{images.root} has {images.num_classes} class folders but the model has {num_classes} classes: "
             f"labels are the sorted folders' positions, so top-1/top-5 accuracy is only right if those are the "
             f"model's classes; pass --class-index to map folders to classes")


@contextlib.contextmanager
def start(args: argparse.Namespace, *, include_torch_cpu: bool, batch_size: int,
          cuda_graphs: bool = False) -> Iterator[HarnessRun]:
    """Check every argument and path, load the model, plan and prepare the backends; stage what the run writes.

    ``batch_size`` is the largest batch the run feeds (engines are built for it, images batched by it).
    Says where the files went once the block completes.
    """
    from eca_deploy.checkpoints import load_model
    from eca_deploy.harness.backends import parse_backend_spec
    from eca_deploy.harness.targets import ReferenceShape, check_files, plan_backends, prepare
    from eca_deploy.progress import Progress

    output_dir = check_output_dir(args.output_dir)
    specs = [parse_backend_spec(spec) for spec in args.backend]
    _check_flags(args, [name for name, _ in specs], cuda_graphs)
    if not specs:
        check_output_dir(output_dir / MODELS_DIR)
    images = _open_images(args, batch_size) if args.images else None
    progress = Progress(quiet=args.quiet)
    precision = "fp16" if args.fp16 else "fp32"
    with staged_outputs(output_dir) as staging, contextlib.ExitStack() as stack:
        work_dir = None if specs else stack.enter_context(staged_outputs(output_dir / MODELS_DIR))
        plan = plan_backends(specs, work_dir=work_dir, precision=precision, include_torch_cpu=include_torch_cpu,
                             plugin_library=args.plugin)
        with progress.step(f"Loading {args.source}"):
            loaded = load_model(args.source, arch=args.arch, kernels=args.kernels, num_classes=args.num_classes,
                                allow_pickle=args.allow_pickle)
        loaded.check_input_size(args.input_size)
        source = f"{args.source} (the default SOURCE)" if args.source == DEFAULT_SOURCE else args.source
        reference = ReferenceShape((3, args.input_size, args.input_size), loaded.num_classes, source)
        check_files(plan, reference)
        if images is not None:
            _warn_on_class_count(args, images, loaded.num_classes)
        prepare(plan, module=loaded.module, input_shape=reference.sample_shape, precision=precision,
                engine_batch=(1, min(8, batch_size), batch_size), progress=progress)
        run = HarnessRun(args, loaded, plan, reference, images, progress, staging, cuda_graphs)
        yield run
    if run.written:
        folders = [f"{MODELS_DIR}/"] if plan.files else []
        print(f"Wrote to {output_dir}/: {', '.join(run.written + folders)}")
