"""Concurrency (issue 8, point 3): every kernel and separate models used from many Python threads
at once give the serial results bit for bit; one model trained from two threads raises a clear
RuntimeError (nn.TrainingGuard) while inference alongside training is safe; the thread pool
survives fork() and multiprocessing / joblib workers; a seeded fit is bitwise the same for any
thread count. tests/test_threads.py covers the thread-count controls and the basic fork cases.

Anything that could hang runs in a subprocess or behind a timeout, so a deadlock fails the test
instead of hanging the suite. No timing assertions: the machine may be slow and shared.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastmlp
from fastmlp import kernels as K
from fastmlp import optim
from fastmlp.train import Callback

TIMEOUT_S = 60  # deadlock detection only; a healthy run takes a fraction of it


# --- every kernel from many threads ----------------------------------------------------------------

def _kernel_jobs(rng):
    """One zero-argument function per kernel (and variant). Each builds its own outputs and
    in-place state, so jobs share only read-only inputs, and returns what it computed."""
    jobs = {}
    for dtype in (np.float32, np.float64):
        tag = np.dtype(dtype).name
        a = rng.standard_normal((67, 45)).astype(dtype)
        b = rng.standard_normal((45, 83)).astype(dtype)
        bt = np.ascontiguousarray(b.T)
        bias = rng.standard_normal(83).astype(dtype)
        c0 = rng.standard_normal((67, 83)).astype(dtype)
        x = rng.standard_normal((129, 37)).astype(dtype)
        y = np.tanh(x)
        big = rng.standard_normal(50_001).astype(dtype)
        labels = rng.integers(0, 37, size=129).astype(np.int64)
        targets = (rng.random((129, 37)) < 0.3).astype(dtype)
        gamma = rng.random(37).astype(dtype) + 0.5
        beta = rng.standard_normal(37).astype(dtype)
        grad = rng.standard_normal(4099).astype(dtype)
        param0 = rng.standard_normal(4099).astype(dtype)

        def gemm_accumulate(a=a, b=b, c0=c0):
            out = c0.copy()
            return K.gemm(a, b, alpha=0.5, beta=0.75, out=out, activation="tanh")

        def batch_norm_train(x=x, y=y, gamma=gamma, beta=beta):
            rm, rv = np.zeros(37, x.dtype), np.ones(37, x.dtype)
            out, mean, invstd = K.batch_norm(x, gamma, beta, rm, rv, training=True, activation="relu")
            dx, dg, db = K.batch_norm_backward(y, x, gamma, mean, invstd, activation="relu", y=out)
            return out, mean, invstd, rm, rv, dx, dg, db

        def steps(kind, param0=param0, grad=grad):
            p = param0.copy()
            s1, s2, s3 = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
            for t in range(1, 6):
                if kind == "adam":
                    K.adam_step(p, grad, s1, s2, step=t, lr=1e-2, weight_decay=1e-3, decoupled=t % 2 == 0)
                elif kind == "sgd":
                    K.sgd_step(p, grad, s1, step=t, lr=1e-2, momentum=0.9, nesterov=True, l1=1e-4)
                elif kind == "adagrad":
                    K.adagrad_step(p, grad, s1, step=t, lr=1e-2, lr_decay=0.01)
                else:
                    K.rmsprop_step(p, grad, s1, lr=1e-2, momentum=0.9, centered=True, momentum_buffer=s2,
                                   grad_avg=s3)
            return p, s1, s2, s3

        jobs.update({
            f"gemm-{tag}": lambda a=a, b=b, bias=bias: K.gemm(a, b, bias=bias, activation="relu"),
            f"gemm-trans-{tag}": lambda a=a, bt=bt: K.gemm(a, bt, trans_b=True, activation="sigmoid"),
            f"gemm-trans-a-{tag}": lambda x=x: K.gemm(x, x, trans_a=True),
            f"gemm-accumulate-{tag}": gemm_accumulate,
            f"activation-{tag}": lambda x=x: [K.activation(x, k) for k in ("relu", "sigmoid", "tanh")],
            f"activation-backward-{tag}": lambda x=x, y=y: K.activation_backward(x, y, "tanh"),
            f"bias-grad-{tag}": lambda x=x: K.bias_grad(x),
            f"dropout-{tag}": lambda big=big: K.dropout(big, 0.3, seed=7, offset=11),
            f"dropout-backward-{tag}": lambda big=big: K.dropout_backward(big, 0.3, seed=7, offset=11),
            f"add-noise-{tag}": lambda big=big: (K.add_noise(big, "gaussian", 0.1, seed=3, offset=5),
                                                 K.add_noise(big, "mask", 0.2, seed=3, offset=6)),
            f"random-{tag}": lambda dtype=dtype: (K.random_uniform((301, 7), seed=1, offset=2, dtype=dtype),
                                                  K.random_normal(3001, seed=1, offset=3, dtype=dtype)),
            f"squared-error-{tag}": lambda x=x, y=y: K.squared_error(x, y),
            f"softmax-ce-{tag}": lambda x=x, labels=labels: K.softmax_cross_entropy(x, labels),
            f"sigmoid-ce-{tag}": lambda x=x, targets=targets: K.sigmoid_cross_entropy(x, targets),
            f"batch-norm-{tag}": batch_norm_train,
            f"clip-grad-norm-{tag}": lambda big=big: (lambda g: (K.clip_grad_norm(g, 10.0), g))(big.copy()),
            **{f"{kind}-step-{tag}": (lambda kind=kind: steps(kind)) for kind in ("adam", "sgd", "adagrad", "rmsprop")},
        })
    jobs["dropout-mask"] = lambda: K.dropout_mask((513, 9), 0.4, seed=9, offset=1)
    return jobs


def _assert_same(expected, got, name):
    if isinstance(expected, (tuple, list)):
        assert len(expected) == len(got), name
        for i, (e, g) in enumerate(zip(expected, got)):
            _assert_same(e, g, f"{name}[{i}]")
    elif isinstance(expected, np.ndarray):
        assert expected.dtype == got.dtype, name
        np.testing.assert_array_equal(expected, got, err_msg=name, strict=True)
    else:  # a loss value
        assert expected == got or (expected != expected and got != got), name


@pytest.mark.parametrize("n_threads", (1, 2))
def test_every_kernel_from_8_python_threads_equals_serial_results(threads, rng, n_threads):
    fastmlp.set_num_threads(n_threads)
    jobs = _kernel_jobs(rng)
    serial = {name: job() for name, job in jobs.items()}
    names = list(jobs) * 4
    order = np.random.default_rng(0).permutation(len(names))
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [(names[i], pool.submit(jobs[names[i]])) for i in order]
        for name, future in futures:
            _assert_same(serial[name], future.result(timeout=TIMEOUT_S), name)


# --- separate models from many threads ---------------------------------------------------------------

def _data(seed=0, n=240, features=12, classes=4):
    r = np.random.default_rng(seed)
    X = r.standard_normal((n, features)).astype(np.float32)
    y = (X[:, :classes].argmax(axis=1) + (X[:, -1] > 1)) % classes
    return X, y


def _model_specs():
    """Different models and optimizers: plain, dropout, batch norm, float64."""
    return [
        dict(sizes=[12, 32, 4], kw=dict(output="softmax", seed=1), opt=lambda: optim.Adam(1e-2)),
        dict(sizes=[12, 24, 24, 4], kw=dict(output="softmax", dropout=0.2, seed=2),
             opt=lambda: optim.SGD(0.05, momentum=0.9)),
        dict(sizes=[12, 16, 4], kw=dict(output="softmax", batch_norm=True, dropout=0.1, seed=3),
             opt=lambda: optim.RMSprop(1e-3)),
        dict(sizes=[12, 20, 4], kw=dict(output="softmax", activation="tanh", seed=4, dtype="float64"),
             opt=lambda: optim.AdamW(1e-2, weight_decay=1e-2)),
        dict(sizes=[12, 8, 8, 4], kw=dict(output="softmax", input_dropout=0.1, seed=5),
             opt=lambda: optim.AdaGrad(1e-2)),
        dict(sizes=[12, 40, 4], kw=dict(output="softmax", batch_norm=True, seed=6), opt=lambda: optim.Adam(3e-3)),
    ]


def _fit_and_predict(spec, X, y, epochs=3, seed=0):
    model = fastmlp.MLP(spec["sizes"], **spec["kw"])
    trainer = fastmlp.Trainer(model, optimizer=spec["opt"](), batch_size=32, epochs=epochs, progress=False,
                              seed=seed)
    history = trainer.fit(X, y)
    return model.parameters().copy(), model.forward(X), np.array(history.train_loss)


def test_separate_models_fit_and_predict_from_threads_equal_serial_results(threads):
    fastmlp.set_num_threads(2)
    X, y = _data()
    specs = _model_specs()
    serial = [_fit_and_predict(s, X, y) for s in specs]
    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        futures = [pool.submit(_fit_and_predict, s, X, y) for s in specs * 2]
        for k, f in enumerate(futures):
            _assert_same(serial[k % len(specs)], f.result(timeout=TIMEOUT_S), f"model {k % len(specs)}")


def test_one_model_predicting_from_many_threads_equals_serial_results():
    X, y = _data()
    model = fastmlp.MLP([12, 32, 4], output="softmax", batch_norm=True, dropout=0.3, seed=0)
    fastmlp.Trainer(model, epochs=1, progress=False).fit(X, y)
    chunks = [X[i:i + 17 + i % 5] for i in range(0, X.shape[0], 20)]
    expected = [(model.forward(c), model.predict_proba(c)) for c in chunks]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            got = list(pool.map(lambda c: (model.forward(c), model.predict_proba(c)), chunks))
            _assert_same(expected, got, "predictions")


# --- one model trained from two threads: a clear error ------------------------------------------------

class _Pause(Callback):
    """Holds the training thread inside fit (between two steps) until released."""

    def __init__(self, at_step=2):
        self.at_step = at_step
        self.inside, self.release = threading.Event(), threading.Event()

    def on_batch_end(self, trainer, step, loss):
        if step == self.at_step:
            self.inside.set()
            assert self.release.wait(TIMEOUT_S), "the test never released the training thread"


def _train_in_background(trainer, X, y):
    result = {}

    def run():
        try:
            result["history"] = trainer.fit(X, y)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            result["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_training_a_model_that_another_thread_is_training_raises_a_clear_runtime_error():
    X, y = _data()
    model = fastmlp.MLP([12, 16, 4], output="softmax", seed=0)
    pause = _Pause()
    trainer = fastmlp.Trainer(model, epochs=2, batch_size=32, progress=False, callbacks=[pause])
    thread, result = _train_in_background(trainer, X, y)
    try:
        assert pause.inside.wait(TIMEOUT_S)
        before = model.parameters().copy()
        message = r"already being trained in another thread \(by Trainer\.fit\)"
        with pytest.raises(RuntimeError, match=message):
            trainer.fit(X, y)  # the same Trainer
        with pytest.raises(RuntimeError, match=message):
            fastmlp.Trainer(model, progress=False).fit(X, y)  # another Trainer of the same model
        with pytest.raises(RuntimeError, match=message):
            fastmlp.Trainer(model, progress=False).train_step(X[:8], y[:8])
        with pytest.raises(RuntimeError, match=message):
            model.value_and_grad(X[:8], y[:8])
        with pytest.raises(RuntimeError, match=message):
            model.forward(X[:8], training=True)
        np.testing.assert_array_equal(model.parameters(), before)  # the refused calls changed nothing
        assert model.predict(X).shape == (X.shape[0],)  # inference takes no guard
    finally:
        pause.release.set()
        thread.join(TIMEOUT_S)
    assert not thread.is_alive() and "error" not in result, result
    assert result["history"].stop_reason == "completed"
    # the guard is released: training from this thread works now
    assert fastmlp.Trainer(model, epochs=1, progress=False).fit(X, y).stop_reason == "completed"


def test_the_guard_is_released_when_fit_raises():
    X, y = _data()
    model = fastmlp.MLP([12, 4], output="softmax")

    class Boom(Callback):
        def on_batch_end(self, trainer, step, loss):
            raise ValueError("boom")

    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(ValueError, match="boom"):
            pool.submit(fastmlp.Trainer(model, progress=False, callbacks=[Boom()]).fit, X, y).result(TIMEOUT_S)
    assert fastmlp.Trainer(model, epochs=1, progress=False).fit(X, y).stop_reason == "completed"


def test_a_callback_may_compute_gradients_but_not_start_a_nested_fit():
    X, y = _data()
    model = fastmlp.MLP([12, 8, 4], output="softmax", seed=0)
    seen = {}

    class Nested(Callback):
        def on_batch_end(self, trainer, step, loss):
            if step == 1:
                seen["value"] = model.value_and_grad(X[:16], y[:16])[0]  # same thread: allowed
                with pytest.raises(RuntimeError, match=r"already being trained by Trainer\.fit in this thread"):
                    fastmlp.Trainer(model, progress=False).fit(X, y)
                seen["nested_refused"] = True

    fastmlp.Trainer(model, epochs=1, progress=False, callbacks=[Nested()]).fit(X, y)
    assert seen["nested_refused"] and np.isfinite(seen["value"])


def test_predicting_while_another_thread_trains_is_safe_and_does_not_disturb_training(threads):
    fastmlp.set_num_threads(2)
    X, y = _data(n=400)
    spec = dict(sizes=[12, 32, 32, 4], kw=dict(output="softmax", batch_norm=True, dropout=0.2, seed=8))

    def make():
        model = fastmlp.MLP(spec["sizes"], **spec["kw"])
        return model, fastmlp.Trainer(model, optimizer=optim.Adam(1e-2), batch_size=16, epochs=4, progress=False)

    alone, alone_trainer = make()
    alone_trainer.fit(X, y)
    model, trainer = make()
    thread, result = _train_in_background(trainer, X, y)
    predictions = 0
    while thread.is_alive() or predictions == 0:
        p = model.predict_proba(X[:64])  # weights may be mid-update: any mix of two steps, never garbage
        assert p.shape == (64, 4) and np.all(np.isfinite(p))
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
        predictions += 1
    thread.join(TIMEOUT_S)
    assert "error" not in result, result
    np.testing.assert_array_equal(model.parameters(), alone.parameters())
    for k, v in model.buffers().items():
        np.testing.assert_array_equal(v, alone.buffers()[k])


# --- fork, multiprocessing, joblib -----------------------------------------------------------------------

def _run_python(code, timeout=TIMEOUT_S, **env_overrides):
    env = dict(os.environ)
    env.pop("FASTMLP_NUM_THREADS", None)
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=timeout)


FORK_WHILE_TRAINING = """
import os, sys, threading, warnings
import numpy as np
import fastmlp
from fastmlp import kernels as K

