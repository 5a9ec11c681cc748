"""Models to and from the file format of :mod:`fastmlp.io`: architecture and scaler statistics in
the JSON header, parameters and buffers as arrays. ``fastmlp.load`` rebuilds any model kind."""

from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np

from . import _arrays
from .io import ModelFileError, read_file, write_file

__all__ = ["load", "model_from_parts", "model_to_parts", "save"]


def model_to_parts(model, prefix: str = "") -> Tuple[dict, Dict[str, np.ndarray]]:
    """(header dict, arrays) describing ``model`` completely."""
    from .autoencoder import Autoencoder

    if isinstance(model, Autoencoder):
        header, arrays = model_to_parts(model.model, prefix)
        header = {"kind": "autoencoder", "autoencoder": model.config(), "network": header}
        return header, arrays
    arrays = {prefix + "params": _arrays.host_copy(model.parameters())}
    for name, buf in model.buffers().items():
        arrays[prefix + "buffer." + name] = _arrays.host_copy(buf)
    scaler_keys = []
    if model.scaler is not None:
        for k, v in model.scaler.items():
            arrays[prefix + "scaler." + k] = np.asarray(v)
            scaler_keys.append(k)
    header = {"kind": "model", "model": model.config(), "scaler": sorted(scaler_keys)}
    return header, arrays


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ModelFileError(msg)


def _int(v, what: str, lo: int = 0, hi: int = 1 << 40) -> int:
    _require(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi, f"{what} must be an int in [{lo}, {hi}]")
    return v


def _float(v, what: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    _require(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi,
             f"{what} must be a finite number in [{lo}, {hi}]")
    return float(v)


def _name(v, options, what: str) -> str:
    """``v`` must be a string among ``options`` (a tuple or a dict's keys): JSON lists and objects are
    unhashable, so test the type before the membership."""
    _require(isinstance(v, str) and v in options, f"{what} {v!r} is invalid")
    return v


def _build_model(cfg: dict, n_params: int):
    from . import init as _init
    from . import nn

    _require(isinstance(cfg, dict), "model config must be an object")
    kind = cfg.get("kind")
    dtype = cfg.get("dtype")
    _require(dtype in ("float32", "float64"), f"model dtype {dtype!r} is not float32 or float64")
    output = cfg.get("output")
    _require(output in nn.OUTPUTS, f"model output {output!r} is invalid")
    seed = _int(cfg.get("seed"), "seed", 0, 2**63 - 1)
    # Parameters are overwritten from the file, so initialise cheaply; keep the stored scheme's name.
    init = "tiny"
    stored_init = cfg.get("init") if cfg.get("init") in _init.SCHEMES else init
    if kind == "MLP":
        sizes = cfg.get("sizes")
        _require(isinstance(sizes, list) and 2 <= len(sizes) <= 1000, "MLP sizes must be a list of 2..1000 ints")
        sizes = [_int(s, "MLP size", 1, 1 << 24) for s in sizes]
        total = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        _require(total <= 1 << 34, "MLP is implausibly large")
        act = cfg.get("activation")
        if isinstance(act, list):  # one per hidden layer
            _require(len(act) == len(sizes) - 2, "MLP activation list is malformed")
            for a in act:
                _name(a, nn.ACTIVATIONS, "activation")
        else:
            _name(act, nn.ACTIVATIONS, "activation")
        drops = cfg.get("dropout")
        _require(isinstance(drops, list) and len(drops) == len(sizes) - 2, "MLP dropout list is malformed")
        drops = [_float(d, "dropout", 0.0, 0.999999) for d in drops]
        batch_norm = bool(cfg.get("batch_norm"))
        needed = sum(a * b + (2 * b if batch_norm else b) for a, b in zip(sizes[:-2], sizes[1:-1]))
        _check_count(needed + sizes[-2] * sizes[-1] + sizes[-1], n_params)
        model = nn.MLP(sizes, activation=act, output=output, dropout=drops,
                       input_dropout=_float(cfg.get("input_dropout"), "input_dropout", 0.0, 0.999999),
                       batch_norm=batch_norm, init=init, seed=seed, dtype=dtype)
        model.init = stored_init
        return model
    _require(kind == "Sequential", f"unknown model kind {kind!r}")
    layers_cfg = cfg.get("layers")
    _require(isinstance(layers_cfg, list) and 1 <= len(layers_cfg) <= 10000, "layers must be a non-empty list")
    layers = []
    for i, lc in enumerate(layers_cfg):
        _require(isinstance(lc, dict) and isinstance(lc.get("type"), str) and lc["type"] in nn.LAYER_TYPES,
                 f"layer {i} is malformed")
        t = lc["type"]
        if t == "Dense":
            layers.append(nn.Dense(_int(lc.get("in_features"), "in_features", 1, 1 << 24),
                                   _int(lc.get("out_features"), "out_features", 1, 1 << 24), bool(lc.get("bias"))))
        elif t == "Dropout":
            layers.append(nn.Dropout(_float(lc.get("p"), "p", 0.0, 0.999999)))
        elif t == "BatchNorm":
            layers.append(nn.BatchNorm(_int(lc.get("features"), "features", 1, 1 << 24),
                                       _float(lc.get("momentum"), "momentum", 0.0, 1.0),
                                       _float(lc.get("eps"), "eps", 1e-30, 1.0)))
        elif t == "Noise":
            kind = lc.get("kind")
            _require(kind in ("gaussian", "mask"), f"layer {i}: noise kind {kind!r} is invalid")
            layers.append(nn.Noise(kind, _float(lc.get("level"), "level", 0.0, 1e6 if kind == "gaussian" else 0.999999)))
        elif t == "TiedDense":
            layers.append(nn.TiedDense(_int(lc.get("tied_to"), "tied_to", 0, len(layers_cfg)), bool(lc.get("bias"))))
        else:
            layers.append(nn.LAYER_TYPES[t]())
    needed = 0
    for layer in layers:
        if isinstance(layer, nn.Dense):
            needed += layer.in_features * layer.out_features + (layer.out_features if layer.bias_enabled else 0)
        elif isinstance(layer, nn.BatchNorm):
            needed += 2 * layer.features
        elif isinstance(layer, nn.TiedDense) and layer.bias_enabled:
            source = layers[layer.tied_to] if layer.tied_to < len(layers) else None
            _require(isinstance(source, nn.Dense), f"TiedDense ties to layer {layer.tied_to}, which is not Dense")
            needed += source.in_features
    _check_count(needed, n_params)
    try:
        model = nn.Sequential(*layers, output=output, init=init, seed=seed, dtype=dtype)
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"invalid architecture: {e}") from None
    model.init = stored_init
    return model


