"""The Python optimizers (fastmlp.optim), their segment tables, clip_norm, lr="auto", and the
learning-rate schedules (fastmlp.schedules). The fused kernels themselves are tested in
test_optim_kernels.py; here the classes are checked end to end on a model.

Golden trajectories: 100 steps of each optimizer on a small float64 MLP against a NumPy float64
reference of torch.optim's documented formulas (written here), with per-element step-size scale,
weight decay and L1 built independently from DESIGN.md's rules. The two runs compute identical
gradients from identical parameters, so they agree to a few float64 roundings per step
(rtol 1e-9). With torch installed, the same classes are compared with torch.optim in float32.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastmlp
from fastmlp import nn, optim, schedules

STEPS = 100


# --- NumPy float64 references of torch.optim ---------------------------------------------------


def _element_hyperparameters(model, weight_decay=0.0, l1=0.0, bias_lr_multiplier=1.0, decay_bias=False):
    """Per-element (lr_scale, weight_decay, l1) over the arena, from DESIGN.md: weights get their
    Dense layer's strengths; biases and batch-norm parameters get the bias step-size multiplier
    and no regularisation unless decay_bias."""
    n = model.n_parameters
    scale, wd, l1s = np.ones(n), np.zeros(n), np.zeros(n)

    def per(value, index):
        return value[index] if isinstance(value, (list, tuple)) else value

    for info in model.param_layout():
        sl = slice(info.start, info.start + info.size)
        if info.kind == "weight":
            wd[sl], l1s[sl] = per(weight_decay, info.dense_index), per(l1, info.dense_index)
        else:
            scale[sl] = bias_lr_multiplier
            if decay_bias:
                owner = info.dense_index
                wd[sl] = per(weight_decay, owner) if owner is not None else weight_decay
                l1s[sl] = per(l1, owner) if owner is not None else l1
    return scale, wd, l1s


class _Reference:
    """torch.optim's update rules in float64 NumPy, with per-element hyper-parameters."""

    def __init__(self, kind, size, lr, scale, wd, l1, **hp):
        self.kind, self.lr, self.scale, self.wd, self.l1, self.hp = kind, lr, scale, wd, l1, hp
        self.t = 0
        self.s = {k: np.zeros(size) for k in ("buf", "sum", "sq", "gavg", "m", "v")}

    def step(self, p, grad):
        hp, s = self.hp, self.s
        self.t += 1
        t = self.t
        lr = self.lr * self.scale
        if self.kind == "adamw":
            p = p * (1 - lr * self.wd)
            g = grad + self.l1 * np.sign(p)
        else:
            g = grad + self.wd * p + self.l1 * np.sign(p)
        if self.kind == "sgd":
            mom = hp.get("momentum", 0.0)
            if mom:
                s["buf"] = g.copy() if t == 1 else mom * s["buf"] + (1 - hp.get("dampening", 0.0)) * g
                g = g + mom * s["buf"] if hp.get("nesterov") else s["buf"]
            return p - lr * g
        if self.kind == "adagrad":
            clr = lr / (1 + (t - 1) * hp.get("lr_decay", 0.0))
            s["sum"] = s["sum"] + g * g
            return p - clr * g / (np.sqrt(s["sum"]) + hp.get("eps", 1e-10))
        if self.kind == "rmsprop":
            alpha, eps, mom = hp.get("alpha", 0.99), hp.get("eps", 1e-8), hp.get("momentum", 0.0)
            s["sq"] = alpha * s["sq"] + (1 - alpha) * g * g
            if hp.get("centered"):
                s["gavg"] = alpha * s["gavg"] + (1 - alpha) * g
                avg = np.sqrt(s["sq"] - s["gavg"] ** 2) + eps
            else:
                avg = np.sqrt(s["sq"]) + eps
            if mom:
                s["buf"] = mom * s["buf"] + g / avg
                return p - lr * s["buf"]
            return p - lr * g / avg
        b1, b2 = hp.get("betas", (0.9, 0.999))
        eps = hp.get("eps", 1e-8)
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        denom = np.sqrt(s["v"]) / math.sqrt(1 - b2 ** t) + eps
        return p - (lr / (1 - b1 ** t)) * s["m"] / denom


