"""Host/device array helpers for the model layer: the few operations nn.py, optim.py and train.py
need on an arena that may live on a CUDA device (allocate, view, copy, read back). NumPy arrays
take the NumPy path; anything exposing ``__cuda_array_interface__`` goes through fastmlp.cuda.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

DEVICES = ("cpu", "cuda")


def check_device(device) -> str:
    """Normalise a device name: "cpu" or "cuda" (the current CUDA device). Raises ValueError for
    anything else and RuntimeError for "cuda" when no CUDA device is usable."""
    name = str(device).lower()
    if name not in DEVICES:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if name == "cuda":
        from . import cuda

        if not cuda.is_available():
            raise RuntimeError(f"device='cuda' was requested but {cuda.unavailable_reason()}")
    return name


def is_device(a) -> bool:
    return type(a) is not np.ndarray and hasattr(a, "__cuda_array_interface__")


def is_sparse(a) -> bool:
    """A scipy.sparse matrix or array (scipy is not imported to find out)."""
    return type(a).__module__.startswith("scipy.sparse")


def dense_host(name: str, a, sparse_ok: bool = False):
    """``a`` as a NumPy array, or as it is if it is a scipy.sparse matrix and ``sparse_ok``; a
    sparse ``a`` is otherwise refused by name (np.asarray would make it a 0-d object array, and the
    error would then be about its shape)."""
    if type(a) is np.ndarray:
        return a
    if is_sparse(a):
        if sparse_ok:
            return a
        raise TypeError(f"{name} is a scipy.sparse {type(a).__name__} of shape {getattr(a, 'shape', '?')}; this "
                        f"call needs a dense array: pass {name}.toarray()")
    return np.asarray(a)


class SparseRows:
    """A scipy.sparse X whose rows are handed out dense, a slice or an index array at a time:
    scaled by ``scaler`` and converted to ``dtype`` with the dense path's arithmetic, so that
    training on X and on X.toarray() takes bitwise the same steps. X itself is never densified
    whole: a minibatch or a prediction chunk at a time."""

    ndim = 2

    def __init__(self, matrix, dtype, scaler=None):
        self.matrix = matrix.tocsr()  # row slicing and row gathers
        self.shape = tuple(matrix.shape)
        self.dtype = np.dtype(dtype)
        self._scaler = scaler

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        dense = self.matrix[rows].toarray()
        if self._scaler is not None:
            dense = (dense - self._scaler["x_mean"]) / self._scaler["x_scale"]
        return np.ascontiguousarray(dense, dtype=self.dtype)


def all_finite(a: np.ndarray) -> bool:
    """Whether a host array holds no NaN or infinity: a min and a max (NaN and +-inf show in one
    or the other), so no temporary the size of ``a``. Integer and empty arrays are finite."""
    if a.size == 0 or a.dtype.kind not in "fc":
        return True
    if a.dtype.kind == "c":
        return bool(np.isfinite(a).all())
    return bool(np.isfinite(a.min()) and np.isfinite(a.max()))


def check_finite(name: str, a) -> None:
    """ValueError naming the first NaN or infinity in ``a`` (tested by :func:`all_finite`). A
    sparse ``a`` is checked on its stored values."""
    if is_sparse(a):
        a = a if getattr(a, "format", None) in ("csr", "csc", "coo") else a.tocsr()  # .data: the stored values
        if all_finite(a.data):
            return
        coo = a.tocoo()  # only to name the position
        bad = ~np.isfinite(coo.data)
        if bad.any():
            k = int(np.argmax(bad))
            raise ValueError(f"{name} contains NaN or infinity (the first at index ({int(coo.row[k])}, "
                             f"{int(coo.col[k])}), value {coo.data[k]}); fastmlp needs finite data: drop or impute "
                             f"those entries")
        return
    if all_finite(a):
        return
    where = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
    raise ValueError(f"{name} contains NaN or infinity (the first at index {where}, value {a[where]}); fastmlp "
                     f"needs finite data: drop or impute those entries")


def empty(shape, dtype, device: str):
    if device == "cpu":
        return np.empty(shape, dtype)
    from . import cuda

    return cuda.empty(shape, dtype)


def zeros(shape, dtype, device: str):
    if device == "cpu":
        return np.zeros(shape, dtype)
    from . import cuda

    return cuda.zeros(shape, dtype)


def to_device(a, device: str):
    """``a`` (host or device) as an array on ``device`` (a copy when it moves)."""
    if device == "cpu":
        return host_copy(a) if is_device(a) else a
    if is_device(a):
        return a
    from . import cuda

    return cuda.asarray(np.ascontiguousarray(a))


def view(flat, start: int, shape: Sequence[int]):
    """The contiguous piece ``flat[start:start+prod(shape)]`` as an array of ``shape`` (a view)."""
    size = int(np.prod(shape)) if len(shape) else 1
    return flat[start:start + size].reshape(tuple(shape))


def host_copy(a) -> np.ndarray:
    """A NumPy copy of a host or device array."""
    if is_device(a):
        return a.to_numpy()
    return np.array(a, copy=True)


def copy(a):
    """A copy on the same device."""
    if is_device(a):
        from . import cuda

        out = cuda.empty(a.shape, a.dtype)
        cuda.copy_(out, a)
        return out
    return a.copy()


def assign(dst, src) -> None:
    """``dst[...] = src`` where either may be on the device."""
    if is_device(dst):
        from . import cuda

        cuda.copy_(dst, src)
    elif is_device(src):
        dst[...] = src.to_numpy()
    else:
        dst[...] = src
