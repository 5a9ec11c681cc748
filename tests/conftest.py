"""Shared fixtures. `isa` runs a test once per CPU kernel path this machine has; paths the CPU
lacks are skipped with the reason, and the summary line says which paths ran."""

from __future__ import annotations

import numpy as np
import pytest

import fastmlp

ALL_ISAS = ("portable", "avx2", "avx512")
_ran: set[str] = set()


@pytest.fixture(params=ALL_ISAS)
def isa(request):
    name = request.param
    if name not in fastmlp.available_isas():
        pytest.skip(f"ISA path {name!r} is not supported by this CPU")
    previous = fastmlp.get_isa()
    fastmlp.set_isa(name)
    _ran.add(name)
    try:
        yield name
    finally:
        fastmlp.set_isa(previous)


@pytest.fixture
def threads():
    """Restores the thread count a test changes."""
    previous = fastmlp.get_num_threads()
    yield
    fastmlp.set_num_threads(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def pytest_terminal_summary(terminalreporter):
    ran = [n for n in ALL_ISAS if n in _ran]
    skipped = [n for n in ALL_ISAS if n not in _ran]
    terminalreporter.write_line(
        f"fastmlp ISA paths tested: {', '.join(ran) or 'none'}; not available here: {', '.join(skipped) or 'none'}"
        f" (default path: {fastmlp.get_isa()}, threads: {fastmlp.get_num_threads()})")
