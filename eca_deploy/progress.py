"""Progress of long steps: one line per step and progress bars, on stderr for the CLI (silenced by ``--quiet``),
or as whole lines to a callback for Python callers (:func:`as_progress`; silent by default)."""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Callable, Iterator

Sink = Callable[[str], None]  # receives whole lines


class EcaDeployWarning(UserWarning):
    """A result that is less than it looks (skipped image files, a busy machine), for Python callers."""


def as_progress(progress: Progress | Sink | None) -> Progress:
    """What the Python API takes: None (silent; warnings as :class:`EcaDeployWarning`), a callable that receives
    each line, warnings included, or a :class:`Progress`."""
    if isinstance(progress, Progress):
        return progress
    return Progress(quiet=True, python_warnings=True) if progress is None else Progress(sink=progress)


class Progress:
    """Writes ``[i/n] step ... done (1.2 s)`` lines to stderr, or to ``sink`` one whole line at a time; ``quiet``
    silences everything."""

    def __init__(self, total_steps: int | None = None, quiet: bool = False, sink: Sink | None = None,
                 python_warnings: bool = False) -> None:
        self.total_steps = total_steps
        self.quiet = quiet
        self.sink = sink
        self.python_warnings = python_warnings
        self._count = 0
        self._line_open = False  # a step's "title ..." waits for its outcome on the same line
        self._pending = ""  # the open line, for a sink

    def write(self, text: str, end: str = "\n") -> None:
        """Write ``text`` (unless quiet): to stderr, or to the sink once its line is complete."""
        if self.quiet:
            return
        if self.sink is None:
            print(text, end=end, file=sys.stderr, flush=True)
            return
        self._pending += text + end
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self.sink(line)

    def warn(self, message: str) -> None:
        """A warning: a ``warning: ...`` line even when quiet (the CLI's stderr, or the sink), or for a silent
        Python caller an :class:`EcaDeployWarning`."""
        if self.python_warnings:
            warnings.warn(message, EcaDeployWarning, stacklevel=3)
            return
        if self._line_open:
            self.write("")
            self._line_open = False
        if self.sink is not None:
            self.sink(f"warning: {message}")
        else:
            print(f"warning: {message}", file=sys.stderr, flush=True)

    def answer(self, text: str) -> None:
        """Part of a command's answer (a table of what it found): stdout even when quiet on the command line, the
        sink for a Python caller that gave one, nothing for a silent one."""
        if self.sink is not None:
            for line in text.splitlines():
                self.sink(line)
        elif not self.python_warnings:
            if self._line_open:
                self.write("")
                self._line_open = False
            print(text, flush=True)

    def info(self, message: str) -> None:
        """Write one line (not a step); inside a step, below the step's title."""
        if self._line_open:
            self.write("")
            self._line_open = False
        self.write(message)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Time a step and print its start and outcome. Python warnings raised meanwhile (PyTorch's, say)
        are printed after the outcome, once each, instead of breaking the step's line."""
        self._count += 1
        prefix = f"[{self._count}/{self.total_steps}] " if self.total_steps else ""
        if not self.quiet:
            self.write(f"{prefix}{title} ...", end="")
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
        self.write(outcome if self._line_open else f"  ...{outcome}")
        self._line_open = False
        for message in dict.fromkeys(f"{w.category.__name__}: {str(w.message).strip().splitlines()[0]}"
                                     for w in caught if str(w.message).strip()):
            self.write(f"  warning: {message}")

    @contextlib.contextmanager
    def bar(self, total: int | None, title: str) -> Iterator[ProgressBar]:
        """A progress bar over ``total`` items (a counter when ``total`` is None), finished on exit."""
        progress_bar = ProgressBar(total, title, self)
        try:
            yield progress_bar
        finally:
            progress_bar.finish()


class ProgressBar:
    """``title [#####-----] 12/24 3.1 s``, redrawn in place on a terminal, every 10 % in logs and to a sink."""

    WIDTH = 30

    def __init__(self, total: int | None, title: str, progress: Progress) -> None:
        self.total, self.title, self.progress = total, title, progress
        self.done = 0
        self.label = ""
        self._start = time.perf_counter()
        self._tty = progress.sink is None and sys.stderr.isatty()
        self._last_decile = self._last_printed = -1

    def advance(self, count: int = 1, label: str | None = None) -> None:
        """Count ``count`` more items done; ``label`` names the current one."""
        self.done += count
        if label is not None:
            self.label = label
        self._draw()

    def _draw(self, final: bool = False) -> None:
        if self.progress.quiet:
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
            self.progress.write(text)

    def finish(self) -> None:
        self._draw(final=True)
