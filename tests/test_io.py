"""Model files (fastmlp.io, fastmlp.serialize): save/load round trips give identical predictions;
writes are atomic; truncated, corrupted or tampered files raise fastmlp.ModelFileError (a
ValueError) with a clear message, never unpickle, and never allocate far beyond the file size."""

from __future__ import annotations

import io as _io
import json
import os
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastmlp
from fastmlp import io as fio
from fastmlp import nn, optim
from fastmlp.io import ModelFileError


def _trained_mlp():
    X, y = fastmlp.datasets.load_digits()
    model = fastmlp.MLP([64, 16, 10], output="softmax", batch_norm=True, dropout=0.2, seed=1)
    fastmlp.Trainer(model, optimizer=optim.Adam(1e-2), epochs=2, standardize=True, progress=False).fit(X[:400],
                                                                                                       y[:400])
    return model, X[400:500]


def _assert_same_model(a, b, X):
    np.testing.assert_array_equal(b.parameters(), a.parameters())
    assert b.parameters().dtype == a.parameters().dtype
    for k, v in a.buffers().items():
        np.testing.assert_array_equal(b.buffers()[k], v)
    np.testing.assert_array_equal(b.forward(X), a.forward(X))
    np.testing.assert_array_equal(b.predict(X), a.predict(X))
    if a.output != "identity":
        np.testing.assert_array_equal(b.predict_proba(X), a.predict_proba(X))
    assert b.config() == a.config()


# --- round trips -----------------------------------------------------------------------------


def test_mlp_with_batch_norm_and_scaler_round_trips(tmp_path):
    model, X = _trained_mlp()
    assert model.scaler is not None and np.any(model.layers[1].running_mean != 0)
    model.save(tmp_path / "m.npz")
    loaded = fastmlp.load(tmp_path / "m.npz")
    assert type(loaded) is fastmlp.MLP
    _assert_same_model(model, loaded, X)
    for k, v in model.scaler.items():
        np.testing.assert_array_equal(loaded.scaler[k], v)


def test_regression_mlp_with_target_scaler_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 3))
    y = 1000 + 10 * X @ np.array([1.0, 2.0, 3.0])
    model = fastmlp.MLP([3, 8, 1], activation="tanh", init="glorot", seed=4, dtype="float64")
    fastmlp.Trainer(model, epochs=2, standardize=True, progress=False).fit(X, y)
    model.save(tmp_path / "r.npz")
    loaded = fastmlp.load(tmp_path / "r.npz")
    assert set(loaded.scaler) == {"x_mean", "x_scale", "y_mean", "y_scale"}
    _assert_same_model(model, loaded, X)
    assert loaded.init == "glorot"


def test_sequential_round_trips(tmp_path):
    model = nn.Sequential(nn.Noise("gaussian", 0.1), nn.Dropout(0.1), nn.Dense(6, 8), nn.BatchNorm(8), nn.Tanh(),
                          nn.Dense(8, 5, bias=False), nn.Sigmoid(), nn.Dropout(0.3), nn.BatchNorm(5),
                          nn.Dense(5, 3), output="sigmoid", seed=7)
    rng = np.random.default_rng(1)
    model.parameters()[...] = rng.normal(size=model.n_parameters)
    for v in model.buffers().values():
        v[...] = rng.uniform(0.5, 2.0, size=v.shape)
    model.save(tmp_path / "s.npz")
    loaded = fastmlp.load(tmp_path / "s.npz")
    assert type(loaded) is nn.Sequential
    _assert_same_model(model, loaded, rng.normal(size=(10, 6)))


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("denoising", [False, True], ids=["plain", "denoising"])
def test_autoencoder_round_trips(tmp_path, tied, denoising):
    X, _ = fastmlp.datasets.load_digits()
    X = X[:200] / 16
    kw = dict(noise="mask", level=0.2) if denoising else {}
    cls = fastmlp.DenoisingAutoencoder if denoising else fastmlp.Autoencoder
    ae = cls([64, 12, 4], tied=tied, output="sigmoid", **kw).fit(X, epochs=2, progress=False)
    ae.save(tmp_path / "ae.npz")
    loaded = fastmlp.load(tmp_path / "ae.npz")
    assert type(loaded) is cls and loaded.config() == ae.config()
    np.testing.assert_array_equal(loaded.encode(X), ae.encode(X))
    np.testing.assert_array_equal(loaded.reconstruct(X), ae.reconstruct(X))
    np.testing.assert_array_equal(loaded.reconstruction_error(X), ae.reconstruction_error(X))
    np.testing.assert_array_equal(loaded.model.parameters(), ae.model.parameters())


