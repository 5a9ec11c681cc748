"""Regression tests for what the fuzz targets (fuzz/fuzz_load.py, fuzz/fuzz_kernels.py) found, and
a replay of the committed seed corpora: each finding is pinned here in the form the fuzzer hit it.

Contracts: ``fastmlp.load`` on any bytes returns a usable model or raises ModelFileError (a
ValueError) or OSError with a message; a kernel either raises TypeError/ValueError/MemoryError or
returns a correct result."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

import fastmlp
from fastmlp import kernels
from fastmlp.io import ModelFileError

FUZZ_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fuzz")
sys.path.insert(0, FUZZ_DIR)
import fuzz_load  # noqa: E402


@pytest.fixture(scope="module")
def mlp_parts():
    model = fastmlp.MLP([4, 3, 2], output="softmax", batch_norm=True, seed=1)
    model.scaler = {"x_mean": np.zeros(4), "x_scale": np.ones(4), "y_mean": np.zeros(2), "y_scale": np.ones(2)}
    return fuzz_load.split_file(fuzz_load.file_bytes(model))


def _file(header, arrays) -> bytes:
    text = json.dumps(header, allow_nan=True).encode()
    return fuzz_load.zip_members([("__header__.npy", fuzz_load.npy_bytes(np.frombuffer(text, np.uint8)))]
                                 + [tuple(a) for a in arrays])


def _edited(parts, edit_header=None, edit_arrays=None) -> bytes:
    header, arrays = json.loads(json.dumps(parts[0])), [list(a) for a in parts[1]]
    if edit_header:
        edit_header(header)
    if edit_arrays:
        edit_arrays(arrays)
    return _file(header, arrays)


def _load_rejects(tmp_path, data: bytes, match: str) -> None:
    path = tmp_path / "m.npz"
    path.write_bytes(data)
    with pytest.raises(ModelFileError, match=match):
        fastmlp.load(path)


def test_unedited_parts_round_trip(tmp_path, mlp_parts):
    result = fuzz_load.load_bytes(_edited(mlp_parts), str(tmp_path / "m.npz"))
    assert isinstance(result, fastmlp.MLP)


# --- fastmlp.load findings -------------------------------------------------------------------------


@pytest.mark.parametrize("value, message", [({"relu": 1}, "activation .* is invalid"),
                                            ([{"relu": 1}], "activation .* is invalid"),
                                            (["relu", "relu"], "activation list is malformed")])
def test_activation_that_is_a_json_object_or_list_is_rejected_not_a_type_error(tmp_path, mlp_parts, value, message):
    # Was: TypeError "unhashable type: 'dict'" from `act in nn.ACTIVATIONS`. A list is one name per
    # hidden layer (the model has one).
    _load_rejects(tmp_path, _edited(mlp_parts, lambda h: h["model"].__setitem__("activation", value)), message)


def test_layer_type_that_is_a_list_is_rejected(tmp_path):
    model = fastmlp.nn.Sequential(fastmlp.nn.Dense(3, 2), fastmlp.nn.ReLU())
    parts = fuzz_load.split_file(fuzz_load.file_bytes(model))
    _load_rejects(tmp_path, _edited(parts, lambda h: h["model"]["layers"][1].__setitem__("type", ["ReLU"])),
                  "layer 1 is malformed")


def test_estimator_class_that_is_a_list_is_rejected(tmp_path):
    # Was: TypeError "unhashable type: 'list'" in the estimator dispatch.
    parts = fuzz_load.split_file(fuzz_load.file_bytes(fuzz_load.template_estimators()["regressor"]))
    _load_rejects(tmp_path, _edited(parts, lambda h: h.__setitem__("class", ["MLPRegressor"])),
                  "estimator class .* is invalid")


def test_npy_header_cut_inside_its_dict_is_rejected(tmp_path, mlp_parts):
    # Was: tokenize.TokenError ("EOF in multi-line statement") from numpy's header parser.
    def cut(arrays):
        arrays[0][1] = fuzz_load.npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (", b"")
    _load_rejects(tmp_path, _edited(mlp_parts, edit_arrays=cut), "malformed .npy header")


def test_npy_header_in_python_2_syntax_is_rejected_without_a_warning(tmp_path, mlp_parts):
    # Was: numpy's header reader retried with its Python 2 filter and warned (UserWarning, an error
    # under warnings-as-errors) instead of fastmlp rejecting the member.
    def py2(arrays):
        arrays[0][1] = fuzz_load.npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3L,), }",
                                                 np.zeros(3, np.float32).tobytes())
    _load_rejects(tmp_path, _edited(mlp_parts, edit_arrays=py2), "malformed .npy header")


@pytest.mark.parametrize("key, value", [("sizes", [6, float("inf"), 2]), ("seed", float("inf")), ("sizes", {"a": 1}),
                                        ("dropout", [0.1]), ("dtype", "object")])
def test_autoencoder_config_with_non_integer_values_is_rejected(tmp_path, key, value):
    # Was: OverflowError "cannot convert float infinity to integer" (JSON Infinity in sizes).
    parts = fuzz_load.split_file(fuzz_load.file_bytes(fuzz_load.template_models()["autoencoder"]))
    _load_rejects(tmp_path, _edited(parts, lambda h: h["autoencoder"].__setitem__(key, value)), "autoencoder")


@pytest.mark.parametrize("value", [10**400, -(10**30), 2**70])
def test_header_integer_beyond_64_bits_is_rejected(tmp_path, value):
    # Was: OverflowError "int too large to convert to float" from an estimator's fitted loss_.
    parts = fuzz_load.split_file(fuzz_load.file_bytes(fuzz_load.template_estimators()["regressor"]))
    _load_rejects(tmp_path, _edited(parts, lambda h: h["fitted"].__setitem__("loss_", value)), "integer of .* digits")


@pytest.mark.parametrize("keys", [["y_mean", "y_scale"], ["x_mean"], ["x_mean", "x_scale", "y_mean"]])
def test_scaler_with_a_missing_half_is_rejected(tmp_path, mlp_parts, keys):
    # Was: a model that loaded but raised KeyError('x_mean') on predict.
    _load_rejects(tmp_path, _edited(mlp_parts, lambda h: h.__setitem__("scaler", keys)), "scaler keys .* incomplete")


@pytest.mark.parametrize("value, match", [(np.nan, "NaN or Inf"), (-1.0, "negative")])
def test_batch_norm_buffer_with_nan_or_negative_variance_is_rejected(tmp_path, mlp_parts, value, match):
    # Was: a model that loaded and predicted NaN.
    def poison(arrays):
        for entry in arrays:
            if entry[0].endswith("running_var.npy"):
                arr = np.lib.format.read_array(__import__("io").BytesIO(entry[1]))
                arr[0] = value
                entry[1] = fuzz_load.npy_bytes(arr)
    _load_rejects(tmp_path, _edited(mlp_parts, edit_arrays=poison), match)


@pytest.mark.parametrize("key, value", [("scaler.x_scale.npy", 1e-300), ("scaler.x_scale.npy", 1e300),
                                        ("scaler.y_scale.npy", 1e-300), ("scaler.x_mean.npy", 1e39),
                                        ("scaler.x_mean.npy", 1e308)])
def test_scaler_outside_float32_range_is_rejected(tmp_path, mlp_parts, key, value):
    # Was (CI fuzz run, 60 s): x_scale = 1e-300 loaded, then predict overflowed in the float32 cast;
    # then (a 180 s run) the first check itself overflowed in |mean| / scale.
    def poison(arrays):
        for entry in arrays:
            if entry[0] == key:
                arr = np.lib.format.read_array(__import__("io").BytesIO(entry[1]))
                arr[0] = value
                entry[1] = fuzz_load.npy_bytes(arr)
    _load_rejects(tmp_path, _edited(mlp_parts, edit_arrays=poison), "outside float32's range")


# --- kernel findings -------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [
    lambda shape: kernels.dropout_mask(shape, 0.5, seed=1, offset=2),
    lambda shape: kernels.random_uniform(shape, seed=1, offset=2),
    lambda shape: kernels.random_normal(shape, seed=1, offset=2),
], ids=["dropout_mask", "random_uniform", "random_normal"])
@pytest.mark.parametrize("shape", [10**20, (2, 2**64), [2**63]])
def test_shape_dimension_beyond_int64_raises_value_error(fn, shape):
    # Was: RuntimeError "Unable to cast Python instance of type <class 'int'> to C++ type".
    with pytest.raises((ValueError, MemoryError)):
        fn(shape)


@pytest.mark.parametrize("alpha, beta", [(3.5e38, 0.0), (-1e300, 0.0), (1.0, 3.5e38)])
def test_gemm_float32_scale_beyond_float32_range_is_rejected(alpha, beta):
    # Was: alpha=3.5e38 with K=0 returned NaN (alpha became inf in float32, inf * 0 = NaN).
    a, b, out = np.zeros((3, 0), np.float32), np.zeros((0, 2), np.float32), np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="beyond float32's range"):
        kernels.gemm(a, b, alpha=alpha, beta=beta, out=out)
    got = kernels.gemm(a.astype(np.float64), b.astype(np.float64), alpha=alpha, beta=beta,
                       out=out.astype(np.float64))
    np.testing.assert_array_equal(got, np.zeros((3, 2)))


def _unaligned(shape, dtype):
    """A C-contiguous array one byte off its dtype's alignment (a view into a byte buffer)."""
    dtype = np.dtype(dtype)
    raw = np.zeros(int(np.prod(shape)) * dtype.itemsize + 1, np.uint8)
    arr = raw[1:].view(dtype).reshape(shape)
    assert arr.flags.c_contiguous and not arr.flags.aligned
    return arr


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [
    ("gemm", "a", lambda u, d: kernels.gemm(u((4, 3), d), np.ones((3, 2), d))),
    ("gemm", "out", lambda u, d: kernels.gemm(np.ones((4, 3), d), np.ones((3, 2), d), out=u((4, 2), d))),
    ("activation", "x", lambda u, d: kernels.activation(u((5, 7), d), "tanh")),
    ("bias_grad", "grad", lambda u, d: kernels.bias_grad(u((5, 7), d))),
    ("adam_step", "exp_avg", lambda u, d: kernels.adam_step(np.ones(9, d), np.ones(9, d), u((9,), d), np.ones(9, d),
                                                            step=1, lr=0.1)),
], ids=lambda c: f"{c[0]}-{c[1]}" if isinstance(c, tuple) else None)
def test_unaligned_arrays_are_rejected(case, dtype):
    # Was (under UBSan, fuzz_kernels): "load of misaligned address ... for type 'const double'"; a
    # vectorised loop may use aligned loads, so outside the sanitizer this could fault.
    name, arg, call = case
    with pytest.raises(ValueError, match=f"^{name}: {arg} .*not aligned"):
        call(_unaligned, dtype)


