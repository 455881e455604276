"""Progress display for the CLI: one line per step and progress bars on stderr, silenced by ``--quiet``."""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Iterator


class Progress:
    """Prints ``[i/n] step ... done (1.2 s)`` lines to stderr; ``quiet`` silences everything."""

    def __init__(self, total_steps: int | None = None, quiet: bool = False) -> None:
        self.total_steps = total_steps
        self.quiet = quiet
        self._count = 0
        self._line_open = False  # a step's "title ..." waits for its outcome on the same line

    def info(self, message: str) -> None:
        """Print one line (not a step); inside a step, below the step's title."""
        if not self.quiet:
            if self._line_open:
                print(file=sys.stderr)
                self._line_open = False
            print(message, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Time a step and print its start and outcome. Python warnings raised meanwhile (PyTorch's, say)
        are printed after the outcome, once each, instead of breaking the step's line."""
        self._count += 1
        prefix = f"[{self._count}/{self.total_steps}] " if self.total_steps else ""
        if not self.quiet:
            print(f"{prefix}{title} ...", end="", file=sys.stderr, flush=True)
            self._line_open = True
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            try:
                yield
            except BaseException:
                self._finish(" failed", caught)
                raise
        self._finish(f" done ({time.perf_counter() - start:.1f} s)", caught)

    def _finish(self, outcome: str, caught: list[warnings.WarningMessage]) -> None:
        if self.quiet:
            return
        print(outcome if self._line_open else f"  ...{outcome}", file=sys.stderr, flush=True)
        self._line_open = False
        for message in dict.fromkeys(f"{w.category.__name__}: {str(w.message).strip().splitlines()[0]}"
                                     for w in caught if str(w.message).strip()):
            print(f"  warning: {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def bar(self, total: int | None, title: str) -> Iterator[ProgressBar]:
        """A progress bar over ``total`` items (a counter when ``total`` is None), finished on exit."""
        progress_bar = ProgressBar(total, title, quiet=self.quiet)
        try:
            yield progress_bar
        finally:
            progress_bar.finish()


class ProgressBar:
    """``title [#####-----] 12/24 3.1 s``, redrawn in place on a terminal, every 10 % in logs."""

    WIDTH = 30

    def __init__(self, total: int | None, title: str, quiet: bool = False) -> None:
        self.total, self.title, self.quiet = total, title, quiet
        self.done = 0
        self.label = ""
        self._start = time.perf_counter()
        self._tty = sys.stderr.isatty()
        self._last_decile = self._last_printed = -1

    def advance(self, count: int = 1, label: str | None = None) -> None:
        """Count ``count`` more items done; ``label`` names the current one."""
        self.done += count
        if label is not None:
            self.label = label
        self._draw()

    def _draw(self, final: bool = False) -> None:
        if self.quiet:
            return
        elapsed = time.perf_counter() - self._start
        if self.total:
            filled = min(self.WIDTH, self.WIDTH * self.done // self.total)
            text = f"{self.title} [{'#' * filled}{'-' * (self.WIDTH - filled)}] {self.done}/{self.total}"
        else:
            text = f"{self.title} {self.done}"
        text += f" {elapsed:.1f} s" + (f" {self.label}" if self.label else "")
        if self._tty:
            print(f"\r\033[K{text}", end="\n" if final else "", file=sys.stderr, flush=True)
            return
        decile = 10 * self.done // self.total if self.total else self.done
        if decile != self._last_decile or (final and self.done != self._last_printed):
            self._last_decile, self._last_printed = decile, self.done
            print(text, file=sys.stderr, flush=True)

    def finish(self) -> None:
        self._draw(final=True)
