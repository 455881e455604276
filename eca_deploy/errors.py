"""Errors a user can act on. The CLI prints them as one sentence and exits with their code."""

from __future__ import annotations


class EcaDeployError(Exception):
    """Bad input or an unmet requirement: printed without a traceback, exit code 2."""

    exit_code = 2


class ParityError(EcaDeployError):
    """A backend's outputs disagree with the PyTorch FP32 reference beyond tolerance: exit code 1."""

    exit_code = 1


class PluginNotUsedError(EcaDeployError):
    """An engine was asked to run the fused nodes on the plugin and did not get one plugin layer per
    fused node: exit code 1 (the engine is not written)."""

    exit_code = 1


class UnreadableImageError(EcaDeployError):
    """A file that cannot be read as an image: image folders skip and count these unless told to be strict."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path, self.reason = path, reason


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (or its type name), for one-sentence errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
