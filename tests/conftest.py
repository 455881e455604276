"""pytest options shared by the test modules."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--emu-full", action="store_true",
                     help="tests/test_kernel_emu.py: run the full grid of the CPU kernel emulator, not the sample")
