"""scikit-learn estimators: ``MLPClassifier``, ``MLPRegressor`` and ``AutoencoderTransformer``.

Drop-in replacements for scikit-learn's MLPs, with the same parameter names and meanings, plus
``dropout``, ``batch_norm``, ``init`` and ``l1``. The definitions follow scikit-learn's own:

- ``alpha`` is the L2 penalty ``½·alpha·‖W‖² / batch_size`` (so coupled weight decay
  ``alpha / batch_size``); it may be one value or one per layer (hidden layers and output). ``l1``
  is scaled the same way: ``l1·‖W‖₁ / batch_size``.
- ``loss_curve_`` holds, per epoch, the mean data loss plus the penalty (at the epoch's end
  weights); MLPRegressor's squared loss is ``½·mean((y − ŷ)²)`` over rows *and* outputs.
- With ``early_stopping=True`` training stops when the validation score (accuracy or R²) has not
  improved by ``tol`` for ``n_iter_no_change`` epochs, and the best weights are restored; without
  it, ``tol`` and ``n_iter_no_change`` act on the training loss.
- ``learning_rate_init="auto"`` runs the step-size search (:func:`fastmlp.find_step_size`).

Requires scikit-learn (``pip install 'fastmlp[sklearn]'``).
"""

from __future__ import annotations

import numbers
import warnings
from typing import Optional

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, TransformerMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
except ImportError as e:  # pragma: no cover - optional extra
    raise ImportError("fastmlp.sklearn needs scikit-learn >= 1.6: pip install 'fastmlp[sklearn]'") from e

from . import nn
from . import optim as _optim
from .autoencoder import Autoencoder
from .train import Callback, Trainer

__all__ = ["AutoencoderTransformer", "MLPClassifier", "MLPRegressor"]

SOLVERS = ("sgd", "adam")
SK_ACTIVATIONS = ("identity", "logistic", "tanh", "relu")
LEARNING_RATES = ("constant", "invscaling", "adaptive")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


class _Monitor(Callback):
    """Implements scikit-learn's bookkeeping and stopping rules on the Trainer's hooks."""

    def __init__(self, est, batch_size: int, n_samples: int, early_stopping: bool, incremental: bool):
        self.est, self.batch_size, self.n_samples = est, batch_size, n_samples
        self.early_stopping, self.incremental = early_stopping, incremental
        self.stopped = False

    def on_epoch_end(self, trainer, epoch, logs):
        est = self.est
        loss = logs["train_loss"] + trainer.penalty() / self.batch_size
        est.loss_ = float(loss)
        est.loss_curve_.append(float(loss))
        est.n_iter_ += 1
        est.t_ += self.n_samples
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {loss:.8f}")
        if self.incremental:
            if loss < est.best_loss_:
                est.best_loss_ = float(loss)
            return None
        if self.early_stopping:
            score = float(logs["val_metric"])
            est.validation_scores_.append(score)
            if est.verbose:
                print(f"Validation score: {score:f}")
            if score < est.best_validation_score_ + est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                est._best_params = trainer.model.parameters().copy()
                est._best_buffers = {k: v.copy() for k, v in trainer.model.buffers().items()}
        else:
            if loss > est.best_loss_ - est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if loss < est.best_loss_:
                est.best_loss_ = float(loss)
        # Step-size rules of scikit-learn's SGD: invscaling per epoch; adaptive divides by 5.
        if est.solver == "sgd" and est.learning_rate == "invscaling":
            est._lr = est._lr_init / (est.t_ + 1) ** est.power_t
        if est._no_improvement_count > est.n_iter_no_change:
            if est.solver == "sgd" and est.learning_rate == "adaptive" and est._lr > 1e-6:
                est._lr /= 5.0
                est._no_improvement_count = 0
                if est.verbose:
                    print(f"Setting learning rate to {est._lr:f}")
            else:
                if est.verbose:
                    print("Stopping: no improvement for", est.n_iter_no_change, "epochs")
                self.stopped = True
                return True
        trainer.base_lr = est._lr
        return None


class _SchedulerFromEstimator:
    """A schedule that reads the estimator's current step size (invscaling/adaptive rules)."""

    def __init__(self, est):
        self.est = est

    def lr(self, epoch, base_lr):
        return self.est._lr

    def observe(self, metric):
        pass

    def set_horizon(self, epochs):
        pass

    def state_dict(self):
        return {"type": "Constant", "config": {}, "state": {}}


