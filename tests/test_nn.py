"""Models (fastmlp.nn): MLP and Sequential structure, the flat parameter arena, logits and
predictions (DESIGN.md, "Models output logits"), chunked prediction, training vs inference mode
(dropout, batch norm), value_and_grad against float64 numerical gradients, and argument checks.

Numerical gradients are central differences in float64 of a loss written here in NumPy on the
model's logits (independent of the loss kernels); parameters are randomised (biases included) so
that no ReLU sits exactly at its kink.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastmlp
from fastmlp import kernels as K
from fastmlp import nn


def _randomize(model, rng, scale=0.5):
    """Random weights and biases (no pre-activation exactly at a ReLU kink)."""
    p = model.parameters()
    p[...] = rng.normal(scale=scale, size=p.shape).astype(p.dtype)
    for info in model.param_layout():
        if info.kind == "gamma":
            p[info.start:info.start + info.size] = rng.uniform(0.5, 1.5, size=info.size)
    return model


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _numpy_loss(loss, logits, y):
    """The losses of DESIGN.md, in float64 NumPy."""
    if loss == "squared":
        return 0.5 * np.mean(np.sum((logits - y) ** 2, axis=1))
    if loss == "cross_entropy":
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -np.mean(logp[np.arange(len(y)), y])
    # binary cross-entropy on logits: softplus(x) - t x, summed over labels
    return np.mean(np.sum(np.logaddexp(0.0, logits) - y * logits, axis=1))


# --- structure ---------------------------------------------------------------------------------


def test_mlp_is_dense_activation_dropout_stack_ending_in_dense():
    m = fastmlp.MLP([6, 5, 4, 3], activation="tanh", dropout=0.2)
    kinds = [type(l).__name__ for l in m.layers]
    assert kinds == ["Dense", "Tanh", "Dropout", "Dense", "Tanh", "Dropout", "Dense"]
    dense = [l for l in m.layers if isinstance(l, nn.Dense)]
    assert [(d.in_features, d.out_features) for d in dense] == [(6, 5), (5, 4), (4, 3)]
    assert all(d.bias_enabled for d in dense)
    assert (m.in_features, m.out_features, m.n_dense) == (6, 3, 3)
    assert m.n_parameters == 6 * 5 + 5 + 5 * 4 + 4 + 4 * 3 + 3


def test_mlp_with_batch_norm_is_dense_without_bias_then_batchnorm_activation_dropout():
    m = fastmlp.MLP([6, 5, 3], batch_norm=True, dropout=0.1, input_dropout=0.2)
    kinds = [type(l).__name__ for l in m.layers]
    assert kinds == ["Dropout", "Dense", "BatchNorm", "ReLU", "Dropout", "Dense"]
    assert not m.layers[1].bias_enabled and m.layers[-1].bias_enabled
    assert m.layers[0].p == pytest.approx(0.2) and m.layers[4].p == pytest.approx(0.1)
    assert m.n_parameters == 6 * 5 + 2 * 5 + 5 * 3 + 3
    assert m.n_streams == 2  # one random stream per dropout layer


def test_mlp_without_hidden_layers_is_a_single_dense_layer():
    m = fastmlp.MLP([4, 3], output="softmax")
    assert [type(l).__name__ for l in m.layers] == ["Dense"]
    X = np.random.default_rng(0).normal(size=(5, 4))
    np.testing.assert_allclose(m.forward(X), X @ m.layers[0].weight.T.astype(np.float64) + m.layers[0].bias,
                               rtol=1e-5, atol=1e-6)


def test_per_layer_dropout_list_gives_each_hidden_layer_its_probability():
    m = fastmlp.MLP([4, 8, 8, 8, 2], dropout=[0.1, 0.0, 0.5])
    drops = [(i, l.p) for i, l in enumerate(m.layers) if isinstance(l, nn.Dropout)]
    # Dense ReLU Dropout(0.1) Dense ReLU Dense ReLU Dropout(0.5) Dense: a zero entry adds no layer
    assert drops == [(2, pytest.approx(0.1)), (7, pytest.approx(0.5))]
    assert m.dropout == [0.1, 0.0, 0.5]
    assert m.n_streams == 2
    with pytest.raises(ValueError, match="dropout has 2 values but the model has 3 hidden layers"):
        fastmlp.MLP([4, 8, 8, 8, 2], dropout=[0.1, 0.2])


def test_logistic_is_an_alias_for_sigmoid():
    m = fastmlp.MLP([3, 4, 2], activation="logistic")
    assert isinstance(m.layers[1], nn.Sigmoid) and m.activation == "sigmoid"


def test_sequential_composes_layers_and_infers_widths():
    m = nn.Sequential(nn.Dense(5, 7), nn.BatchNorm(7), nn.Tanh(), nn.Dropout(0.3), nn.Dense(7, 2), nn.Sigmoid(),
                      nn.Dense(2, 4), output="sigmoid", seed=3)
    assert (m.in_features, m.out_features) == (5, 4)
    assert m.n_parameters == 5 * 7 + 7 + 2 * 7 + 7 * 2 + 2 + 2 * 4 + 4
    # a list works as well as varargs
    m2 = nn.Sequential([nn.Dense(5, 7), nn.ReLU(), nn.Dense(7, 1)])
    assert m2.out_features == 1
    assert "parameters" in repr(m)


def test_parameters_and_gradients_are_single_flat_arrays_and_layer_tensors_are_views():
    m = fastmlp.MLP([4, 6, 5, 3], batch_norm=True)
    params, grads = m.parameters(), m.gradients()
    assert params.ndim == 1 and grads.ndim == 1 and params.size == grads.size == m.n_parameters
    assert params.flags.c_contiguous and grads.flags.c_contiguous
    assert params.dtype == grads.dtype == np.float32
    for info in m.param_layout():
        layer = m.layers[info.layer]
        view, dview = getattr(layer, info.name), getattr(layer, "d" + info.name)
        assert view.shape == info.shape and dview.shape == info.shape
        assert np.shares_memory(view, params) and np.shares_memory(dview, grads)
        assert view.ctypes.data == params[info.start:].ctypes.data
    params[...] = 7.0
    assert np.all(m.layers[0].weight == 7.0) and np.all(m.layers[1].gamma == 7.0)
    m.layers[-1].bias[...] = -1.0
    assert np.all(params[-3:] == -1.0)
    assert m.parameters() is params  # the same arena every time


def test_param_layout_tiles_the_arena_in_layer_order():
    m = fastmlp.MLP([4, 6, 5, 3], batch_norm=True)
    layout = m.param_layout()
    starts = [i.start for i in layout]
    assert starts[0] == 0
    assert all(a.start + a.size == b.start for a, b in zip(layout, layout[1:]))
    assert layout[-1].start + layout[-1].size == m.n_parameters
    assert [i.kind for i in layout] == ["weight", "gamma", "beta", "weight", "gamma", "beta", "weight", "bias"]
    assert [i.dense_index for i in layout] == [0, None, None, 1, None, None, 2, 2]
    assert [i.layer for i in layout] == sorted(i.layer for i in layout)


def test_gradients_fill_the_gradient_arena_after_backward():
    rng = np.random.default_rng(0)
    m = fastmlp.MLP([4, 6, 3], output="softmax")
    value, grads = m.value_and_grad(rng.normal(size=(8, 4)), rng.integers(0, 3, 8))
    assert grads is m.gradients()
    assert np.isfinite(value) and np.any(grads != 0)
    np.testing.assert_array_equal(m.layers[0].dweight, grads[:24].reshape(6, 4))


# --- forward, predict, predict_proba ----------------------------------------------------------


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_forward_returns_logits_of_a_numpy_reference(activation):
    rng = np.random.default_rng(1)
    m = _randomize(fastmlp.MLP([5, 7, 6, 3], activation=activation, output="softmax", dtype="float64"), rng)
    X = rng.normal(size=(11, 5))
    act = {"relu": lambda z: np.maximum(z, 0), "sigmoid": _sigmoid, "tanh": np.tanh}[activation]
    dense = [l for l in m.layers if isinstance(l, nn.Dense)]
    h = X
    for i, d in enumerate(dense):
        h = h @ d.weight.T + d.bias
        if i < len(dense) - 1:
            h = act(h)
    np.testing.assert_allclose(m.forward(X), h, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(m.decision_function(X), m.forward(X))
    np.testing.assert_array_equal(m(X), m.forward(X))


def test_identity_output_predicts_logits_and_has_no_probabilities():
    rng = np.random.default_rng(2)
    m = fastmlp.MLP([3, 4, 2])
    X = rng.normal(size=(6, 3))
    np.testing.assert_array_equal(m.predict(X), m.forward(X))
    with pytest.raises(ValueError, match="predict_proba needs output='softmax' or 'sigmoid'"):
        m.predict_proba(X)


def test_softmax_output_predicts_class_indices_and_softmax_probabilities():
    rng = np.random.default_rng(3)
    m = _randomize(fastmlp.MLP([3, 8, 4], output="softmax"), rng, scale=2.0)
    X = rng.normal(size=(50, 3))
    logits = m.forward(X).astype(np.float64)
    proba = m.predict_proba(X)
    np.testing.assert_allclose(proba, _softmax(logits), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    pred = m.predict(X)
    assert pred.shape == (50,) and np.issubdtype(pred.dtype, np.integer)
    np.testing.assert_array_equal(pred, logits.argmax(axis=1))
    assert len(np.unique(pred)) > 1


def test_sigmoid_output_predicts_a_zero_one_matrix_at_probability_one_half():
    rng = np.random.default_rng(4)
    m = _randomize(fastmlp.MLP([3, 8, 4], output="sigmoid"), rng, scale=2.0)
    X = rng.normal(size=(50, 3))
    logits = m.forward(X).astype(np.float64)
    proba = m.predict_proba(X)
    np.testing.assert_allclose(proba, _sigmoid(logits), rtol=1e-5, atol=1e-7)
    pred = m.predict(X)
    assert pred.shape == (50, 4) and set(np.unique(pred)) == {0, 1}
    np.testing.assert_array_equal(pred, (proba > 0.5).astype(pred.dtype))


def test_probabilities_are_stable_for_huge_logits():
    m = fastmlp.MLP([1, 2], output="softmax", dtype="float64")
    m.layers[0].weight[...] = [[1000.0], [-1000.0]]
    p = m.predict_proba(np.array([[5.0], [-5.0]]))
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p, [[1, 0], [0, 1]], atol=1e-300)
    s = fastmlp.MLP([1, 1], output="sigmoid", dtype="float64")
    s.layers[0].weight[...] = 1000.0
    q = s.predict_proba(np.array([[5.0], [-5.0]]))
    assert np.all(np.isfinite(q)) and q[0, 0] == 1.0 and q[1, 0] < 1e-300


@pytest.mark.parametrize("output", ["identity", "softmax", "sigmoid"])
def test_chunked_prediction_equals_unchunked_for_more_rows_than_a_chunk(monkeypatch, output):
    rng = np.random.default_rng(5)
    m = fastmlp.MLP([6, 9, 5], batch_norm=True, dropout=0.3, output=output)
    _randomize(m, rng)
    m.layers[1].running_mean[...] = rng.normal(size=9)
    m.layers[1].running_var[...] = rng.uniform(0.5, 2.0, size=9)
    X = rng.normal(size=(103, 6))
    whole = {"forward": m.forward(X), "predict": m.predict(X)}
    if output != "identity":
        whole["predict_proba"] = m.predict_proba(X)
    monkeypatch.setattr(nn, "PREDICT_CHUNK_ROWS", 10)  # 11 chunks, the last one ragged
    calls = []
    original = m._forward
    monkeypatch.setattr(m, "_forward", lambda x, *a, **k: calls.append(x.shape[0]) or original(x, *a, **k))
    for name, expected in whole.items():
        calls.clear()
        np.testing.assert_array_equal(getattr(m, name)(X), expected)
        assert calls == [10] * 10 + [3]


# --- training vs inference mode ----------------------------------------------------------------


def test_dropout_applies_in_training_mode_only():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(40, 8))
    m = _randomize(fastmlp.MLP([8, 16, 4], dropout=0.5), rng)
    plain = fastmlp.MLP([8, 16, 4])
    plain.parameters()[...] = m.parameters()
    # inference: no dropout, deterministic
    np.testing.assert_array_equal(m.forward(X), plain.forward(X))
    np.testing.assert_array_equal(m.predict(X), plain.predict(X))
    # training: dropout on, reproducible for the same (seed, step), different for another step
    a = m.forward(X, training=True, seed=1, step=0)
    b = m.forward(X, training=True, seed=1, step=0)
    c = m.forward(X, training=True, seed=1, step=1)
    d = m.forward(X, training=True, seed=2, step=0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d) and not np.array_equal(a, plain.forward(X))


def test_dropout_drops_with_the_philox_mask_of_its_stream_and_rescales_kept_units():
    p, seed, step = 0.3, 11, 4
    m = nn.Sequential(nn.Dense(6, 6, bias=False), nn.Dropout(0.1), nn.Dense(6, 6, bias=False), nn.Dropout(p))
    for d in (m.layers[0], m.layers[2]):
        d.weight[...] = np.eye(6)
    X = np.random.default_rng(7).uniform(1.0, 2.0, size=(30, 6)).astype(np.float32)
    out = m.forward(X, training=True, seed=seed, step=step)
    # DESIGN.md: offset = step * n_streams + stream_index; this Dropout is stream 1 of 2
    keep0 = K.dropout_mask((30, 6), 0.1, seed=seed, offset=step * 2 + 0)
    keep1 = K.dropout_mask((30, 6), p, seed=seed, offset=step * 2 + 1)
    expected = X * keep0 / np.float32(1 - 0.1)
    expected = expected * keep1 / np.float32(1 - p)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert np.all((out == 0) == ~(keep0 & keep1))


def test_batch_norm_uses_batch_statistics_in_training_and_running_statistics_in_inference():
    rng = np.random.default_rng(8)
    m = nn.Sequential(nn.BatchNorm(3), dtype="float64")
    bn = m.layers[0]
    bn.gamma[...] = [1.0, 2.0, 0.5]
    bn.beta[...] = [0.0, -1.0, 3.0]
    X = rng.normal(loc=[1, -2, 5], scale=[1, 3, 0.5], size=(20, 3))
    y = m.forward(X, training=True)
    mean, var = X.mean(axis=0), X.var(axis=0)
    np.testing.assert_allclose(y, (X - mean) / np.sqrt(var + 1e-5) * bn.gamma + bn.beta, rtol=1e-10, atol=1e-12)
    # running statistics: momentum 0.1, unbiased variance, starting from (0, 1)
    np.testing.assert_allclose(bn.running_mean, 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * X.var(axis=0, ddof=1), rtol=1e-12)
    # inference: the running statistics, whatever the batch
    Z = rng.normal(size=(4, 3))
    expected = (Z - bn.running_mean) / np.sqrt(bn.running_var + 1e-5) * bn.gamma + bn.beta
    np.testing.assert_allclose(m.forward(Z), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.forward(Z[:1]), expected[:1], rtol=1e-10, atol=1e-12)
    # inference leaves the running statistics alone
    before = bn.running_mean.copy()
    m.forward(Z)
    np.testing.assert_array_equal(bn.running_mean, before)
    assert set(m.buffers()) == {"0.running_mean", "0.running_var"}


def test_batch_norm_training_batch_of_one_row_raises():
    m = fastmlp.MLP([3, 4, 2], batch_norm=True)
    with pytest.raises(ValueError, match="at least 2 rows"):
        m.forward(np.ones((1, 3)), training=True)
    assert m.forward(np.ones((1, 3))).shape == (1, 2)  # inference is fine


def test_reset_parameters_restores_initial_state():
    m = fastmlp.MLP([3, 4, 2], batch_norm=True, seed=5)
    initial = m.parameters().copy()
    m.parameters()[...] = 3.0
    m.layers[1].running_var[...] = 9.0
    m.reset_parameters()
    np.testing.assert_array_equal(m.parameters(), initial)
    np.testing.assert_array_equal(m.layers[1].running_var, 1.0)


# --- value_and_grad ----------------------------------------------------------------------------

_CASES = {
    # name: (output, loss, target maker)
    "multi_output_regression": ("identity", "squared", lambda rng, n, k: rng.normal(size=(n, k))),
    "multi_class": ("softmax", "cross_entropy", lambda rng, n, k: rng.integers(0, k, n)),
    "multi_label": ("sigmoid", "binary_cross_entropy", lambda rng, n, k: rng.integers(0, 2, (n, k)).astype(float)),
}


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batch_norm"])
@pytest.mark.parametrize("case", list(_CASES))
def test_value_and_grad_matches_float64_numerical_gradient(case, batch_norm):
    output, loss, make_target = _CASES[case]
    rng = np.random.default_rng([list(_CASES).index(case), int(batch_norm)])
    m = _randomize(fastmlp.MLP([4, 6, 5, 3], activation="tanh" if batch_norm else "relu", output=output,
                               batch_norm=batch_norm, dtype="float64"), rng)
    X = rng.normal(size=(9, 4))
    y = make_target(rng, 9, 3)
    buffers = {k: v.copy() for k, v in m.buffers().items()}

    def numpy_loss():
        logits = m.forward(X, training=True)  # batch statistics, no dropout in this model
        for k, v in m.buffers().items():
            v[...] = buffers[k]
        return _numpy_loss(loss, logits, y)

    value, grads = m.value_and_grad(X, y, loss)
    grads = grads.copy()
    for k, v in m.buffers().items():
        v[...] = buffers[k]
    assert value == pytest.approx(numpy_loss(), rel=1e-12)
    params = m.parameters()
    numeric = np.empty_like(params)
    eps = 1e-6
    for i in range(params.size):
        old = params[i]
        params[i] = old + eps
        up = numpy_loss()
        params[i] = old - eps
        down = numpy_loss()
        params[i] = old
        numeric[i] = (up - down) / (2 * eps)
    # central differences: truncation ~eps² and rounding ~1e-16·|L|/eps ≈ 1e-10
    np.testing.assert_allclose(grads, numeric, rtol=1e-6, atol=1e-8 * max(1.0, abs(value)))


def test_value_and_grad_infers_the_loss_from_the_output():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(7, 3))
    for output, loss, make in (v for v in _CASES.values()):
        m = fastmlp.MLP([3, 4, 2], output=output, dtype="float64")
        y = make(rng, 7, 2)
        inferred, _ = m.value_and_grad(X, y)
        explicit, _ = m.value_and_grad(X, y, loss)
        assert inferred == explicit == pytest.approx(_numpy_loss(loss, m.forward(X), y), rel=1e-12)


@pytest.mark.parametrize("bn", [False, True])
def test_relu_dropout_backward_shortcut_trains_bitwise_like_the_mask_regenerating_path(bn):
    # On the CPU, a dropout after Dense+ReLU takes its gradient from its own output instead of
    # drawing the mask again; the trained weights must not differ by a bit. (With batch norm the
    # shortcut does not apply; the test pins that both settings train alike.)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 12)).astype(np.float32)
    y = rng.integers(0, 3, 300)

    def train(shortcut):
        model = fastmlp.MLP([12, 32, 16, 3], output="softmax", dropout=0.3, batch_norm=bn, seed=1)
        for b in model._blocks:
            if hasattr(b, "relu_before"):
                assert b.relu_before == (not bn)
                b.relu_before = b.relu_before and shortcut
        fastmlp.Trainer(model, optimizer=fastmlp.optim.Adam(1e-2), batch_size=64, epochs=3, seed=2,
                        progress=False).fit(X, y)
        return model.parameters().copy()

    np.testing.assert_array_equal(train(True).view(np.uint32), train(False).view(np.uint32))


def test_value_and_grad_in_inference_mode_ignores_dropout():
    rng = np.random.default_rng(10)
    X, y = rng.normal(size=(12, 3)), rng.normal(size=(12, 2))
    m = _randomize(fastmlp.MLP([3, 8, 2], dropout=0.5, dtype="float64"), rng)
    plain = fastmlp.MLP([3, 8, 2], dtype="float64")
    plain.parameters()[...] = m.parameters()
    v1, g1 = m.value_and_grad(X, y, training=False)
    g1 = g1.copy()
    v2, g2 = plain.value_and_grad(X, y)
    assert v1 == v2
    np.testing.assert_array_equal(g1, g2)
    v3, _ = m.value_and_grad(X, y, training=True, seed=3)
    assert v3 != v1


def test_backward_returns_the_input_gradient_when_asked():
    rng = np.random.default_rng(11)
    m = _randomize(fastmlp.MLP([3, 5, 2], activation="tanh", dtype="float64"), rng)
    X, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    logits = m.forward(X, training=True)
    dx = m.backward((logits - y) / 4, need_input_grad=True)
    eps = 1e-6
    numeric = np.empty_like(X)
    for idx in np.ndindex(*X.shape):
        Xp, Xm = X.copy(), X.copy()
        Xp[idx] += eps
        Xm[idx] -= eps
        numeric[idx] = (_numpy_loss("squared", m.forward(Xp), y) - _numpy_loss("squared", m.forward(Xm), y)) / (2 * eps)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-9)


def test_float32_model_gradients_agree_with_float64_model():
    rng = np.random.default_rng(12)
    m64 = _randomize(fastmlp.MLP([5, 8, 3], output="softmax", dtype="float64"), rng)
    m32 = fastmlp.MLP([5, 8, 3], output="softmax")
    m32.parameters()[...] = m64.parameters()
    X, y = rng.normal(size=(16, 5)), rng.integers(0, 3, 16)
    v64, g64 = m64.value_and_grad(X, y)
    v32, g32 = m32.value_and_grad(X, y)
    assert g32.dtype == np.float32
    assert v32 == pytest.approx(v64, rel=1e-5)
    np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-5 * np.abs(g64).max())


def test_single_feature_model_accepts_1d_input():
    m = fastmlp.MLP([1, 3, 1], dtype="float64")
    x = np.linspace(-1, 1, 5)
    np.testing.assert_array_equal(m.predict(x), m.predict(x[:, None]))


# --- bad arguments ---------------------------------------------------------------------------

_BAD_MODELS = [
    (lambda: fastmlp.MLP([5]), ValueError, "at least an input and an output"),
    (lambda: fastmlp.MLP([5, 0, 2]), ValueError, "all >= 1"),
    (lambda: fastmlp.MLP([5, 2], activation="softplus"), ValueError, "activation must be one of"),
    (lambda: fastmlp.MLP([5, 2], output="linear"), ValueError, "output must be one of"),
    (lambda: fastmlp.MLP([5, 4, 2], dropout=1.0), ValueError, "0 <= p < 1"),
    (lambda: fastmlp.MLP([5, 4, 2], dropout=-0.1), ValueError, "0 <= p < 1"),
    (lambda: fastmlp.MLP([5, 4, 2], input_dropout=1.5), ValueError, "0 <= p < 1"),
    (lambda: fastmlp.MLP([5, 2], dtype="int32"), ValueError, "float32 or float64"),
    (lambda: fastmlp.MLP([5, 2], init="xavier"), ValueError, "init must be one of"),
    (lambda: fastmlp.MLP([5, 2], seed=-1), ValueError, "seed must be an int"),
    (lambda: fastmlp.MLP([5, 2], seed=1.5), ValueError, "seed must be an int"),
    (lambda: nn.Sequential(), ValueError, "at least one layer"),
    (lambda: nn.Sequential(nn.Dense(3, 4), "relu"), TypeError, "layer 1 is str"),
    (lambda: nn.Sequential(nn.ReLU()), ValueError, "at least one Dense or BatchNorm"),
    (lambda: nn.Sequential(nn.Dense(3, 4), nn.Dense(5, 2)), ValueError,
     "expects 5 inputs but the previous layer gives 4"),
    (lambda: nn.Sequential(nn.Dense(3, 4), nn.BatchNorm(5)), ValueError, "has 5 features but its input has 4"),
    (lambda: nn.Sequential(nn.Dense(3, 4), nn.TiedDense(1)), ValueError, "must tie to an earlier Dense"),
    (lambda: nn.Dense(0, 3), ValueError, "in_features must be a positive int"),
    (lambda: nn.Dense(3, 2.5), ValueError, "out_features must be a positive int"),
    (lambda: nn.BatchNorm(3, momentum=2.0), ValueError, "momentum"),
    (lambda: nn.BatchNorm(3, eps=0.0), ValueError, "eps"),
    (lambda: nn.Noise("salt", 0.1), ValueError, "kind must be"),
]


@pytest.mark.parametrize("make, error, message", _BAD_MODELS, ids=[m for _, _, m in _BAD_MODELS])
def test_bad_model_arguments_raise_clear_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mlp_gradient_is_bitwise_the_unfused_kernel_composition(isa, dtype):
    # The CPU backward fuses: dropout+ReLU backward into the next layer's dX GEMM (relu_mask) and
    # the bias gradient into the dW GEMM (a_sums). The result must be bitwise what the plain
    # kernels give one after the other.
    from fastmlp import kernels as K
    from fastmlp.nn import Dense, _DropoutBlock
    rng = np.random.default_rng(4)
    p, seed, step = 0.3, 11, 5
    m = fastmlp.MLP([23, 19, 13, 3], output="softmax", dropout=p, seed=3, dtype=dtype)
    X = rng.standard_normal((37, 23)).astype(dtype)
    y = rng.integers(0, 3, 37).astype(np.int64)
    m.value_and_grad(X, y, seed=seed, step=step)
    dense = [layer for layer in m.layers if isinstance(layer, Dense)]
    offsets = [step * m.n_streams + b.stream_index for b in m._blocks if isinstance(b, _DropoutBlock)]
    h, inputs, relu_out = X, [], []
    for i, d in enumerate(dense[:-1]):
        inputs.append(h)
        z = K.gemm(h, d.weight, trans_b=True, bias=d.bias, activation="relu")
        relu_out.append(z)
        h = K.dropout(z, p, seed=seed, offset=offsets[i])
    inputs.append(h)
    _, g = K.softmax_cross_entropy(K.gemm(h, dense[-1].weight, trans_b=True, bias=dense[-1].bias), y)
    for i in range(len(dense) - 1, -1, -1):
        d = dense[i]
        np.testing.assert_array_equal(d.dweight, K.gemm(g, inputs[i], trans_a=True), err_msg=f"dW{i}")
        np.testing.assert_array_equal(d.dbias, K.bias_grad(g), err_msg=f"db{i}")
        if i:
            g = K.activation_backward(K.dropout_backward(K.gemm(g, d.weight), p, seed=seed, offset=offsets[i - 1]),
                                      relu_out[i - 1], "relu")


def test_label_range_check_names_the_bad_values_on_every_path():
    # prepare_target's range check runs in one C++ pass (_label_range) for aligned labels, and in
    # NumPy for unaligned ones: the same message either way, from train_step and value_and_grad.
    from fastmlp import _core
    assert _core._label_range(np.array([3, -1, 7], np.int64)) == (-1, 7)
    assert _core._label_range(np.array([2, 9, 4], np.int32)) == (2, 9)
    assert _core._label_range(np.array([], np.int64)) is None
    with pytest.raises(TypeError, match="int32 or int64"):
        _core._label_range(np.array([1.0, 2.0]))
    m = fastmlp.MLP([3, 4, 2], output="softmax")
    tr = fastmlp.Trainer(m, progress=False)
    X = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\) .*got values in \[-1, 2\]"):
        tr.train_step(X, np.array([0, 1, 2, -1, 1]))
    raw = np.zeros(5 * 8 + 1, np.uint8)[1:].view(np.int64)  # a misaligned int64 view
    raw[:] = [0, 1, 3, 0, 1]
    assert not raw.flags.aligned
    with pytest.raises(ValueError, match=r"got values in \[0, 3\]"):
        m.value_and_grad(X, raw)
    before = m.parameters().copy()
    assert np.isfinite(tr.train_step(X, np.array([0, 1, 1, 0, 1], np.int32)))
    assert not np.array_equal(before, m.parameters())


def test_bad_data_arguments_raise_clear_errors():
    m = fastmlp.MLP([3, 4, 2], output="softmax")
    X = np.zeros((5, 3))
    with pytest.raises(ValueError, match="X has 4 features but the model expects 3"):
        m.predict(np.zeros((5, 4)))
    with pytest.raises(ValueError, match="X must be 2-D"):
        m.forward(np.zeros((2, 3, 1)))
    with pytest.raises(TypeError, match="X must be numeric"):
        m.forward(np.array([["a", "b", "c"]]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        m.value_and_grad(X, [0, 1, 2, 0, 1])
    with pytest.raises(ValueError, match="labels must be integers"):
        m.value_and_grad(X, [0, 1, 0.5, 0, 1])
    with pytest.raises(ValueError, match="y has 4 rows but X has 5"):
        m.value_and_grad(X, [0, 1, 1, 0])
    with pytest.raises(ValueError, match="loss must be one of"):
        m.value_and_grad(X, [0, 1, 1, 0, 1], "mse")
    with pytest.raises(ValueError, match=r"expected \(5, 2\)"):
        m.value_and_grad(X, np.zeros((5, 3)), "squared")
    with pytest.raises(RuntimeError, match="backward needs a forward"):
        fastmlp.MLP([3, 2]).backward(np.zeros((1, 2)))


# --- torch parity --------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_norm, activation, loss", [
    (False, "relu", "cross_entropy"),
    (False, "sigmoid", "squared"),
    (True, "tanh", "binary_cross_entropy"),
    (True, "relu", "cross_entropy"),
])
def test_mlp_forward_and_backward_match_torch_with_copied_weights(batch_norm, activation, loss):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(20)
    sizes = [6, 9, 7, 4]
    output = {"cross_entropy": "softmax", "squared": "identity", "binary_cross_entropy": "sigmoid"}[loss]
    m = _randomize(fastmlp.MLP(sizes, activation=activation, output=output, batch_norm=batch_norm,
                               dtype="float64"), rng)
    X = rng.normal(size=(13, 6))
    y = _CASES[{"squared": "multi_output_regression", "cross_entropy": "multi_class",
                "binary_cross_entropy": "multi_label"}[loss]][2](rng, 13, 4)
    act = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh}[activation]
    modules, pairs = [], []  # pairs: (our layer index, torch module)
    for i, layer in enumerate(m.layers):
        if isinstance(layer, nn.Dense):
            lin = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias_enabled, dtype=torch.float64)
            modules.append(lin)
            pairs.append((i, lin))
        elif isinstance(layer, nn.BatchNorm):
            bn = torch.nn.BatchNorm1d(layer.features, dtype=torch.float64)  # momentum 0.1, eps 1e-5
            modules.append(bn)
            pairs.append((i, bn))
        else:
            modules.append(act())
    net = torch.nn.Sequential(*modules).train()
    names = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}
    with torch.no_grad():
        for info in m.param_layout():
            module = dict(pairs)[info.layer]
            getattr(module, names[info.name]).copy_(torch.from_numpy(getattr(m.layers[info.layer], info.name).copy()))
    value, grads = m.value_and_grad(X, y, loss)
    logits = net(torch.from_numpy(X))
    if loss == "cross_entropy":
        t_loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
    elif loss == "squared":
        t_loss = 0.5 * ((logits - torch.from_numpy(y)) ** 2).sum(dim=1).mean()
    else:
        t_loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y),
                                                                      reduction="sum") / X.shape[0]
    t_loss.backward()
    assert value == pytest.approx(t_loss.item(), rel=1e-12)
    for info in m.param_layout():
        module = dict(pairs)[info.layer]
        theirs = getattr(module, names[info.name]).grad.numpy()
        ours = grads[info.start:info.start + info.size].reshape(info.shape)
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-13, err_msg=f"{info}")
    for i, module in pairs:  # batch norm running statistics (unbiased variance)
        if isinstance(module, torch.nn.BatchNorm1d):
            np.testing.assert_allclose(m.layers[i].running_mean, module.running_mean.numpy(), rtol=1e-12)
            np.testing.assert_allclose(m.layers[i].running_var, module.running_var.numpy(), rtol=1e-12)
    net.eval()
    Z = rng.normal(size=(5, 6))
    np.testing.assert_allclose(m.forward(Z), net(torch.from_numpy(Z)).detach().numpy(), rtol=1e-10, atol=1e-12)


def test_pickle_and_deepcopy_keep_layer_tensors_as_views_of_the_arena():
    import copy
    import pickle

    model = fastmlp.MLP([3, 4, 2], batch_norm=True, dropout=0.1, seed=3)
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        dense = clone.layers[0]
        assert np.shares_memory(dense.weight, clone.parameters())
        assert np.shares_memory(dense.dweight, clone.gradients())
        np.testing.assert_array_equal(clone.parameters(), model.parameters())
        clone.parameters()[...] += 1.0  # training the clone changes what its layers compute
        assert not np.array_equal(clone.forward(np.ones((2, 3))), model.forward(np.ones((2, 3))))
