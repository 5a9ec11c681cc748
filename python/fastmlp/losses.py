"""Loss names, target preparation and output probabilities (DESIGN.md, "Losses").

Losses take logits and return ``(loss, d loss / d logits)`` with the 1/batch factor included:

- ``"squared"``: ½ · mean over rows of ‖pred − target‖² (regression; output "identity");
- ``"cross_entropy"``: softmax cross-entropy with integer class labels (output "softmax");
- ``"binary_cross_entropy"``: sigmoid cross-entropy, summed over labels, for multi-label 0/1
  targets (output "sigmoid").
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from . import _core
from . import kernels as K

__all__ = ["LOSSES", "compute", "default_loss", "per_row", "prepare_target", "probabilities", "resolve"]

LOSSES = ("squared", "cross_entropy", "binary_cross_entropy")
_DEFAULT_FOR_OUTPUT = {"identity": "squared", "softmax": "cross_entropy", "sigmoid": "binary_cross_entropy"}
_KERNELS = {"squared": K.squared_error, "cross_entropy": K.softmax_cross_entropy,
            "binary_cross_entropy": K.sigmoid_cross_entropy}


def default_loss(output: str) -> str:
    return _DEFAULT_FOR_OUTPUT[output]


def resolve(loss: Optional[str], output: str) -> str:
    if loss is None:
        return default_loss(output)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(repr(l) for l in LOSSES)}, got {loss!r}")
    return loss


def prepare_target(loss: str, y, rows: int, outputs: int, dtype) -> np.ndarray:
    """Convert y once to what the loss kernel takes: int64 labels, or a float (rows, outputs) matrix."""
    y = np.asarray(y)
    if y.ndim == 0 or y.shape[0] != rows:
        raise ValueError(f"y has {y.shape[0] if y.ndim else 0} rows but X has {rows}")
    if loss == "cross_entropy":
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(f"cross_entropy needs integer class labels of shape ({rows},), got shape {y.shape}")
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
                raise ValueError("cross_entropy labels must be integers 0..classes-1")
        elif y.dtype.kind not in "iub":
            raise TypeError(f"cross_entropy labels must be integers, got dtype {y.dtype}")
        labels = np.ascontiguousarray(y.astype(np.int64, copy=False))
        if labels.size:
            # One pass in C++: two NumPy reductions cost ~60 us per training step once the step's
            # kernels have pushed NumPy's own code and data out of the caches.
            lo, hi = _core._label_range(labels) if labels.flags.aligned else (labels.min(), labels.max())
            if lo < 0 or hi >= outputs:
                raise ValueError(f"labels must be in [0, {outputs}) for a model with {outputs} outputs; "
                                 f"got values in [{lo}, {hi}]")
        return labels
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or y.shape[1] != outputs:
        raise ValueError(f"y has shape {y.shape} but the model has {outputs} outputs; expected ({rows}, {outputs})")
    if not np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_:
        raise TypeError(f"y must be numeric, got dtype {y.dtype}")
    target = np.ascontiguousarray(y, dtype=dtype)
    if loss == "binary_cross_entropy" and target.size:
        lo, hi = target.min(), target.max()
        if lo < 0 or hi > 1:  # the loss is unbounded below there: training would run to -inf
            raise ValueError(f"binary_cross_entropy targets must be in [0, 1] (0/1 labels or probabilities); got "
                             f"values in [{lo:g}, {hi:g}]. Scale the data to [0, 1], or use an identity output "
                             f"with squared error")
    return target


def compute(loss: str, logits: np.ndarray, target: np.ndarray, out: Optional[np.ndarray] = None
            ) -> Tuple[float, np.ndarray]:
    """(loss, d loss / d logits) for prepared targets; the gradient goes to ``out`` when given."""
    return _KERNELS[loss](logits, target, out=out)


def per_row(loss: str, logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Each row's loss in float64 (for sample weights), matching the kernels' definitions."""
    z = logits.astype(np.float64)
    if loss == "squared":
        return 0.5 * np.sum((z - target) ** 2, axis=1)
    if loss == "cross_entropy":
        m = z.max(axis=1, keepdims=True)
        lse = (m + np.log(np.sum(np.exp(z - m), axis=1, keepdims=True)))[:, 0]
        return lse - z[np.arange(z.shape[0]), target]
    return np.sum(np.maximum(z, 0) - z * target + np.log1p(np.exp(-np.abs(z))), axis=1)


def probabilities(output: str, logits: np.ndarray) -> np.ndarray:
    """Softmax or sigmoid of logits, computed stably."""
    if output == "softmax":
        z = logits - logits.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z
    if output == "sigmoid":
        return K.activation(np.ascontiguousarray(logits), "sigmoid")
    raise ValueError(f"no probabilities for output {output!r}")