_OPTIMIZERS = {
    "sgd": (optim.SGD, dict(lr=0.05)),
    "sgd_momentum_dampening": (optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3)),
    "sgd_nesterov_weight_decay": (optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-2)),
    "adagrad": (optim.AdaGrad, dict(lr=0.05, lr_decay=0.01, weight_decay=1e-3)),
    "rmsprop": (optim.RMSprop, dict(lr=1e-2)),
    "rmsprop_centered_momentum": (optim.RMSprop, dict(lr=1e-3, alpha=0.9, momentum=0.5, centered=True,
                                                      weight_decay=1e-3)),
    "adam": (optim.Adam, dict(lr=1e-2)),
    "adam_weight_decay": (optim.Adam, dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)),
    "adamw": (optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
    "sgd_per_layer": (optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=[1e-2, 0.0, 3e-2], l1=[0.0, 1e-3, 2e-3],
                                      bias_lr_multiplier=2.0)),
    "adam_per_layer_decay_bias": (optim.Adam, dict(lr=1e-2, weight_decay=[1e-2, 2e-2, 0.0], l1=1e-3,
                                                   bias_lr_multiplier=0.5, decay_bias=True)),
    "adamw_per_layer": (optim.AdamW, dict(lr=1e-2, weight_decay=[0.1, 0.0, 0.05], bias_lr_multiplier=3.0)),
    "rmsprop_l1": (optim.RMSprop, dict(lr=1e-3, l1=1e-3, bias_lr_multiplier=0.0)),
}
_KIND = {optim.SGD: "sgd", optim.AdaGrad: "adagrad", optim.RMSprop: "rmsprop", optim.Adam: "adam",
         optim.AdamW: "adamw"}
_SHARED = ("weight_decay", "l1", "bias_lr_multiplier", "decay_bias", "lr")


def _problem(dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(64, 5))
    Y = np.stack([np.sin(X[:, 0]) + X[:, 1] * X[:, 2], np.tanh(X[:, 3] - X[:, 4])], axis=1)
    model = fastmlp.MLP([5, 12, 8, 2], activation="tanh", seed=seed, dtype=dtype)
    model.parameters()[...] += rng.normal(scale=0.05, size=model.n_parameters)  # nonzero biases
    return model, X, Y


def _batch(step):
    start = (step % 4) * 16
    return slice(start, start + 16)


@pytest.mark.parametrize("name", list(_OPTIMIZERS))
def test_optimizer_trajectory_matches_float64_reference_of_torch_formulas(name):
    cls, kw = _OPTIMIZERS[name]
    model, X, Y = _problem()
    reference_model, _, _ = _problem()
    opt = cls(**kw).bind(model)
    if cls is optim.AdamW and "weight_decay" not in kw:
        kw = dict(kw, weight_decay=1e-2)
    scale, wd, l1 = _element_hyperparameters(model, kw.get("weight_decay", 0.0), kw.get("l1", 0.0),
                                             kw.get("bias_lr_multiplier", 1.0), kw.get("decay_bias", False))
    ref = _Reference(_KIND[cls], model.n_parameters, kw["lr"], scale, wd, l1,
                     **{k: v for k, v in kw.items() if k not in _SHARED})
    p_ref = model.parameters().copy()
    for step in range(STEPS):
        rows = _batch(step)
        _, grads = model.value_and_grad(X[rows], Y[rows])
        opt.step(model.parameters(), grads)
        reference_model.parameters()[...] = p_ref
        _, ref_grads = reference_model.value_and_grad(X[rows], Y[rows])
        p_ref = ref.step(p_ref, ref_grads.copy())
    assert opt.step_count == STEPS
    moved = np.abs(p_ref - _problem()[0].parameters()).max()
    assert moved > 1e-3  # the trajectory went somewhere
    np.testing.assert_allclose(model.parameters(), p_ref, rtol=1e-9, atol=1e-12 * max(1.0, moved))


