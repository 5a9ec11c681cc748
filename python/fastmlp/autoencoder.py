"""Autoencoders and denoising autoencoders.

``Autoencoder([784, 256, 32])`` is the encoder 784 → 256 → 32; the decoder mirrors it
(32 → 256 → 784). ``output="sigmoid"`` pairs with binary cross-entropy for data in [0, 1],
``"identity"`` with squared error. ``tied=True`` makes each decoder layer reuse the transposed
weight of its mirror encoder layer. ``DenoisingAutoencoder`` corrupts the input (after
standardisation, in training only) with Gaussian noise or a masking noise that zeroes a ``level``
fraction of the inputs without rescaling, and learns to reconstruct the clean input.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from . import _arrays, nn
from . import optim as _optim
from .train import Trainer

__all__ = ["Autoencoder", "DenoisingAutoencoder"]


class Autoencoder:
    """A (stacked) autoencoder. Methods: :meth:`fit`, :meth:`encode`, :meth:`decode`,
    :meth:`reconstruct`, :meth:`reconstruction_error`; ``model`` is the underlying
    :class:`fastmlp.nn.Sequential` and ``history_`` the last fit's :class:`~fastmlp.History`."""

    def __init__(self, sizes: Sequence[int], *, activation: str = "relu", code_activation: str = "identity",
                 output: str = "identity", tied: bool = False, dropout: float = 0.0, init="glorot", seed: int = 0,
                 dtype="float32", noise: Optional[str] = None, level: float = 0.0, device: str = "cpu"):
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ValueError(f"sizes must list the input width and at least one code width, all >= 1; got {sizes}")
        if output not in ("identity", "sigmoid"):
            raise ValueError(f"output must be 'identity' or 'sigmoid', got {output!r}")
        self.sizes = sizes
        self.activation = nn._activation_name(activation)
        self.code_activation = nn._activation_name(code_activation)
        self.output = output
        self.tied = bool(tied)
        self.dropout = float(dropout)
        self.noise = noise
        self.level = float(level)
        self.init = init
        self.seed = int(seed)
        self.dtype = np.dtype(dtype)
        self.device = device
        self.history_ = None
        self.model = self._build()

    def _build(self) -> nn.Sequential:
        act_layer = nn._ACTIVATION_LAYERS
        layers: List[nn.Layer] = []
        if self.noise is not None:
            layers.append(nn.Noise(self.noise, self.level))
        dense_index = []
        depth = len(self.sizes) - 1
        for i in range(depth):
            dense_index.append(len(layers))
            layers.append(nn.Dense(self.sizes[i], self.sizes[i + 1]))
            layers.append(act_layer[self.code_activation if i == depth - 1 else self.activation]())
            if self.dropout > 0 and i < depth - 1:
                layers.append(nn.Dropout(self.dropout))
        self._code_layer = len(layers)
        for i in range(depth - 1, -1, -1):
            if self.tied:
                layers.append(nn.TiedDense(dense_index[i]))
            else:
                layers.append(nn.Dense(self.sizes[i + 1], self.sizes[i]))
            if i > 0:
                layers.append(act_layer[self.activation]())
        return nn.Sequential(*layers, output=self.output, init=self.init, seed=self.seed, dtype=self.dtype,
                             device=self.device)

    def config(self) -> dict:
        return {"sizes": self.sizes, "activation": self.activation, "code_activation": self.code_activation,
                "output": self.output, "tied": self.tied, "dropout": self.dropout, "noise": self.noise,
                "level": self.level, "seed": self.seed, "dtype": self.dtype.name,
                "class": type(self).__name__}

    @classmethod
    def _from_network(cls, cfg, network: nn.Sequential) -> "Autoencoder":
        from .io import ModelFileError

        if not isinstance(cfg, dict):
            raise ModelFileError("autoencoder config must be an object")
        try:
            klass = DenoisingAutoencoder if cfg.get("class") == "DenoisingAutoencoder" else Autoencoder
            sizes = [int(s) for s in cfg["sizes"]]
            # Building the config allocates a network: its encoder must fit in the stored one.
            if len(sizes) < 2 or min(sizes) < 1 or \
                    sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) > network.n_parameters:
                raise ValueError(f"sizes {sizes} do not fit a network of {network.n_parameters} parameters")
            ae = Autoencoder.__new__(klass)
            Autoencoder.__init__(ae, cfg["sizes"], activation=cfg["activation"],
                                 code_activation=cfg["code_activation"], output=cfg["output"], tied=cfg["tied"],
                                 dropout=cfg["dropout"], init="tiny", seed=cfg["seed"], dtype=cfg["dtype"],
                                 noise=cfg["noise"], level=cfg["level"])
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"malformed autoencoder config ({e})") from None
        if [l.config() for l in ae.model.layers] != [l.config() for l in network.layers]:
            raise ModelFileError("autoencoder config does not match its network")
        ae.model = network
        ae.device = network.device
        return ae

    # -- training ---------------------------------------------------------------------------------

    def fit(self, X, *, optimizer: Optional[_optim.Optimizer] = None, epochs: int = 20, batch_size: int = 64,
            **trainer_options) -> "Autoencoder":
        """Train to reconstruct X (the Trainer's options apply: validation, early_stopping,
        schedule, standardize, progress, seed, callbacks, ...). Returns self; ``history_`` holds
        the learning curves."""
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (samples, features), got shape {X.shape}")
        if self.output == "sigmoid" and trainer_options.get("standardize"):
            raise ValueError("standardize=True does not fit output='sigmoid' (targets must stay in [0, 1])")
        if isinstance(trainer_options.get("validation"), tuple):
            Xv = np.asarray(trainer_options["validation"][0])
            trainer_options["validation"] = (Xv, Xv)
        trainer = Trainer(self.model, optimizer=optimizer or _optim.Adam(), epochs=epochs, batch_size=batch_size,
                          **trainer_options)
        self.trainer_ = trainer
        self.history_ = trainer.fit(X, X)
        return self

    # -- use --------------------------------------------------------------------------------------

    def _code_block(self) -> int:
        """Index of the first execution block of the decoder."""
        return next((k for k, b in enumerate(self.model._blocks) if b.first_layer >= self._code_layer),
                    len(self.model._blocks))

    def encode(self, X) -> np.ndarray:
        """The codes (rows, sizes[-1]) of X, in inference mode."""
        x = self.model._as_input(X)
        codes = self.model._forward_blocks(x, 0, self._code_block(), False)
        return codes if _arrays.is_device(X) or not _arrays.is_device(codes) else codes.to_numpy()

    def _decode_logits(self, codes) -> np.ndarray:
        if not _arrays.is_device(codes):
            codes = np.ascontiguousarray(codes, dtype=self.model.dtype)
        if len(codes.shape) != 2 or codes.shape[1] != self.sizes[-1]:
            raise ValueError(f"codes must have shape (rows, {self.sizes[-1]}), got {tuple(codes.shape)}")
        codes = _arrays.to_device(codes, self.model.device)
        logits = self.model._forward_blocks(codes, self._code_block(), len(self.model._blocks), False)
        return logits.to_numpy() if _arrays.is_device(logits) else logits

    def _to_data_space(self, logits) -> np.ndarray:
        if self.output == "sigmoid":
            return nn._losses.probabilities("sigmoid", logits)
        scaler = self.model.scaler
        if scaler is not None:  # float64: data with a large offset keeps its variation
            return logits * scaler["x_scale"] + scaler["x_mean"]
        return logits

    def decode(self, codes) -> np.ndarray:
        """Reconstructions in data space from codes (sigmoid applied for output="sigmoid";
        standardisation undone)."""
        return self._to_data_space(self._decode_logits(codes))

    def reconstruct(self, X) -> np.ndarray:
        """decode(encode(X))."""
        return self._to_data_space(self.model.forward(X))

    def reconstruction_error(self, X) -> np.ndarray:
        """Per row, the sum over features of the squared reconstruction error (an outlier score)."""
        X = np.asarray(X, dtype=np.float64)
        R = self.reconstruct(X).astype(np.float64)
        return np.sum((X - R) ** 2, axis=1)

    def save(self, path) -> None:
        from .serialize import save

        save(self, path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sizes={self.sizes}, output={self.output!r}, tied={self.tied})"


class DenoisingAutoencoder(Autoencoder):
    """An autoencoder trained to reconstruct clean inputs from corrupted ones:
    ``noise="gaussian"`` adds ``level · N(0, 1)`` (after standardisation), ``noise="mask"`` zeroes
    a ``level`` fraction of the inputs without rescaling. The noise streams are seeded by the
    Trainer's seed and the step, like dropout."""

    def __init__(self, sizes: Sequence[int], noise: str = "gaussian", level: float = 0.1, *, seed: int = 0, **kw):
        super().__init__(sizes, noise=noise, level=level, seed=seed, **kw)