class _BaseMLP(BaseEstimator):
    _output_kind = "identity"

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, dropout=0.0, batch_norm=False, init="glorot", l1=0.0,
                 dtype="float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.init = init
        self.l1 = l1
        self.dtype = dtype

    # -- validation -------------------------------------------------------------------------------

    def _hidden(self):
        h = self.hidden_layer_sizes
        if _is_int(h):
            h = [h]
        h = list(h)
        if not all(_is_int(s) and s > 0 for s in h):
            raise ValueError(f"hidden_layer_sizes must be positive ints, got {self.hidden_layer_sizes!r}")
        return [int(s) for s in h]

    def _check_params(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"solver {self.solver!r} is not supported; supported solvers are "
                             f"{', '.join(repr(s) for s in SOLVERS)} (lbfgs is not available in fastmlp)")
        if self.activation not in SK_ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not supported; supported activations are "
                             f"{', '.join(repr(a) for a in SK_ACTIVATIONS)}")
        if self.learning_rate not in LEARNING_RATES:
            raise ValueError(f"learning_rate must be one of {LEARNING_RATES}, got {self.learning_rate!r}")
        if not (_is_int(self.max_iter) and self.max_iter >= 1):
            raise ValueError(f"max_iter must be an int >= 1, got {self.max_iter!r}")
        if not (self.batch_size == "auto" or (_is_int(self.batch_size) and self.batch_size >= 1)):
            raise ValueError(f"batch_size must be 'auto' or an int >= 1, got {self.batch_size!r}")
        lr = self.learning_rate_init
        if not (lr == "auto" or (isinstance(lr, numbers.Real) and lr > 0)):
            raise ValueError(f"learning_rate_init must be > 0 or 'auto', got {lr!r}")
        if not (isinstance(self.tol, numbers.Real) and self.tol >= 0):
            raise ValueError(f"tol must be >= 0, got {self.tol!r}")
        if not (_is_int(self.n_iter_no_change) and self.n_iter_no_change >= 1):
            raise ValueError(f"n_iter_no_change must be an int >= 1, got {self.n_iter_no_change!r}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        if not (0 <= self.momentum <= 1):
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum!r}")
        for name in ("beta_1", "beta_2"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"{name} must be in [0, 1), got {v!r}")
        n_layers = len(self._hidden()) + 1
        for name in ("alpha", "l1"):
            v = getattr(self, name)
            values = [v] if np.ndim(v) == 0 else list(v)
            if np.ndim(v) != 0 and len(values) != n_layers:
                raise ValueError(f"{name} has {len(values)} values but the network has {n_layers} layers "
                                 "(hidden layers + output); give one value or one per layer")
            if not all(isinstance(a, numbers.Real) and np.isfinite(a) and a >= 0 for a in values):
                raise ValueError(f"{name} must be >= 0 (one value or one per layer), got {v!r}")

    # -- model & training -------------------------------------------------------------------------

    def _batch_size(self, n_samples: int) -> int:
        if self.batch_size == "auto":
            return min(200, n_samples)
        if self.batch_size > n_samples:
            warnings.warn(f"Got `batch_size` larger than the number of samples ({n_samples}); it is clipped",
                          UserWarning)
        return int(np.clip(self.batch_size, 1, n_samples))

    def _scaled(self, value, batch_size):
        if np.ndim(value) == 0:
            return float(value) / batch_size
        return [float(v) / batch_size for v in value]

    def _make_optimizer(self, batch_size):
        wd = self._scaled(self.alpha, batch_size)
        l1 = self._scaled(self.l1, batch_size)
        lr = self.learning_rate_init
        if self.solver == "adam":
            return _optim.Adam(lr, betas=(self.beta_1, self.beta_2), eps=self.epsilon, weight_decay=wd, l1=l1)
        nesterov = bool(self.nesterovs_momentum) and self.momentum > 0
        return _optim.SGD(lr, momentum=self.momentum, nesterov=nesterov, weight_decay=wd, l1=l1)

    def _new_model(self, n_in: int, n_out: int, seed: int):
        act = "sigmoid" if self.activation == "logistic" else self.activation
        return nn.MLP([n_in] + self._hidden() + [n_out], activation=act, output=self._output_kind,
                      dropout=self.dropout, batch_norm=self.batch_norm, init=self.init, seed=seed, dtype=self.dtype)

    def _loss_scale(self, n_out: int) -> float:
        return 1.0

    def _fit_encoded(self, X, t, sample_weight, incremental: bool, n_out: int, loss: str):
        """Train on validated X and encoded targets ``t``."""
        n_samples = X.shape[0]
        first = not hasattr(self, "model_") or not (incremental or self.warm_start)
        if first or self.model_.in_features != X.shape[1] or self.model_.out_features != n_out:
            self._random = check_random_state(self.random_state)
            self._seed = int(self._random.randint(0, 2**31 - 1))
            self.model_ = self._new_model(X.shape[1], n_out, self._seed)
            self.loss_curve_ = []
            self.validation_scores_ = []
            self.best_loss_ = np.inf
            self.best_validation_score_ = -np.inf
            self.n_iter_ = 0
            self.t_ = 0
            self._no_improvement_count = 0
            self._trainer = None
        early_stopping = bool(self.early_stopping) and not incremental
        if not incremental:
            self.validation_scores_ = [] if early_stopping else None
            self.best_loss_ = np.inf if not early_stopping else None
            self.best_validation_score_ = -np.inf
            self._no_improvement_count = 0
            self._best_params = None
        batch_size = self._batch_size(n_samples)
        # Validation split (stratified for single-label classification), as scikit-learn does.
        X_tr, t_tr, sw_tr, validation = X, t, sample_weight, None
        if early_stopping:
            from sklearn.model_selection import train_test_split

            stratify = t if loss == "cross_entropy" else None
            rs = self._seed
            if sample_weight is None:
                X_tr, X_val, t_tr, t_val = train_test_split(X, t, random_state=rs, test_size=self.validation_fraction,
                                                            stratify=stratify)
            else:
                X_tr, X_val, t_tr, t_val, sw_tr, _ = train_test_split(
                    X, t, sample_weight, random_state=rs, test_size=self.validation_fraction, stratify=stratify)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                                 "your dataset.")
            validation = (X_val, t_val)
            batch_size = self._batch_size(X_tr.shape[0])
        trainer = self._trainer if (incremental and self._trainer is not None) else None
        if trainer is None:
            optimizer = self._make_optimizer(batch_size)
            lr = self.learning_rate_init
            if lr == "auto":
                from .train import find_step_size

                lr, _ = find_step_size(self.model_, X_tr, t_tr, loss=loss, optimizer=optimizer, seed=self._seed,
                                       batch_size=batch_size)
                optimizer.lr = optimizer.current_lr = lr
            self._lr_init = float(lr)
            self._lr = float(lr)
            trainer = Trainer(self.model_, loss=loss, optimizer=optimizer, batch_size=batch_size, epochs=0,
                              shuffle=self.shuffle, validation=validation, progress=False, seed=self._seed,
                              loss_scale=self._loss_scale(n_out))
            trainer.schedule = _SchedulerFromEstimator(self)
            self._trainer = trainer
        monitor = _Monitor(self, batch_size, X_tr.shape[0], early_stopping, incremental)
        trainer.callbacks = [monitor]
        trainer.epochs = trainer.epoch + (1 if incremental else int(self.max_iter))
        trainer.fit(X_tr, t_tr, sample_weight=sw_tr)
        if early_stopping and self._best_params is not None:
            self.model_.parameters()[...] = self._best_params
            for k, v in self.model_.buffers().items():
                v[...] = self._best_buffers[k]
            self._best_params = self._best_buffers = None
        if not incremental and not monitor.stopped and self.n_iter_ >= self.max_iter and trainer.epochs == trainer.epoch:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the optimization "
                          "hasn't converged yet.", ConvergenceWarning)
        if not incremental:
            self._trainer = None if not self.warm_start else trainer
        return self

    # -- scikit-learn conveniences ----------------------------------------------------------------

    @property
    def coefs_(self):
        check_is_fitted(self, "model_")
        return [l.weight.T for l in self.model_.layers if isinstance(l, nn.Dense)]

    @property
    def intercepts_(self):
        check_is_fitted(self, "model_")
        return [l.bias if l.bias_enabled else np.zeros(l.out_features, self.model_.dtype)
                for l in self.model_.layers if isinstance(l, nn.Dense)]

    @property
    def n_layers_(self):
        return len(self._hidden()) + 2

    def _validate_X(self, X):
        return validate_data(self, X, reset=False, dtype=(np.float64, np.float32))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        tags.target_tags.multi_output = True
        return tags

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_trainer", None)
        state.pop("_random", None)
        return state

    def save(self, path) -> None:
        """Save the fitted estimator (parameters, classes, fitted attributes) atomically; reload
        with :func:`fastmlp.load`."""
        _save_estimator(self, path)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier on fastmlp's kernels (scikit-learn's parameters).

    Binary and multi-class targets train a softmax output with cross-entropy; a 0/1 indicator
    matrix trains a multi-label sigmoid output with binary cross-entropy.
    """

    def _prepare_targets(self, y, incremental, classes=None):
        if incremental and hasattr(self, "classes_"):
            if self._multilabel:
                if y.ndim != 2 or y.shape[1] != len(self.classes_):
                    raise ValueError("y must be an indicator matrix with the same labels as before")
                return y.astype(self.model_.dtype), len(self.classes_), "binary_cross_entropy"
            unseen = np.setdiff1d(np.unique(y), self.classes_)
            if unseen.size:
                raise ValueError(f"`y` has classes not in `self.classes_`: {unseen}; classes are {self.classes_}")
            return np.searchsorted(self.classes_, y).astype(np.int64), len(self.classes_), "cross_entropy"
        target_type = type_of_target(y, input_name="y")
        if target_type == "multilabel-indicator":
            self._multilabel = True
            self.classes_ = np.arange(y.shape[1])
            self.out_activation_ = "logistic"
            return np.asarray(y, dtype=self.dtype), y.shape[1], "binary_cross_entropy"
        check_classification_targets(y)
        self._multilabel = False
        if classes is not None:
            self.classes_ = np.asarray(unique_labels(classes))
            unseen = np.setdiff1d(np.unique(y), self.classes_)
            if unseen.size:
                raise ValueError(f"`y` has classes not in `classes`: {unseen}")
        else:
            self.classes_ = unique_labels(y)
        self.out_activation_ = "softmax"
        return np.searchsorted(self.classes_, y).astype(np.int64), len(self.classes_), "cross_entropy"

    @property
    def _output_kind(self):
        return "sigmoid" if getattr(self, "_multilabel", False) else "softmax"

    def _fit(self, X, y, sample_weight, incremental, classes=None):
        self._check_params()
        reset = not (incremental and hasattr(self, "model_"))
        X, y = validate_data(self, X, y, reset=reset, multi_output=True, dtype=(np.float64, np.float32))
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.ravel()
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        if not reset and (self.warm_start and not incremental) and hasattr(self, "classes_"):
            incremental_targets = True
        else:
            incremental_targets = incremental and hasattr(self, "classes_")
        t, n_out, loss = self._prepare_targets(y, incremental_targets, classes)
        return self._fit_encoded(X, t, sample_weight, incremental, n_out, loss)

    def fit(self, X, y, sample_weight=None):
        """Fit to (X, y); ``sample_weight`` weights each row's loss. Returns self."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over (X, y), keeping the weights and optimizer state between calls. The first
        call needs ``classes`` (all labels that will ever appear) for single-label targets."""
        if not hasattr(self, "classes_") and classes is None and type_of_target(y) != "multilabel-indicator":
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def predict_proba(self, X):
        """Class probabilities (softmax), or per-label probabilities for multi-label targets."""
        check_is_fitted(self, "model_")
        X = self._validate_X(X)
        return self.model_.predict_proba(X).astype(np.float64)

    def predict_log_proba(self, X):
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """Class labels, or a 0/1 indicator matrix for multi-label targets."""
        check_is_fitted(self, "model_")
        X = self._validate_X(X)
        out = self.model_.predict(X)
        if self._multilabel:
            return out
        return self.classes_[out]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor on fastmlp's kernels (scikit-learn's parameters). The loss
    is ``½·mean((y − ŷ)²)`` over rows and outputs, as in scikit-learn."""

    _output_kind = "identity"

    def _loss_scale(self, n_out: int) -> float:
        return 1.0 / n_out

    def _fit(self, X, y, sample_weight, incremental):
        self._check_params()
        reset = not (incremental and hasattr(self, "model_"))
        X, y = validate_data(self, X, y, reset=reset, multi_output=True, y_numeric=True,
                             dtype=(np.float64, np.float32))
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        self._y_1d = y.ndim == 1
        t = y.reshape(len(y), -1).astype(self.dtype)
        self.out_activation_ = "identity"
        return self._fit_encoded(X, t, sample_weight, incremental, t.shape[1], "squared")

    def fit(self, X, y, sample_weight=None):
        """Fit to (X, y); ``sample_weight`` weights each row's loss. Returns self."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), keeping the weights and optimizer state between calls."""
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X):
        check_is_fitted(self, "model_")
        X = self._validate_X(X)
        out = self.model_.predict(X).astype(np.float64)
        return out.ravel() if self._y_1d else out


