"""scikit-learn estimators: ``MLPClassifier``, ``MLPRegressor`` and ``AutoencoderTransformer``.

Drop-in replacements for scikit-learn's MLPs, with the same parameter names and meanings, plus
``dropout``, ``batch_norm``, ``init``, ``l1`` and ``device`` ("cpu", or "cuda" to keep the network
and its training on the GPU; inputs and outputs stay NumPy). The definitions follow scikit-learn's own:

- ``alpha`` is the L2 penalty ``½·alpha·‖W‖² / batch_size`` (so coupled weight decay
  ``alpha / batch_size``); it may be one value or one per layer (hidden layers and output). ``l1``
  is scaled the same way: ``l1·‖W‖₁ / batch_size``.
- ``loss_curve_`` holds, per epoch, the data loss averaged over the epoch's rows (each batch's
  loss weighted by its row count, as scikit-learn does) plus the penalty at the epoch's end
  weights; MLPRegressor's squared loss is ``½·mean((y − ŷ)²)`` over rows *and* outputs.
- With ``early_stopping=True`` training stops when the validation score (accuracy or R²) has not
  improved by ``tol`` for more than ``n_iter_no_change`` epochs, and the best weights are restored;
  without it, ``tol`` and ``n_iter_no_change`` act on the training loss. ``n_iter_`` counts the
  epochs of the last call; ``loss_curve_`` grows across warm starts and ``partial_fit`` calls.
- ``learning_rate_init="auto"`` runs the step-size search (:func:`fastmlp.find_step_size`).

Estimators pickle (``clone``, joblib workers) through plain arrays and the model-file header:
``__getstate__`` replaces the network by :func:`fastmlp.serialize.model_to_parts` and the
optimizer by its ``state_dict``, so ``partial_fit`` continues bitwise after a round trip.

Requires scikit-learn (``pip install 'fastmlp[sklearn]'``).
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, TransformerMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
except ImportError as e:  # pragma: no cover - optional extra
    raise ImportError("fastmlp.sklearn needs scikit-learn >= 1.6: pip install 'fastmlp[sklearn]'") from e

from . import _arrays, nn
from . import optim as _optim
from .autoencoder import Autoencoder
from .train import Callback, Trainer

__all__ = ["AutoencoderTransformer", "MLPClassifier", "MLPRegressor"]

SOLVERS = ("sgd", "adam")
SK_ACTIVATIONS = ("identity", "logistic", "tanh", "relu")
LEARNING_RATES = ("constant", "invscaling", "adaptive")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _kernel_activation(name: str) -> str:
    return "sigmoid" if name == "logistic" else name


class _Monitor(Callback):
    """scikit-learn's per-epoch bookkeeping, stopping and step-size rules on the Trainer's hooks.

    ``validation`` is None or ``(X_val, t_val, sample_weight_val)`` with encoded targets."""

    def __init__(self, est, batch_size: int, n_samples: int, validation, incremental: bool):
        self.est, self.batch_size, self.n_samples = est, batch_size, n_samples
        self.validation, self.incremental = validation, incremental
        self.stopped = False
        self._loss_sum, self._rows, self._batch = 0.0, 0, 0

    def on_batch_end(self, trainer, step, loss):
        rows = min(self.batch_size, self.n_samples - self._batch * self.batch_size)
        self._loss_sum += loss * rows
        self._rows += rows
        self._batch += 1

    def on_epoch_end(self, trainer, epoch, logs):
        est = self.est
        loss = self._loss_sum / max(self._rows, 1) * est._report_scale(est.n_outputs_) + trainer.penalty()
        self._loss_sum, self._rows, self._batch = 0.0, 0, 0
        est.loss_ = float(loss)
        est.loss_curve_.append(float(loss))
        est.n_iter_ += 1
        est.t_ += self.n_samples
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {loss:.8f}")
        if self.validation is not None:
            score = est._validation_score(*self.validation)
            est.validation_scores_.append(score)
            if est.verbose:
                print(f"Validation score: {score:f}")
            if score < est.best_validation_score_ + est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                est._best_params = _arrays.host_copy(trainer.model.parameters())
                est._best_buffers = {k: _arrays.host_copy(v) for k, v in trainer.model.buffers().items()}
        else:
            if loss > est.best_loss_ - est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if loss < est.best_loss_:
                est.best_loss_ = float(loss)
        # scikit-learn's SGD step-size rules: invscaling per epoch; adaptive divides by 5.
        if est.solver == "sgd" and est.learning_rate == "invscaling":
            est._lr = est._lr_init / (est.t_ + 1) ** est.power_t
        stop = False
        what = "Validation score" if self.validation is not None else "Training loss"
        if est._no_improvement_count > est.n_iter_no_change:
            if est.solver == "sgd" and est.learning_rate == "adaptive" and est._lr > 1e-6:
                est._lr /= 5.0
                if est.verbose:
                    print(f"{what} did not improve more than tol={est.tol:f} for {est.n_iter_no_change} "
                          f"consecutive epochs. Setting learning rate to {est._lr:f}")
                est._no_improvement_count = 0
            else:
                if est.verbose:
                    tail = " Learning rate too small." if est.solver == "sgd" and est.learning_rate == "adaptive" else ""
                    print(f"{what} did not improve more than tol={est.tol:f} for {est.n_iter_no_change} "
                          f"consecutive epochs.{tail} Stopping.")
                if not self.incremental:
                    stop = True
        _carry_velocity(trainer.optimizer, trainer.base_lr, est._lr)
        trainer.base_lr = est._lr
        self.stopped = stop
        return True if stop else None


class _LayerList(list):
    """coefs_ / intercepts_: a list whose item assignment (``est.coefs_[0] = W``, as on
    scikit-learn's plain lists) goes through the estimator's setter into the model."""

    def __init__(self, est, name: str, items):
        super().__init__(items)
        self._est, self._name = est, name

    def __setitem__(self, index, value):
        values = list(self)
        values[index] = value
        setattr(self._est, self._name, values)  # checked whole, then copied into the model
        super().__setitem__(slice(None), getattr(self._est, self._name))

    def __reduce__(self):  # pickles and copies as a plain list
        return (list, (list(self),))


def _carry_velocity(optimizer, old_lr, new_lr) -> None:
    """scikit-learn's momentum keeps a velocity v = momentum·v − lr·g, whose past steps keep the
    rate they were taken at; the kernel's buffer b (torch's form, v = −lr·b) is scaled by the rate
    of the step that reads it. When the rate changes (invscaling, adaptive), b is rescaled by
    old/new so that lr·b, the velocity, carries over unchanged."""
    buf = getattr(optimizer, "state", {}).get("momentum_buffer")
    if buf is None or old_lr is None or new_lr == old_lr or not new_lr:
        return
    if isinstance(buf, np.ndarray):
        buf *= buf.dtype.type(old_lr / new_lr)
    else:  # a CUDA model's buffer: the same float32 product, on the device
        from . import _cuda_kernels

        _cuda_kernels.scale_(buf, old_lr / new_lr)


def _json_value(v):
    """A parameter value as JSON: numbers, strings, None and (nested) lists of them."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, (np.dtype, type)) and v in (np.float32, np.float64):
        return np.dtype(v).name
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_json_value(x) for x in v]
    if v is None or isinstance(v, (int, float, str)):
        return v
    raise TypeError(f"parameter value {v!r} cannot be saved (use plain numbers and strings)")


