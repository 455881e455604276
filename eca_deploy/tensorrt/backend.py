"""The TensorRT flavour in use (``tensorrt`` or ``tensorrt_rtx``) and what its version can do.

Version facts this package relies on (TensorRT's CHANGELOG and Python package):

- before 10.7 the ONNX parser imports a node through a model-local function of its name before
  it looks for a plugin (10.7 GA, "Parser Changes"), so a plugin is used only for a file without
  the function; ``engine`` therefore always parses such a copy when a plugin is requested;
- ``tensorrt.plugin``'s ahead-of-time API (``aot_impl``, ``KernelLaunchParams``,
  ``SymIntExprs``) first ships in 10.9;
- TensorRT 11 and TensorRT-RTX are strongly typed only (no FP16/INT8 builder flags);
- TensorRT-RTX builds engines without a GPU and keeps no timing cache.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import itertools
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

from eca_deploy.errors import EcaDeployError
from eca_deploy.options import TENSORRT_FLAVOURS as FLAVOURS

AOT_MIN_VERSION = (10, 9)
INSTALL_HINTS = {"tensorrt": "pip install 'eca-deploy[trt]' (tensorrt)",
                 "tensorrt_rtx": "pip install 'eca-deploy[rtx]' (tensorrt-rtx-cu13)"}


def version_tuple(version: str) -> tuple[int, ...]:
    """(10, 3, 0, 30) for "10.3.0.30"; leading numbers only ("10.7.0.post1" -> (10, 7, 0))."""
    return tuple(int(part) for part in itertools.takewhile(str.isdigit, version.split(".")))


@dataclass(frozen=True)
class Backend:
    """An imported TensorRT flavour and what its API offers."""

    module: ModuleType
    name: str

    @property
    def version(self) -> str:
        return self.module.__version__

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    @property
    def has_timing_cache(self) -> bool:
        """Timing-cache operations are no-ops in TensorRT-RTX."""
        return not self.is_rtx

    @property
    def has_fp16_builder_flag(self) -> bool:
        """TensorRT 11 and TensorRT-RTX are strongly typed only: no FP16 builder flag."""
        return hasattr(self.module.BuilderFlag, "FP16")

    @property
    def has_aot_plugins(self) -> bool:
        """Whether ``tensorrt.plugin`` has the ahead-of-time API (TensorRT >= 10.9; not TensorRT-RTX)."""
        return not self.is_rtx and version_tuple(self.version) >= AOT_MIN_VERSION

    def describe(self) -> str:
        return f"{self.name} {self.version}"


def load_backend(name: str = "auto") -> Backend:
    """Import ``tensorrt`` (preferred) or ``tensorrt_rtx``; missing: one sentence naming what to install."""
    if name not in (*FLAVOURS, "auto"):
        raise EcaDeployError(f"unknown TensorRT backend {name!r}; use auto, {' or '.join(FLAVOURS)}")
    candidates = FLAVOURS if name == "auto" else (name,)
    for candidate in candidates:
        try:
            return Backend(importlib.import_module(candidate), candidate)
        except ImportError:
            continue
    raise EcaDeployError("TensorRT is not installed: " + " or ".join(INSTALL_HINTS[c] for c in candidates))


_LOGGERS: dict[str, object] = {}
_LOGGERS_LOCK = threading.Lock()
_EXPECTED_NOTICES = ("will not be queryable",)  # inlined fallback functions reuse node names, once per node


def tensorrt_logger(module: ModuleType) -> object:
    """The logger every builder and runtime of TensorRT ``module`` gets. TensorRT keeps the first logger a
    builder, runtime or refitter is created with for the whole process, so eca-deploy shares one: warnings
    and errors go to stderr (everything once ``verbose`` is set), and the last errors are kept so that
    our messages can say why a call failed (``mark()`` then ``reason(mark)``)."""
    with _LOGGERS_LOCK:
        if module.__name__ not in _LOGGERS:
            _LOGGERS[module.__name__] = _make_logger(module)
        return _LOGGERS[module.__name__]


PLUGIN_LOG_ENV = "ECA_PLUGIN_LOG"  # the plugin's stderr level where TensorRT gives it no logger (TensorRT-RTX)


@contextlib.contextmanager
def verbose_log(module: ModuleType, verbose: bool = True) -> Iterator[None]:
    """Print TensorRT's and the plugin's INFO and VERBOSE messages while the block runs (``verbose``)."""
    if not verbose:
        yield
        return
    logger = tensorrt_logger(module)
    previous, logger.verbose = logger.verbose, True
    plugin_level = os.environ.get(PLUGIN_LOG_ENV)
    os.environ[PLUGIN_LOG_ENV] = "verbose"
    try:
        yield
    finally:
        logger.verbose = previous
        if plugin_level is None:
            del os.environ[PLUGIN_LOG_ENV]
        else:
            os.environ[PLUGIN_LOG_ENV] = plugin_level


def _make_logger(trt: ModuleType) -> object:
    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.verbose = False
            self.errors: collections.deque[str] = collections.deque(maxlen=16)
            self.count = 0
            self._lock = threading.Lock()

        def log(self, severity: object, msg: str) -> None:
            level = int(severity)  # 0 internal error, 1 error, 2 warning, 3 info, 4 verbose
            if level <= 1:
                with self._lock:
                    self.errors.append(msg)
                    self.count += 1
            if (level <= 2 or self.verbose) and not any(notice in msg for notice in _EXPECTED_NOTICES):
                print(f"[{trt.__name__}] [{severity.name}] {msg}", file=sys.stderr, flush=True)

        def mark(self) -> int:
            return self.count

        def reason(self, mark: int) -> str:
            """": <first error logged since mark>", or a pointer to the log when there was none."""
            with self._lock:
                new = self.count - mark
                errors = list(self.errors)[-new:] if new > 0 else []
            return f": {errors[0]}" if errors else " (see TensorRT's log above)"

    return Logger()
