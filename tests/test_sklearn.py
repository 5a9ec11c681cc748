"""fastmlp.sklearn: the estimators pass scikit-learn's check_estimator, follow scikit-learn's own
definitions (alpha scaling, loss_curve_ with the penalty, stopping rules, batch_size="auto"),
work in Pipeline and hyper-parameter searches, pickle, and match scikit-learn's MLPs in accuracy.

References are NumPy float64 forward passes over ``coefs_``/``intercepts_``; the networks run in
float32, so comparisons of a loss use a relative tolerance of 1e-5 (a few float32 ulps summed
over ~100 terms)."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, train_test_split  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastmlp  # noqa: E402
from fastmlp.datasets import load_digits  # noqa: E402
from fastmlp.sklearn import AutoencoderTransformer, MLPClassifier, MLPRegressor  # noqa: E402

# Most fits below stop at max_iter on purpose (speed); the warning itself is tested separately.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

#: The one check the issue allows to fail (on dense and on sparse data), and why.
_WEIGHT_EQUIVALENCE = ("a minibatch trainer cannot meet it: weighting a row by 2 and repeating it give different "
                       "batches; scikit-learn runs it on its own MLPs only with lbfgs (classifier) or tuned sgd "
                       "(regressor)")
EXPECTED_FAILED_CHECKS = {
    "check_sample_weight_equivalence_on_dense_data": _WEIGHT_EQUIVALENCE,
    "check_sample_weight_equivalence_on_sparse_data": _WEIGHT_EQUIVALENCE,
}


# -- data ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    X, y = load_digits("float64")
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    scaler = StandardScaler().fit(X_tr)
    return scaler.transform(X_tr), scaler.transform(X_te), y_tr, y_te


@pytest.fixture(scope="module")
def small_digits(digits):
    X_tr, _, y_tr, _ = digits
    return X_tr[:300], y_tr[:300]


def _activation(name, z):
    if name == "identity":
        return z
    if name == "logistic":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    return np.maximum(z, 0.0)


def _logits(coefs, intercepts, activation, X):
    """float64 reference forward pass over scikit-learn-layout weights (in, out)."""
    h = np.asarray(X, dtype=np.float64)
    for i, (W, b) in enumerate(zip(coefs, intercepts)):
        h = h @ W.astype(np.float64) + b.astype(np.float64)
        if i < len(coefs) - 1:
            h = _activation(activation, h)
    return h


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _weights(est):
    return [W.copy() for W in est.coefs_], [b.copy() for b in est.intercepts_]


def _cross_entropy(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.mean(log_p[np.arange(len(labels)), labels]))


def _segment_value(optimizer, start, column):
    """The segment-table value (column 1: weight decay, 2: l1) that covers arena index ``start``."""
    bounds, values = optimizer.segments
    row = np.flatnonzero((bounds[:, 0] <= start) & (start < bounds[:, 0] + bounds[:, 1]))
    assert row.size == 1
    return values[row[0], column]


# -- scikit-learn's own checks ------------------------------------------------------------------

# scikit-learn tests its own MLPs with max_iter=100 (sklearn.utils._test_common.instance_generator).
@parametrize_with_checks([MLPClassifier(max_iter=100), MLPRegressor(max_iter=100),
                          AutoencoderTransformer(max_iter=100)],
                         expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS)
def test_estimators_pass_sklearn_check_estimator_at_its_mlp_settings(estimator, check):
    check(estimator)


# -- parameters ---------------------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["lbfgs", "rmsprop", "Adam"])
def test_unsupported_solver_raises_value_error_listing_supported_ones(solver, small_digits):
    X, y = small_digits
    with pytest.raises(ValueError, match=r"supported solvers are 'sgd', 'adam'"):
        MLPClassifier(solver=solver).fit(X, y)


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
def test_activation_names_mean_what_they_mean_in_sklearn(activation, small_digits):
    X, y = small_digits
    est = MLPClassifier((12, 7), activation=activation, max_iter=2, random_state=0).fit(X, y)
    coefs, intercepts = _weights(est)
    logits = _logits(coefs, intercepts, activation, X)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(est.predict_proba(X), p, rtol=1e-4, atol=1e-5)


def test_unknown_activation_raises_value_error_listing_supported_ones(small_digits):
    X, y = small_digits
    with pytest.raises(ValueError, match="'identity', 'logistic', 'tanh', 'relu'"):
        MLPClassifier(activation="sigmoid").fit(X, y)


@pytest.mark.parametrize("alpha", [1e-3, (1e-4, 3e-2, 0.0)])
def test_alpha_reaches_the_optimizer_as_alpha_over_batch_size_per_layer(alpha, small_digits):
    X, y = small_digits
    batch_size = 64
    est = MLPClassifier((16, 8), alpha=alpha, batch_size=batch_size, max_iter=1, random_state=0).fit(X, y)
    per_layer = [alpha] * 3 if np.ndim(alpha) == 0 else list(alpha)
    for info in est.model_.param_layout():
        column_value = _segment_value(est._optimizer, info.start, 1)
        if info.kind == "weight":
            assert column_value == pytest.approx(per_layer[info.dense_index] / batch_size, rel=1e-12)
        else:
            assert column_value == 0.0  # biases are not penalised, as in scikit-learn


def test_per_layer_alpha_with_the_wrong_length_is_refused(small_digits):
    X, y = small_digits
    with pytest.raises(ValueError, match="one per layer"):
        MLPClassifier((16, 8), alpha=(1e-4, 1e-4)).fit(X, y)


@pytest.mark.parametrize("n_samples, expected", [(150, 150), (450, 200)])
def test_batch_size_auto_is_min_200_n_samples(n_samples, expected):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(n_samples, 4)), rng.normal(size=n_samples)
    est = MLPRegressor((4,), alpha=1.0, max_iter=1, random_state=0).fit(X, y)
    steps = -(-n_samples // expected)
    assert est._optimizer.step_count == steps
    weight = est.model_.param_layout()[0]
    assert _segment_value(est._optimizer, weight.start, 1) == pytest.approx(1.0 / expected)


def test_learning_rate_init_auto_runs_the_step_size_search(digits):
    X_tr, X_te, y_tr, y_te = digits
    est = MLPClassifier((32,), learning_rate_init="auto", max_iter=10, random_state=0).fit(X_tr, y_tr)
    assert est.learning_rate_init == "auto"  # the parameter is left alone
    assert np.isfinite(est._lr_init) and est._lr_init > 0 and est._lr_init != 1e-3
    assert est.score(X_te, y_te) > 0.9


def test_early_stopping_stops_on_the_validation_score_and_restores_the_best_weights(digits, monkeypatch):
    import sklearn.model_selection

    X, _, y, _ = digits
    tol, patience = 1e-4, 3
    splits = []
    original = sklearn.model_selection.train_test_split
    monkeypatch.setattr(sklearn.model_selection, "train_test_split",
                        lambda *a, **kw: splits.append(original(*a, **kw)) or splits[-1])
    est = MLPClassifier((32,), early_stopping=True, validation_fraction=0.2, n_iter_no_change=patience, tol=tol,
                        learning_rate_init=0.01, max_iter=200, random_state=0).fit(X, y)
    scores = est.validation_scores_
    assert len(scores) == est.n_iter_ == len(est.loss_curve_) < 200
    assert est.best_validation_score_ == max(scores)
    assert est.best_loss_ is None
    # scikit-learn's rule replayed on the recorded scores stops exactly where the estimator stopped.
    count, best = 0, -np.inf
    for epoch, score in enumerate(scores, 1):
        count = count + 1 if score < best + tol else 0
        best = max(best, score)
        if count > patience:
            break
    assert epoch == est.n_iter_
    assert scores[-1] < est.best_validation_score_
    # The model holds the best epoch's weights: it scores the best score on the validation split.
    _, X_val, _, t_val = splits[-1][:4]
    assert est.score(X_val, est.classes_[t_val]) == est.best_validation_score_


def test_without_early_stopping_tol_and_n_iter_no_change_act_on_the_training_loss(small_digits):
    X, y = small_digits
    tol, patience = 0.05, 2
    est = MLPClassifier((16,), tol=tol, n_iter_no_change=patience, max_iter=500, random_state=0).fit(X, y)
    curve = est.loss_curve_
    assert est.validation_scores_ is None
    assert est.best_loss_ == min(curve)
    assert len(curve) == est.n_iter_ < 500
    count, best = 0, np.inf
    for epoch, loss in enumerate(curve, 1):
        count = count + 1 if loss > best - tol else 0
        best = min(best, loss)
        if count > patience:
            break
    assert epoch == est.n_iter_


def test_convergence_warning_is_emitted_when_max_iter_is_reached(small_digits):
    X, y = small_digits
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(2\) reached"):
        MLPClassifier((8,), max_iter=2, random_state=0).fit(X, y)


def test_no_convergence_warning_when_training_stops_on_tol(small_digits):
    X, y = small_digits
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = MLPClassifier((8,), tol=10.0, n_iter_no_change=1, max_iter=50, random_state=0).fit(X, y)
    # Epoch 1 sets best_loss_; epochs 2 and 3 fail to improve by tol; count 2 > n_iter_no_change.
    assert est.n_iter_ == 3


@pytest.mark.parametrize("kind", ["classifier", "multi_output_regressor"])
def test_loss_curve_is_data_loss_plus_half_alpha_sq_norm_over_batch_size(kind):
    """Full-batch epochs (batch_size = n): the second epoch's single batch sees the first epoch's
    end weights W1, so loss_curve_[1] = data loss(W1) + ½·alpha·Σ‖W‖²/n with the penalty at the
    second epoch's end weights W2 (the estimator's documented definition). For the regressor the
    data loss is ½·mean((y − ŷ)²) over rows and outputs."""
    rng = np.random.default_rng(0)
    n, alpha = 120, 2.0
    X = rng.normal(size=(n, 6))
    if kind == "classifier":
        y = rng.integers(0, 3, size=n)
        est = MLPClassifier((8,), alpha=alpha, batch_size=n, shuffle=False, max_iter=1, warm_start=True,
                            learning_rate_init=0.01, random_state=0)
    else:
        y = np.c_[X[:, 0] + X[:, 1], np.sin(X[:, 2]), 2 * X[:, 3]]
        est = MLPRegressor((8,), alpha=alpha, batch_size=n, shuffle=False, max_iter=1, warm_start=True,
                           learning_rate_init=0.01, random_state=0)
    est.fit(X, y)
    coefs1, intercepts1 = _weights(est)
    est.fit(X, y)
    coefs2, _ = _weights(est)
    logits = _logits(coefs1, intercepts1, "relu", X)
    if kind == "classifier":
        data_loss = _cross_entropy(logits, y)
    else:
        data_loss = 0.5 * float(np.mean((y - logits) ** 2))
    penalty = 0.5 * alpha * sum(float(np.sum(W.astype(np.float64) ** 2)) for W in coefs2) / n
    assert penalty > 0.01 * data_loss  # large enough to be seen
    assert len(est.loss_curve_) == 2
    assert est.loss_curve_[-1] == pytest.approx(data_loss + penalty, rel=1e-5)


def test_loss_curve_weights_each_batch_by_its_rows():
    """With a step size too small to move float32 weights, every batch sees the same weights, so
    the epoch's loss is the data loss over all rows, exactly as scikit-learn averages it
    (batches of 64, 64 and 22 rows)."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(150, 5))
    y = X @ rng.normal(size=5) + rng.normal(size=150) ** 2
    est = MLPRegressor((6,), solver="sgd", momentum=0.0, learning_rate_init=1e-12, alpha=0.0, batch_size=64,
                       shuffle=False, max_iter=1, random_state=0).fit(X, y)
    coefs, intercepts = _weights(est)
    expected = 0.5 * float(np.mean((y - _logits(coefs, intercepts, "relu", X)[:, 0]) ** 2))
    assert est.loss_curve_[0] == pytest.approx(expected, rel=1e-5)