class _BaseMLP(BaseEstimator):
    """The training loop shared by the three estimators: scikit-learn's definitions on the Trainer."""

    _output_kind = "identity"
    #: The attribute that holds the network object that files and pickles store.
    _network_attr = "model_"
    #: scipy.sparse X, as scikit-learn's MLPs take it: trained from dense minibatches made as
    #: needed, predicted a chunk of rows at a time (never densified whole).
    _accept_sparse = ("csr", "csc")

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, max_fun=15000, dropout=0.0, batch_norm=False, init="sklearn",
                 l1=0.0, dtype="float32", device="cpu"):
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
        self.max_fun = max_fun  # lbfgs's budget in scikit-learn: accepted and checked, unused here
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.init = init
        self.l1 = l1
        self.dtype = dtype
        self.device = device

    # -- validation -------------------------------------------------------------------------------

    def _hidden(self):
        h = self.hidden_layer_sizes
        if _is_int(h):
            h = [h]
        try:
            h = list(h)
        except TypeError:
            raise ValueError(f"hidden_layer_sizes must be a sequence of positive ints, got {h!r}") from None
        if not all(_is_int(s) and s > 0 for s in h):
            raise ValueError(f"hidden_layer_sizes must be positive ints, got {self.hidden_layer_sizes!r}")
        return [int(s) for s in h]

    def _n_dense(self) -> int:
        """How many values a per-layer ``alpha`` / ``l1`` takes: the hidden layers and the output."""
        return len(self._hidden()) + 1

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
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"
                or (_is_int(self.batch_size) and self.batch_size >= 1)):
            raise ValueError(f"batch_size must be 'auto' or an int >= 1, got {self.batch_size!r}")
        lr = self.learning_rate_init
        if not (isinstance(lr, str) and lr == "auto"
                or (isinstance(lr, numbers.Real) and not isinstance(lr, bool) and 0 < lr < math.inf)):
            raise ValueError(f"learning_rate_init must be > 0 or 'auto', got {lr!r}")
        if not (isinstance(self.tol, numbers.Real) and self.tol >= 0):
            raise ValueError(f"tol must be >= 0, got {self.tol!r}")
        if not ((_is_int(self.n_iter_no_change) and self.n_iter_no_change >= 1) or
                (isinstance(self.n_iter_no_change, numbers.Real) and self.n_iter_no_change == math.inf)):
            raise ValueError(f"n_iter_no_change must be an int >= 1 or np.inf, got {self.n_iter_no_change!r}")
        if not (_is_int(getattr(self, "max_fun", 15000)) and getattr(self, "max_fun", 15000) >= 1):
            raise ValueError(f"max_fun must be an int >= 1, got {self.max_fun!r}")
        if not (isinstance(self.validation_fraction, numbers.Real) and 0.0 <= self.validation_fraction < 1.0):
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}")
        if self.early_stopping and self.validation_fraction == 0.0:
            raise ValueError("validation_fraction must be > 0 with early_stopping=True")
        if not (isinstance(self.momentum, numbers.Real) and 0 <= self.momentum <= 1):
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum!r}")
        for name in ("beta_1", "beta_2"):
            v = getattr(self, name)
            if not (isinstance(v, numbers.Real) and 0 <= v < 1):
                raise ValueError(f"{name} must be in [0, 1), got {v!r}")
        if not (isinstance(self.epsilon, numbers.Real) and self.epsilon > 0):
            raise ValueError(f"epsilon must be > 0, got {self.epsilon!r}")
        n_layers = self._n_dense()
        for name in ("alpha", "l1"):
            v = getattr(self, name)
            values = [v] if np.ndim(v) == 0 else list(np.ravel(v))
            if np.ndim(v) != 0 and len(values) != n_layers:
                raise ValueError(f"{name} has {len(values)} values but the network has {n_layers} layers with "
                                 "weights; give one value or one per layer")
            if not all(isinstance(a, numbers.Real) and not isinstance(a, bool) and np.isfinite(a) and a >= 0
                       for a in values):
                raise ValueError(f"{name} must be >= 0 (one value or one per layer), got {v!r}")
        if self.dtype not in ("float32", "float64", np.float32, np.float64):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.device not in _arrays.DEVICES:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device != "cpu" and self.dtype not in ("float32", np.float32):
            raise ValueError(f"device={self.device!r} trains in float32, got dtype={self.dtype!r}")
        for name in ("shuffle", "warm_start", "early_stopping", "nesterovs_momentum", "batch_norm"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.verbose, (bool, np.bool_, numbers.Integral)):
            raise ValueError(f"verbose must be a bool or an int, got {self.verbose!r}")
        if not (self.random_state is None or _is_int(self.random_state)
                or isinstance(self.random_state, np.random.RandomState)):
            raise ValueError(f"random_state must be None, an int or a numpy RandomState, got {self.random_state!r}")
        if not (isinstance(self.power_t, numbers.Real) and self.power_t >= 0):
            raise ValueError(f"power_t must be >= 0, got {self.power_t!r}")
        if not (callable(self.init) or self.init in ("sklearn", "glorot", "he", "tiny")):
            raise ValueError(f"init must be 'sklearn', 'glorot', 'he', 'tiny' or a callable, got {self.init!r}")
        drops = [self.dropout] if np.ndim(self.dropout) == 0 else list(np.ravel(self.dropout))
        if not all(isinstance(p, numbers.Real) and not isinstance(p, bool) and 0 <= p < 1 for p in drops):
            raise ValueError(f"dropout must be in [0, 1) (one value or one per hidden layer), got {self.dropout!r}")

    # -- model & training -------------------------------------------------------------------------

    def _batch_size(self, n_samples: int) -> int:
        if self.batch_size == "auto":
            return min(200, n_samples)
        if self.batch_size > n_samples:
            warnings.warn("Got `batch_size` larger than the number of samples "
                          f"({self.batch_size} > {n_samples}). It is going to be clipped", UserWarning)
        return int(np.clip(self.batch_size, 1, n_samples))

    @staticmethod
    def _scaled(value, batch_size):
        if np.ndim(value) == 0:
            return float(value) / batch_size
        return [float(v) / batch_size for v in np.ravel(value)]

    def _make_optimizer(self, lr, batch_size):
        wd = self._scaled(self.alpha, batch_size)
        l1 = self._scaled(self.l1, batch_size)
        if self.solver == "adam":
            return _optim.Adam(lr, betas=(self.beta_1, self.beta_2), eps=self.epsilon, weight_decay=wd, l1=l1,
                               epsilon_style="sklearn")
        nesterov = bool(self.nesterovs_momentum) and self.momentum > 0
        return _optim.SGD(lr, momentum=self.momentum, nesterov=nesterov, weight_decay=wd, l1=l1)

    def _new_model(self, n_in: int, n_out: int, seed: int):
        return nn.MLP([n_in] + self._hidden() + [n_out], activation=_kernel_activation(self.activation),
                      output=self._output_kind, dropout=self.dropout, batch_norm=self.batch_norm,
                      init="tiny" if self.init == "sklearn" else self.init,  # "sklearn": drawn in _initialize
                      seed=seed, dtype=self.dtype, device=self.device)

    def _loss_scale(self, n_out: int) -> float:
        """Factor on the loss (and so the gradient) the Trainer minimises."""
        return 1.0

    def _report_scale(self, n_out: int) -> float:
        """Factor from the Trainer's data loss to the one loss_curve_ reports (with the penalty)."""
        return 1.0

    def _first_pass(self, incremental: bool) -> bool:
        """scikit-learn's rule: (re)initialise unless warm-starting or continuing partial_fit."""
        return not hasattr(self, "model_") or not (self.warm_start or incremental)

    def _initialize(self, n_in: int, n_out: int):
        self._random = check_random_state(self.random_state)
        # The dropout streams' seed, drawn from a copy: the stream itself goes on to the weights,
        # the split and the shuffles in scikit-learn's order.
        self._seed = int(copy.deepcopy(self._random).randint(0, 2**31 - 1))
        draws = None
        if self.init == "sklearn":
            # scikit-learn's _init_coef, drawn from random_state's stream in its order: weights and
            # biases uniform in +-sqrt(6 / (fan_in + fan_out)) (2 for logistic), layer by layer,
            # before anything else; the same random_state gives scikit-learn's initial weights.
            factor = 2.0 if self.activation == "logistic" else 6.0
            units = [n_in] + self._hidden() + [n_out]
            draws = []
            for fan_in, fan_out in zip(units[:-1], units[1:]):
                bound = math.sqrt(factor / (fan_in + fan_out))
                draws.append((self._random.uniform(-bound, bound, (fan_in, fan_out)),
                              self._random.uniform(-bound, bound, fan_out)))
        self.model_ = self._new_model(n_in, n_out, self._seed)
        if draws is not None:
            for layer, (W, b) in zip([l for l in self.model_.layers if isinstance(l, nn.Dense)], draws):
                _arrays.assign(layer.weight, np.ascontiguousarray(W.T, dtype=self.model_.dtype))
                if layer.bias_enabled:  # (batch norm follows a layer without bias)
                    _arrays.assign(layer.bias, b.astype(self.model_.dtype))
        self.n_outputs_ = n_out
        self.n_layers_ = len(self._hidden()) + 2
        self.loss_curve_ = []
        self.t_ = 0
        self.n_iter_ = 0
        self._no_improvement_count = 0
        self._optimizer = None
        self._epochs_run = self._steps_run = 0
        self._best_params = self._best_buffers = None
        self._reset_stopping_state()

    def _reset_stopping_state(self):
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    def _validation_score(self, X_val, t_val, sw_val) -> float:
        """The score early stopping monitors, on encoded targets (accuracy or R²)."""
        raise NotImplementedError

    def _fit_encoded(self, X, t, sample_weight, incremental: bool, n_out: int, loss: str):
        """Train on validated X and encoded targets ``t`` (labels, indicator matrix or values)."""
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        # One random stream per call, used as scikit-learn uses its _random_state: the initial
        # weights (first pass), the validation split, then one shuffle of the row order per epoch.
        # With the same random_state (and dtype="float64") the steps are scikit-learn's.
        if self._first_pass(incremental):
            self._initialize(X.shape[1], n_out)
            rs = self._random
        else:
            rs = check_random_state(self.random_state)
            if self.early_stopping and self.validation_scores_ is None or \
                    not self.early_stopping and self.best_loss_ is None:
                self._reset_stopping_state()  # early_stopping was switched between warm starts
        early_stopping = bool(self.early_stopping)
        X_tr, t_tr, sw_tr, validation = X, t, sample_weight, None
        if early_stopping:
            from sklearn.model_selection import train_test_split

            # Stratified for one output (two classes), as scikit-learn does; not with a class of
            # one row, which cannot be split.
            stratify = t[:, 0] if loss == "binary_cross_entropy" and t.shape[1] == 1 else None
            if stratify is not None and np.min(np.unique(stratify, return_counts=True)[1]) < 2:
                stratify = None
            sw = sample_weight if sample_weight is not None else np.ones(X.shape[0])
            X_tr, X_val, t_tr, t_val, sw_tr, sw_val = train_test_split(
                X, t, sw, random_state=rs, test_size=self.validation_fraction, stratify=stratify)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                                 "your dataset.")
            if sample_weight is None:
                sw_tr = sw_val = None
            validation = (X_val, t_val, sw_val)
        n_samples = X_tr.shape[0]
        batch_size = self._batch_size(n_samples)
        optimizer = self._optimizer if incremental else None
        if optimizer is None:
            lr = self.learning_rate_init
            optimizer = self._make_optimizer(lr, batch_size)
            if lr == "auto":
                from .train import find_step_size

                lr, _ = find_step_size(self.model_, X_tr, t_tr, loss=loss, optimizer=optimizer, seed=self._seed,
                                       batch_size=batch_size)
                optimizer.lr = optimizer.current_lr = lr
            self._lr_init = self._lr = float(lr)
            self._optimizer = optimizer
        else:  # partial_fit: same optimizer state; the penalty scales with this call's batch size
            optimizer.weight_decay = self._scaled(self.alpha, batch_size)
            optimizer.l1 = self._scaled(self.l1, batch_size)
        optimizer.bind(self.model_)  # keeps the state; rebuilds the segment table
        monitor = _Monitor(self, batch_size, n_samples, validation, incremental)
        trainer = Trainer(self.model_, loss=loss, optimizer=optimizer, batch_size=batch_size, epochs=0,
                          shuffle=self.shuffle, progress=False, seed=self._seed, callbacks=[monitor],
                          loss_scale=self._loss_scale(n_out))
        if self.shuffle:
            rows = {"order": np.arange(n_samples, dtype=np.int64)}

            def order(epoch, n):
                # scikit-learn's: the previous epoch's order, shuffled again. sklearn.utils.shuffle
                # is resample(replace=False), which permutes by rs.shuffle(arange(n)); done here
                # directly (the same draws), without its argument validation: 0.8 ms an epoch,
                # a fifth of a fit on the digits.
                perm = np.arange(n_samples)
                rs.shuffle(perm)
                rows["order"] = rows["order"][perm]
                return rows["order"]

            trainer._order = order
        trainer._penalty_per_batch_rows = True
        # Continue the dropout streams where the last call stopped.
        trainer.epoch, trainer.step = self._epochs_run, self._steps_run
        trainer.base_lr = self._lr
        trainer.epochs = trainer.epoch + (1 if incremental else int(self.max_iter))
        self.n_iter_ = 0
        try:
            trainer.fit(X_tr, t_tr, sample_weight=sw_tr)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        finally:
            self._epochs_run, self._steps_run = trainer.epoch, trainer.step
        if early_stopping and self._best_params is not None:
            _arrays.assign(self.model_.parameters(), self._best_params)
            for k, v in self.model_.buffers().items():
                _arrays.assign(v, self._best_buffers[k])
            self._best_params = self._best_buffers = None
        if not incremental and not monitor.stopped and self.n_iter_ == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the optimization "
                          "hasn't converged yet.", ConvergenceWarning)
        return self

    # -- scikit-learn conveniences ----------------------------------------------------------------

    @property
    def coefs_(self):
        """Weight matrices as scikit-learn lays them out, (in, out): views into the model (copies
        for a model on a CUDA device). Assigning the list, or an item of it, copies into the model."""
        check_is_fitted(self, "model_")
        return _LayerList(self, "coefs_", [_arrays.host_copy(l.weight).T if _arrays.is_device(l.weight) else l.weight.T
                                           for l in self.model_.layers if isinstance(l, nn.Dense)])

    @coefs_.setter
    def coefs_(self, values):
        """Assign the weight matrices, (in, out) each as scikit-learn lays them out: copied into the
        model's parameters (its shapes are fixed)."""
        self._assign_layers(values, "coefs_", lambda l: l.weight, lambda l: (l.in_features, l.out_features), True)

    @property
    def intercepts_(self):
        check_is_fitted(self, "model_")
        return _LayerList(self, "intercepts_", [
            _arrays.host_copy(l.bias) if l.bias_enabled and _arrays.is_device(l.bias) else
            l.bias if l.bias_enabled else np.zeros(l.out_features, self.model_.dtype)
            for l in self.model_.layers if isinstance(l, nn.Dense)])

    @intercepts_.setter
    def intercepts_(self, values):
        self._assign_layers(values, "intercepts_", lambda l: l.bias, lambda l: (l.out_features,), False)

    def _assign_layers(self, values, name, param, shape, transpose):
        check_is_fitted(self, "model_")
        dense = [l for l in self.model_.layers if isinstance(l, nn.Dense)]
        values = list(values)
        if len(values) != len(dense):
            raise ValueError(f"{name} needs {len(dense)} arrays, one per layer; got {len(values)}")
        checked = []
        for i, (l, v) in enumerate(zip(dense, values)):
            v = np.asarray(v, dtype=np.float64)
            if v.shape != shape(l):
                raise ValueError(f"{name}[{i}] has shape {v.shape}; the layer needs {shape(l)}")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"{name}[{i}] contains NaN or infinity")
            if not transpose and not l.bias_enabled:
                if np.any(v != 0):
                    raise ValueError(f"{name}[{i}]: layer {i} has no bias (batch norm follows it); only zeros fit")
                continue
            checked.append((param(l), v.T if transpose else v))
        for dst, v in checked:  # all checked first: a bad array changes nothing
            _arrays.assign(dst, np.ascontiguousarray(v, dtype=self.model_.dtype))

    def _validate_X(self, X):
        return validate_data(self, X, reset=False, accept_sparse=self._accept_sparse, dtype=(np.float64, np.float32))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        tags.target_tags.multi_output = True
        tags.input_tags.sparse = bool(self._accept_sparse)
        return tags

    # -- pickling: plain arrays and the model-file header ----------------------------------------

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: object.__getstate__ returns __dict__ itself
        state.pop("_random", None)
        network = state.pop(self._network_attr, None)
        state.pop("model_", None)
        if network is not None:
            from .serialize import model_to_parts

            state["_network_parts"] = model_to_parts(network)
        if "_optimizer" in state:
            optimizer = state.pop("_optimizer")
            state["_optimizer_state"] = None if optimizer is None else optimizer.state_dict()
        return state

    def __setstate__(self, state):
        state = dict(state)
        parts = state.pop("_network_parts", None)
        has_optimizer = "_optimizer_state" in state
        optimizer_state = state.pop("_optimizer_state", None)
        super().__setstate__(state)
        if parts is not None:
            from .serialize import model_from_parts

            self._set_network(model_from_parts(*parts))
        if has_optimizer:
            self._optimizer = None if optimizer_state is None else _optim.optimizer_from_state(optimizer_state)

    def _set_network(self, network):
        self.model_ = network

    def save(self, path) -> None:
        """Save the fitted estimator (parameters, classes, fitted attributes) atomically; reload
        with :func:`fastmlp.load`. The optimizer state is not saved: ``partial_fit`` after a load
        starts a fresh optimizer."""
        _save_estimator(self, path)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier on fastmlp's kernels (scikit-learn's parameters).

    As in scikit-learn, two classes train one logistic (sigmoid) output with binary cross-entropy,
    more classes a softmax output with cross-entropy, and a 0/1 indicator matrix one sigmoid output
    per label.
    """

    def _prepare_targets(self, y, first_pass: bool, incremental: bool, classes=None):
        """Encoded targets, output width and loss; defines or checks ``classes_`` by scikit-learn's
        rules (a first pass defines them; warm starts need the same classes; partial_fit a subset)."""
        if not first_pass:
            if self._multilabel:
                if y.ndim != 2 or y.shape[1] != len(self.classes_) or \
                        type_of_target(y, input_name="y") not in ("multilabel-indicator", "binary", "multiclass"):
                    raise ValueError(f"y must be a 0/1 indicator matrix with {len(self.classes_)} labels, as before")
                return np.asarray(y, dtype=self.model_.dtype), len(self.classes_), "binary_cross_entropy"
            check_classification_targets(y)
            if classes is not None and not np.array_equal(unique_labels(classes), self.classes_):
                raise ValueError(f"`classes={classes!r}` is not the same as on last call to partial_fit, was: "
                                 f"{self.classes_!r}")
            labels = unique_labels(y)
            if incremental:
                unseen = np.setdiff1d(labels, self.classes_)
                if unseen.size:
                    raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                                     f"'y' has {labels}.")
            elif set(labels) != set(self.classes_):
                raise ValueError("warm_start can only be used where `y` has the same classes as in the previous "
                                 f"call to fit. Previously got {self.classes_}, `y` has {labels}")
            return self._encode_labels(y, self.model_.output == "sigmoid", self.model_.dtype)
        target_type = type_of_target(y, input_name="y")
        if target_type == "multiclass-multioutput":
            raise ValueError(f"y of shape {y.shape} holds several multi-class labels per row (multiclass-multioutput), "
                             "which MLPClassifier does not support: give one label per row, or a 0/1 indicator "
                             "matrix for multi-label targets")
        if target_type == "multilabel-indicator":
            self._multilabel = True
            self.classes_ = np.arange(y.shape[1])
            self.out_activation_ = "logistic"
            return np.asarray(y, dtype=self.dtype), y.shape[1], "binary_cross_entropy"
        check_classification_targets(y)
        self._multilabel = False
        if classes is not None:
            self.classes_ = np.asarray(unique_labels(classes))
            unseen = np.setdiff1d(unique_labels(y), self.classes_)
            if unseen.size:
                raise ValueError(f"`y` has classes not in `classes`: {unseen}")
        else:
            self.classes_ = unique_labels(y)
        binary = len(self.classes_) == 2
        self.out_activation_ = "logistic" if binary else "softmax"
        return self._encode_labels(y, binary, self.dtype)

    def _encode_labels(self, y, binary: bool, dtype):
        """Targets, output width and loss for single-label y: a (rows, 1) 0/1 column for two
        classes (one logistic output), else class indices for a softmax output."""
        index = np.searchsorted(self.classes_, y)
        if binary:
            return (index == 1).astype(dtype).reshape(-1, 1), 1, "binary_cross_entropy"
        return index.astype(np.int64), len(self.classes_), "cross_entropy"

    @property
    def _output_kind(self):
        binary = len(getattr(self, "classes_", ())) == 2
        return "sigmoid" if getattr(self, "_multilabel", False) or binary else "softmax"

    @property
    def _logistic(self) -> bool:
        """Two classes on one sigmoid output (files written before that had a two-unit softmax)."""
        return not self._multilabel and self.model_.output == "sigmoid"

    def _validation_score(self, X_val, t_val, sw_val) -> float:
        pred = np.asarray(self.model_.predict(X_val), dtype=np.int64)
        truth = np.asarray(t_val, dtype=np.int64)
        if self._logistic:
            pred, truth = pred.ravel(), truth.ravel()
        return float(accuracy_score(truth, pred, sample_weight=sw_val))

    def _fit(self, X, y, sample_weight, incremental, classes=None):
        self._check_params()
        first_pass = self._first_pass(incremental)
        X, y = validate_data(self, X, y, reset=first_pass, multi_output=True, accept_sparse=self._accept_sparse,
                             dtype=(np.float64, np.float32))
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.ravel()
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        t, n_out, loss = self._prepare_targets(y, first_pass, incremental, classes)
        return self._fit_encoded(X, t, sample_weight, incremental, n_out, loss)

    def fit(self, X, y, sample_weight=None):
        """Fit to (X, y); ``sample_weight`` weights each row's loss. Returns self."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y), keeping the weights and optimizer state between calls. The first
        call needs ``classes`` (all labels that will ever appear) for single-label targets."""
        if not hasattr(self, "classes_") and classes is None and type_of_target(y) != "multilabel-indicator":
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def predict_proba(self, X):
        """Class probabilities (softmax), or per-label probabilities for multi-label targets."""
        check_is_fitted(self, "model_")
        X = self._validate_X(X)
        p = self.model_.predict_proba(X).astype(np.float64)
        return np.hstack([1.0 - p, p]) if self._logistic else p

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
        return self.classes_[out.ravel() if self._logistic else out]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor on fastmlp's kernels (scikit-learn's parameters). The loss
    is ``½·mean((y − ŷ)²)`` over rows and outputs, as in scikit-learn; ``loss`` takes its one
    supported value, "squared_error" ("poisson" is not available)."""

    _output_kind = "identity"

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, loss="squared_error", solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000, dropout=0.0, batch_norm=False,
                 init="sklearn", l1=0.0, dtype="float32", device="cpu"):
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
                         learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
                         max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
                         warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
                         early_stopping=early_stopping, validation_fraction=validation_fraction, beta_1=beta_1,
                         beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun,
                         dropout=dropout, batch_norm=batch_norm, init=init, l1=l1, dtype=dtype, device=device)
        self.loss = loss

    def _check_params(self):
        if self.loss != "squared_error":
            raise ValueError(f"loss {self.loss!r} is not supported; MLPRegressor trains 'squared_error'")
        super()._check_params()

    def _report_scale(self, n_out: int) -> float:
        # scikit-learn reports the squared loss as a mean over outputs too, but its gradient is
        # that of the sum over outputs (delta = y_pred - y over the batch): the same steps here.
        return 1.0 / n_out

    def _validation_score(self, X_val, t_val, sw_val) -> float:
        pred = self.model_.predict(X_val).reshape(t_val.shape)
        return float(r2_score(t_val, pred, sample_weight=sw_val))

    def _fit(self, X, y, sample_weight, incremental):
        self._check_params()
        first_pass = self._first_pass(incremental)
        X, y = validate_data(self, X, y, reset=first_pass, multi_output=True, y_numeric=True,
                             accept_sparse=self._accept_sparse,
                             dtype=(np.float64, np.float32))
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        t = y.reshape(len(y), -1).astype(self.dtype)
        if not first_pass and t.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {t.shape[1]} outputs but the model was fitted with {self.n_outputs_}")
        self._y_1d = y.ndim == 1
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
        return out.ravel() if out.shape[1] == 1 else out  # one output: 1-D, as scikit-learn's


