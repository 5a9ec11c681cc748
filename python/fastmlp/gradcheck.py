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
    ``(L(θ + h) − L(θ − h)) / 2h`` of the training-mode loss, computed on a float64 copy of the
    model with dropout masks (and input noise) held fixed (same seed and step). Each component is
    differenced at ``h = eps`` and ``h = 10·eps`` and the closer of the two counts: the smaller step
    loses digits to rounding (about ``1e-16 · |L| / h``, which grows with the loss: a
    reconstruction loss in the thousands), the larger one can cross a ReLU kink; a wrong gradient
    disagrees with both. Relative error is ``|g_bp − g_fd| / max(|g_bp|, |g_fd|, floor)`` with
    ``floor = 1e-3 · max |g_bp|`` (at least 1e-8), so a component a thousand times smaller than the
    largest gradient (or exactly zero, as a bias followed by batch norm) is measured against that
    floor instead of against itself. At most ``max_params`` parameters (chosen at random,
    reproducibly) are checked; None checks all. Correct gradients score below ~1e-5 (typically
    1e-9 to 1e-6); a wrong term in a gradient scores 1e-3 or more."""
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
    def difference(i: int, h: float) -> float:
        old = params[i]
        params[i] = old + h
        up = loss_at()
        params[i] = old - h
        down = loss_at()
        params[i] = old
        return (up - down) / (2 * h)

    for i in idx:
        a = analytic[i]
        err = min(abs(a - numeric) / max(abs(a), abs(numeric), floor)
                  for numeric in (difference(i, eps), difference(i, 10 * eps)))
        worst = max(worst, err)
    return float(worst)
