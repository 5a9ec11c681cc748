"""Fitted estimators to and from model files: ``est.save(path)`` and ``fastmlp.load(path)`` give
back an equivalent estimator (same predictions, classes, parameters and fitted attributes), and a
truncated, corrupted or tampered estimator file raises ``fastmlp.ModelFileError``."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.exceptions import NotFittedError  # noqa: E402

import fastmlp  # noqa: E402
from fastmlp.datasets import load_digits  # noqa: E402
from fastmlp.io import read_file, write_file  # noqa: E402
from fastmlp.sklearn import AutoencoderTransformer, MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def data():
    X, y = load_digits("float64")
    X = (X - X.mean(axis=0)) / np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
    return X[:300], y[:300]


def _fit_classifier(X, y):
    return MLPClassifier((16,), max_iter=5, random_state=0).fit(X, y)


#: Every estimator kind a file can hold: name -> (builder(X, y), method whose output must survive).
KINDS = {
    "classifier_int_labels": (lambda X, y: _fit_classifier(X, y), "predict_proba"),
    "classifier_string_labels": (lambda X, y: _fit_classifier(X, np.array(["a", "bb", "c"])[y % 3]), "predict"),
    "classifier_bool_labels": (lambda X, y: _fit_classifier(X, y > 4), "predict"),
    "classifier_float_labels": (lambda X, y: _fit_classifier(X, (y % 3) * 1.0), "predict"),
    "classifier_dropout_batch_norm_early_stopping": (
        lambda X, y: MLPClassifier((16, 8), dropout=0.2, batch_norm=True, early_stopping=True, alpha=(1e-3, 0, 0),
                                   l1=1e-4, max_iter=5, random_state=0).fit(X, y), "predict_proba"),
    "classifier_multilabel": (
        lambda X, y: MLPClassifier((16,), max_iter=5, random_state=0).fit(X, np.c_[y % 2, y > 4]), "predict_proba"),
    "regressor_1d": (lambda X, y: MLPRegressor((16,), max_iter=5, random_state=0).fit(X, y.astype(float)),
                     "predict"),
    "regressor_multi_output": (
        lambda X, y: MLPRegressor((16,), activation="tanh", max_iter=5, random_state=0).fit(X, np.c_[y, -y]),
        "predict"),
    "autoencoder_denoising": (
        lambda X, y: AutoencoderTransformer((16, 2), noise="gaussian", level=0.3, max_iter=5,
                                            random_state=0).fit(X), "transform"),
    "autoencoder_tied": (
        lambda X, y: AutoencoderTransformer((16, 3), tied=True, activation="logistic", max_iter=5,
                                            random_state=0).fit(X), "inverse_transform"),
}

FITTED_ATTRIBUTES = ("n_iter_", "t_", "loss_curve_", "validation_scores_", "best_loss_", "best_validation_score_",
                     "n_features_in_", "n_outputs_", "n_layers_", "out_activation_")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_saved_estimator_loads_back_equivalent(kind, data, tmp_path):
    X, y = data
    build, method = KINDS[kind]
    est = build(X, y)
    path = tmp_path / "est.npz"
    est.save(path)
    loaded = fastmlp.load(path)
    assert type(loaded) is type(est)
    assert loaded.get_params() == est.get_params()
    inputs = est.transform(X) if method == "inverse_transform" else X
    np.testing.assert_array_equal(getattr(loaded, method)(inputs), getattr(est, method)(inputs))
    np.testing.assert_array_equal(loaded.model_.parameters(), est.model_.parameters())
    for name, buffer in est.model_.buffers().items():
        np.testing.assert_array_equal(loaded.model_.buffers()[name], buffer)
    for name in FITTED_ATTRIBUTES:
        if hasattr(est, name):
            assert getattr(loaded, name) == getattr(est, name), name
    if hasattr(est, "classes_"):
        np.testing.assert_array_equal(loaded.classes_, est.classes_)
        assert loaded.classes_.dtype.kind == est.classes_.dtype.kind or (
            loaded.classes_.dtype.kind == "U" and est.classes_.dtype.kind == "O")
        np.testing.assert_array_equal(loaded.predict(X), est.predict(X))


def test_loaded_estimator_can_continue_training(data, tmp_path):
    X, y = data
    est = MLPClassifier((16,), max_iter=3, random_state=0).fit(X, y)
    est.save(tmp_path / "est.npz")
    loaded = fastmlp.load(tmp_path / "est.npz")
    loaded.partial_fit(X, y)
    assert len(loaded.loss_curve_) == 4
    loaded.set_params(warm_start=True).fit(X, y)
    assert loaded.loss_curve_[-1] < est.loss_curve_[-1]


def test_estimator_file_holds_no_pickles(data, tmp_path):
    X, y = data
    _fit_classifier(X, np.array(["x", "y"])[y % 2]).save(tmp_path / "est.npz")
    with np.load(tmp_path / "est.npz", allow_pickle=False) as f:
        for name in f.files:
            assert f[name].dtype != object


def test_unfitted_estimator_refuses_to_save(tmp_path):
    with pytest.raises(NotFittedError):
        MLPClassifier().save(tmp_path / "est.npz")
    assert not os.listdir(tmp_path)


def test_failed_save_leaves_the_earlier_file_intact(data, tmp_path):
    X, y = data
    est = _fit_classifier(X, y)
    path = tmp_path / "est.npz"
    est.save(path)
    before = path.read_bytes()
    est.set_params(verbose=object())  # a parameter no file can hold
    with pytest.raises(TypeError, match="cannot be saved"):
        est.save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["est.npz"]  # no temp file left behind
    assert isinstance(fastmlp.load(path), MLPClassifier)


# -- damaged files ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(data, tmp_path_factory):
    X, y = data
    path = tmp_path_factory.mktemp("saved") / "est.npz"
    MLPClassifier((8,), max_iter=2, random_state=0).fit(X, np.array(["a", "b", "c"])[y % 3]).save(path)
    return path


def test_truncated_files_raise_model_file_error(saved, tmp_path):
    raw = saved.read_bytes()
    for cut in sorted(set(np.linspace(0, len(raw) - 1, 60).astype(int))):
        path = tmp_path / "cut.npz"
        path.write_bytes(raw[:cut])
        with pytest.raises(fastmlp.ModelFileError):
            fastmlp.load(path)


def test_corrupted_bytes_raise_model_file_error_or_load_unchanged(saved, tmp_path, data):
    """Flip one byte at offsets across the file: the loader either notices (CRC, header, size
    checks) and raises ModelFileError, or the byte was one the reader ignores and the estimator
    predicts exactly as before. Nothing else may escape."""
    X, _ = data
    raw = saved.read_bytes()
    reference = fastmlp.load(saved).predict_proba(X)
    rng = np.random.default_rng(0)
    offsets = sorted(set(rng.integers(0, len(raw), size=150).tolist()) | set(range(0, 64)))
    raised = 0
    for offset in offsets:
        damaged = bytearray(raw)
        damaged[offset] ^= 0x5A
        path = tmp_path / "damaged.npz"
        path.write_bytes(bytes(damaged))
        try:
            est = fastmlp.load(path)
        except fastmlp.ModelFileError:
            raised += 1
            continue
        np.testing.assert_array_equal(est.predict_proba(X), reference)
    assert raised > 0.5 * len(offsets)  # zip timestamps and attribute fields are ignored by readers


def _tampered(saved, tmp_path, edit_header=None, edit_arrays=None):
    header, arrays = read_file(saved)
    header.pop("format")
    header.pop("version")
    if edit_header:
        edit_header(header)
    if edit_arrays:
        edit_arrays(arrays)
    path = tmp_path / "tampered.npz"
    write_file(path, header, arrays)
    return path


def _set(path_keys, value):
    def edit(header):
        node = header
        for key in path_keys[:-1]:
            node = node[key]
        node[path_keys[-1]] = value
    return edit


def _drop(path_keys):
    def edit(header):
        node = header
        for key in path_keys[:-1]:
            node = node[key]
        del node[path_keys[-1]]
    return edit


TAMPERED_HEADERS = {
    "unknown_class": _set(["class"], "os.system"),
    "unknown_parameter": _set(["params", "exec"], "print(1)"),
    "unsupported_solver": _set(["params", "solver"], "lbfgs"),
    "negative_alpha": _set(["params", "alpha"], -1.0),
    "dict_parameter": _set(["params", "alpha"], {"a": 1}),
    "hidden_sizes_disagree_with_network": _set(["params", "hidden_layer_sizes"], [9]),
    "activation_disagrees_with_network": _set(["params", "activation"], "tanh"),
    "batch_norm_disagrees_with_network": _set(["params", "batch_norm"], True),
    "n_iter_not_an_int": _set(["fitted", "n_iter_"], "many"),
    "negative_t": _set(["fitted", "t_"], -5),
    "loss_curve_not_numbers": _set(["fitted", "loss_curve_"], ["x"]),
    "loss_not_a_number": _set(["fitted", "loss_"], [1, 2]),
    "n_features_disagree_with_network": _set(["fitted", "n_features_in_"], 3),
    "unknown_fitted_attribute": _set(["fitted", "__class__"], "x"),
    "too_many_classes": _set(["fitted", "classes"], ["a", "b", "c", "d"]),
    "unsorted_classes": _set(["fitted", "classes"], ["c", "b", "a"]),
    "classes_not_strings": _set(["fitted", "classes"], [1, 2, 3]),
    "missing_classes": _drop(["fitted", "classes_kind"]),
    "multilabel_flag_without_sigmoid_output": _set(["fitted", "_multilabel"], True),
    "bad_out_activation": _set(["fitted", "out_activation_"], "exp"),
    "params_not_an_object": _set(["params"], [1, 2]),
    "fitted_not_an_object": _set(["fitted"], "x"),
    "network_sizes_disagree_with_params": _set(["model", "model", "sizes"], [64, 9, 3]),
    "network_output_regression": _set(["model", "model", "output"], "identity"),
    "network_missing": _drop(["model"]),
}


@pytest.mark.parametrize("case", sorted(TAMPERED_HEADERS))
def test_tampered_header_raises_model_file_error(case, saved, tmp_path):
    path = _tampered(saved, tmp_path, edit_header=TAMPERED_HEADERS[case])
    with pytest.raises(fastmlp.ModelFileError):
        fastmlp.load(path)


def test_classifier_file_for_a_regressor_class_raises(saved, tmp_path):
    path = _tampered(saved, tmp_path, edit_header=_set(["class"], "MLPRegressor"))
    with pytest.raises(fastmlp.ModelFileError):
        fastmlp.load(path)


def test_autoencoder_class_over_an_mlp_network_raises(saved, tmp_path):
    def edit(header):
        header["class"] = "AutoencoderTransformer"
        header["params"] = {"hidden_layer_sizes": [8]}
        header["fitted"] = {}
    with pytest.raises(fastmlp.ModelFileError):
        fastmlp.load(_tampered(saved, tmp_path, edit_header=edit))


@pytest.mark.parametrize("case", ["wrong_size", "wrong_dtype", "nan", "extra_array"])
def test_tampered_arrays_raise_model_file_error(case, saved, tmp_path):
    def edit(arrays):
        if case == "wrong_size":
            arrays["model.params"] = arrays["model.params"][:-1]
        elif case == "wrong_dtype":
            arrays["model.params"] = arrays["model.params"].astype(np.float64)
        elif case == "nan":
            arrays["model.params"][3] = np.nan
        else:
            arrays["payload"] = np.zeros(3)
    with pytest.raises(fastmlp.ModelFileError):
        fastmlp.load(_tampered(saved, tmp_path, edit_arrays=edit))


def test_wrong_version_raises_model_file_error(saved, tmp_path):
    path = tmp_path / "v99.npz"
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            content = src.read(info)
            if info.filename == "__header__.npy":
                content = content.replace(b'"version": 1', b'"version": 99')
            dst.writestr(info, content)
    with pytest.raises(fastmlp.ModelFileError, match="version"):
        fastmlp.load(path)


def test_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        fastmlp.load(tmp_path / "missing.npz")