def test_adamw_defaults_to_decoupled_weight_decay_of_0_01():
    opt = optim.AdamW()
    assert opt.weight_decay == 0.01 and opt.decoupled and not optim.Adam().decoupled
    assert (optim.SGD().lr, optim.Adam().lr, optim.RMSprop().lr, optim.AdaGrad().lr) == (1e-3, 1e-3, 1e-2, 1e-2)
    assert optim.Adagrad is optim.AdaGrad


def test_trainer_full_batch_sgd_matches_the_reference_trajectory():
    model, X, Y = _problem()
    start = model.parameters().copy()
    fastmlp.Trainer(model, optimizer=optim.SGD(0.05, momentum=0.9), batch_size=64, epochs=20, shuffle=False,
                    progress=False).fit(X, Y)
    ref_model, _, _ = _problem()
    ones = np.ones(model.n_parameters)
    ref = _Reference("sgd", model.n_parameters, 0.05, ones, 0 * ones, 0 * ones, momentum=0.9)
    p = start
    for _ in range(20):
        ref_model.parameters()[...] = p
        _, g = ref_model.value_and_grad(X, Y)
        p = ref.step(p, g.copy())
    np.testing.assert_allclose(model.parameters(), p, rtol=1e-10, atol=1e-13)


# --- segment tables ----------------------------------------------------------------------------


def _layout(model):
    return {(info.layer, info.name): (info.start, info.size) for info in model.param_layout()}


def test_segment_table_example_of_design_md():
    model = nn.Sequential(nn.Dense(784, 512))
    opt = optim.SGD(0.1, weight_decay=1e-4, bias_lr_multiplier=2.0).bind(model)
    bounds, values = opt.segments
    assert bounds.dtype == np.int64 and values.dtype == np.float64
    np.testing.assert_array_equal(bounds, [[0, 401408], [401408, 512]])
    np.testing.assert_array_equal(values, [[1, 1e-4, 0], [2, 0, 0]])


def test_per_layer_weight_decay_l1_and_bias_multiplier_build_one_row_per_tensor():
    model = fastmlp.MLP([4, 5, 6, 3])
    lay = _layout(model)
    opt = optim.Adam(weight_decay=[1e-3, 2e-3, 3e-3], l1=[0.0, 1e-4, 0.0], bias_lr_multiplier=2.0).bind(model)
    bounds, values = opt.segments
    expected = [
        (lay[(0, "weight")], (1, 1e-3, 0)), (lay[(0, "bias")], (2, 0, 0)),
        (lay[(2, "weight")], (1, 2e-3, 1e-4)), (lay[(2, "bias")], (2, 0, 0)),
        (lay[(4, "weight")], (1, 3e-3, 0)), (lay[(4, "bias")], (2, 0, 0)),
    ]
    np.testing.assert_array_equal(bounds, [b for b, _ in expected])
    np.testing.assert_array_equal(values, [v for _, v in expected])
    # the table tiles the arena: in order, non-overlapping, nothing left out
    assert bounds[0, 0] == 0 and bounds[-1].sum() == model.n_parameters
    assert np.all(bounds[:-1].sum(axis=1) == bounds[1:, 0])


def test_decay_bias_regularises_biases_with_their_layers_strength():
    model = fastmlp.MLP([4, 5, 3])
    lay = _layout(model)
    opt = optim.SGD(0.1, weight_decay=[1e-3, 2e-3], l1=[1e-4, 0.0], decay_bias=True).bind(model)
    bounds, values = opt.segments
    # weight and bias of a layer share their values, so the rows merge per layer
    np.testing.assert_array_equal(bounds, [[0, lay[(0, "weight")][1] + 5], [lay[(2, "weight")][0], 15 + 3]])
    np.testing.assert_array_equal(values, [[1, 1e-3, 1e-4], [1, 2e-3, 0]])


