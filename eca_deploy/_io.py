"""Output files and folders: checked before any work, written atomically, nothing left behind on failure.

``check_output_dir`` and ``check_output_file`` run before a command loads anything: a file in the
way of a folder, a folder in the way of a file, a read-only folder or one that cannot be created is
one sentence (exit 2) instead of a traceback after minutes of work. ``staged_outputs`` writes into a hidden folder inside the destination and moves the files
into place only when the whole step succeeded; on failure (Ctrl-C included) it removes the
staging folder and any folder it created, so no empty or half-written output remains.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from eca_deploy.errors import EcaDeployError

#: OSError numbers that mean "this place cannot take our files", reported as one sentence (exit 2).
UNWRITABLE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG,
                               errno.ENOTDIR, errno.EEXIST})


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def unwritable(path: Path, error: OSError) -> EcaDeployError:
    """The one-sentence error for an OSError raised while writing under ``path``."""
    reason = error.strerror or str(error)
    return EcaDeployError(f"cannot write to {path}: {reason}" + (
        "; free some space or choose another folder" if error.errno in (errno.ENOSPC, errno.EDQUOT) else ""))


def check_output_dir(path: Path, option: str = "-o") -> Path:
    """Check, before any work, that ``path`` is a folder that takes files or one that can be created.

    Creates nothing; raises :class:`EcaDeployError` naming ``option`` when a file is in the way or
    the nearest existing folder cannot be written (permissions, read-only file system, full disk).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EcaDeployError(f"{option} {path}: a file is in the way; pass a folder")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise EcaDeployError(f"{option} {path}: {existing} is a file, so the folder cannot be created")
    try:
        handle, probe = tempfile.mkstemp(prefix=".eca-write-test-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise unwritable(existing, error) from error
    return path


def check_output_file(path: Path, option: str, default_name: str | None = None) -> Path:
    """Check, before any work, that ``path`` can be written as a file: an existing folder is refused (exit 2,
    the same rule for every command's file options), and its folder must take files or be creatable."""
    path = Path(path)
    if path.is_dir():
        example = f", e.g. {path / default_name}" if default_name else ""
        raise EcaDeployError(f"{option} {path} is a folder; name the file to write{example}")
    check_output_dir(path.parent, option)
    return path


def _make_dirs(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; returns the folders created, innermost first."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir()
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # innermost first
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def staged_outputs(output_dir: Path) -> Iterator[Path]:
    """Yield a staging folder inside ``output_dir``; on success move its files into place.

    Every file written into the staging folder appears in ``output_dir`` only after the block
    completes. On any exception the staging folder is removed, and so is every folder this call
    created, when empty; an OSError from writing (full disk, read-only folder) becomes one sentence.
    """
    output_dir = Path(output_dir)
    created: list[Path] = []
    staging: Path | None = None
    try:
        created = _make_dirs(output_dir)
        staging = Path(tempfile.mkdtemp(prefix=".eca-staging-", dir=output_dir))
        yield staging
        for item in sorted(staging.iterdir()):
            os.replace(item, output_dir / item.name)
    except BaseException as error:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        if isinstance(error, OSError) and error.errno in UNWRITABLE_ERRNOS:
            raise unwritable(output_dir, error) from error
        raise
    shutil.rmtree(staging, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    with staged_outputs(path.parent) as staging:
        (staging / path.name).write_text(text)
