"""Validate backends against the PyTorch FP32 reference: agreement, label accuracy, first diverging layer.

SOURCE is any model eca-export takes (checkpoint, zoo name, timm:NAME); without it, the files named with -b
bring their model (the provenance eca-deploy writes into them), and a file from another model than SOURCE
is refused. Runs the same inputs (seeded random batches, or --images preprocessed as the model expects: the
authors' transforms or a timm model's) through PyTorch FP32 on the CPU and every backend, and reports the max abs error, the same relative to the
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
  eca-deploy validate -b ort-cpu=exported/model.eca.onnx            # the model the file was exported from
  eca-deploy validate timm:ecaresnet50d --weights w.pth --images imagenet/val   # timm's preprocessing
  eca-deploy validate model.pth.tar -b ort-cpu=model.eca.onnx -b trt=model.engine --plugin libeca_plugin.so
"""

from __future__ import annotations

import argparse
from eca_deploy.cli.args import add_harness_args, add_model_args, add_tolerance_args, model_options, positive_int
from eca_deploy.progress import Progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser, default_source=None)
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
    from eca_deploy.pipeline import validate

    result = validate(args.source, args.backend, output_dir=args.output_dir, images=args.images,
                      class_index=args.class_index, limit=args.limit, strict=args.strict,
                      batch_size=args.batch_size, num_batches=args.num_batches, seed=args.seed,
                      precision=args.precision, atol=args.atol, rtol=args.rtol, localize=not args.no_localize,
                      reference=args.reference, fp16=args.fp16, plugin=args.plugin, threads=args.threads,
                      progress=Progress(quiet=args.quiet), check=False, **model_options(args))
    print(result.written_line())
    print(result.summary())
    result.raise_failure()
    return 0
