"""Shared fixtures. `isa` runs a test once per CPU kernel path this machine has; paths the CPU
lacks are skipped with the reason, and the summary line says which paths ran."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def _on_isa(name):
    """The CPU kernels on ISA path `name` for the block (skipped where the CPU lacks it)."""
    if name not in fastmlp.available_isas():
        _unsupported.add(name)
        pytest.skip(f"ISA path {name!r} is not supported by this CPU")
    previous = fastmlp.get_isa()
    fastmlp.set_isa(name)
    _ran.add(name)
    try:
        yield
    finally:
        fastmlp.set_isa(previous)


@pytest.fixture(params=ALL_ISAS)
def isa(request):
    with _on_isa(request.param):
        yield request.param


class Backend(str):
    """What the `backend` fixture yields: "cpu" (with one ISA path set) or "cuda". ``put`` moves a
    NumPy array to the backend (float32 only on CUDA; a test of float64 data skips there) and
    ``get`` brings a result back; on "cpu" both are the identity."""

    def put(self, x):
        if self != "cuda" or not isinstance(x, np.ndarray):
            return x
        from fastmlp import cuda

        if x.dtype == np.float64:
            pytest.skip("CUDA kernels take float32")
        return cuda.asarray(x)

    def get(self, x):
        if self == "cuda" and not isinstance(x, (int, float, bool)):
            from fastmlp import cuda

            assert cuda.is_device_array(x), f"a CUDA kernel returned {type(x).__name__}, not a device array"
        return x.to_numpy() if hasattr(x, "to_numpy") else x


@pytest.fixture(params=ALL_ISAS + ("cuda",))
def backend(request):
    """Runs a reference test once per CPU kernel path (like `isa`) and once on the CUDA kernels;
    the CUDA run is skipped with the reason "no CUDA device" where none is usable (no CUDA build,
    driver or GPU), and its float64 cases with "CUDA kernels take float32"."""
    name = request.param
    if name == "cuda":
        from fastmlp import cuda

        if not cuda.is_available():
            pytest.skip("no CUDA device")
        yield Backend("cuda")
        return
    with _on_isa(name):
        yield Backend("cpu")


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
    lacking = [n for n in ALL_ISAS if n in _unsupported]
    unused = [n for n in ALL_ISAS if n not in _ran and n not in _unsupported]
    line = f"fastmlp ISA paths tested: {', '.join(ran) or 'none'}"
    if lacking:
        line += f"; not supported by this CPU: {', '.join(lacking)}"
    if unused:
        line += f"; not exercised by the tests run: {', '.join(unused)}"
    terminalreporter.write_line(f"{line} (default path: {fastmlp.get_isa()}, threads: {fastmlp.get_num_threads()})")
