"""Weight initialisation schemes, drawn from fastmlp's counter-based generator.

Every scheme is seeded and reproducible: the weights of parameter tensor number ``i`` of a model
come from the Philox stream ``(seed, i)``, so they do not depend on the thread count, the CPU path,
or on how many other layers the model has before it.

- ``"tiny"``: normal × 1e-5, zero biases (the classic "small random numbers" start);
- ``"glorot"``: uniform on ±√6/√(fan_in + fan_out) (Glorot & Bengio, 2010);
- ``"he"``: normal × √(2/fan_in) (He et al., 2015), for ReLU networks;
- a callable ``f(shape, fan_in, fan_out, rng) -> array`` for anything else, where ``rng`` is a
  ``numpy.random.Generator`` seeded from ``(seed, i)``.

Biases start at zero, batch-norm scales at one and shifts at zero, whatever the scheme.
"""

from __future__ import annotations

from typing import Callable, Union

import numpy as np

from . import kernels as K

__all__ = ["SCHEMES", "init_weight", "resolve"]

SCHEMES = ("tiny", "glorot", "he")

InitSpec = Union[str, Callable]


def resolve(init: InitSpec) -> InitSpec:
    """Validate an init argument; returns it unchanged."""
    if callable(init):
        return init
    if isinstance(init, str) and init in SCHEMES:
        return init
    raise ValueError(f"init must be one of {', '.join(repr(s) for s in SCHEMES)} or a callable, got {init!r}")


def init_weight(out: np.ndarray, fan_in: int, fan_out: int, init: InitSpec, seed: int, stream: int) -> None:
    """Fill the weight array ``out`` in place according to ``init``."""
    init = resolve(init)
    if callable(init):
        rng = np.random.default_rng([seed, stream])
        values = np.asarray(init(out.shape, fan_in, fan_out, rng))
        if values.shape != out.shape:
            raise ValueError(f"init callable returned shape {values.shape} for a weight of shape {out.shape}")
        if not np.all(np.isfinite(values)):
            raise ValueError("init callable returned non-finite values")
        out[...] = values
        return
    if init == "tiny":
        K.random_normal(out.shape, seed=seed, offset=stream, std=1e-5, out=out)
    elif init == "he":
        K.random_normal(out.shape, seed=seed, offset=stream, std=float(np.sqrt(2.0 / max(fan_in, 1))), out=out)
    else:  # glorot
        limit = float(np.sqrt(6.0 / max(fan_in + fan_out, 1)))
        K.random_uniform(out.shape, seed=seed, offset=stream, low=-limit, high=limit, out=out)