def test_scalar_settings_that_treat_every_parameter_alike_need_no_table():
    model = fastmlp.MLP([4, 5, 3])
    assert optim.SGD(0.1).bind(model).segments is None
    assert optim.SGD(0.1, weight_decay=1e-3, l1=1e-4, decay_bias=True).bind(model).segments is None
    assert optim.SGD(0.1, weight_decay=1e-3).bind(model).segments is not None  # biases are exempt


def test_batch_norm_parameters_count_as_biases():
    model = fastmlp.MLP([4, 5, 3], batch_norm=True)
    lay = _layout(model)
    bounds, values = optim.SGD(0.1, weight_decay=1e-3, bias_lr_multiplier=0.5).bind(model).segments
    gamma, beta = lay[(1, "gamma")], lay[(1, "beta")]
    row = [tuple(b) for b in bounds].index((gamma[0], gamma[1] + beta[1]))  # gamma and beta merge
    np.testing.assert_array_equal(values[row], [0.5, 0, 0])
    _, with_decay = optim.SGD(0.1, weight_decay=1e-3, bias_lr_multiplier=0.5, decay_bias=True).bind(model).segments
    assert with_decay[row].tolist() == [0.5, 1e-3, 0]


def test_per_layer_lists_must_have_one_value_per_dense_layer():
    model = fastmlp.MLP([4, 5, 6, 3])
    with pytest.raises(ValueError, match="weight_decay has 2 values but the model has 3 Dense layers"):
        optim.SGD(weight_decay=[1e-3, 1e-3]).bind(model)
    with pytest.raises(ValueError, match="l1 has 4 values"):
        optim.Adam(l1=[0, 0, 0, 0]).bind(model)
    with pytest.raises(ValueError, match=r"weight_decay\[1\] must be a finite number >= 0"):
        optim.SGD(weight_decay=[0.1, -1.0, 0.0])


def test_trainer_penalty_is_half_l2_plus_l1_of_the_weights_per_layer():
    model = fastmlp.MLP([4, 5, 3], dtype="float64")
    trainer = fastmlp.Trainer(model, optimizer=optim.SGD(0.1, weight_decay=[1e-2, 2e-2], l1=[0.0, 1e-3]),
                              progress=False)
    w0, w1 = model.layers[0].weight, model.layers[2].weight
    expected = 0.5 * 1e-2 * np.sum(w0 ** 2) + 0.5 * 2e-2 * np.sum(w1 ** 2) + 1e-3 * np.abs(w1).sum()
    assert trainer.penalty() == pytest.approx(expected, rel=1e-12)


# --- clip_norm ---------------------------------------------------------------------------------


def test_clip_norm_scales_the_global_gradient_norm_like_torch_clip_grad_norm():
    rng = np.random.default_rng(1)
    params = rng.normal(size=1000)
    grads = rng.normal(size=1000)
    norm = float(np.sqrt(np.sum(grads ** 2)))
    model = nn.Sequential(nn.Dense(100, 10, bias=False), dtype="float64")
    opt = optim.SGD(1.0, clip_norm=norm / 4).bind(model)
    p, g = params.copy(), grads.copy()
    returned = opt.step(p, g)
    assert returned == pytest.approx(norm, rel=1e-14)  # the norm before clipping
    coef = (norm / 4) / (norm + 1e-6)
    np.testing.assert_allclose(g, grads * coef, rtol=1e-14)  # clipped in place
    np.testing.assert_allclose(p, params - grads * coef, rtol=1e-13)
    assert np.sqrt(np.sum(g ** 2)) == pytest.approx(norm / 4, rel=1e-6)
    # a norm under the threshold is left alone
    opt = optim.SGD(1.0, clip_norm=2 * norm).bind(model)
    p, g = params.copy(), grads.copy()
    opt.step(p, g)
    np.testing.assert_array_equal(g, grads)
    np.testing.assert_allclose(p, params - grads, rtol=1e-14)
    # without clipping, step skips the norm
    assert math.isnan(optim.SGD(1.0).bind(model).step(params.copy(), grads.copy()))


