"""``eca-deploy`` and its aliases: one argparse subcommand per pipeline stage.

Each subcommand lives in ``eca_deploy/cli/<name>.py`` and exposes ``add_arguments(parser)`` and
``run(args) -> int``; its module docstring's first line is its help. User errors
(:class:`~eca_deploy.errors.EcaDeployError`) print one sentence and exit with their code (2 for bad
input, 1 for failed parity); a traceback means a bug.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from eca_deploy._version import __version__
from eca_deploy._io import UNWRITABLE_ERRNOS
from eca_deploy.errors import EcaDeployError

SUBCOMMANDS = ("export", "fuse", "build", "validate", "bench", "compare", "zoo")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-sentence errors (exit code 2): the usage block stays behind --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def _subcommand(name: str) -> ModuleType:
    return importlib.import_module(f"eca_deploy.cli.{name}")


def _configure(parser: argparse.ArgumentParser, module: ModuleType) -> argparse.ArgumentParser:
    module.add_arguments(parser)
    parser.set_defaults(func=module.run)
    return parser


def _standalone_parser(name: str, prog: str) -> argparse.ArgumentParser:
    module = _subcommand(name)
    parser = ArgumentParser(prog=prog, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_version(parser)
    return _configure(parser, module)


def build_parser() -> argparse.ArgumentParser:
    """The ``eca-deploy`` parser with every subcommand."""
    parser = ArgumentParser(
        prog="eca-deploy",
        description="ECA-Net checkpoints to validated ONNX models and TensorRT engines with a fused ECA plugin.",
    )
    _add_version(parser)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = _subcommand(name)
        subparser = subparsers.add_parser(name, help=module.__doc__.strip().splitlines()[0], description=module.__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_version(subparser)
        _configure(subparser, module)
    return parser


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except EcaDeployError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # a full disk or a read-only folder met outside staged_outputs
        if error.errno not in UNWRITABLE_ERRNOS:
            raise
        print(f"{parser.prog}: error: cannot write {error.filename or 'the output'}: {error.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``eca-deploy``."""
    return _run(build_parser(), argv)


def export_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``eca-export`` (= ``eca-deploy export``)."""
    return _run(_standalone_parser("export", "eca-export"), argv)


def fuse_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``eca-fuse`` (= ``eca-deploy fuse``)."""
    return _run(_standalone_parser("fuse", "eca-fuse"), argv)


def validate_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``eca-validate`` (= ``eca-deploy validate``)."""
    return _run(_standalone_parser("validate", "eca-validate"), argv)


def bench_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``eca-bench`` (= ``eca-deploy bench``)."""
    return _run(_standalone_parser("bench", "eca-bench"), argv)
