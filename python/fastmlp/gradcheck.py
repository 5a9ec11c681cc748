"""Gradient checking: back-propagation against central finite differences, in float64."""

from __future__ import annotations

from typing import Optional

import numpy as np

from . import losses as _losses

__all__ = ["gradcheck"]


def _float64_clone(model):
    from .serialize import model_from_parts, model_to_parts

    header, arrays = model_to_parts(model)
    header["model"]["dtype"] = "float64"
    arrays = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in arrays.items()}
    return model_from_parts(header, arrays)


def gradcheck(model, X, y, loss: Optional[str] = None, *, eps: float = 1e-6, max_params: Optional[int] = 2000,
              seed: int = 0, step: int = 0) -> float:
    """The worst relative error between back-propagated gradients and central finite differences
    ``(L(θ + ε) − L(θ − ε)) / 2ε`` of the training-mode loss, computed on a float64 copy of the
    model with dropout masks (and input noise) held fixed (same seed and step). Relative error is
    ``|g_bp − g_fd| / max(|g_bp|, |g_fd|, floor)`` with ``floor = 1e-3 · max |g_bp|`` (at least
    1e-8): central differences carry a rounding error of about ``1e-16 · |L| / eps`` (~1e-10), so
    a component a thousand times smaller than the largest gradient (or exactly zero, as a bias
    followed by batch norm) is measured against that floor instead of against itself. At most
    ``max_params`` parameters (chosen at random, reproducibly) are checked; None checks all. A
    value below ~1e-6 means the gradients are right."""
    from .autoencoder import Autoencoder

    if isinstance(model, Autoencoder):
        model = model.model
        if y is None:
            y = X
    m = _float64_clone(model)
    m.scaler = None
    loss = _losses.resolve(loss, m.output)
    x = np.ascontiguousarray(np.asarray(X, dtype=np.float64))
    if model.scaler is not None:
        x = (x - model.scaler["x_mean"]) / model.scaler["x_scale"]
        x = np.ascontiguousarray(x)
    target = _losses.prepare_target(loss, y, x.shape[0], m.out_features, np.float64)
    buffers = {k: v.copy() for k, v in m.buffers().items()}

    def restore_buffers():
        for k, v in m.buffers().items():
            v[...] = buffers[k]

    def loss_at() -> float:
        logits = m._forward(x, True, seed, step)
        m._saved = None
        restore_buffers()
        return _losses.compute(loss, logits, target)[0]

    logits = m._forward(x, True, seed, step)
    _, grad = _losses.compute(loss, logits, target)
    m.backward(grad)
    restore_buffers()
    analytic = m.gradients().copy()
    params = m.parameters()
    n = params.size
    idx = np.arange(n)
    if max_params is not None and n > max_params:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=max_params, replace=False))
    floor = max(1e-8, 1e-3 * float(np.max(np.abs(analytic), initial=0.0)))
    worst = 0.0
    for i in idx:
        old = params[i]
        params[i] = old + eps
        up = loss_at()
        params[i] = old - eps
        down = loss_at()
        params[i] = old
        numeric = (up - down) / (2 * eps)
        a = analytic[i]
        err = abs(a - numeric) / max(abs(a), abs(numeric), floor)
        worst = max(worst, err)
    return float(worst)
