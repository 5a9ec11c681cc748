"""Shared fixtures. `isa` runs a test once per CPU kernel path this machine has; paths the CPU
lacks are skipped with the reason, and the summary line says which paths ran."""

from __future__ import annotations

import os

import numpy as np
import pytest

import fastmlp

if os.environ.get("FASTMLP_EMULATE_CUDA") == "1":  # the Python CUDA path on an emulated device
    import emulated_cuda

    emulated_cuda.install()

ALL_ISAS = ("portable", "avx2", "avx512")
_ran: set[str] = set()
_unsupported: set[str] = set()


@pytest.fixture(params=ALL_ISAS)
def isa(request):
    name = request.param
    if name not in fastmlp.available_isas():
        _unsupported.add(name)
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


@pytest.fixture(params=("cpu", "cuda"))
def device(request):
    """Runs a test on the CPU kernels and on the CUDA ones: "cpu" or "cuda". The CUDA run is
    skipped with the reason "no CUDA device" where none is usable (no CUDA build, driver or GPU)."""
    if request.param == "cuda":
        from fastmlp import cuda

        if not cuda.is_available():
            pytest.skip("no CUDA device")
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def pytest_terminal_summary(terminalreporter):
    ran = [n for n in ALL_ISAS if n in _ran]
    lacking = [n for n in ALL_ISAS if n in _unsupported]
    unused = [n for n in ALL_ISAS if n not in _ran and n not in _unsupported]
    line = f"fastmlp ISA paths tested: {', '.join(ran) or 'none'}"
    if lacking:
        line += f"; not supported by this CPU: {', '.join(lacking)}"
    if unused:
        line += f"; not exercised by the tests run: {', '.join(unused)}"
    terminalreporter.write_line(f"{line} (default path: {fastmlp.get_isa()}, threads: {fastmlp.get_num_threads()})")