# -- partial_fit, warm_start, sample_weight -----------------------------------------------------

def test_partial_fit_needs_classes_on_the_first_call(small_digits):
    X, y = small_digits
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        MLPClassifier().partial_fit(X, y)


def test_partial_fit_improves_incrementally_and_counts_one_epoch_per_call(small_digits):
    X, y = small_digits
    est = MLPClassifier((16,), learning_rate_init=0.01, random_state=0)
    est.partial_fit(X[:100], y[:100], classes=np.arange(10))
    first_score = est.score(X, y)
    for _ in range(15):
        est.partial_fit(X, y)
        assert est.n_iter_ == 1
    assert len(est.loss_curve_) == 16
    assert est.loss_curve_[-1] < 0.5 * est.loss_curve_[1]
    assert est.score(X, y) > max(first_score + 0.3, 0.9)


def test_partial_fit_k_times_equals_fit_with_max_iter_k_bitwise(small_digits):
    """Without shuffling (each partial_fit call, as scikit-learn's, restarts random_state's stream,
    so it shuffles alike every call where fit shuffles anew every epoch)."""
    X, y = small_digits
    fitted = MLPClassifier((16,), max_iter=3, random_state=0, shuffle=False).fit(X, y)
    incremental = MLPClassifier((16,), random_state=0, shuffle=False)
    for _ in range(3):
        incremental.partial_fit(X, y, classes=np.arange(10))
    np.testing.assert_array_equal(incremental.model_.parameters(), fitted.model_.parameters())
    assert incremental.loss_curve_ == fitted.loss_curve_