def _autoencoder_config(cfg):
    """The plain values of an autoencoder config, checked before Autoencoder rebuilds from it (its
    constructor would turn a JSON Infinity into OverflowError, a list into TypeError)."""
    _require(isinstance(cfg, dict), "autoencoder config must be an object")
    sizes = cfg.get("sizes")
    _require(isinstance(sizes, list) and 2 <= len(sizes) <= 1000, "autoencoder sizes must be a list of 2..1000 ints")
    for s in sizes:
        _int(s, "autoencoder size", 1, 1 << 24)
    _int(cfg.get("seed"), "autoencoder seed", 0, 2**63 - 1)
    _float(cfg.get("dropout"), "autoencoder dropout", 0.0, 0.999999)
    _float(cfg.get("level"), "autoencoder noise level", 0.0, 1e6)
    _require(cfg.get("dtype") in ("float32", "float64"), f"autoencoder dtype {cfg.get('dtype')!r} is invalid")
    for key in ("activation", "code_activation", "output"):
        _require(isinstance(cfg.get(key), str), f"autoencoder {key} must be a string")
    _require(cfg.get("noise") is None or isinstance(cfg.get("noise"), str), "autoencoder noise must be a string")
    _require(isinstance(cfg.get("tied"), bool), "autoencoder tied must be true or false")
    return cfg


def _check_count(needed: int, n_params: int) -> None:
    # Before anything is allocated: the arena (and its gradient twin) is sized by the architecture,
    # so an architecture that disagrees with the stored parameters must not be built.
    _require(needed == n_params, f"file holds {n_params} parameters but the architecture needs {needed}")


