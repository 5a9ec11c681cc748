"""Small data sets shipped with fastmlp (see fastmlp/data/README.md for sources and licences)."""

from __future__ import annotations

import os
from typing import Tuple

import numpy as np

__all__ = ["load_digits"]

_DATA = os.path.join(os.path.dirname(__file__), "data")


def load_digits(dtype="float32") -> Tuple[np.ndarray, np.ndarray]:
    """The 8×8 handwritten digits: ``X`` (1797, 64) pixel counts 0..16 as ``dtype`` and ``y``
    (1797,) int64 labels 0..9."""
    with np.load(os.path.join(_DATA, "digits.npz"), allow_pickle=False) as f:
        return f["X"].astype(dtype), f["y"].astype(np.int64)
