"""fastmlp: fast dense neural networks with hand-written C++ kernels.

The compiled kernels live in :mod:`fastmlp.kernels`. Threads and the CPU instruction-set path are
controlled here (and by the environment variables ``FASTMLP_NUM_THREADS`` and ``FASTMLP_ISA``).
"""

from __future__ import annotations

import os as _os

from . import _core

__version__ = "0.1.0"

__all__ = [
    "Autoencoder",
    "DenoisingAutoencoder",
    "History",
    "MLP",
    "ModelFileError",
    "NonFiniteLossError",
    "Trainer",
    "__version__",
    "available_isas",
    "datasets",
    "find_step_size",
    "get_isa",
    "get_num_threads",
    "gradcheck",
    "init",
    "kernels",
    "load",
    "nn",
    "optim",
    "schedules",
    "set_isa",
    "set_num_threads",
]

ISAS = ("portable", "avx2", "avx512")


def set_num_threads(n: int) -> None:
    """Set the number of threads the CPU kernels use (``n >= 1``).

    Results never depend on it: every kernel is bitwise the same on 1 and on N threads.
    """
    if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__"):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    n = int(n.__index__()) if not isinstance(n, int) else n
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads the CPU kernels use."""
    return _core.get_num_threads()


def available_isas() -> list[str]:
    """The CPU kernel paths this machine can run, slowest first (``portable`` is always there)."""
    return [name for name in ISAS if _core.isa_supported(name)]


def get_isa() -> str:
    """The CPU kernel path in use: ``"portable"``, ``"avx2"`` or ``"avx512"``."""
    return _core.get_isa()


def set_isa(name: str) -> None:
    """Force a CPU kernel path (``"portable"``, ``"avx2"``, ``"avx512"``) or ``"auto"`` for the best.

    Raises ValueError when the CPU (or this build) lacks the path.
    """
    if not isinstance(name, str):
        raise TypeError(f"set_isa: name must be a str, got {type(name).__name__}")
    _core.set_isa(name)


def _env_int(name: str, minimum: int):
    """The integer in environment variable `name` (None when unset or blank), at least `minimum`."""
    text = _os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        n = int(text)
    except ValueError:
        n = minimum - 1
    if n < minimum:
        raise RuntimeError(f"{name}={text!r} is not an integer >= {minimum}")
    return n


def _configure_from_environment() -> None:
    threads = _env_int("FASTMLP_NUM_THREADS", 1)
    if threads is not None:
        _core.set_num_threads(threads)
    stream = _env_int("FASTMLP_STREAM_MIN_BYTES", 0)
    if stream is not None:
        _core._set_stream_min_bytes(min(stream, 2**63 - 1))  # larger: never, as 2**63 - 1 bytes
    isa = _os.environ.get("FASTMLP_ISA", "").strip().lower()
    if isa:
        try:
            _core.set_isa(isa)
        except ValueError as e:
            raise RuntimeError(f"FASTMLP_ISA={isa!r}: {e}") from None


_configure_from_environment()

from . import kernels  # noqa: E402
from . import datasets, init, nn, optim, schedules  # noqa: E402
from .autoencoder import Autoencoder, DenoisingAutoencoder  # noqa: E402
from .gradcheck import gradcheck  # noqa: E402
from .io import ModelFileError  # noqa: E402
from .nn import MLP  # noqa: E402
from .serialize import load  # noqa: E402
from .train import History, NonFiniteLossError, Trainer, find_step_size  # noqa: E402
