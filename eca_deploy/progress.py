"""Progress display for the CLI: one line per step on stderr, silenced by ``--quiet``."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator


class Progress:
    """Prints ``[i/n] step ... done (1.2 s)`` lines to stderr; ``quiet`` silences everything."""

    def __init__(self, total_steps: int | None = None, quiet: bool = False) -> None:
        self.total_steps = total_steps
        self.quiet = quiet
        self._count = 0

    def info(self, message: str) -> None:
        """Print one line (not a step)."""
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Time a step and print its start and outcome."""
        self._count += 1
        prefix = f"[{self._count}/{self.total_steps}] " if self.total_steps else ""
        if not self.quiet:
            print(f"{prefix}{title} ...", end="", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            if not self.quiet:
                print(" failed", file=sys.stderr, flush=True)
            raise
        if not self.quiet:
            print(f" done ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