def test_clip_norm_applies_in_training_and_keeps_a_huge_step_bounded():
    model, X, Y = _problem()
    Y = Y * 1e6  # huge gradients
    start = model.parameters().copy()
    trainer = fastmlp.Trainer(model, optimizer=optim.SGD(0.1, clip_norm=1.0), batch_size=64, epochs=1,
                              shuffle=False, progress=False)
    trainer.fit(X, Y)
    step = model.parameters() - start
    assert np.sqrt(np.sum(step ** 2)) == pytest.approx(0.1, rel=1e-5)


def test_bad_optimizer_arguments_raise():
    with pytest.raises(ValueError, match="lr must be a number >= 0 or 'auto'"):
        optim.SGD(lr="fast")
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        optim.Adam(lr=-1.0)
    with pytest.raises(ValueError, match="nesterov momentum requires momentum > 0 and dampening == 0"):
        optim.SGD(nesterov=True)
    with pytest.raises(ValueError, match="dampening must be in"):
        optim.SGD(momentum=0.9, dampening=2.0)
    with pytest.raises(ValueError, match="betas must be in"):
        optim.Adam(betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="alpha must be in"):
        optim.RMSprop(alpha=1.5)
    with pytest.raises(ValueError, match="clip_norm must be > 0"):
        optim.SGD(clip_norm=0.0)
    with pytest.raises(RuntimeError, match="not bound"):
        optim.SGD().step(np.zeros(3), np.zeros(3))
    with pytest.raises(TypeError, match="optimizer must be a fastmlp.optim.Optimizer"):
        fastmlp.Trainer(fastmlp.MLP([2, 1]), optimizer="adam")


def test_optimizer_state_round_trips_through_state_dict():
    model, X, Y = _problem()
    opt = optim.Adam(1e-2, weight_decay=[1e-3, 0.0, 1e-3]).bind(model)
    for step in range(5):
        opt.step(model.parameters(), model.value_and_grad(X[_batch(step)], Y[_batch(step)])[1])
    clone = optim.optimizer_from_state(opt.state_dict()).bind(model)
    assert clone.step_count == 5 and clone.hyperparameters() == opt.hyperparameters()
    twin, _, _ = _problem()
    twin.parameters()[...] = model.parameters()
    for step in range(5, 10):
        opt.step(model.parameters(), model.value_and_grad(X[_batch(step)], Y[_batch(step)])[1])
        clone.step(twin.parameters(), twin.value_and_grad(X[_batch(step)], Y[_batch(step)])[1])
    np.testing.assert_array_equal(model.parameters(), twin.parameters())


# --- lr="auto" ---------------------------------------------------------------------------------


