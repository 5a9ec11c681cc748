"""Fuzz target for ``fastmlp.load`` (atheris, coverage-guided).

Contract (issue 8): any byte string given to ``fastmlp.load`` either loads a usable model or
raises ``fastmlp.ModelFileError`` (a ValueError) or ``OSError`` with a message. Anything else is a
finding: another exception type, a crash, a hang (libFuzzer's -timeout), or an allocation far
beyond the file's size (the address space is capped, so that shows up as a MemoryError).

A model file is a zip of .npy members whose CRCs must match, so raw byte mutation of a valid file
mostly stops at the zip layer. Inputs therefore come in three encodings, told apart by their start:
  b"PK..."         the raw file (zip-level damage: directory, offsets, sizes, flags, CRCs);
  b"#members\\n"   members as text records, zipped by the harness with correct CRCs, so the
                   fuzzer edits the JSON header and the .npy headers directly (see encode_members);
  anything else    a FuzzedDataProvider script of typed edits (set a JSON value at a path to an
                   interesting value, drop a key, lie in an array's .npy header, change its dtype,
                   truncate it, add or drop members) applied to one of the template models.

    python fuzz/fuzz_load.py fuzz/corpus/load -max_total_time=60      # fuzz
    python fuzz/fuzz_load.py crash-<sha1>                              # replay one input
"""

from __future__ import annotations

import io
import json
import math
import os
import resource
import sys
import tempfile
import warnings
import zipfile

import numpy as np

MEMBERS_MAGIC = b"#members\n"
RECORD_SEP = b"\n@@member "
HEADER_JSON = "__header__.json"  # a member given as JSON text; the harness wraps it in a uint8 .npy


# -- templates and encodings (also used by make_corpus.py and the regression tests) ------------------


def template_models():
    """Small models of every kind fastmlp saves, keyed by a short name."""
    import fastmlp
    from fastmlp import nn

    models = {
        "mlp": fastmlp.MLP([4, 3, 2], output="softmax", seed=1),
        "mlp_bn_dropout": fastmlp.MLP([5, 4, 3, 2], activation="tanh", batch_norm=True, dropout=[0.1, 0.2],
                                      input_dropout=0.05, output="sigmoid", seed=2, dtype="float64"),
        "sequential": nn.Sequential(nn.Noise("gaussian", 0.1), nn.Dense(3, 4), nn.BatchNorm(4), nn.ReLU(),
                                    nn.Dropout(0.3), nn.Dense(4, 2, bias=False), nn.Sigmoid(),
                                    nn.TiedDense(5, bias=True), seed=3),
        "autoencoder": fastmlp.Autoencoder([6, 3, 2], tied=True, seed=4),
        "denoising": fastmlp.DenoisingAutoencoder([4, 2], noise="mask", level=0.25, seed=5, dtype="float64"),
    }
    scaled = fastmlp.MLP([3, 2, 1], output="identity", seed=6)
    scaled.scaler = {"x_mean": np.array([0.5, -1.0, 2.0]), "x_scale": np.array([1.0, 2.0, 0.5]),
                     "y_mean": np.array([3.0]), "y_scale": np.array([4.0])}
    models["mlp_scaler"] = scaled
    return models


def template_estimators():
    """Fitted scikit-learn estimators (tiny data, one epoch), keyed by a short name."""
    from fastmlp import sklearn as fsk

    import warnings

    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one epoch does not converge
        return {
            "classifier": fsk.MLPClassifier(hidden_layer_sizes=(3,), max_iter=1, random_state=0)
            .fit(X, np.array(["a", "b", "c"] * 4)),
            "regressor": fsk.MLPRegressor(hidden_layer_sizes=(2,), max_iter=1, random_state=0).fit(X, X[:, 0]),
            "transformer": fsk.AutoencoderTransformer(hidden_layer_sizes=(2,), max_iter=1, random_state=0).fit(X),
        }


_TEMPLATES = []


def all_templates() -> list:
    """[(header, [[member name, npy bytes], ...])] of every template, in a fixed order: the
    structured-edit encoding indexes into it, so a saved input replays the same way."""
    if not _TEMPLATES:
        objects = list(template_models().values()) + list(template_estimators().values())
        _TEMPLATES.extend(split_file(file_bytes(obj)) for obj in objects)
    return _TEMPLATES