# --- atomic writes ----------------------------------------------------------------------------


def _leftovers(directory):
    return sorted(p for p in os.listdir(directory) if p.endswith(".tmp") or p.startswith(".fastmlp-"))


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=["oserror", "ctrl_c"])
def test_a_failing_write_leaves_the_earlier_file_intact_and_no_temp_file(tmp_path, monkeypatch, error):
    model, X = _trained_mlp()
    path = tmp_path / "model.npz"
    model.save(path)
    before = path.read_bytes()
    other = fastmlp.MLP([64, 16, 10], output="softmax", batch_norm=True, dropout=0.2, seed=99)
    calls = []
    original = np.lib.format.write_array

    def failing(fp, array, *args, **kw):  # writes the header member, then fails mid-way
        calls.append(array.size)
        if len(calls) == 2:
            fp.write(b"\x00" * 100)
            raise error
        return original(fp, array, *args, **kw)

    monkeypatch.setattr(np.lib.format, "write_array", failing)
    with pytest.raises(type(error)):
        other.save(path)
    monkeypatch.undo()
    assert len(calls) == 2
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []
    _assert_same_model(model, fastmlp.load(path), X)


def test_save_replaces_an_existing_file(tmp_path):
    a = fastmlp.MLP([3, 2], seed=1)
    b = fastmlp.MLP([3, 4, 2], seed=2)
    a.save(tmp_path / "m.npz")
    b.save(tmp_path / "m.npz")
    assert fastmlp.load(tmp_path / "m.npz").sizes == [3, 4, 2]
    assert _leftovers(tmp_path) == []


# --- damaged files ----------------------------------------------------------------------------


def _small_file(tmp_path):
    model = fastmlp.MLP([4, 5, 3], batch_norm=True, output="softmax")
    model.scaler = {"x_mean": np.zeros(4), "x_scale": np.ones(4)}
    path = tmp_path / "small.npz"
    model.save(path)
    return model, path.read_bytes()


def test_truncated_files_raise_model_file_error(tmp_path):
    _, data = _small_file(tmp_path)
    path = tmp_path / "cut.npz"
    for size in range(0, len(data)):
        path.write_bytes(data[:size])
        with pytest.raises(ModelFileError):
            fastmlp.load(path)


def test_flipped_bytes_raise_model_file_error_or_change_nothing(tmp_path):
    """Every byte of a small model file flipped (all bits, and the lowest bit): the loader raises
    ModelFileError (the CRC covers the data and the header) or, for bytes it does not use (zip
    timestamps, attributes), loads the very same model."""
    model, data = _small_file(tmp_path)
    X = np.random.default_rng(0).normal(size=(4, 4))
    expected = model.forward(X)
    path = tmp_path / "flipped.npz"
    harmless = 0
    for i in range(len(data)):
        for mask in (0xFF, 0x01):
            corrupt = bytearray(data)
            corrupt[i] ^= mask
            path.write_bytes(bytes(corrupt))
            try:
                loaded = fastmlp.load(path)
            except ModelFileError:
                continue
            harmless += 1
            np.testing.assert_array_equal(loaded.parameters(), model.parameters())
            np.testing.assert_array_equal(loaded.forward(X), expected)
    assert harmless < len(data)  # most flips are caught