def fit(seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((300, 20)).astype(np.float32)
    y = rng.integers(0, 3, 300)
    model = fastmlp.MLP([20, 64, 3], output="softmax", batch_norm=True, dropout=0.2, seed=seed)
    fastmlp.Trainer(model, epochs=2, batch_size=32, progress=False).fit(X, y)
    return model.parameters()

fastmlp.set_num_threads(2)
expected = fit(0)                           # the parent's pool workers now exist
stop = threading.Event()
def busy():                                 # trains (and so uses the pool) while the parent forks
    while not stop.is_set():
        fit(1)
background = threading.Thread(target=busy)
background.start()
for attempt in range(3):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # Python >= 3.12 warns about fork + threads
        pid = os.fork()
    if pid == 0:
        try:
            ok = np.array_equal(fit(0), expected) and fastmlp.get_num_threads() == 2
            a = np.ones((300, 200), np.float32)
            ok = ok and np.array_equal(K.gemm(a, a, trans_b=True), np.full((300, 300), 200, np.float32))
        except BaseException as e:
            print("child error:", repr(e), file=sys.stderr)
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        print("child", attempt, "failed with status", status, file=sys.stderr)
        sys.exit(1)
stop.set()
background.join()
assert np.array_equal(fit(0), expected)     # the parent still trains the same
print("ok")
"""


def test_child_forked_while_another_thread_trains_can_train_without_deadlock():
    r = _run_python(FORK_WHILE_TRAINING)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def _fit_digest(seed):
    """Fit a small dropout + batch-norm classifier; return the SHA-256 of its parameters and buffers."""
    X, y = _data(seed=seed)
    model = fastmlp.MLP([12, 32, 16, 4], output="softmax", batch_norm=True, dropout=0.25, seed=seed)
    fastmlp.Trainer(model, optimizer=optim.Adam(1e-2), epochs=3, batch_size=24, progress=False, seed=seed).fit(X, y)
    digest = hashlib.sha256(model.parameters().tobytes())
    for _, v in sorted(model.buffers().items()):
        digest.update(v.tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("method", ("fork", "spawn"))
def test_multiprocessing_workers_fit_models_like_the_parent(threads, method):
    fastmlp.set_num_threads(2)
    expected = [_fit_digest(s) for s in range(4)]  # the parent's pool threads exist before the fork
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*fork.*")
        pool = multiprocessing.get_context(method).Pool(2)
        try:
            got = pool.map_async(_fit_digest, range(4)).get(timeout=TIMEOUT_S)
        finally:
            pool.terminate()
            pool.join()
    assert got == expected


def _sklearn_fit(seed):
    from fastmlp.sklearn import MLPClassifier

    X, y = _data(seed=seed)
    # A tolerance no epoch meets stops early (sklearn: 1 + n_iter_no_change + 1 epochs), no ConvergenceWarning.
    est = MLPClassifier((16,), max_iter=50, tol=1e3, n_iter_no_change=1, random_state=seed, batch_size=32).fit(X, y)
    assert est.n_iter_ < 50
    return est.predict_proba(X)


@pytest.mark.parametrize("backend", ("loky", "multiprocessing", "threading"))
def test_joblib_workers_fit_estimators_like_the_parent(threads, backend):
    joblib = pytest.importorskip("joblib")
    pytest.importorskip("sklearn")
    fastmlp.set_num_threads(2)
    expected = [_sklearn_fit(s) for s in range(4)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*fork.*")  # Python >= 3.12
        got = joblib.Parallel(n_jobs=2, backend=backend, timeout=TIMEOUT_S)(
            joblib.delayed(_sklearn_fit)(s) for s in range(4))
    _assert_same(expected, got, backend)


# --- bitwise reproducible for any thread count ----------------------------------------------------------

def test_seeded_fit_is_bitwise_the_same_for_1_to_4_threads_in_process(threads):
    digests = {}
    for n in (1, 2, 3, 4):
        fastmlp.set_num_threads(n)
        digests[n] = [_fit_digest(s) for s in (0, 1)]
    assert len({tuple(d) for d in digests.values()}) == 1, digests


REPRO_SCRIPT = """
import hashlib, numpy as np, fastmlp
from fastmlp import optim
from fastmlp.train import Callback
rng = np.random.default_rng(0)
X = rng.standard_normal((240, 12)).astype(np.float32)
y = (X[:, :4].argmax(axis=1) + (X[:, -1] > 1)) % 4
model = fastmlp.MLP([12, 32, 16, 4], output="softmax", batch_norm=True, dropout=0.25, seed=0)
fastmlp.Trainer(model, optimizer=optim.Adam(1e-2), epochs=3, batch_size=24, progress=False, seed=0).fit(X, y)
d = hashlib.sha256(model.parameters().tobytes())
for _, v in sorted(model.buffers().items()):
    d.update(v.tobytes())
print(fastmlp.get_num_threads(), d.hexdigest())
"""


def test_seeded_fit_is_bitwise_the_same_for_any_fastmlp_num_threads():
    results = {}
    for n in ("1", "2", "3", "4"):
        r = _run_python(REPRO_SCRIPT, FASTMLP_NUM_THREADS=n)
        assert r.returncode == 0, r.stderr
        count, digest = r.stdout.split()
        assert count == n
        results[n] = digest
    assert len(set(results.values())) == 1, results
    assert results["1"] == _fit_digest(0)  # and the same as in this process