def file_bytes(obj) -> bytes:
    """The bytes of ``obj.save(...)``."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.npz")
        obj.save(path)
        with open(path, "rb") as f:
            return f.read()


def members_of(data: bytes) -> list:
    """[(member name, member bytes)] of a zip, in order."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def npy_with_header(header_text: str, payload: bytes) -> bytes:
    """A .npy v1.0 member with a hand-written (possibly lying) header dict."""
    text = header_text.encode("latin1", "replace")
    text += b" " * ((-(len(text) + 11)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + payload


def encode_members(members: list) -> bytes:
    """The ``#members`` encoding: the __header__ member as JSON text, the others as raw .npy."""
    out = [MEMBERS_MAGIC]
    for name, content in members:
        if name == "__header__.npy":
            arr = np.lib.format.read_array(io.BytesIO(content))
            name, content = HEADER_JSON, arr.tobytes()
        out.append(RECORD_SEP + name.encode("utf-8", "replace") + b"\n" + content)
    return b"".join(out)


def decode_members(data: bytes) -> list:
    members = []
    for record in data[len(MEMBERS_MAGIC):].split(RECORD_SEP):
        if not record:
            continue
        name, _, content = record.partition(b"\n")
        name = name.decode("utf-8", "replace")
        if name == HEADER_JSON:
            name, content = "__header__.npy", npy_bytes(np.frombuffer(content, dtype=np.uint8))
        members.append((name, content))
    return members


def zip_members(members: list) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are part of the game
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
            for name, content in members:
                z.writestr(zipfile.ZipInfo(name or "_"), content)
    return buf.getvalue()


# -- structured edits ---------------------------------------------------------------------------------

INTERESTING_INTS = [0, 1, -1, 2, 3, 7, 255, 256, 2**24, 2**24 + 1, 2**31 - 1, 2**31, 2**32, 2**40, 2**53 + 1,
                    2**62, 2**63 - 1, 2**63, 2**64, 2**64 + 1, 10**12, 10**30, -(2**63), 10**400]
INTERESTING_FLOATS = [0.0, -0.0, 0.5, 1.0, -1.0, 0.999999, 1e-30, 1e-300, 5e-324, 1e308, math.inf, -math.inf,
                      math.nan, 1.5, 1e6, 1e7, -1e-5]
INTERESTING_STRINGS = ["", "MLP", "Sequential", "Dense", "TiedDense", "BatchNorm", "Dropout", "Noise", "ReLU",
                       "model", "autoencoder", "estimator", "checkpoint", "float32", "float64", "float16", "object",
                       "int32", "|O", "identity", "softmax", "sigmoid", "logistic", "tanh", "relu", "gaussian",
                       "mask", "he", "glorot", "tiny", "inf", "-inf", "nan", "1e999", "fastmlp", "x_mean",
                       "y_scale", "MLPClassifier", "MLPRegressor", "AutoencoderTransformer",
                       "DenoisingAutoencoder", "Autoencoder", "array", "str", "\udcff", "a" * 300]
ARRAY_DTYPES = ["<f4", "<f8", ">f4", ">f8", "<f2", "<i4", "<i8", "|u1", "|b1", "<u8", "<c8", "|O", "<U3", "|V4",
                "<M8[s]", "[('a', '<f4')]"]


def _json_value(fdp, depth=0):
    kind = fdp.ConsumeIntInRange(0, 9)
    if kind == 0:
        return fdp.PickValueInList(INTERESTING_INTS)
    if kind == 1:
        return fdp.PickValueInList(INTERESTING_FLOATS)
    if kind == 2:
        return fdp.PickValueInList(INTERESTING_STRINGS)
    if kind == 3:
        return fdp.ConsumeBool()
    if kind == 4:
        return None
    if kind == 5:
        return fdp.ConsumeIntInRange(-3, 70)
    if kind == 6 and depth < 3:
        return [_json_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    if kind == 7 and depth < 3:
        return {fdp.PickValueInList(INTERESTING_STRINGS): _json_value(fdp, depth + 1)
                for _ in range(fdp.ConsumeIntInRange(0, 3))}
    if kind == 8:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 12))
    return [fdp.ConsumeIntInRange(0, 9) for _ in range(fdp.ConsumeIntInRange(0, 6))]


def _pick_container(fdp, root):
    """Walk into ``root`` to a dict or list, returning (container, key)."""
    node = root
    while True:
        keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return node, None
        key = keys[fdp.ConsumeIntInRange(0, len(keys) - 1)]
        child = node[key]
        if isinstance(child, (dict, list)) and child and fdp.ConsumeIntInRange(0, 3) != 0:
            node = child
            continue
        return node, key


def _edit_header(fdp, header):
    node, key = _pick_container(fdp, header)
    action = fdp.ConsumeIntInRange(0, 4)
    if key is None or action == 0:  # add a key / element
        if isinstance(node, dict):
            node[fdp.PickValueInList(INTERESTING_STRINGS)] = _json_value(fdp)
        else:
            node.append(_json_value(fdp))
    elif action == 1:  # delete it
        del node[key]
    elif action == 2 and isinstance(node[key], (int, float)) and not isinstance(node[key], bool):
        node[key] = node[key] + fdp.ConsumeIntInRange(-2, 2)
    else:
        node[key] = _json_value(fdp)


def _edit_arrays(fdp, arrays):
    """arrays: list of [name, npy bytes]. An edit that cannot apply (a cast from an earlier edit's
    string dtype, say) leaves the arrays as they are."""
    try:
        _edit_arrays_unchecked(fdp, arrays)
    except (ValueError, TypeError, OverflowError):
        pass


def _edit_arrays_unchecked(fdp, arrays):
    action = fdp.ConsumeIntInRange(0, 7)
    if action == 0 or not arrays:
        arrays.append([fdp.PickValueInList(["params", "buffer.1.running_mean", "scaler.x_mean", "classes",
                                            "model.params", "__header__", "x", "a/../b"]) + ".npy",
                       npy_bytes(np.zeros(fdp.ConsumeIntInRange(0, 5), np.float32))])
        return
    i = fdp.ConsumeIntInRange(0, len(arrays) - 1)
    name, content = arrays[i]
    try:
        arr = np.lib.format.read_array(io.BytesIO(content), allow_pickle=False)
    except Exception:  # noqa: BLE001 - an earlier edit made it unreadable
        arr = np.zeros(3, np.float32)
    if action == 1:
        del arrays[i]
    elif action == 2:  # a lying header: shape and dtype that do not fit the payload
        shape = tuple(fdp.PickValueInList([0, 1, 2, 3, 5, 2**31, 2**40, 2**62, 10**20, -1])
                      for _ in range(fdp.ConsumeIntInRange(0, 3)))
        descr = fdp.PickValueInList(ARRAY_DTYPES)
        fortran = fdp.ConsumeBool() and fdp.ConsumeBool()
        text = "{'descr': %r, 'fortran_order': %r, 'shape': %r, }" % (descr, fortran, shape)
        if fdp.ConsumeIntInRange(0, 4) == 0:
            text = text[: fdp.ConsumeIntInRange(0, len(text))]
        arrays[i][1] = npy_with_header(text, arr.tobytes()[: fdp.ConsumeIntInRange(0, arr.nbytes)])
    elif action == 3:  # another dtype, consistent header
        dtype = fdp.PickValueInList(["<f4", "<f8", "<f2", "<i4", "<i8", "|u1", "|b1", "<u8", ">f4"])
        arrays[i][1] = npy_bytes(arr.astype(dtype) if arr.dtype.kind != "V" else arr)
    elif action == 4:  # values: NaN, inf, huge, negative
        if arr.size and arr.dtype.kind in "fiu":
            flat = arr.astype(np.float64).ravel()
            flat[fdp.ConsumeIntInRange(0, flat.size - 1)] = fdp.PickValueInList(INTERESTING_FLOATS)
            with np.errstate(all="ignore"):
                arrays[i][1] = npy_bytes(flat.astype(arr.dtype).reshape(arr.shape))
    elif action == 5:  # reshape or resize
        n = fdp.ConsumeIntInRange(0, arr.size + 3)
        new = np.resize(arr.ravel(), n)
        if fdp.ConsumeBool() and n >= 2 and n % 2 == 0:
            new = new.reshape(2, n // 2)
        arrays[i][1] = npy_bytes(new)
    elif action == 6:  # truncate the member
        arrays[i][1] = content[: fdp.ConsumeIntInRange(0, len(content))]
    else:  # rename
        arrays[i][0] = fdp.PickValueInList(["params", "buffer.1.running_var", "scaler.y_scale", "classes",
                                            "model.params", "params.npy", "x"]) + ".npy"


def structured_file(data: bytes, templates: list) -> bytes:
    """Build a model file from a FuzzedDataProvider script of edits on a template model."""
    import atheris

    fdp = atheris.FuzzedDataProvider(data)
    header, arrays = templates[fdp.ConsumeIntInRange(0, len(templates) - 1)]
    header = json.loads(json.dumps(header))
    arrays = [list(a) for a in arrays]
    for _ in range(fdp.ConsumeIntInRange(1, 6)):
        if fdp.ConsumeIntInRange(0, 2):
            _edit_header(fdp, header)
        else:
            _edit_arrays(fdp, arrays)
    text = json.dumps(header, allow_nan=True).encode("utf-8")
    members = [("__header__.npy", npy_bytes(np.frombuffer(text, dtype=np.uint8)))] + [tuple(a) for a in arrays]
    return zip_members(members)


def file_from_input(data: bytes, templates: list) -> bytes:
    if data.startswith(MEMBERS_MAGIC):
        return zip_members(decode_members(data))
    if data.startswith(b"PK"):
        return data
    return structured_file(data, templates)


def split_file(data: bytes):
    """(header dict, [[name, npy bytes], ...]) of a valid model file."""
    members = members_of(data)
    header = json.loads(np.lib.format.read_array(io.BytesIO(dict(members)["__header__.npy"])).tobytes())
    return header, [[n, c] for n, c in members if n != "__header__.npy"]


# -- the contract ------------------------------------------------------------------------------------


def check_loaded(obj) -> None:
    """A loaded object must be usable: predict on two rows of zeros without error."""
    import fastmlp
    from fastmlp import nn
    from fastmlp import sklearn as fsk

    if isinstance(obj, nn.Sequential):
        x = np.zeros((2, obj.in_features), dtype=obj.dtype)
        y = obj.forward(x)
        assert y.shape == (2, obj.out_features), y.shape
    elif isinstance(obj, fastmlp.Autoencoder):
        x = np.zeros((2, obj.sizes[0]), dtype=obj.dtype)
        assert obj.reconstruct(x).shape == x.shape
    elif isinstance(obj, (fsk.MLPClassifier, fsk.MLPRegressor, fsk.AutoencoderTransformer)):
        x = np.zeros((2, obj.n_features_in_))
        if isinstance(obj, fsk.AutoencoderTransformer):
            obj.transform(x)
        else:
            obj.predict(x)
    else:
        raise AssertionError(f"fastmlp.load returned a {type(obj).__name__}")


def load_bytes(file_data: bytes, path: str):
    """Write ``file_data`` to ``path`` and apply the contract to ``fastmlp.load(path)``: returns the
    loaded object, or the ModelFileError/OSError it raised; any other exception propagates."""
    import fastmlp

    with open(path, "wb") as f:
        f.write(file_data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as under pytest: a warning while loading is a finding
        try:
            obj = fastmlp.load(path)
        except (fastmlp.ModelFileError, OSError) as e:
            if not str(e).strip():
                raise AssertionError(f"{type(e).__name__} without a message") from e
            return e
        check_loaded(obj)
    return obj


def _address_space_cap(extra_bytes: int) -> None:
    """Cap the address space at what is mapped now plus ``extra_bytes``: an allocation far beyond
    the file size then fails (MemoryError, a finding) instead of swapping the machine."""
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    limit = vm + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main():
    import atheris

    with atheris.instrument_imports(include=["fastmlp"]):
        import fastmlp  # noqa: F401
        import fastmlp.sklearn  # noqa: F401
    # The zip parsers under the loader (fastmlp.io parses the .npy headers itself).
    for fn in (zipfile._EndRecData, zipfile._EndRecData64, zipfile.ZipFile._RealGetContents, zipfile.ZipFile.open):
        atheris.instrument_func(fn)

    fastmlp.set_num_threads(1)
    templates = all_templates()
    workdir = tempfile.mkdtemp(prefix="fuzz-load-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    path = os.path.join(workdir, "model.npz")
    # Warm every code path once (imports, thread pool) before capping the address space.
    for header, arrays in templates:
        load_bytes(zip_members([("__header__.npy", npy_bytes(np.frombuffer(
            json.dumps(header).encode(), np.uint8)))] + [tuple(a) for a in arrays]), path)
    _address_space_cap(int(os.environ.get("FUZZ_MEMORY_HEADROOM_MB", "1024")) << 20)

    def test_one_input(data: bytes) -> None:
        load_bytes(file_from_input(data, templates), path)

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