def test_partial_fit_refuses_unseen_classes_and_early_stopping(small_digits):
    X, y = small_digits
    est = MLPClassifier((8,), random_state=0).partial_fit(X, y, classes=np.arange(10))
    with pytest.raises(ValueError, match="classes not in"):
        est.partial_fit(X, y + 1)
    with pytest.raises(ValueError, match="early_stopping"):
        MLPRegressor(early_stopping=True).partial_fit(X, y.astype(float))


def test_sample_weight_of_ones_gives_bitwise_the_same_model(small_digits):
    X, y = small_digits
    plain = MLPClassifier((16,), max_iter=3, random_state=0).fit(X, y)
    ones = MLPClassifier((16,), max_iter=3, random_state=0).fit(X, y, sample_weight=np.ones(len(y)))
    np.testing.assert_array_equal(ones.model_.parameters(), plain.model_.parameters())
    assert ones.loss_curve_ == plain.loss_curve_


def test_zero_weight_rows_have_no_effect_whatever_they_hold(small_digits):
    X, y = small_digits
    weights = np.ones(len(y))
    weights[::3] = 0.0
    X_junk, y_junk = X.copy(), y.copy()
    rng = np.random.default_rng(0)
    X_junk[::3] = rng.normal(scale=100.0, size=X_junk[::3].shape)
    y_junk[::3] = rng.integers(0, 10, size=y_junk[::3].shape)
    a = MLPClassifier((16,), max_iter=3, random_state=0).fit(X, y, sample_weight=weights)
    b = MLPClassifier((16,), max_iter=3, random_state=0).fit(X_junk, y_junk, sample_weight=weights)
    np.testing.assert_array_equal(a.model_.parameters(), b.model_.parameters())


