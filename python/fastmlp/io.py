"""The model-file format: an uncompressed ``.npz`` (a zip of ``.npy`` arrays) plus a JSON header
stored as the array ``__header__``. Models, autoencoders, checkpoints (and, later, fitted
estimators) all use it.

Writing is atomic: a temporary file in the same directory, flushed and fsync'ed, then renamed
over the target, so a failed save leaves any earlier file intact. Reading never unpickles and
never trusts the header: every member must be a stored (uncompressed) ``.npy`` whose declared
shape and dtype match its byte size, and no member may be larger than the file itself, so a
tampered file cannot make the loader allocate far beyond its size.
"""

from __future__ import annotations

import ast
import json
import os
import struct
import tempfile
import threading
import zipfile
from typing import Dict, Tuple

import numpy as np

__all__ = ["FORMAT_VERSION", "ModelFileError", "read_file", "write_file"]

FORMAT_NAME = "fastmlp"
FORMAT_VERSION = 1
_HEADER_KEY = "__header__"
_ALLOWED_DTYPES = {"<f4", "<f8", "<i4", "<i8", "|u1", "|b1", "<u4", "<u8"}
_MAX_HEADER_BYTES = 16 << 20
# What zipfile raises for damaged archives: a flipped flag bit reads as "encrypted" (RuntimeError) or
# as an unsupported feature/version (NotImplementedError); damaged sizes or offsets as struct errors.
_CORRUPT_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, RuntimeError,
                       NotImplementedError, struct.error)


class ModelFileError(ValueError):
    """A model or checkpoint file is truncated, tampered with, of another version, or not a
    fastmlp file. Subclass of ValueError."""


def write_file(path, header: dict, arrays: Dict[str, np.ndarray]) -> None:
    """Atomically write ``header`` (JSON-serialisable) and ``arrays`` to ``path``."""
    path = os.fspath(path)
    if _HEADER_KEY in arrays:
        raise ValueError(f"array name {_HEADER_KEY!r} is reserved")
    full_header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **header}
    header_bytes = json.dumps(full_header, sort_keys=True, allow_nan=True).encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastmlp-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp creates the file 0600; give it the mode a plain open() would (0666 & ~umask).
            os.fchmod(f.fileno(), 0o666 & ~_current_umask())
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
                _write_member(z, _HEADER_KEY, np.frombuffer(header_bytes, dtype=np.uint8))
                for name, arr in arrays.items():
                    _write_member(z, name, np.ascontiguousarray(arr))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


_UMASK_LOCK = threading.Lock()


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows: setting it to probe it
    (os.umask) would, for a moment, give files that other threads create the probe's mode."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # no /proc: probe with the most restrictive mask, then put it back
        umask = os.umask(0o077)
        os.umask(umask)
    return umask


def _write_member(z: zipfile.ZipFile, name: str, arr: np.ndarray) -> None:
    if arr.dtype == object:
        raise TypeError(f"array {name!r} has dtype object; model files hold plain numeric arrays only")
    with z.open(name + ".npy", "w", force_zip64=True) as m:
        np.lib.format.write_array(m, arr, allow_pickle=False)


def _header_int(digits: str) -> int:
    """JSON integers of the header: none that fastmlp writes exceeds 64 bits, so a longer one is
    tampering (and would overflow float() or int64 conversions further on)."""
    if len(digits.lstrip("-")) > 20:
        raise ModelFileError(f"header holds an integer of {len(digits.lstrip('-'))} digits (at most 20)")
    return int(digits)