def test_model_file_error_is_a_value_error_and_missing_files_are_os_errors(tmp_path):
    assert issubclass(ModelFileError, ValueError)
    with pytest.raises(OSError):
        fastmlp.load(tmp_path / "missing.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ModelFileError, match="not a fastmlp model file"):
        fastmlp.load(tmp_path / "empty.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ModelFileError, match="not a valid zip"):
        fastmlp.load(tmp_path / "text.npz")


# --- tampered files ---------------------------------------------------------------------------


def _rewrite(tmp_path, data_path, edit_header=None, edit_arrays=None, name="tampered.npz"):
    """Read a valid file, let the caller edit its header and arrays, write it back validly."""
    header, arrays = fio.read_file(data_path)
    header.pop("format")
    if edit_header:
        edit_header(header)
    if edit_arrays:
        edit_arrays(arrays)
    path = tmp_path / name
    fio.write_file(path, header, arrays)
    return path


def _raw_zip(path, members):
    """A zip of raw members {name: bytes}, stored uncompressed unless told otherwise."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, payload in members.items():
            if isinstance(payload, tuple):
                z.writestr(name, payload[0], compress_type=payload[1])
            else:
                z.writestr(name, payload)
    return path


def _npy(array, **kw):
    buf = _io.BytesIO()
    np.lib.format.write_array(buf, array, **kw)
    return buf.getvalue()


def _header_bytes(header):
    return _npy(np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))


@pytest.fixture
def saved_mlp(tmp_path):
    model = fastmlp.MLP([4, 5, 3], batch_norm=True, output="softmax")
    model.scaler = {"x_mean": np.zeros(4), "x_scale": np.ones(4)}
    path = tmp_path / "valid.npz"
    model.save(path)
    return path


def _set(path_keys, value):
    def edit(header):
        d = header
        for k in path_keys[:-1]:
            d = d[k]
        d[path_keys[-1]] = value
    return edit


_HEADER_TAMPERING = [
    ("wrong_version", _set(["version"], 2), "format version 2 is not supported"),
    ("wrong_format", _set(["format_"], 1), None),  # an extra key is harmless
    ("unknown_kind", _set(["kind"], "spaceship"), "unknown file kind 'spaceship'"),
    ("unknown_model_kind", _set(["model", "kind"], "Transformer"), "unknown model kind 'Transformer'"),
    ("bad_dtype", _set(["model", "dtype"], "int8"), "model dtype 'int8' is not float32 or float64"),
    ("bad_output", _set(["model", "output"], "relu"), "model output 'relu' is invalid"),
    ("bad_activation", _set(["model", "activation"], "gelu"), "activation 'gelu' is invalid"),
    ("bad_size", _set(["model", "sizes"], [4, -5, 3]), "MLP size must be an int"),
    ("size_as_string", _set(["model", "sizes"], [4, "5", 3]), "MLP size must be an int"),
    ("param_count_mismatch", _set(["model", "sizes"], [4, 6, 3]),
     "file holds 48 parameters but the architecture needs"),
    ("huge_architecture", _set(["model", "sizes"], [1 << 24, 1 << 24]), "implausibly large"),
    ("big_architecture", _set(["model", "sizes"], [8000, 8000, 3]), "file holds 48 parameters but the architecture"),
    ("bad_dropout", _set(["model", "dropout"], [1.0]), "dropout must be a finite number"),
    ("nan_dropout", _set(["model", "dropout"], [float("nan")]), "dropout must be a finite number"),
    ("dropout_count", _set(["model", "dropout"], [0.1, 0.1]), "dropout list is malformed"),
    ("bad_seed", _set(["model", "seed"], -1), "seed must be an int"),
    ("bad_scaler_keys", _set(["scaler"], ["x_mean", "os.system"]), "scaler keys are malformed"),
    ("missing_model", lambda h: h.pop("model"), "model config must be an object"),
]


@pytest.mark.parametrize("name, edit, message", _HEADER_TAMPERING, ids=[t[0] for t in _HEADER_TAMPERING])
def test_tampered_headers_raise_model_file_error(tmp_path, saved_mlp, name, edit, message):
    path = _rewrite(tmp_path, saved_mlp, edit_header=edit)
    tracemalloc.start()
    try:
        if message is None:
            fastmlp.load(path)
        else:
            with pytest.raises(ModelFileError, match=message):
                fastmlp.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"loading a {path.stat().st_size}-byte file allocated {peak} bytes"


def _edit(key, fn):
    def edit(arrays):
        arrays[key] = fn(arrays[key])
    return edit


_ARRAY_TAMPERING = [
    ("nan_params", _edit("params", lambda p: np.where(np.arange(p.size) == 3, np.nan, p).astype(p.dtype)),
     "parameters contain NaN or Inf"),
    ("inf_params", _edit("params", lambda p: np.full_like(p, np.inf)), "parameters contain NaN or Inf"),
    ("short_params", _edit("params", lambda p: p[:-1]), "file holds 47 parameters but the architecture needs 48"),
    ("params_2d", _edit("params", lambda p: p.reshape(-1, 2)), "no 1-D 'params' array"),
    ("params_float64", _edit("params", lambda p: p.astype(np.float64)), "params dtype float64 does not match"),
    ("missing_params", lambda a: a.pop("params"), "no 1-D 'params' array"),
    ("missing_buffer", lambda a: a.pop("buffer.1.running_var"), "buffer '1.running_var' is missing"),
    ("wrong_buffer_shape", _edit("buffer.1.running_mean", lambda b: b[:2]),
     "buffer '1.running_mean' is missing or has"),
    ("nan_scaler", _edit("scaler.x_mean", lambda s: s * np.nan), "scaler.x_mean contains NaN"),
    ("zero_scale", _edit("scaler.x_scale", lambda s: s * 0), "scaler.x_scale must be positive"),
    ("scaler_width", _edit("scaler.x_scale", lambda s: s[:3]), "scaler.x_scale has 3 values, expected 4"),
]


@pytest.mark.parametrize("name, edit, message", _ARRAY_TAMPERING, ids=[t[0] for t in _ARRAY_TAMPERING])
def test_tampered_arrays_raise_model_file_error(tmp_path, saved_mlp, name, edit, message):
    path = _rewrite(tmp_path, saved_mlp, edit_arrays=edit)
    with pytest.raises(ModelFileError, match=message):
        fastmlp.load(path)


def test_huge_sequential_and_autoencoder_configs_are_refused_before_allocating(tmp_path):
    seq = nn.Sequential(nn.Dense(4, 3), nn.ReLU(), nn.Dense(3, 2))
    seq.save(tmp_path / "seq.npz")
    ae = fastmlp.Autoencoder([6, 3])
    ae.save(tmp_path / "ae.npz")
    cases = [
        (tmp_path / "seq.npz", _set(["model", "layers", 2, "out_features"], 8000), "architecture needs"),
        (tmp_path / "seq.npz",
         _set(["model", "layers", 0], {"type": "Dense", "in_features": 1 << 17, "out_features": 1 << 17, "bias": True}),
         "architecture needs"),
        (tmp_path / "seq.npz", _set(["model", "layers", 1], {"type": "Pickle"}), "layer 1 is malformed"),
        (tmp_path / "seq.npz", _set(["model", "layers", 1], {"type": "TiedDense", "tied_to": 1, "bias": True}),
         "not Dense"),
        (tmp_path / "ae.npz", _set(["autoencoder", "sizes"], [8000, 8000]), "malformed autoencoder config"),
        (tmp_path / "ae.npz", _set(["autoencoder", "sizes"], [6, 4]), "does not match its network"),
        (tmp_path / "ae.npz", _set(["autoencoder", "activation"], "gelu"), "malformed autoencoder config"),
    ]
    for source, edit, message in cases:
        path = _rewrite(tmp_path, source, edit_header=edit)
        tracemalloc.start()
        try:
            with pytest.raises(ModelFileError, match=message):
                fastmlp.load(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 << 20, f"{message}: loading allocated {peak} bytes"


def test_huge_declared_array_shapes_are_refused_without_allocating(tmp_path, saved_mlp):
    header, arrays = fio.read_file(saved_mlp)
    members = {"__header__.npy": _header_bytes(header)}
    for k, v in arrays.items():
        members[k + ".npy"] = _npy(v)
    # declare 10^12 float32 parameters in the .npy header, keep the small payload
    big_header = np.lib.format.header_data_from_array_1_0(arrays["params"])
    big_header["shape"] = (10 ** 12,)
    buf = _io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, big_header)
    members["params.npy"] = buf.getvalue() + arrays["params"].tobytes()
    path = _raw_zip(tmp_path / "huge.npz", members)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=r"declares shape \(1000000000000,\)"):
            fastmlp.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_structural_tampering_raises_model_file_error(tmp_path, saved_mlp):
    header, arrays = fio.read_file(saved_mlp)
    good = {"__header__.npy": _header_bytes(header), **{k + ".npy": _npy(v) for k, v in arrays.items()}}
    cases = {
        "bad_json": ({**good, "__header__.npy": _npy(np.frombuffer(b"{not json", dtype=np.uint8))},
                     "header is not valid JSON"),
        "json_list": ({**good, "__header__.npy": _npy(np.frombuffer(b"[1, 2]", dtype=np.uint8))},
                      "header is not a JSON object"),
        "deep_json": ({**good, "__header__.npy": _npy(np.frombuffer(b"[" * 100000 + b"]" * 100000, dtype=np.uint8))},
                      "header is not"),
        "not_utf8": ({**good, "__header__.npy": _npy(np.frombuffer(b"\xff\xfe{}", dtype=np.uint8))},
                     "header is not valid JSON"),
        "header_float": ({**good, "__header__.npy": _npy(np.zeros(3))}, "malformed header array"),
        "no_header": ({k: v for k, v in good.items() if k != "__header__.npy"}, "no header"),
        "foreign_format": ({**good, "__header__.npy": _header_bytes({**header, "format": "keras"})},
                           "header format 'keras'"),
        "extra_member": ({**good, "evil.py": b"import os"}, "unexpected member 'evil.py'"),
        "compressed": ({**good, "params.npy": (good["params.npy"], zipfile.ZIP_DEFLATED)}, "is compressed"),
        "pickled_object": ({**good, "params.npy": _npy(np.array([{"a": 1}], dtype=object), allow_pickle=True)},
                           "disallowed dtype object"),
        "fortran": ({**good, "buffer.1.running_mean.npy": _npy(np.asfortranarray(np.zeros((5, 2), np.float32)))},
                    "Fortran-ordered"),
        "truncated_member": ({**good, "params.npy": good["params.npy"][:-4]}, r"declares shape \(48,\) \(192 bytes\)"),
        "complex_dtype": ({**good, "params.npy": _npy(np.zeros(48, np.complex64))}, "disallowed dtype"),
    }
    for name, (members, message) in cases.items():
        path = _raw_zip(tmp_path / f"{name}.npz", members)
        with pytest.raises(ModelFileError, match=message):
            fastmlp.load(path)
    with zipfile.ZipFile(tmp_path / "dup.npz", "w") as z:
        for k, v in good.items():
            z.writestr(k, v)
        with pytest.warns(UserWarning, match="Duplicate name"):
            z.writestr("params.npy", good["params.npy"])
    with pytest.raises(ModelFileError, match="duplicate member 'params'"):
        fastmlp.load(tmp_path / "dup.npz")


def test_loading_never_unpickles(tmp_path, saved_mlp, monkeypatch):
    import pickle

    def refuse(*args, **kw):
        raise AssertionError("the loader unpickled something")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    fastmlp.load(saved_mlp)
    header, arrays = fio.read_file(saved_mlp)
    members = {"__header__.npy": _header_bytes(header), **{k + ".npy": _npy(v) for k, v in arrays.items()}}
    members["params.npy"] = _npy(np.array([object()] * 2, dtype=object), allow_pickle=True)
    with pytest.raises(ModelFileError):
        fastmlp.load(_raw_zip(tmp_path / "pickle.npz", members))


def test_damaged_checkpoints_raise_model_file_error(tmp_path):
    X, y = fastmlp.datasets.load_digits()
    trainer = fastmlp.Trainer(fastmlp.MLP([64, 8, 10], output="softmax"), epochs=1, progress=False)
    trainer.fit(X[:200], y[:200])
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    data = path.read_bytes()
    for size in range(0, len(data), max(1, len(data) // 200)):
        path.write_bytes(data[:size])
        with pytest.raises(ModelFileError):
            fastmlp.Trainer.from_checkpoint(path)
    path.write_bytes(data)
    tampered = _rewrite(tmp_path, path, edit_arrays=lambda a: a.__setitem__("optim.exp_avg", a["optim.exp_avg"][:5]))
    with pytest.raises(ModelFileError, match="optimizer state does not match"):
        fastmlp.Trainer.from_checkpoint(tampered)
    for i, edit in enumerate((lambda h: h.pop("epoch"), lambda h: h["settings"].update(batch_size="big"),
                              lambda h: h["optimizer"].update(type="Lion"), lambda h: h.pop("history"))):
        tampered = _rewrite(tmp_path, path, edit_header=edit, name=f"t{i}.ckpt")
        with pytest.raises(ModelFileError, match="malformed checkpoint"):
            fastmlp.Trainer.from_checkpoint(tampered)