def test_lr_auto_is_resolved_by_find_step_size_at_the_start_of_fit():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(600, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.1 * rng.normal(size=600)
    expected, tried = fastmlp.find_step_size(fastmlp.MLP([4, 8, 1], seed=1), X, y, loss="squared",
                                             optimizer=optim.SGD(lr="auto", momentum=0.9), seed=3, batch_size=32)
    model = fastmlp.MLP([4, 8, 1], seed=1)
    opt = optim.SGD(lr="auto", momentum=0.9)
    trainer = fastmlp.Trainer(model, optimizer=opt, batch_size=32, epochs=2, seed=3, progress=False)
    with pytest.raises(RuntimeError, match="lr='auto' is resolved at the start of fit"):
        trainer.train_step(X[:32], y[:32])
    history = trainer.fit(X, y)
    # half the best trial's step size, times 1 - 0.9^8 for the momentum its 8 steps built up
    assert trainer.base_lr == expected == min(tried, key=tried.get) * 0.5 * (1 - 0.9 ** 8)
    assert history.lr == [expected, expected]
    assert opt.lr == "auto" and opt.current_lr == expected
    with pytest.raises(RuntimeError, match="lr='auto' has not been resolved"):
        optim.Adam(lr="auto").bind(model).step(model.parameters().copy(), model.gradients().copy())


# --- schedules ---------------------------------------------------------------------------------


def _lrs(schedule, epochs, base=0.1):
    schedule.set_horizon(epochs)
    return [schedule.lr(e, base) for e in range(epochs)]


def test_constant_schedule():
    assert _lrs(schedules.Constant(), 4) == [0.1] * 4
    assert isinstance(schedules.resolve(None), schedules.Constant)


def test_step_decay_multiplies_by_gamma_every_step_size_epochs():
    np.testing.assert_allclose(_lrs(schedules.StepDecay(step_size=2, gamma=0.5), 7),
                               [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125], rtol=1e-15)


def test_inverse_time_decay_is_base_over_one_plus_decay_times_epoch():
    np.testing.assert_allclose(_lrs(schedules.InverseTimeDecay(decay=0.5), 4), [0.1, 0.1 / 1.5, 0.1 / 2, 0.1 / 2.5],
                               rtol=1e-15)


def test_cosine_anneals_from_base_to_min_over_the_horizon():
    lrs = _lrs(schedules.Cosine(min_lr=0.01), 4)
    expected = [0.01 + 0.5 * 0.09 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-14)
    assert lrs[0] == pytest.approx(0.1)
    # an explicit horizon wins over the Trainer's; past it the step size stays at min_lr
    explicit = schedules.Cosine(epochs=2)
    explicit.set_horizon(10)
    assert explicit.lr(1, 0.1) == pytest.approx(0.05) and explicit.lr(5, 0.1) == pytest.approx(0.0)


def test_linear_warmup_rises_to_base_then_hands_over():
    np.testing.assert_allclose(_lrs(schedules.LinearWarmup(3), 6), [0.025, 0.05, 0.075, 0.1, 0.1, 0.1], rtol=1e-14)
    after = schedules.LinearWarmup(2, after=schedules.StepDecay(step_size=2, gamma=0.1))
    np.testing.assert_allclose(_lrs(after, 6), [0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.01, 0.01], rtol=1e-14)
    cosine = schedules.LinearWarmup(2, after=schedules.Cosine())
    lrs = _lrs(cosine, 6)  # the cosine's horizon is what is left after the warm-up
    np.testing.assert_allclose(lrs[2:], [0.05 * (1 + math.cos(math.pi * e / 4)) for e in range(4)], rtol=1e-14)


class _TorchPlateau:
    """torch.optim.lr_scheduler.ReduceLROnPlateau, mode="min", threshold_mode="rel" (its source,
    transcribed)."""

    def __init__(self, lr, factor, patience, threshold, cooldown, min_lr, eps=1e-8):
        self.lr, self.factor, self.patience, self.threshold = lr, factor, patience, threshold
        self.cooldown, self.min_lr, self.eps = cooldown, min_lr, eps
        self.best, self.num_bad_epochs, self.cooldown_counter = math.inf, 0, 0

    def step(self, metric):
        if metric < self.best * (1.0 - self.threshold):
            self.best, self.num_bad_epochs = metric, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self.eps:
                self.lr = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        return self.lr


_PLATEAU_METRICS = [5.0, 4.0, 4.0, 3.99999, 4.1, 3.0, 3.0, 3.0, 3.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.0,
                    1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, float("nan"), 0.5]


@pytest.mark.parametrize("cooldown, min_lr", [(0, 0.0), (2, 0.0), (1, 0.004)])
def test_reduce_on_plateau_follows_torch_rule(cooldown, min_lr):
    ours = schedules.ReduceOnPlateau(factor=0.5, patience=2, threshold=1e-3, cooldown=cooldown, min_lr=min_lr)
    ref = _TorchPlateau(0.1, 0.5, 2, 1e-3, cooldown, min_lr)
    got, want = [], []
    for metric in _PLATEAU_METRICS:
        ours.observe(metric)
        got.append(ours.lr(0, 0.1))
        want.append(ref.step(metric))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert min(got) < 0.1  # it did reduce


@pytest.mark.parametrize("cooldown, min_lr", [(0, 0.0), (2, 0.0), (1, 0.004)])
def test_reduce_on_plateau_matches_torch(cooldown, min_lr):
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1))
    topt = torch.optim.SGD([param], lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, mode="min", factor=0.5, patience=2, threshold=1e-3,
                                                       threshold_mode="rel", cooldown=cooldown, min_lr=min_lr)
    ours = schedules.ReduceOnPlateau(factor=0.5, patience=2, threshold=1e-3, cooldown=cooldown, min_lr=min_lr)
    for metric in _PLATEAU_METRICS:
        sched.step(metric)
        ours.observe(metric)
        assert ours.lr(0, 0.1) == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)