class AutoencoderTransformer(TransformerMixin, _BaseMLP):
    """A (denoising) autoencoder as a scikit-learn transformer: ``transform`` gives the codes,
    ``inverse_transform`` the reconstructions.

    ``hidden_layer_sizes`` is the encoder after the input, ending with the code width (e.g.
    ``(64, 2)``); the decoder mirrors it. ``noise`` (None, "gaussian" or "mask") and ``level``
    make it a denoising autoencoder. Training is MLPRegressor's (same loss, stopping rules and
    ``loss_curve_``) with the inputs as targets; a per-layer ``alpha`` / ``l1`` takes one value per
    weight matrix: ``2·len(hidden_layer_sizes)``, or ``len(hidden_layer_sizes)`` when ``tied``.
    """

    _output_kind = "identity"
    _network_attr = "autoencoder_"
    _accept_sparse = False  # reconstructions compare with X itself: dense data
    # MLPRegressor settings that are not parameters here.
    learning_rate = "constant"
    power_t = 0.5
    nesterovs_momentum = True
    beta_1 = 0.9
    beta_2 = 0.999
    epsilon = 1e-8
    batch_norm = False

    def __init__(self, hidden_layer_sizes=(32,), activation="relu", *, code_activation="identity", noise=None,
                 level=0.1, tied=False, solver="adam", alpha=0.0, batch_size="auto", learning_rate_init=0.001,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, early_stopping=False, validation_fraction=0.1, n_iter_no_change=10, dropout=0.0,
                 init="glorot", l1=0.0, dtype="float32", device="cpu"):
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
        self.device = device

    def _n_dense(self) -> int:
        depth = len(self._hidden())
        return depth if self.tied else 2 * depth

    def _check_params(self):
        if isinstance(self.init, str) and self.init == "sklearn":
            raise ValueError("init='sklearn' is scikit-learn's MLP initialisation; an autoencoder takes 'glorot', "
                             "'he', 'tiny' or a callable")
        if not self._hidden():
            raise ValueError("hidden_layer_sizes must name at least the code width, e.g. (32,)")
        if self.code_activation not in SK_ACTIVATIONS:
            raise ValueError(f"code_activation {self.code_activation!r} is not supported; supported activations "
                             f"are {', '.join(repr(a) for a in SK_ACTIVATIONS)}")
        if self.noise not in (None, "gaussian", "mask"):
            raise ValueError(f"noise must be None, 'gaussian' or 'mask', got {self.noise!r}")
        if not (isinstance(self.level, numbers.Real) and 0 <= self.level < (1 if self.noise == "mask" else math.inf)):
            raise ValueError(f"level must be >= 0 (and < 1 for mask noise), got {self.level!r}")
        if not isinstance(self.tied, (bool, np.bool_)):
            raise ValueError(f"tied must be True or False, got {self.tied!r}")
        if np.ndim(self.dropout) != 0:
            raise ValueError(f"an autoencoder's dropout is one value, got {self.dropout!r}")
        super()._check_params()

    def _loss_scale(self, n_out: int) -> float:
        return 1.0 / n_out  # the mean over features, as the loss it reports

    _validation_score = MLPRegressor._validation_score

    def _new_model(self, n_in: int, n_out: int, seed: int):
        self.autoencoder_ = Autoencoder([n_in] + self._hidden(), activation=_kernel_activation(self.activation),
                                        code_activation=_kernel_activation(self.code_activation), tied=self.tied,
                                        dropout=self.dropout, init=self.init, seed=seed, dtype=self.dtype,
                                        noise=self.noise, level=self.level, device=self.device)
        self.n_features_out_ = self.autoencoder_.sizes[-1]
        return self.autoencoder_.model

    def _initialize(self, n_in: int, n_out: int):
        super()._initialize(n_in, n_out)
        self.n_layers_ = 2 * len(self._hidden()) + 1

    def _set_network(self, network):
        self.autoencoder_ = network
        self.model_ = network.model

    def _fit(self, X, incremental):
        self._check_params()
        X = validate_data(self, X, reset=self._first_pass(incremental), dtype=(np.float64, np.float32))
        Xt = np.asarray(X, dtype=self.dtype)
        return self._fit_encoded(Xt, Xt, None, incremental, X.shape[1], "squared")

    def fit(self, X, y=None):
        """Train the autoencoder to reconstruct X. Returns self."""
        return self._fit(X, incremental=False)

    def partial_fit(self, X, y=None):
        """One epoch over X, keeping the weights and optimizer state between calls."""
        return self._fit(X, incremental=True)

    def transform(self, X):
        """The codes of X: shape (rows, code width)."""
        check_is_fitted(self, "autoencoder_")
        X = self._validate_X(X)
        return self.autoencoder_.encode(X).astype(np.float64)

    def inverse_transform(self, X):
        """Reconstructions from codes."""
        check_is_fitted(self, "autoencoder_")
        codes = np.asarray(X, dtype=np.float64)
        return self.autoencoder_.decode(codes).astype(np.float64)

    def reconstruction_error(self, X):
        """Per row, the sum of squared reconstruction errors (an outlier score)."""
        check_is_fitted(self, "autoencoder_")
        X = self._validate_X(X)
        return self.autoencoder_.reconstruction_error(X)

    def get_feature_names_out(self, input_features=None):
        """The codes' names, ``autoencodertransformer0..``; ``input_features`` is checked as
        scikit-learn's transformers check it (its length, and the names seen in fit)."""
        check_is_fitted(self, "autoencoder_")
        if input_features is not None:
            names = np.asarray(input_features, dtype=object)
            if names.ndim != 1 or len(names) != self.n_features_in_:
                raise ValueError(f"input_features should have length equal to number of features "
                                 f"({self.n_features_in_}), got {len(names) if names.ndim == 1 else names.shape}")
            seen = getattr(self, "feature_names_in_", None)
            if seen is not None and not np.array_equal(seen, names):
                raise ValueError("input_features is not equal to feature_names_in_")
        return np.asarray([f"autoencodertransformer{i}" for i in range(self.n_features_out_)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = False
        return tags


# -- files ----------------------------------------------------------------------------------------

_ESTIMATORS = {cls.__name__: cls for cls in (MLPClassifier, MLPRegressor, AutoencoderTransformer)}
#: Fitted scalars a file holds, with the JSON types each may have.
_FITTED_INTS = ("n_iter_", "t_", "n_features_in_", "n_outputs_", "n_layers_", "n_features_out_", "_seed")
_FITTED_FLOATS = ("best_loss_", "best_validation_score_", "loss_")
_FITTED_BOOLS = ("_multilabel", "_y_1d")
_FITTED_LISTS = ("loss_curve_", "validation_scores_")
_OUT_ACTIVATIONS = ("identity", "softmax", "logistic")
_CLASS_DTYPES = ("<i8", "<i4", "<u8", "<u4", "|u1", "|b1", "<f8", "<f4")


def _float_to_json(v):
    return v if v is None or math.isfinite(v) else str(float(v))  # JSON has no inf/nan: "inf", "-inf", "nan"


def _float_from_json(v, key):
    from .io import ModelFileError

    if v is None:
        return None
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    raise ModelFileError(f"estimator attribute {key!r} must be a number, got {v!r}")


def _save_estimator(est, path):
    from .io import write_file
    from .serialize import model_to_parts

    check_is_fitted(est)
    params = est.get_params(deep=False)
    if not (params.get("random_state") is None or _is_int(params.get("random_state"))):
        params["random_state"] = None  # a RandomState object: the fitted weights are what matter
    header_model, arrays = model_to_parts(getattr(est, est._network_attr), prefix="model.")
    fitted = {}
    for k in _FITTED_INTS + _FITTED_BOOLS:
        if getattr(est, k, None) is not None:
            fitted[k] = _json_value(getattr(est, k))
    for k in _FITTED_FLOATS:
        if hasattr(est, k):
            v = getattr(est, k)
            fitted[k] = None if v is None else _float_to_json(float(v))
    for k in _FITTED_LISTS:
        v = getattr(est, k, None)
        fitted[k] = None if v is None else [_float_to_json(float(x)) for x in v]
    if hasattr(est, "out_activation_"):
        fitted["out_activation_"] = str(est.out_activation_)
    if hasattr(est, "feature_names_in_"):
        fitted["feature_names_in_"] = [str(f) for f in est.feature_names_in_]
    if hasattr(est, "classes_"):
        classes = np.asarray(est.classes_)
        if classes.dtype.str in _CLASS_DTYPES:
            arrays["classes"] = classes
            fitted["classes_kind"] = "array"
        elif classes.dtype.kind in "iu":
            arrays["classes"] = classes.astype(np.int64)
            fitted["classes_kind"] = "array"
        elif classes.dtype.kind == "f":
            arrays["classes"] = classes.astype(np.float64)
            fitted["classes_kind"] = "array"
        else:
            fitted["classes_kind"] = "str"
            fitted["classes"] = [str(c) for c in classes]
    header = {"kind": "estimator", "class": type(est).__name__,
              "params": {k: _json_value(v) for k, v in params.items()}, "fitted": fitted, "model": header_model}
    write_file(path, header, arrays)


def _param_from_json(v):
    """Lists back to tuples (hidden_layer_sizes, per-layer alpha); anything but plain values refused."""
    if isinstance(v, list):
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise TypeError(f"a list parameter must hold numbers, got {v!r}")
        return tuple(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"parameter value {v!r} is not a number, string or list of numbers")


def _estimator_from_parts(header, arrays):
    """Rebuild a fitted estimator from its file, checking that every part agrees with the others."""
    from .io import ModelFileError
    from .serialize import model_from_parts

    cls = _ESTIMATORS.get(header.get("class"))
    if cls is None:
        raise ModelFileError(f"unknown estimator class {header.get('class')!r}")
    params, fitted = header.get("params"), header.get("fitted")
    if not isinstance(params, dict) or not isinstance(fitted, dict):
        raise ModelFileError("estimator params or fitted attributes are malformed")
    unknown = set(params) - set(cls._get_param_names())
    if unknown:
        raise ModelFileError(f"unknown {cls.__name__} parameters {sorted(unknown)}")
    extra = [k for k in arrays if not (k.startswith("model.") or k == "classes")]
    if extra:
        raise ModelFileError(f"unexpected arrays {sorted(extra)} in an estimator file")
    try:
        est = cls(**{k: _param_from_json(v) for k, v in params.items()})
        est._check_params()
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"invalid {cls.__name__} parameters ({e})") from None
    network = model_from_parts(header.get("model"), arrays, prefix="model.")

    def require(cond, msg):
        if not cond:
            raise ModelFileError(f"{cls.__name__} file: {msg}")

    known = set(_FITTED_INTS + _FITTED_FLOATS + _FITTED_BOOLS + _FITTED_LISTS) | {
        "out_activation_", "feature_names_in_", "classes_kind", "classes"}
    require(not (set(fitted) - known), f"unknown fitted attributes {sorted(set(fitted) - known)}")
    for k in _FITTED_INTS:
        if k in fitted:
            v = fitted[k]
            require(_is_int(v) and 0 <= v < 2**63, f"{k} must be a non-negative int, got {v!r}")
            setattr(est, k, int(v))
    for k in _FITTED_BOOLS:
        if k in fitted:
            require(isinstance(fitted[k], bool), f"{k} must be true or false")
            setattr(est, k, fitted[k])
    for k in _FITTED_FLOATS:
        if k in fitted:
            setattr(est, k, _float_from_json(fitted[k], k))
    for k in _FITTED_LISTS:
        if k in fitted:
            v = fitted[k]
            require(v is None or isinstance(v, list), f"{k} must be a list of numbers")
            setattr(est, k, None if v is None else [_float_from_json(x, k) for x in v])
    if "out_activation_" in fitted:
        require(fitted["out_activation_"] in _OUT_ACTIVATIONS, "out_activation_ is invalid")
        est.out_activation_ = fitted["out_activation_"]
    if "feature_names_in_" in fitted:
        names = fitted["feature_names_in_"]
        require(isinstance(names, list) and all(isinstance(n, str) for n in names), "feature_names_in_ is malformed")
        est.feature_names_in_ = np.asarray(names, dtype=object)

    # The network must be the one the parameters describe.
    if isinstance(est, AutoencoderTransformer):
        require(isinstance(network, Autoencoder), "the network is not an autoencoder")
        require(network.sizes[1:] == est._hidden(), f"autoencoder sizes {network.sizes} do not match "
                f"hidden_layer_sizes {est.hidden_layer_sizes}")
        require(network.activation == _kernel_activation(est.activation) and network.tied == bool(est.tied),
                "the autoencoder's activation or tying does not match the parameters")
    else:
        require(isinstance(network, nn.MLP), "the network is not an MLP")
        require(network.sizes[1:-1] == est._hidden(), f"network sizes {network.sizes} do not match "
                f"hidden_layer_sizes {est.hidden_layer_sizes}")
        require(network.activation == _kernel_activation(est.activation), "the network's activation does not "
                "match the parameters")
        require(network.batch_norm == bool(est.batch_norm), "the network's batch_norm does not match")
    est._set_network(network)
    model = est.model_
    require(getattr(est, "n_features_in_", model.in_features) == model.in_features,
            f"n_features_in_ is {getattr(est, 'n_features_in_', None)} but the network takes {model.in_features}")
    est.n_features_in_ = model.in_features
    est.n_outputs_ = model.out_features
    if hasattr(est, "feature_names_in_"):
        require(len(est.feature_names_in_) == model.in_features, "feature_names_in_ has the wrong length")
    if isinstance(est, AutoencoderTransformer):
        est.n_features_out_ = est.autoencoder_.sizes[-1]
    elif isinstance(est, MLPRegressor):
        require(model.output == "identity", "a regressor's network must have an identity output")
        est.out_activation_ = "identity"
        if not hasattr(est, "_y_1d"):
            est._y_1d = model.out_features == 1
    else:
        kind = fitted.get("classes_kind")
        require(kind in ("array", "str"), "the file has no classes")
        if kind == "array":
            classes = arrays.get("classes")
            require(classes is not None and classes.ndim == 1 and classes.dtype.str in _CLASS_DTYPES,
                    "the classes array is missing or malformed")
        else:
            names = fitted.get("classes")
            require(isinstance(names, list) and all(isinstance(c, str) for c in names), "classes are malformed")
            classes = np.asarray(names)
        multilabel = bool(getattr(est, "_multilabel", False))
        # Two classes: one logistic output, or (files from before it) a two-unit softmax.
        logistic = not multilabel and classes.size == 2 and model.out_features == 1
        require(classes.size == model.out_features or logistic, f"{classes.size} classes but the network has "
                f"{model.out_features} outputs")
        require(classes.size < 2 or bool(np.all(classes[1:] > classes[:-1])), "classes must be sorted and unique")
        require(model.output == ("sigmoid" if multilabel or logistic else "softmax"), f"the network's output "
                f"{model.output!r} does not fit the targets")
        require(not multilabel or np.array_equal(classes, np.arange(classes.size)),
                "multi-label classes must be 0..n-1")
        est._multilabel = multilabel
        est.classes_ = classes
        est.out_activation_ = "logistic" if multilabel or logistic else "softmax"
    est._optimizer = None
    est._epochs_run = est._steps_run = 0
    est._best_params = est._best_buffers = None
    if not hasattr(est, "_seed"):
        est._seed = 0
    est._no_improvement_count = 0
    return est