def model_from_parts(header: dict, arrays: Dict[str, np.ndarray], prefix: str = ""):
    """Rebuild a model from :func:`model_to_parts` output, validating everything."""
    from .autoencoder import Autoencoder

    _require(isinstance(header, dict), "model header must be an object")
    if header.get("kind") == "autoencoder":
        network = model_from_parts(header.get("network"), arrays, prefix)
        return Autoencoder._from_network(_autoencoder_config(header.get("autoencoder")), network)
    _require(header.get("kind") == "model", f"unknown file kind {header.get('kind')!r}")
    cfg = header.get("model")
    # The stored parameter count is checked against the architecture before it is built.
    params = arrays.get(prefix + "params")
    _require(params is not None and params.ndim == 1, "file has no 1-D 'params' array")
    model = _build_model(cfg, params.size)
    _require(params.size == model.n_parameters,
             f"file holds {params.size} parameters but the architecture needs {model.n_parameters}")
    _require(params.dtype == model.dtype, f"params dtype {params.dtype} does not match model dtype {model.dtype}")
    _require(bool(np.all(np.isfinite(params))), "parameters contain NaN or Inf")
    model.parameters()[...] = params
    for name, buf in model.buffers().items():
        stored = arrays.get(prefix + "buffer." + name)
        _require(stored is not None and stored.shape == buf.shape and stored.dtype == buf.dtype,
                 f"buffer {name!r} is missing or has the wrong shape/dtype")
        _require(bool(np.all(np.isfinite(stored))), f"buffer {name!r} contains NaN or Inf")
        _require(not name.endswith("running_var") or bool(np.all(stored >= 0)), f"buffer {name!r} is negative")
        buf[...] = stored
    keys = header.get("scaler", [])
    _require(isinstance(keys, list) and all(k in ("x_mean", "x_scale", "y_mean", "y_scale") for k in keys),
             "scaler keys are malformed")
    # The Trainer fits x_mean/x_scale, and y_mean/y_scale with them for squared loss; the model
    # reads them in those pairs, so a lone half would fail at predict time.
    _require(sorted(keys) in ([], ["x_mean", "x_scale"], ["x_mean", "x_scale", "y_mean", "y_scale"]),
             f"scaler keys {sorted(keys)} are incomplete (x_mean, x_scale, and optionally y_mean, y_scale)")
    if keys:
        scaler = {}
        for k in keys:
            arr = arrays.get(prefix + "scaler." + k)
            _require(arr is not None and arr.dtype.kind == "f" and arr.ndim == 1, f"scaler.{k} is missing or malformed")
            width = model.in_features if k.startswith("x_") else model.out_features
            _require(arr.size == width, f"scaler.{k} has {arr.size} values, expected {width}")
            _require(bool(np.all(np.isfinite(arr))), f"scaler.{k} contains NaN or Inf")
            if k.endswith("scale"):
                _require(bool(np.all(arr > 0)), f"scaler.{k} must be positive")
            scaler[k] = arr.astype(np.float64)
        # The model computes in its dtype: the standardisation must map zero and its own means into
        # that range (a scale of 1e-300 would turn every input into inf).
        limits = np.finfo(model.dtype)
        for side in ("x", "y"):
            if side + "_mean" in scaler:
                mean, scale = scaler[side + "_mean"], scaler[side + "_scale"]
                with np.errstate(over="ignore"):  # an overflowing ratio is inf, which fails the test
                    ratio_ok = bool(np.all(np.abs(mean) / scale <= limits.max))
                _require(bool(np.all(scale >= limits.tiny) and np.all(scale <= limits.max)) and ratio_ok,
                         f"scaler.{side}_scale/{side}_mean are outside {model.dtype.name}'s range (scales in "
                         f"[{limits.tiny:.3g}, {limits.max:.3g}], |mean| / scale <= {limits.max:.3g})")
        model.scaler = scaler
    return model


def save(model, path) -> None:
    """Save a model (MLP, Sequential, Autoencoder) atomically to ``path``."""
    header, arrays = model_to_parts(model)
    write_file(path, header, arrays)


def load(path):
    """Load any fastmlp model file (never unpickles). Raises ModelFileError (a ValueError) for
    malformed files and OSError for I/O problems."""
    header, arrays = read_file(path)
    kind = header.get("kind")
    if kind == "checkpoint":
        raise ModelFileError(f"{path} is a training checkpoint; use fastmlp.Trainer.from_checkpoint")
    try:
        if kind == "estimator":
            from .sklearn import _ESTIMATORS, _estimator_from_parts

            _name(header.get("class"), _ESTIMATORS, "estimator class")
            return _estimator_from_parts(header, arrays)
        return model_from_parts(header, arrays)
    except ModelFileError as e:
        raise ModelFileError(f"{path}: {e}") from None