def test_schedules_by_name_and_bad_arguments():
    for name, cls in (("constant", schedules.Constant), ("step", schedules.StepDecay),
                      ("inverse_time", schedules.InverseTimeDecay), ("cosine", schedules.Cosine),
                      ("warmup", schedules.LinearWarmup), ("plateau", schedules.ReduceOnPlateau)):
        assert type(schedules.resolve(name)) is cls
    with pytest.raises(ValueError, match="schedule must be a Schedule or one of"):
        schedules.resolve("exponential")
    with pytest.raises(ValueError, match="step_size"):
        schedules.StepDecay(step_size=0)
    with pytest.raises(ValueError, match="gamma"):
        schedules.StepDecay(gamma=1.5)
    with pytest.raises(ValueError, match="factor"):
        schedules.ReduceOnPlateau(factor=1.0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        schedules.LinearWarmup(-1)


def test_schedule_state_round_trips_and_continues_identically():
    for make in (lambda: schedules.ReduceOnPlateau(factor=0.5, patience=1, cooldown=1),
                 lambda: schedules.LinearWarmup(2, after=schedules.ReduceOnPlateau(factor=0.5, patience=0)),
                 lambda: schedules.LinearWarmup(2, after=schedules.Cosine()),
                 lambda: schedules.StepDecay(3, 0.5)):
        a = make()
        a.set_horizon(10)
        for e, m in enumerate([3.0, 3.0, 3.0, 2.0]):
            a.lr(e, 0.1)
            a.observe(m)
        b = schedules.from_state(a.state_dict())
        for e, m in enumerate([2.0, 2.0, 2.0, 1.0, 1.0], start=4):
            assert a.lr(e, 0.1) == b.lr(e, 0.1)
            a.observe(m)
            b.observe(m)


@pytest.mark.parametrize("schedule, expected", [
    (schedules.StepDecay(step_size=2, gamma=0.5), [0.1, 0.1, 0.05, 0.05, 0.025]),
    (schedules.Cosine(), [0.05 * (1 + math.cos(math.pi * e / 5)) for e in range(5)]),
    (schedules.LinearWarmup(2), [0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1]),
], ids=["step", "cosine", "warmup"])
def test_trainer_steps_the_schedule_once_per_epoch(schedule, expected):
    model, X, Y = _problem(dtype="float32")
    seen = []

    class Record(fastmlp.train.Callback):
        def on_batch_end(self, trainer, step, loss):
            seen.append((trainer.epoch, trainer.optimizer.current_lr))

    history = fastmlp.Trainer(model, optimizer=optim.SGD(0.1), batch_size=16, epochs=5, schedule=schedule,
                              progress=False, callbacks=[Record()]).fit(X, Y)
    np.testing.assert_allclose(history.lr, expected, rtol=1e-12)
    for epoch, lr in seen:  # the optimizer used the epoch's step size for every batch
        assert lr == history.lr[epoch]


def test_trainer_reduce_on_plateau_watches_the_validation_loss():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 3))
    y = rng.normal(size=200)  # nothing to learn: the validation loss soon stops improving
    sched = schedules.ReduceOnPlateau(factor=0.5, patience=1)
    history = fastmlp.Trainer(fastmlp.MLP([3, 16, 1]), optimizer=optim.Adam(3e-2), batch_size=20, epochs=12,
                              validation=0.3, schedule=sched, progress=False).fit(X, y)
    ref = _TorchPlateau(3e-2, 0.5, 1, 1e-4, 0, 0.0)
    expected = [3e-2] + [ref.step(v) for v in history.val_loss[:-1]]
    np.testing.assert_allclose(history.lr, expected, rtol=1e-12)
    assert history.lr[-1] < 3e-2


# --- torch parity ------------------------------------------------------------------------------

