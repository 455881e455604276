"""Validate backends against the PyTorch FP32 reference: agreement, label accuracy, first diverging layer.

Runs the same inputs (seeded random batches, or --images with the authors' preprocessing) through
PyTorch FP32 on the CPU and every backend, and reports the max abs error, the same relative to the
largest reference logit (the rtol that would pass alone), cosine similarity, top-1/top-5 agreement,
and top-1/top-5 accuracy when the images have labels (ImageFolder layout). Each backend is judged by
the default tolerance of its precision (FP32: atol 1e-4 + rtol 1e-4 x max|logit|; FP16: 1e-2 + 2e-2 x
max|logit|, cosine >= 0.999, top-1 agreement >= 90 %; INT8: 0.05 + 0.3 x max|logit|, cosine >= 0.95,
top-1 agreement >= 40 %, measured on the zoo, README "INT8") unless --atol/--rtol override it. A failing
ONNX model is bisected: its tensors are compared with the PyTorch modules' outputs to name the first
diverging layer. Every argument and path is checked before the model loads, and every named file
(its input and class count must be SOURCE's) before any backend runs; a run that stops early (an
error, Ctrl-C) leaves nothing behind, and a failing backend (exit 1) still gets its report.
Writes accuracy.json (schema: eca_deploy/harness/report.schema.json), accuracy.csv and accuracy.md.
Exit codes: 0 every backend passed, 1 a backend failed, 2 bad input.

Examples:
  eca-deploy validate                                     # demo model, ONNX Runtime CPU, random inputs
  eca-deploy validate eca_resnet50_k3557.pth.tar --images imagenet/val --limit 1000
  eca-deploy validate model.pth.tar -b ort-cpu=model.eca.onnx -b trt=model.engine --plugin libeca_plugin.so
"""

from __future__ import annotations

import argparse
from eca_deploy.cli.args import add_harness_args, add_model_args, add_tolerance_args, positive_int
from eca_deploy.errors import EcaDeployError, ParityError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    add_harness_args(parser, default_dir="reports/accuracy")
    group = parser.add_argument_group("validation")
    group.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                       help="samples per batch (default: 8)")
    group.add_argument("--num-batches", type=positive_int, default=4, metavar="N",
                       help="random batches to compare (default: 4; --images uses every image)")
    group.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                       help="judge every backend by this precision's tolerance (default: each backend's own: PyTorch "
                            "dtype, ONNX weight types, for engines the .fp16. tag eca-export/eca-deploy build put "
                            "in file names)")
    add_tolerance_args(group)
    group.add_argument("--no-localize", action="store_true", help="skip the first-diverging-layer search on failure")
    group.add_argument("--reference", choices=("torch-cpu", "torch-cuda"), default="torch-cpu",
                       help="where the PyTorch FP32 reference runs (default: torch-cpu; torch-cuda, with TF32 off, "
                            "for large image sets on a GPU)")


def run(args: argparse.Namespace) -> int:
    from eca_deploy.cli import _harness
    from eca_deploy.harness.accuracy import validate
    from eca_deploy.harness.backends import available_backends, create_backend
    from eca_deploy.harness.data import RandomInputs
    from eca_deploy.parity import DEFAULT_TOLERANCES, tolerance_for

    unavailable = available_backends()[args.reference]
    if unavailable is not None:
        raise EcaDeployError(f"--reference {args.reference} cannot run here: {unavailable}")
    tolerances = {precision: tolerance_for(args.precision or precision, atol=args.atol, rtol=args.rtol)
                  for precision in DEFAULT_TOLERANCES}
    with _harness.start(args, include_torch_cpu=False, batch_size=args.batch_size) as session:
        inputs = session.images or RandomInputs(session.input_shape, batch_size=args.batch_size,
                                                num_batches=args.num_batches, seed=args.seed)
        reference = create_backend(args.reference, module_factory=session.module, threads=args.threads)
        with session.backends() as candidates:
            result = validate(reference, candidates, inputs, tolerances=tolerances, module_factory=session.module,
                              localize=not args.no_localize, progress=session.progress, total=len(inputs))
        session.write("accuracy", inputs.describe(), result.to_dict())
    if result.reference_labels:
        print(f"reference pytorch-fp32: top-1 accuracy {result.reference_labels['top1']:.1%}, "
              f"top-5 {result.reference_labels['top5']:.1%} on {result.reference_labels['samples']} images")
    for candidate in result.candidates:
        print(candidate.summary())
    if not result.passed:
        failed = ", ".join(c.backend["name"] for c in result.candidates if not c.passed)
        raise ParityError(f"{failed} disagreed with PyTorch FP32 beyond tolerance; see {args.output_dir}/accuracy.md")
    return 0
