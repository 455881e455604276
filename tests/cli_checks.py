"""How the tests hold commands to the README's promise for bad input: the exit code, one sentence on stderr,
no traceback, and nothing written or left behind.

``run_cli`` runs a command in a fresh process (real exit codes, real stderr); ``assert_refused`` checks its
answer; ``tree`` lists every file and folder under a path so a test can compare before and after;
``read_only_dir`` and ``full_disk_dir`` give folders that refuse writes even to root (a read-only bind mount,
else the immutable attribute; a 256 KiB tmpfs), or skip where the machine allows neither.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

COMMANDS = {"eca-deploy": [], "eca-export": ["export"], "eca-fuse": ["fuse"], "eca-validate": ["validate"],
            "eca-bench": ["bench"]}


def run_cli(command: str, *args: str | Path, env: dict | None = None, cwd: Path | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``command`` (``eca-export``, ``eca-deploy`` ...) as a user would, through ``python -m eca_deploy``."""
    argv = [sys.executable, "-m", "eca_deploy", *COMMANDS[command], *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd,
                          timeout=timeout)


def assert_refused(result: subprocess.CompletedProcess, pattern: str, code: int = 2) -> str:
    """The command exited with ``code`` and said one sentence matching ``pattern`` on stderr, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, f"exit {result.returncode}, stderr:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr[-3000:]}"
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def required(module: str) -> ModuleType:
    """``module``, which the README's test command installs: its absence fails the test (a skip would let CI pass
    without the check). Skips are for what CI cannot have: a GPU, the full TensorRT."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        pytest.fail(f"{module} is not installed ({error}); run the README's test command, which installs it")


def tree(path: Path) -> set[str]:
    """Every file and folder under ``path`` (relative), hidden ones included; empty when it does not exist."""
    path = Path(path)
    return {str(item.relative_to(path)) for item in path.rglob("*")} if path.exists() else set()


def _try(command: list[str]) -> bool:
    return shutil.which(command[0]) is not None and subprocess.run(command, capture_output=True).returncode == 0


@contextlib.contextmanager
def read_only_dir(path: Path) -> Iterator[Path]:
    """``path`` (created) made read-only for everyone, root included, for the block."""
    path.mkdir(parents=True, exist_ok=True)
    if _try(["mount", "--bind", str(path), str(path)]):
        if _try(["mount", "-o", "remount,ro,bind", str(path)]):
            try:
                yield path
            finally:
                _try(["umount", str(path)])
            return
        _try(["umount", str(path)])
    if _try(["chattr", "+i", str(path)]):
        try:
            yield path
        finally:
            _try(["chattr", "-i", str(path)])
        return
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    pytest.skip("cannot make a folder read-only for root here (no bind mount, no chattr)")


@contextlib.contextmanager
def full_disk_dir(path: Path, size: str = "256k") -> Iterator[Path]:
    """A tiny tmpfs at ``path`` that fills up after ``size`` bytes, for the block."""
    path.mkdir(parents=True, exist_ok=True)
    if not _try(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]):
        pytest.skip("cannot mount a small tmpfs here to fill the disk")
    try:
        yield path
    finally:
        _try(["umount", str(path)])