_TORCH_CASES = {
    "sgd": (optim.SGD, dict(lr=0.05), "SGD", dict(lr=0.05)),
    "sgd_momentum": (optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2), "SGD",
                     dict(lr=0.05, momentum=0.9, dampening=0.1)),
    "sgd_nesterov": (optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3), "SGD",
                     dict(lr=0.05, momentum=0.9, nesterov=True)),
    "adagrad": (optim.AdaGrad, dict(lr=0.05, lr_decay=1e-2, weight_decay=1e-3), "Adagrad",
                dict(lr=0.05, lr_decay=1e-2)),
    "rmsprop": (optim.RMSprop, dict(lr=1e-3, weight_decay=1e-3), "RMSprop", dict(lr=1e-3)),
    "rmsprop_centered": (optim.RMSprop, dict(lr=1e-3, alpha=0.9, momentum=0.5, centered=True), "RMSprop",
                         dict(lr=1e-3, alpha=0.9, momentum=0.5, centered=True)),
    "adam": (optim.Adam, dict(lr=1e-2, weight_decay=1e-2), "Adam", dict(lr=1e-2)),
    "adam_betas": (optim.Adam, dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6), "Adam",
                   dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6)),
    "adamw": (optim.AdamW, dict(lr=1e-2, weight_decay=0.1), "AdamW", dict(lr=1e-2)),
}


@pytest.mark.parametrize("name", list(_TORCH_CASES))
def test_optimizer_trajectory_matches_torch_optim_in_float32(name):
    torch = pytest.importorskip("torch")
    ours_cls, ours_kw, torch_name, torch_kw = _TORCH_CASES[name]
    rng = np.random.default_rng(4)
    X = rng.normal(size=(64, 5)).astype(np.float32)
    Y = np.stack([np.sin(X[:, 0]) + X[:, 1] * X[:, 2], np.tanh(X[:, 3] - X[:, 4])], axis=1).astype(np.float32)
    model = fastmlp.MLP([5, 12, 8, 2], activation="tanh", seed=4)
    model.parameters()[...] += rng.normal(scale=0.05, size=model.n_parameters).astype(np.float32)
    net = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.Tanh(), torch.nn.Linear(12, 8), torch.nn.Tanh(),
                              torch.nn.Linear(8, 2))
    dense = [l for l in model.layers if isinstance(l, nn.Dense)]
    linears = [net[0], net[2], net[4]]
    with torch.no_grad():
        for d, lin in zip(dense, linears):
            lin.weight.copy_(torch.from_numpy(d.weight.copy()))
            lin.bias.copy_(torch.from_numpy(d.bias.copy()))
    # our regularisation applies to weights only: torch's param groups say the same
    wd = ours_kw.get("weight_decay", 0.01 if ours_cls is optim.AdamW else 0.0)
    groups = [{"params": [l.weight for l in linears], "weight_decay": wd},
              {"params": [l.bias for l in linears], "weight_decay": 0.0}]
    topt = getattr(torch.optim, torch_name)(groups, **torch_kw)
    opt = ours_cls(**ours_kw).bind(model)
    start = model.parameters().copy()
    for step in range(STEPS):
        rows = _batch(step)
        _, grads = model.value_and_grad(X[rows], Y[rows], "squared")
        opt.step(model.parameters(), grads)
        topt.zero_grad()
        out = net(torch.from_numpy(X[rows]))
        loss = 0.5 * ((out - torch.from_numpy(Y[rows])) ** 2).sum(dim=1).mean()
        loss.backward()
        topt.step()
    theirs = np.concatenate([t.detach().numpy().ravel() for l in linears for t in (l.weight, l.bias)])
    ours = model.parameters()
    moved = np.abs(ours.astype(np.float64) - start).max()
    assert moved > 1e-3
    # float32 tolerance: two float32 implementations of the same 100 steps drift apart by a few
    # float32 roundings of the parameters per step (measured with torch 2.14: at most 4.2e-7 on
    # parameters of size ~1, i.e. about 4 ulp); allow ten times that
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=5e-6)
