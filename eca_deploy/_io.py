"""Atomic file output: nothing is left under a final name unless the whole step succeeded."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staged_outputs(output_dir: Path) -> Iterator[Path]:
    """Yield a staging folder inside ``output_dir``; on success move its files into place.

    Every file written into the staging folder appears in ``output_dir`` only after the block
    completes; on any exception the staging folder is removed and ``output_dir`` is untouched
    (apart from being created).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".eca-staging-", dir=output_dir))
    try:
        yield staging
        for item in sorted(staging.iterdir()):
            os.replace(item, output_dir / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    with staged_outputs(path.parent) as staging:
        (staging / path.name).write_text(text)