def read_file(path) -> Tuple[dict, Dict[str, np.ndarray]]:
    """Read and validate a file written by :func:`write_file`. Raises :class:`ModelFileError`
    (a ValueError) for anything malformed, ``OSError`` for I/O problems."""
    path = os.fspath(path)
    file_size = os.path.getsize(path)
    try:
        z = zipfile.ZipFile(path, "r")
    except _CORRUPT_ZIP_ERRORS as e:
        raise ModelFileError(f"{path}: not a fastmlp model file (not a valid zip/npz: {e})") from None
    arrays: Dict[str, np.ndarray] = {}
    with z:
        try:
            infos = z.infolist()
        except Exception as e:  # noqa: BLE001 - any zip-level corruption
            raise ModelFileError(f"{path}: corrupt zip directory ({e})") from None
        names = set()
        for info in infos:
            if not info.filename.endswith(".npy"):
                raise ModelFileError(f"{path}: unexpected member {info.filename!r}")
            if info.compress_type != zipfile.ZIP_STORED:
                raise ModelFileError(f"{path}: member {info.filename!r} is compressed; fastmlp writes stored members")
            if info.file_size > file_size or info.compress_size > file_size:
                raise ModelFileError(f"{path}: member {info.filename!r} claims {info.file_size} bytes in a file of "
                                     f"{file_size} bytes (truncated or tampered)")
            name = info.filename[:-4]
            if name in names:
                raise ModelFileError(f"{path}: duplicate member {name!r}")
            names.add(name)
            arrays[name] = _read_member(z, info, path)
    if _HEADER_KEY not in arrays:
        raise ModelFileError(f"{path}: no header; not a fastmlp model file")
    raw = arrays.pop(_HEADER_KEY)
    if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > _MAX_HEADER_BYTES:
        raise ModelFileError(f"{path}: malformed header array")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"), parse_int=_header_int)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelFileError(f"{path}: header is not valid JSON ({e})") from None
    except ModelFileError as e:
        raise ModelFileError(f"{path}: {e}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path}: not a fastmlp model file (header format {header.get('format')!r})"
                             if isinstance(header, dict) else f"{path}: header is not a JSON object")
    version = header.get("version")
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{path}: format version {version!r} is not supported (this fastmlp reads version "
                             f"{FORMAT_VERSION})")
    return header, arrays


_NPY_MAGIC = b"\x93NUMPY"
_MAX_NPY_HEADER_BYTES = 10000


def _read_npy_header(f, what: str):
    """(shape, fortran_order, descr) of a .npy header, parsed here rather than by numpy: numpy's
    reader retries a header that is not a Python literal with a Python 2 filter and warns
    (a UserWarning, an error under warnings-as-errors); a fastmlp file never needs that."""
    magic = f.read(8)
    if len(magic) != 8 or magic[:6] != _NPY_MAGIC:
        raise ModelFileError(f"{what} is not a .npy array")
    major, minor = magic[6], magic[7]
    if (major, minor) == (1, 0):
        size_bytes, encoding = 2, "latin1"
    elif (major, minor) in ((2, 0), (3, 0)):
        size_bytes, encoding = 4, "latin1" if major == 2 else "utf-8"
    else:
        raise ModelFileError(f"{what} has unsupported .npy version {(major, minor)}")
    size = f.read(size_bytes)
    length = int.from_bytes(size, "little")
    if len(size) != size_bytes or length > _MAX_NPY_HEADER_BYTES:
        raise ModelFileError(f"{what} has a .npy header of {length} bytes (at most {_MAX_NPY_HEADER_BYTES})")
    raw = f.read(length)
    if len(raw) != length:
        raise ModelFileError(f"{what} is truncated inside its .npy header")
    try:
        header = ast.literal_eval(raw.decode(encoding))
    except (UnicodeDecodeError, SyntaxError, ValueError, TypeError, RecursionError, MemoryError) as e:
        raise ModelFileError(f"{what} has a malformed .npy header ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise ModelFileError(f"{what} has a malformed .npy header (expected the keys descr, fortran_order, shape)")
    return header["shape"], header["fortran_order"], header["descr"]


def _dtype_name(descr) -> str:
    """A refused .npy descr as numpy names it ("object" for "|O"), else its repr."""
    if isinstance(descr, str):
        try:
            return str(np.dtype(descr))
        except Exception:  # noqa: BLE001 - only names the dtype in the message
            pass
    return repr(descr)


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> np.ndarray:
    name = info.filename
    try:
        with z.open(info) as f:
            shape, fortran, descr = _read_npy_header(f, f"{path}: member {name!r}")
            if not isinstance(descr, str) or descr not in _ALLOWED_DTYPES:
                raise ModelFileError(f"{path}: member {name!r} has disallowed dtype {_dtype_name(descr)}")
            dtype = np.dtype(descr)
            if fortran is not False:
                raise ModelFileError(f"{path}: member {name!r} is Fortran-ordered")
            if not isinstance(shape, tuple) or any(type(d) is not int or d < 0 for d in shape):
                raise ModelFileError(f"{path}: member {name!r} has an invalid shape {shape!r}")
            count = 1
            for d in shape:
                count *= d
            nbytes = count * dtype.itemsize
            header_len = f.tell()
            if header_len + nbytes != info.file_size:
                raise ModelFileError(f"{path}: member {name!r} declares shape {shape} ({nbytes} bytes) but holds "
                                     f"{info.file_size - header_len} bytes (truncated or tampered)")
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise ModelFileError(f"{path}: member {name!r} is truncated")
            return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    except ModelFileError:
        raise
    except _CORRUPT_ZIP_ERRORS + (OSError, KeyError, TypeError) as e:
        raise ModelFileError(f"{path}: member {name!r} is corrupt ({type(e).__name__}: {e})") from None