def test_sample_weight_acts_like_repeating_rows():
    """On overlapping classes, weighting class 1 by 4 moves the decision boundary as repeating
    those rows 4 times does, and far from where the unweighted fit puts it."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 2))
    y = (X[:, 0] + rng.normal(size=400) > 0).astype(int)
    weights = np.where(y == 1, 4, 1)
    settings = dict(hidden_layer_sizes=(8,), max_iter=200, learning_rate_init=0.01, tol=1e-6, random_state=0)
    weighted = MLPClassifier(**settings).fit(X, y, sample_weight=weights.astype(float))
    rows = np.repeat(np.arange(len(y)), weights)
    repeated = MLPClassifier(**settings).fit(X[rows], y[rows])
    plain = MLPClassifier(**settings).fit(X, y)
    grid = np.c_[np.linspace(-1, 1, 21), np.zeros(21)]
    p_weighted, p_repeated, p_plain = (m.predict_proba(grid)[:, 1] for m in (weighted, repeated, plain))
    assert np.max(np.abs(p_weighted - p_repeated)) < 0.1
    assert np.max(np.abs(p_weighted - p_plain)) > 0.25


def test_warm_start_continues_from_the_fitted_weights(small_digits):
    X, y = small_digits
    est = MLPClassifier((16,), max_iter=5, warm_start=True, learning_rate_init=0.01, random_state=0).fit(X, y)
    cold_first_loss = est.loss_curve_[0]
    est.fit(X, y)
    assert len(est.loss_curve_) == 10 and est.n_iter_ == 5
    assert est.loss_curve_[5] < 0.8 * cold_first_loss
    assert est.loss_curve_[5] < est.loss_curve_[4] * 1.05


def test_without_warm_start_a_refit_starts_over_reproducibly(small_digits):
    X, y = small_digits
    est = MLPClassifier((16,), max_iter=3, random_state=0).fit(X, y)
    first = est.model_.parameters().copy()
    est.fit(X, y)
    np.testing.assert_array_equal(est.model_.parameters(), first)
    assert len(est.loss_curve_) == 3


def test_warm_start_with_different_classes_raises(small_digits):
    X, y = small_digits
    est = MLPClassifier((8,), max_iter=1, warm_start=True, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="warm_start can only be used where `y` has the same classes"):
        est.fit(X, y % 5)


# -- targets, architecture options and fitted attributes ---------------------------------------

def test_multi_label_targets_train_a_sigmoid_output(digits):
    X, X_te, y, y_te = digits
    Y, Y_te = (np.c_[t % 2, t >= 5, t == 0].astype(int) for t in (y, y_te))
    est = MLPClassifier((32,), max_iter=30, random_state=0).fit(X, Y)
    assert est.model_.output == "sigmoid" and est.out_activation_ == "logistic"
    np.testing.assert_array_equal(est.classes_, [0, 1, 2])
    pred, proba = est.predict(X_te), est.predict_proba(X_te)
    assert pred.shape == proba.shape == Y_te.shape
    assert set(np.unique(pred)) <= {0, 1}
    np.testing.assert_array_equal(pred, (proba > 0.5).astype(int))
    assert est.score(X_te, Y_te) > 0.85  # subset accuracy


def test_dropout_and_batch_norm_build_those_layers_and_still_learn(digits):
    X, X_te, y, y_te = digits
    est = MLPClassifier((64, 32), dropout=0.2, batch_norm=True, max_iter=30, random_state=0).fit(X, y)
    kinds = [type(layer).__name__ for layer in est.model_.layers]
    assert kinds == ["Dense", "BatchNorm", "ReLU", "Dropout", "Dense", "BatchNorm", "ReLU", "Dropout", "Dense"]
    assert [layer.p for layer in est.model_.layers if type(layer).__name__ == "Dropout"] == [0.2, 0.2]
    assert est.score(X_te, y_te) > 0.9
    # Dropout is off at prediction time: predictions are deterministic.
    np.testing.assert_array_equal(est.predict_proba(X_te), est.predict_proba(X_te))


@pytest.mark.parametrize("init", ["glorot", "he"])
def test_init_selects_the_weight_scheme(init, small_digits):
    X, y = small_digits
    # A step size too small to move float32 weights leaves the initial weights.
    est = MLPClassifier((200,), init=init, solver="sgd", momentum=0.0, learning_rate_init=1e-12, max_iter=1,
                        random_state=0).fit(X, y)
    W = est.coefs_[0]
    if init == "glorot":
        limit = np.sqrt(6.0 / (64 + 200))
        assert np.abs(W).max() <= limit and np.std(W) == pytest.approx(limit / np.sqrt(3), rel=0.05)
    else:
        assert np.std(W) == pytest.approx(np.sqrt(2.0 / 64), rel=0.05)


def test_l1_reaches_the_optimizer_per_layer_and_shrinks_the_weights(small_digits):
    X, y = small_digits
    l1 = (2.0, 0.0)
    est = MLPClassifier((16,), l1=l1, batch_size=50, max_iter=20, random_state=0).fit(X, y)
    for info in est.model_.param_layout():
        expected = l1[info.dense_index] / 50 if info.kind == "weight" else 0.0
        assert _segment_value(est._optimizer, info.start, 2) == pytest.approx(expected)
    plain = MLPClassifier((16,), batch_size=50, max_iter=20, random_state=0).fit(X, y)
    assert np.abs(est.coefs_[0]).sum() < 0.6 * np.abs(plain.coefs_[0]).sum()
    np.testing.assert_allclose(np.abs(est.coefs_[1]).sum(), np.abs(plain.coefs_[1]).sum(), rtol=0.2)


def test_fitted_attributes(small_digits):
    X, y = small_digits
    est = MLPClassifier((16, 8), max_iter=4, random_state=0).fit(X, y)
    assert isinstance(est.model_, fastmlp.MLP)
    assert est.model_.sizes == [64, 16, 8, 10]
    np.testing.assert_array_equal(est.classes_, np.arange(10))
    assert est.n_iter_ == 4 and len(est.loss_curve_) == 4
    assert est.validation_scores_ is None
    assert est.best_loss_ == min(est.loss_curve_)
    assert est.n_features_in_ == 64 and est.n_outputs_ == 10 and est.n_layers_ == 4
    assert [W.shape for W in est.coefs_] == [(64, 16), (16, 8), (8, 10)]
    assert [b.shape for b in est.intercepts_] == [(16,), (8,), (10,)]
    es = MLPClassifier((16,), early_stopping=True, max_iter=4, random_state=0).fit(X, y)
    assert len(es.validation_scores_) == es.n_iter_ and es.best_loss_ is None


def test_coefs_and_intercepts_can_be_assigned_as_in_sklearn(small_digits):
    X, y = small_digits
    est = MLPClassifier((16, 8), max_iter=4, random_state=0).fit(X, y)
    coefs, intercepts = _weights(est)
    rng = np.random.default_rng(0)
    new_coefs = [rng.normal(size=W.shape) for W in coefs]
    new_intercepts = [rng.normal(size=b.shape) for b in intercepts]
    est.coefs_, est.intercepts_ = new_coefs, new_intercepts
    for got, want in zip(est.coefs_ + est.intercepts_, new_coefs + new_intercepts):
        np.testing.assert_allclose(got, want, rtol=1e-6)  # stored as float32
    np.testing.assert_allclose(est.predict_proba(X), _softmax(_logits(est.coefs_, est.intercepts_, "relu", X)),
                               rtol=1e-4, atol=1e-6)
    before = _weights(est)
    with pytest.raises(ValueError, match=r"coefs_\[1\] has shape \(8, 16\); the layer needs \(16, 8\)"):
        est.coefs_ = [new_coefs[0], new_coefs[1].T, new_coefs[2]]
    with pytest.raises(ValueError, match="coefs_ needs 3 arrays"):
        est.coefs_ = new_coefs[:2]
    with pytest.raises(ValueError, match="NaN"):
        est.intercepts_ = [b * np.nan for b in new_intercepts]
    for got, want in zip(_weights(est)[0] + _weights(est)[1], before[0] + before[1]):
        np.testing.assert_array_equal(got, want)  # a refused assignment changes nothing


def test_multiclass_multioutput_targets_get_a_short_clear_error(small_digits):
    X, y = small_digits
    with pytest.raises(ValueError, match="multiclass-multioutput") as info:
        MLPClassifier((8,), max_iter=2).fit(X, np.c_[y, y])
    assert len(str(info.value)) < 300


def test_regressor_with_one_output_predicts_1d_as_sklearn(small_digits):
    X, y = small_digits
    for target in (y.astype(float), y.astype(float)[:, None]):
        est = MLPRegressor((8,), max_iter=3, random_state=0).fit(X, target)
        assert est.predict(X[:5]).shape == (5,)
    two = MLPRegressor((8,), max_iter=3, random_state=0).fit(X, np.c_[y, y].astype(float))
    assert two.predict(X[:5]).shape == (5, 2)


def test_sparse_x_is_taken_as_scikit_learn_takes_it(small_digits):
    sparse = pytest.importorskip("scipy.sparse")
    X, y = small_digits
    X_sparse = sparse.csr_matrix(X)
    for make, target in ((lambda: MLPClassifier((16,), max_iter=5, random_state=0), y),
                         (lambda: MLPRegressor((16,), max_iter=5, random_state=0), y.astype(float))):
        dense, from_csr, from_csc = make().fit(X, target), make().fit(X_sparse, target), make().fit(X_sparse.tocsc(), target)
        for est in (from_csr, from_csc):
            for W, W_dense in zip(est.coefs_, dense.coefs_):
                np.testing.assert_array_equal(W, W_dense)
            np.testing.assert_array_equal(est.predict(X_sparse), dense.predict(X))
    auto = MLPClassifier((16,), max_iter=3, learning_rate_init="auto", random_state=0)
    np.testing.assert_array_equal(auto.fit(X_sparse, y).coefs_[0], clone(auto).fit(X, y).coefs_[0])
    with pytest.raises(TypeError, match="[Ss]parse"):
        AutoencoderTransformer((8,), max_iter=2).fit(X_sparse)


def test_two_classes_train_one_logistic_output_as_in_sklearn(small_digits, tmp_path):
    from sklearn.neural_network import MLPClassifier as SkMLPClassifier

    X, y = small_digits
    names = np.where(y >= 5, "high", "low")
    ours = MLPClassifier((16,), max_iter=100, random_state=0).fit(X, names)
    theirs = SkMLPClassifier((16,), max_iter=100, random_state=0).fit(X, names)
    for attr in ("n_outputs_", "out_activation_", "n_layers_"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert [W.shape for W in ours.coefs_] == [W.shape for W in theirs.coefs_] == [(64, 16), (16, 1)]
    np.testing.assert_array_equal(ours.classes_, theirs.classes_)
    # the probability of classes_[1] is the sigmoid of the one logit
    p = 1.0 / (1.0 + np.exp(-_logits(ours.coefs_, ours.intercepts_, "relu", X)[:, 0]))
    proba = ours.predict_proba(X)
    np.testing.assert_allclose(proba[:, 1], p, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ours.predict(X), ours.classes_[(proba[:, 1] > 0.5).astype(int)])
    assert ours.score(X, names) >= theirs.score(X, names) - 0.02  # 0.973 and 0.973
    # partial_fit with two classes and early stopping take the same route
    pf = MLPClassifier((16,), random_state=0)
    pf.partial_fit(X[:100], names[:100], classes=["high", "low"])
    pf.partial_fit(X[100:], names[100:])
    assert pf.n_outputs_ == 1 and pf.predict_proba(X).shape == (len(X), 2)
    es = MLPClassifier((16,), max_iter=20, early_stopping=True, random_state=0).fit(X, names)
    assert 0.5 < es.best_validation_score_ <= 1.0


def test_early_stopping_stratifies_two_classes_too(monkeypatch, small_digits):
    import sklearn.model_selection

    X, y = small_digits
    seen = []
    original = sklearn.model_selection.train_test_split

    def spy(*arrays, **kw):
        seen.append(kw.get("stratify"))
        return original(*arrays, **kw)

    monkeypatch.setattr(sklearn.model_selection, "train_test_split", spy)
    rare = np.where(y == 0, "zero", "other")  # ~10% positives
    MLPClassifier((8,), max_iter=2, early_stopping=True, random_state=0).fit(X, rare)
    assert seen[-1] is not None and set(np.unique(seen[-1])) == {0.0, 1.0}


def test_a_two_class_file_from_before_logistic_outputs_still_loads(small_digits, tmp_path):
    """Estimator files written when two classes trained a two-unit softmax load and predict."""
    X, y = small_digits
    names = np.where(y >= 5, "high", "low")
    est = MLPClassifier((16,), max_iter=3, random_state=0).fit(X, names)
    est.model_ = fastmlp.MLP([64, 16, 2], output="softmax", seed=3)  # what those fits built
    est.out_activation_, est.n_outputs_ = "softmax", 2
    est.save(tmp_path / "old.npz")
    loaded = fastmlp.load(tmp_path / "old.npz")
    assert loaded.model_.out_features == 2 and loaded.out_activation_ == "softmax"
    np.testing.assert_array_equal(loaded.predict_proba(X), est.model_.predict_proba(X).astype(np.float64))
    np.testing.assert_array_equal(loaded.predict(X), loaded.classes_[est.model_.predict(X)])


def _same_start_then_train(cls, sk_cls, X, y, epochs=5, **params):
    """Both estimators fitted one epoch, given the same weights, then trained ``epochs`` more with
    warm_start (a fresh optimizer each, as scikit-learn's warm start makes) in float64."""
    common = dict(shuffle=False, random_state=0, max_iter=1, **params)
    theirs, ours = sk_cls(**common), cls(dtype="float64", **common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.fit(X, y)
        ours.fit(X, y)
        rng = np.random.RandomState(42)
        W = [rng.uniform(-0.3, 0.3, c.shape) for c in theirs.coefs_]
        b = [rng.uniform(-0.3, 0.3, c.shape) for c in theirs.intercepts_]
        theirs.coefs_, theirs.intercepts_ = [w.copy() for w in W], [v.copy() for v in b]
        ours.coefs_, ours.intercepts_ = W, b
        for est in (theirs, ours):
            est.set_params(warm_start=True, max_iter=epochs).fit(X, y)
    for a, c in zip(theirs.coefs_ + theirs.intercepts_, ours.coefs_ + ours.intercepts_):
        np.testing.assert_allclose(c, a, rtol=1e-9, atol=1e-12)
    return theirs, ours


@pytest.mark.parametrize("case", ["adam_epsilon", "regressor_3_outputs_sgd", "momentum_invscaling",
                                  "momentum_adaptive"])
def test_training_steps_match_scikit_learns_from_the_same_weights(case, small_digits):
    """Float64, no shuffling, alpha 0: the weights after five epochs agree with scikit-learn's to
    rounding. Cases that differed: Adam's epsilon (scikit-learn adds it to the uncorrected sqrt(v)),
    several regression outputs (scikit-learn's gradient is not divided by their number), SGD
    momentum with a changing rate (scikit-learn's velocity keeps the rate of its past steps)."""
    from sklearn import neural_network

    X, y = small_digits
    X = X[:240]
    if case == "adam_epsilon":
        _same_start_then_train(MLPClassifier, neural_network.MLPClassifier, X, y[:240], solver="adam",
                               learning_rate_init=0.01, hidden_layer_sizes=(20,), alpha=0.0, epsilon=1e-3)
    elif case == "regressor_3_outputs_sgd":
        Y = np.c_[X[:, :3].sum(axis=1), X[:, 3] - X[:, 5], X[:, 7]]
        theirs, ours = _same_start_then_train(MLPRegressor, neural_network.MLPRegressor, X, Y, solver="sgd",
                                              learning_rate_init=0.01, hidden_layer_sizes=(20,), alpha=0.0)
        np.testing.assert_allclose(ours.loss_curve_[1:], theirs.loss_curve_[1:], rtol=1e-9)
    else:
        schedule = case.split("_")[1]
        _same_start_then_train(MLPClassifier, neural_network.MLPClassifier, X, y[:240], solver="sgd",
                               learning_rate=schedule, learning_rate_init=0.1, power_t=0.25, momentum=0.9,
                               hidden_layer_sizes=(20,), alpha=0.0, epochs=8, tol=0.05, n_iter_no_change=1)


@pytest.mark.parametrize("params", [dict(solver="adam"), dict(solver="sgd", learning_rate="adaptive", tol=0.05,
                                                                   n_iter_no_change=1),
                                    dict(solver="adam", early_stopping=True), dict(solver="sgd", batch_size=64),
                                    dict(solver="adam", activation="logistic", alpha=0.1)],
                         ids=["adam", "sgd_adaptive", "early_stopping", "short_last_batch", "logistic_alpha"])
def test_the_same_random_state_trains_scikit_learns_model(params, small_digits):
    """Defaults (init='sklearn', shuffling on) in float64: the same random_state draws scikit-learn's
    initial weights, validation split and per-epoch row orders from one stream in its order, alpha
    is divided by each batch's rows, so fit ends on scikit-learn's weights to rounding."""
    from sklearn import neural_network

    X, y = small_digits
    kw = dict(hidden_layer_sizes=(20,), random_state=0, max_iter=8, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = neural_network.MLPClassifier(**kw).fit(X, y)
        ours = MLPClassifier(dtype="float64", **kw).fit(X, y)
    assert ours.n_iter_ == theirs.n_iter_
    for a, c in zip(theirs.coefs_ + theirs.intercepts_, ours.coefs_ + ours.intercepts_):
        np.testing.assert_allclose(c, a, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-3)  # the penalty: see README


def test_partial_fit_and_regression_follow_scikit_learns_stream(small_digits):
    from sklearn import neural_network

    X, y = small_digits
    theirs, ours = neural_network.MLPClassifier((20,), random_state=2), MLPClassifier((20,), random_state=2,
                                                                                       dtype="float64")
    for _ in range(3):
        theirs.partial_fit(X, y, classes=np.arange(10))
        ours.partial_fit(X, y, classes=np.arange(10))
    Y = np.c_[X[:, :3].sum(axis=1), X[:, 5]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs_r = neural_network.MLPRegressor(hidden_layer_sizes=(20,), random_state=1, max_iter=6).fit(X, Y)
    ours_r = MLPRegressor((20,), random_state=1, max_iter=6, dtype="float64").fit(X, Y)
    for (t, o) in ((theirs, ours), (theirs_r, ours_r)):
        for a, c in zip(t.coefs_ + t.intercepts_, o.coefs_ + o.intercepts_):
            np.testing.assert_allclose(c, a, rtol=1e-9, atol=1e-12)


def test_coefs_item_assignment_reaches_the_model(small_digits):
    X, y = small_digits
    est = MLPClassifier((8,), max_iter=2, random_state=0).fit(X, y)
    est.coefs_[0] = np.zeros((64, 8))
    est.intercepts_[0] = np.zeros(8)  # the hidden layer outputs relu(0) = 0
    est.intercepts_[1] = np.full(10, 0.5)
    assert np.abs(est.coefs_[0]).max() == 0 and np.all(est.intercepts_[1] == 0.5)
    np.testing.assert_allclose(est.predict_proba(X), 0.1, rtol=1e-6)  # every logit 0.5 + 0
    with pytest.raises(ValueError, match=r"coefs_\[0\] has shape"):
        est.coefs_[0] = np.zeros((8, 64))


def test_scikit_learns_other_parameter_values_are_accepted(small_digits):
    X, y = small_digits
    MLPClassifier((8,), max_iter=3, max_fun=100, n_iter_no_change=np.inf, validation_fraction=0.0).fit(X, y)
    MLPRegressor((8,), loss="squared_error", max_iter=2).fit(X, y.astype(float))
    with pytest.raises(ValueError, match="loss 'poisson' is not supported"):
        MLPRegressor(loss="poisson").fit(X, y.astype(float))
    with pytest.raises(ValueError, match="validation_fraction must be > 0 with early_stopping"):
        MLPClassifier(early_stopping=True, validation_fraction=0.0).fit(X, y)
    # a class of one row: early stopping splits unstratified, as scikit-learn does for many classes
    lone = y.copy()
    lone[0] = 10
    MLPClassifier((8,), max_iter=2, early_stopping=True, random_state=0).fit(X, lone)
    # partial_fit takes sample_weight before classes, as scikit-learn 1.9
    MLPClassifier((8,)).partial_fit(X, y, None, np.arange(10))
    # a diverged fit is a ValueError, as scikit-learn's
    with pytest.raises(ValueError):
        MLPRegressor((8,), solver="sgd", learning_rate_init=1e3, max_iter=5).fit(X, y * 1e6)


def test_string_labels_come_back_as_labels(small_digits):
    X, y = small_digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    est = MLPClassifier((16,), max_iter=20, learning_rate_init=0.01, random_state=0).fit(X, names[y])
    np.testing.assert_array_equal(est.classes_, np.sort(names))
    assert np.mean(est.predict(X) == names[y]) > 0.8


def test_verbose_prints_scikit_learns_progress_lines(small_digits, capsys):
    X, y = small_digits
    MLPClassifier((8,), max_iter=2, verbose=True, random_state=0).fit(X, y)
    out = capsys.readouterr().out
    assert "Iteration 1, loss = " in out and "Iteration 2, loss = " in out


@pytest.mark.parametrize("settings", [
    dict(solver="sgd", learning_rate="adaptive", learning_rate_init=0.1, tol=100.0, n_iter_no_change=1),
    dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.1, power_t=0.5, max_iter=3),
    dict(tol=10.0, n_iter_no_change=1),
    dict(early_stopping=True, tol=10.0, n_iter_no_change=2),
], ids=["sgd_adaptive", "sgd_invscaling", "tol_on_training_loss", "tol_on_validation_score"])
def test_step_size_and_stopping_rules_match_sklearn(settings, small_digits):
    """Settings whose outcome the rules alone decide (a tol no epoch can meet): the epochs run and
    the final step size are scikit-learn's. Adaptive divides the step size by 5 after every
    n_iter_no_change + 1 epochs without improvement, and stops once it is <= 1e-6."""
    from sklearn.neural_network import MLPClassifier as SkMLPClassifier

    X, y = small_digits
    settings = dict(dict(hidden_layer_sizes=(8,), max_iter=500, random_state=0), **settings)
    ours = MLPClassifier(**settings).fit(X, y)
    theirs = _sklearn_fit(SkMLPClassifier(**settings), X, y)
    assert ours.n_iter_ == theirs.n_iter_
    if settings.get("solver") == "sgd":  # (scikit-learn's Adam reports its bias-corrected step instead)
        assert ours._lr == pytest.approx(theirs._optimizer.learning_rate, rel=1e-12)
    if settings.get("learning_rate") == "adaptive":
        assert ours.n_iter_ == 19 and ours._lr == pytest.approx(0.1 / 5**8)


def test_autoencoder_transformer_codes_reconstructions_and_per_layer_alpha(small_digits):
    X, _ = small_digits
    ae = AutoencoderTransformer((32, 2), alpha=(1e-4, 1e-4, 0.0, 0.0), max_iter=20, random_state=0).fit(X)
    codes = ae.transform(X)
    assert codes.shape == (len(X), 2)
    assert ae.inverse_transform(codes).shape == X.shape
    errors = ae.reconstruction_error(X)
    np.testing.assert_allclose(errors, np.sum((X - ae.inverse_transform(codes)) ** 2, axis=1), rtol=1e-4)
    assert ae.loss_curve_[-1] < ae.loss_curve_[0]
    with pytest.raises(ValueError, match="one per layer"):
        AutoencoderTransformer((32, 2), alpha=(1e-4, 1e-4, 0.0)).fit(X)
    tied = AutoencoderTransformer((32, 2), tied=True, alpha=(1e-4, 0.0), max_iter=1, random_state=0).fit(X)
    assert tied.transform(X).shape == (len(X), 2)
    # feature names: checked against the input as scikit-learn's transformers check them
    names = [f"x{i}" for i in range(X.shape[1])]
    assert list(ae.get_feature_names_out(names)) == ["autoencodertransformer0", "autoencodertransformer1"]
    with pytest.raises(ValueError, match="input_features should have length equal to number of features"):
        ae.get_feature_names_out(["a", "b"])


# -- Pipeline, searches, pickling ---------------------------------------------------------------

def test_pipeline_with_standard_scaler(digits):
    X_tr, X_te, y_tr, y_te = digits
    X_raw_tr, X_raw_te = X_tr * 5 + 8, X_te * 5 + 8  # undo the fixture's scaling, roughly
    pipe = Pipeline([("scale", StandardScaler()), ("mlp", MLPClassifier((32,), max_iter=30, random_state=0))])
    assert pipe.fit(X_raw_tr, y_tr).score(X_raw_te, y_te) > 0.91  # scikit-learn's own MLP: 0.920 at this seed


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_grid_search_over_scalar_and_per_layer_alpha(n_jobs, small_digits):
    X, y = small_digits
    grid = {"mlp__alpha": [1e-4, (1e-4, 1e-4), (1e-2, 1e-4)]}
    mlp = MLPClassifier((16,), max_iter=15, learning_rate_init=0.01, random_state=0)
    pipe = Pipeline([("scale", StandardScaler()), ("mlp", mlp)])
    search = GridSearchCV(pipe, grid, cv=3, n_jobs=n_jobs, error_score="raise").fit(X, y)
    assert search.best_params_["mlp__alpha"] in grid["mlp__alpha"]
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.best_score_ > 0.7
    assert search.score(X, y) > 0.8


def test_randomized_search_with_n_jobs_2(small_digits):
    from scipy.stats import loguniform

    X, y = small_digits
    search = RandomizedSearchCV(MLPClassifier((16,), max_iter=15, learning_rate_init=0.01, random_state=0),
                                {"alpha": loguniform(1e-5, 1e-1), "l1": [0.0, (1e-4, 0.0)]}, n_iter=3, cv=2,
                                n_jobs=2, random_state=0, error_score="raise").fit(X, y)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


def test_clone_keeps_the_parameters_and_drops_the_fit(small_digits):
    X, y = small_digits
    est = MLPClassifier((16,), alpha=(1e-3, 0.0), dropout=0.1, max_iter=1, random_state=0).fit(X, y)
    fresh = clone(est)
    assert fresh.get_params() == est.get_params()
    assert not hasattr(fresh, "model_")


@pytest.mark.parametrize("make", [
    lambda: MLPClassifier((16,), dropout=0.1, random_state=0),
    lambda: MLPClassifier((16,), batch_norm=True, random_state=0),
    lambda: MLPRegressor((16,), random_state=0),
    lambda: AutoencoderTransformer((16, 4), noise="mask", level=0.2, random_state=0),
], ids=["classifier_dropout", "classifier_batch_norm", "regressor", "autoencoder"])
def test_pickle_round_trip_predicts_identically_and_continues_bitwise(make, small_digits):
    X, y = small_digits

    def step(est):
        if isinstance(est, MLPClassifier):
            return est.partial_fit(X, y, classes=np.arange(10))
        if isinstance(est, MLPRegressor):
            return est.partial_fit(X, y.astype(float))
        return est.partial_fit(X)

    reference, restored = make(), make()
    for _ in range(3):
        step(reference)
    step(restored)
    restored = pickle.loads(pickle.dumps(restored))
    step(restored)
    restored = pickle.loads(pickle.dumps(restored))
    step(restored)
    np.testing.assert_array_equal(restored.model_.parameters(), reference.model_.parameters())
    # Every layer's tensors are views into the rebuilt arena (training writes through them).
    params = restored.model_.parameters()
    for layer in restored.model_.layers:
        for name in ("weight", "bias", "gamma", "beta"):
            if isinstance(getattr(layer, name, None), np.ndarray):
                assert np.shares_memory(getattr(layer, name), params)
    again = pickle.loads(pickle.dumps(reference))
    method = "transform" if isinstance(reference, AutoencoderTransformer) else "predict"
    np.testing.assert_array_equal(getattr(again, method)(X), getattr(reference, method)(X))


def test_unpickled_estimator_continues_with_warm_start_fit(small_digits):
    X, y = small_digits
    est = MLPClassifier((16,), max_iter=3, warm_start=True, random_state=0).fit(X, y)
    copy = pickle.loads(pickle.dumps(est))
    est.fit(X, y)
    copy.fit(X, y)
    np.testing.assert_array_equal(copy.model_.parameters(), est.model_.parameters())
    assert copy.loss_curve_ == est.loss_curve_ and len(copy.loss_curve_) == 6


def test_pickles_hold_no_fastmlp_objects(small_digits):
    """Pickles go through plain arrays and the model-file header (DESIGN.md)."""
    X, y = small_digits
    est = MLPClassifier((8,), max_iter=1, random_state=0).fit(X, y)
    state = est.__getstate__()
    assert "model_" not in state and "_optimizer" not in state

    def modules(obj):
        if isinstance(obj, dict):
            return set().union(*(modules(v) for v in obj.values()), *(modules(k) for k in obj)) if obj else set()
        if isinstance(obj, (list, tuple)):
            return set().union(*(modules(v) for v in obj)) if obj else set()
        return {type(obj).__module__}

    assert not any(m.startswith("fastmlp") for m in modules(state))


# -- matching scikit-learn ----------------------------------------------------------------------

def _sklearn_fit(estimator, X, y):
    from threadpoolctl import threadpool_limits

    # One BLAS thread: on small matrices a threaded BLAS is slower by 10x on a 2-core machine.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(X, y)


def test_classifier_matches_sklearn_accuracy_on_digits(digits):
    """Same data, same settings (one hidden layer of 64, adam, alpha 1e-4, batch 200, 100
    epochs): test accuracies within 2 points (both are ~0.97-0.98 over seeds)."""
    from sklearn.neural_network import MLPClassifier as SkMLPClassifier

    X_tr, X_te, y_tr, y_te = digits
    settings = dict(hidden_layer_sizes=(64,), max_iter=100, random_state=0)
    ours = MLPClassifier(**settings).fit(X_tr, y_tr).score(X_te, y_te)
    theirs = _sklearn_fit(SkMLPClassifier(**settings), X_tr, y_tr).score(X_te, y_te)
    assert ours > 0.95 and theirs > 0.95
    assert abs(ours - theirs) <= 0.02


def test_regressor_matches_sklearn_r2_on_friedman1():
    """Friedman #1 (standardised inputs and target), two hidden layers of 64, adam 3e-3: test R²
    within 0.02 (both ~0.96 over seeds)."""
    from sklearn.datasets import make_friedman1
    from sklearn.neural_network import MLPRegressor as SkMLPRegressor

    X, y = make_friedman1(n_samples=1500, noise=0.5, random_state=0)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=0)
    scaler = StandardScaler().fit(X_tr)
    X_tr, X_te = scaler.transform(X_tr), scaler.transform(X_te)
    mean, std = y_tr.mean(), y_tr.std()
    y_tr, y_te = (y_tr - mean) / std, (y_te - mean) / std
    settings = dict(hidden_layer_sizes=(64, 64), learning_rate_init=3e-3, max_iter=300, random_state=0)
    ours = MLPRegressor(**settings).fit(X_tr, y_tr).score(X_te, y_te)
    theirs = _sklearn_fit(SkMLPRegressor(**settings), X_tr, y_tr).score(X_te, y_te)
    assert ours > 0.93 and theirs > 0.93
    assert abs(ours - theirs) <= 0.02