class AutoencoderTransformer(TransformerMixin, BaseEstimator):
    """A (denoising) autoencoder as a scikit-learn transformer: ``transform`` gives the codes,
    ``inverse_transform`` the reconstructions.

    ``hidden_layer_sizes`` is the encoder after the input, ending with the code width (e.g.
    ``(64, 2)``); the decoder mirrors it. ``noise`` (None, "gaussian" or "mask") and ``level``
    make it a denoising autoencoder. Other parameters as in :class:`MLPRegressor`.
    """

    def __init__(self, hidden_layer_sizes=(32,), activation="relu", *, code_activation="identity", noise=None,
                 level=0.1, tied=False, solver="adam", alpha=0.0, batch_size="auto", learning_rate_init=0.001,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, early_stopping=False, validation_fraction=0.1, n_iter_no_change=10, dropout=0.0,
                 init="glorot", l1=0.0, dtype="float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.code_activation = code_activation
        self.noise = noise
        self.level = level
        self.tied = tied
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.dropout = dropout
        self.init = init
        self.l1 = l1
        self.dtype = dtype

    def _regressor(self) -> MLPRegressor:
        return MLPRegressor(self.hidden_layer_sizes, "relu", solver=self.solver, alpha=self.alpha,
                            batch_size=self.batch_size, learning_rate_init=self.learning_rate_init,
                            max_iter=self.max_iter, shuffle=self.shuffle, random_state=self.random_state,
                            tol=self.tol, verbose=self.verbose, momentum=self.momentum,
                            early_stopping=self.early_stopping, validation_fraction=self.validation_fraction,
                            n_iter_no_change=self.n_iter_no_change, l1=self.l1, dtype=self.dtype)

    def fit(self, X, y=None):
        """Train the autoencoder to reconstruct X. Returns self."""
        if self.noise not in (None, "gaussian", "mask"):
            raise ValueError(f"noise must be None, 'gaussian' or 'mask', got {self.noise!r}")
        if self.activation not in SK_ACTIVATIONS or self.code_activation not in SK_ACTIVATIONS:
            raise ValueError(f"activation must be one of {SK_ACTIVATIONS}")
        reg = self._regressor()
        reg._check_params()
        X = validate_data(self, X, reset=not (self.warm_start and hasattr(self, "autoencoder_")),
                          dtype=(np.float64, np.float32))
        act = "sigmoid" if self.activation == "logistic" else self.activation
        code_act = "sigmoid" if self.code_activation == "logistic" else self.code_activation
        if not (self.warm_start and hasattr(self, "autoencoder_")):
            seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
            hidden = reg._hidden()
            self.autoencoder_ = Autoencoder([X.shape[1]] + hidden, activation=act, code_activation=code_act,
                                            tied=self.tied, dropout=self.dropout, init=self.init, seed=seed,
                                            dtype=self.dtype, noise=self.noise, level=self.level)
            self._seed = seed
        # Reuse the regressor's training loop (same stopping rules and loss definitions).
        reg.model_ = self.autoencoder_.model
        reg.warm_start = True
        reg._random = check_random_state(self._seed)
        reg._seed = self._seed
        reg.loss_curve_, reg.validation_scores_, reg.best_loss_ = [], [], np.inf
        reg.best_validation_score_, reg.n_iter_, reg.t_, reg._no_improvement_count = -np.inf, 0, 0, 0
        reg._trainer = None
        reg.n_features_in_ = X.shape[1]
        reg._y_1d = False
        reg.out_activation_ = "identity"
        Xt = X.astype(self.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning) if not self.verbose else None
            reg._fit_encoded(Xt, Xt, None, False, X.shape[1], "squared")
        self.loss_curve_ = reg.loss_curve_
        self.n_iter_ = reg.n_iter_
        self.best_loss_ = reg.best_loss_
        self.validation_scores_ = reg.validation_scores_
        self.model_ = self.autoencoder_.model
        self.n_features_out_ = self.autoencoder_.sizes[-1]
        return self

    def transform(self, X):
        """The codes of X: shape (rows, code width)."""
        check_is_fitted(self, "autoencoder_")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return self.autoencoder_.encode(X).astype(np.float64)

    def inverse_transform(self, X):
        """Reconstructions from codes."""
        check_is_fitted(self, "autoencoder_")
        codes = np.asarray(X, dtype=np.float64)
        return self.autoencoder_.decode(codes).astype(np.float64)

    def reconstruction_error(self, X):
        """Per row, the sum of squared reconstruction errors (an outlier score)."""
        check_is_fitted(self, "autoencoder_")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return self.autoencoder_.reconstruction_error(X)

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "autoencoder_")
        return np.asarray([f"autoencodertransformer{i}" for i in range(self.n_features_out_)], dtype=object)

    def save(self, path) -> None:
        _save_estimator(self, path)