def test_unaligned_labels_and_segment_tables_are_rejected():
    labels = _unaligned((4,), np.int64)
    labels[...] = [0, 1, 2, 1]
    with pytest.raises(ValueError, match="labels is not aligned"):
        kernels.softmax_cross_entropy(np.zeros((4, 3), np.float32), labels)
    bounds = _unaligned((1, 2), np.int64)
    bounds[...] = [[0, 4]]
    with pytest.raises(ValueError, match="segments bounds is not aligned"):
        kernels.sgd_step(np.ones(8, np.float32), np.ones(8, np.float32), None, step=1, lr=0.1,
                         segments=(bounds, np.ones((1, 3))))


@pytest.mark.parametrize("fn", [kernels.random_uniform, kernels.random_normal])
@pytest.mark.parametrize("dtype", ["bogus", np.int32, "f2"])
def test_bad_dtype_of_a_random_fill_raises_a_type_error_naming_the_kernel(fn, dtype):
    # Was: numpy's bare "data type 'bogus' not understood", which did not say which call failed.
    with pytest.raises(TypeError, match=f"^{fn.__name__}: dtype must be float32 or float64"):
        fn((2, 3), seed=1, offset=2, dtype=dtype)


# --- corpus replay ---------------------------------------------------------------------------------


def _corpus(target):
    directory = os.path.join(FUZZ_DIR, "corpus", target)
    return sorted(os.path.join(directory, f) for f in os.listdir(directory)) if os.path.isdir(directory) else []


@pytest.mark.parametrize("path", _corpus("load"), ids=os.path.basename)
def test_load_corpus_input_obeys_the_contract(tmp_path, path):
    with open(path, "rb") as f:
        data = f.read()
    structured = not data.startswith((b"PK", fuzz_load.MEMBERS_MAGIC))
    if structured:
        pytest.importorskip("atheris")  # the structured-edit encoding decodes with atheris
    templates = fuzz_load.all_templates() if structured else []
    result = fuzz_load.load_bytes(fuzz_load.file_from_input(data, templates), str(tmp_path / "m.npz"))
    if os.path.basename(path).count(".") == 1:  # an unmodified seed: <model>.npz or <model>.members
        assert not isinstance(result, Exception), f"a valid seed file failed to load: {result}"


@pytest.mark.parametrize("path", _corpus("kernels"), ids=os.path.basename)
def test_kernel_corpus_input_obeys_the_contract(path):
    pytest.importorskip("atheris")
    import fuzz_kernels

    with open(path, "rb") as f:
        data = f.read()
    previous = fastmlp.get_isa()
    try:
        fuzz_kernels.run_one(data)
    finally:
        fastmlp.set_isa(previous)