# -- files ----------------------------------------------------------------------------------------

_ESTIMATORS = {cls.__name__: cls for cls in (MLPClassifier, MLPRegressor, AutoencoderTransformer)}
_FITTED_SCALARS = ("n_iter_", "t_", "n_features_in_", "best_loss_", "best_validation_score_", "loss_",
                   "out_activation_", "_multilabel", "_y_1d", "n_features_out_", "_seed")
_FITTED_LISTS = ("loss_curve_", "validation_scores_")


def _json_param(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (list, tuple)):
        return [_json_param(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"parameter value {v!r} cannot be saved (use plain numbers and strings)")


def _save_estimator(est, path):
    from .io import write_file
    from .serialize import model_to_parts

    check_is_fitted(est)
    params = est.get_params(deep=False)
    random_state = params.get("random_state")
    if not (random_state is None or _is_int(random_state)):
        params["random_state"] = None
    header_model, arrays = model_to_parts(est.autoencoder_ if isinstance(est, AutoencoderTransformer) else est.model_,
                                          prefix="model.")
    fitted = {}
    for k in _FITTED_SCALARS:
        if hasattr(est, k):
            v = getattr(est, k)
            fitted[k] = _json_param(v) if not (isinstance(v, float) and not np.isfinite(v)) else str(v)
    for k in _FITTED_LISTS:
        if getattr(est, k, None) is not None:
            fitted[k] = [float(x) for x in getattr(est, k)]
    if hasattr(est, "classes_"):
        classes = np.asarray(est.classes_)
        if classes.dtype.kind in "iub":
            arrays["classes"] = classes.astype(np.int64)
            fitted["classes_kind"] = "int"
        elif classes.dtype.kind == "f":
            arrays["classes"] = classes.astype(np.float64)
            fitted["classes_kind"] = "float"
        else:
            fitted["classes_kind"] = "str"
            fitted["classes"] = [str(c) for c in classes]
    header = {"kind": "estimator", "class": type(est).__name__,
              "params": {k: _json_param(v) for k, v in params.items()}, "fitted": fitted, "model": header_model}
    write_file(path, header, arrays)


def _estimator_from_parts(header, arrays):
    from .io import ModelFileError
    from .serialize import model_from_parts

    cls = _ESTIMATORS.get(header.get("class"))
    if cls is None:
        raise ModelFileError(f"unknown estimator class {header.get('class')!r}")
    params = header.get("params")
    if not isinstance(params, dict):
        raise ModelFileError("estimator params are malformed")
    try:
        est = cls(**params)
        model = model_from_parts(header.get("model"), arrays, prefix="model.")
        fitted = header.get("fitted", {})
        for k, v in fitted.items():
            if k in _FITTED_SCALARS:
                setattr(est, k, float(v) if v in ("inf", "-inf", "nan") else v)
            elif k in _FITTED_LISTS:
                setattr(est, k, [float(x) for x in v])
        kind = fitted.get("classes_kind")
        if kind in ("int", "float"):
            est.classes_ = arrays["classes"]
        elif kind == "str":
            est.classes_ = np.asarray(fitted["classes"])
    except (TypeError, ValueError, KeyError) as e:
        raise ModelFileError(f"malformed estimator file ({type(e).__name__}: {e})") from None
    if isinstance(est, AutoencoderTransformer):
        est.autoencoder_ = model
        est.model_ = model.model
    else:
        est.model_ = model
    return est
