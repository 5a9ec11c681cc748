"""The command line: ``python -m fastmlp`` (or ``fastmlp``).

- ``fastmlp train``: train an MLP. Without arguments it trains on the bundled 8×8 digits and
  prints the test accuracy and the training throughput. ``--data file.npz|file.csv`` brings your
  own data (an ``.npz`` with arrays ``X`` and ``y``, or a CSV whose ``--target`` column is the
  label; default: the last column).
- ``fastmlp autoencode``: train a denoising autoencoder, report the reconstruction error and the
  top outliers, and with a 2-D code plot the codes (``--plot``).
- ``fastmlp kernels``: a demo of the raw kernels (a network trained with fastmlp.kernels only).

Bad input (a missing file, a wrong or missing column, non-numeric data, a bad option value), a file
that cannot be written and a diverging run print a clear error and exit with status 2; checks
that need no training (the data, --plot and --save paths) run before training starts.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from typing import List, Optional, Tuple

import numpy as np


class DataError(Exception):
    """A user-data problem: reported as ``fastmlp: error: ...`` with exit status 2."""


# -- data loading -----------------------------------------------------------------------------------


def _load_csv(path: str, target: Optional[str], need_target: bool):
    try:
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name.
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the CSV as UTF-8") from None
    if not rows:
        raise DataError(f"{path}: the CSV file is empty")

    def numeric(cell: str) -> bool:
        try:
            float(cell)
            return True
        except ValueError:
            return False

    # The first row is a header when it has a word above a column of numbers (the rows below,
    # the first thousand looked at). A word above words is data: a header-less file whose target
    # column holds class names (5.1,3.5,1.4,0.2,Iris-setosa) keeps its first row.
    header = None
    words = [j for j, c in enumerate(rows[0]) if not numeric(c)]
    below = rows[1:1001]
    if words and (not below or any(all(j < len(r) and numeric(r[j]) for r in below) for j in words)):
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    if not rows:
        raise DataError(f"{path}: the CSV file has a header but no data rows")
    width = len(header) if header else len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != width:
            raise DataError(f"{path}: row {i + 1 + (header is not None)} has {len(r)} columns, expected {width}")
    col = _column_index(path, target, header, width) if target is not None else width - 1 if need_target else None
    if col is not None and width < 2:
        raise DataError(f"{path}: needs at least one feature column besides the target")
    # A target column of words (class names such as "setosa") is kept as text: its classes are
    # numbered in sorted order, as numeric labels are.
    labels = None
    if col is not None and not all(numeric(r[col]) for r in rows):
        labels = np.array([r[col].strip() for r in rows])
        if np.any(labels == ""):
            i = int(np.argmax(labels == ""))
            raise DataError(f"{path}: the target is empty in row {i + 1 + (header is not None)}")
    skip = col if labels is not None else None  # class names: not parsed as numbers
    data = np.empty((len(rows), width), dtype=np.float64)
    for i, r in enumerate(rows):
        for j, c in enumerate(r):
            if j == skip:
                data[i, j] = 0.0
                continue
            try:
                data[i, j] = float(c)
            except ValueError:
                name = header[j] if header else str(j)
                raise DataError(f"{path}: non-numeric value {c.strip()!r} in row {i + 1 + (header is not None)}, "
                                f"column {name!r}; fastmlp needs numeric features (a target column may hold "
                                f"class names)") from None
    if col is None:
        return data, None
    return np.delete(data, col, axis=1), (labels if labels is not None else data[:, col])


def _column_index(path: str, target: str, header: Optional[List[str]], width: int) -> int:
    if header is not None and target in header:
        return header.index(target)
    try:
        idx = int(target)
    except ValueError:
        cols = ", ".join(header) if header else f"0..{width - 1}"
        raise DataError(f"{path}: no column {target!r}; columns are {cols}") from None
    if not -width <= idx < width:
        raise DataError(f"{path}: column index {idx} is out of range for {width} columns")
    return idx % width


def load_data(path: Optional[str], target: Optional[str], need_target: bool = True):
    """(X, y or None, description). The bundled digits when ``path`` is None."""
    if path is None:
        from .datasets import load_digits

        X, y = load_digits("float64")
        return X, y, "the bundled 8x8 digits (1,797 images)"
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not a data file")
    extension = os.path.splitext(path)[1].lower()
    if extension == ".npz" and target is not None:
        raise DataError(f"{path}: --target names a CSV column; an .npz file holds the target as the array 'y'")
    if extension == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                if "X" not in f.files:
                    raise DataError(f"{path}: the .npz needs an array 'X' (and 'y' for training); it has "
                                    f"{', '.join(f.files) or 'no arrays'}")
                X = f["X"]
                y = f["y"] if "y" in f.files else None
        except DataError:
            raise
        except (ValueError, OSError) as e:
            raise DataError(f"{path}: cannot read the .npz ({e})") from None
        if X.dtype.kind not in "fiub":
            raise DataError(f"{path}: X has non-numeric dtype {X.dtype}")
        if X.ndim != 2:
            raise DataError(f"{path}: X must be 2-D (samples, features), got shape {X.shape}")
        if need_target and y is None:
            raise DataError(f"{path}: the .npz has no array 'y' (the targets)")
        if y is not None and y.dtype.kind not in "fiub":
            raise DataError(f"{path}: y has non-numeric dtype {y.dtype}")
        if y is not None and y.shape[0] != X.shape[0]:
            raise DataError(f"{path}: X has {X.shape[0]} rows but y has {y.shape[0]}")
        X = X.astype(np.float64)
    elif extension in (".csv", ".txt"):
        try:
            X, y = _load_csv(path, target, need_target)
        except UnicodeDecodeError:
            raise DataError(f"{path}: not a text CSV file") from None
        except OSError as e:
            raise DataError(f"{path}: cannot read the file ({e.strerror or e})") from None
    else:
        raise DataError(f"{path}: unknown data format; use .npz (arrays X, y) or .csv")
    if not np.all(np.isfinite(X)) or (y is not None and y.dtype.kind == "f" and not np.all(np.isfinite(y))):
        raise DataError(f"{path}: the data contain NaN or infinite values")
    if X.shape[0] < 4:
        raise DataError(f"{path}: needs at least 4 rows, got {X.shape[0]}")
    return X, y, path


def _is_classification(y: np.ndarray, task: str) -> bool:
    if task != "auto":
        return task == "classification"
    if y.ndim != 1:
        return False
    if y.dtype.kind in "iubUS":
        return True
    return bool(np.all(y == np.round(y)) and np.unique(y).size <= max(2, min(100, y.size // 5)))


def _split(n: int, test_fraction: float, seed: int, labels: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    from .train import _stratified_split

    return _stratified_split(n, labels, test_fraction, seed + 7919)


def _sizes(text: str) -> List[int]:
    try:
        sizes = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer widths like 128,64; got {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer widths must be positive; got {text!r}")
    return sizes


def _lr(text: str):
    if text == "auto":
        return "auto"
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lr must be a number or 'auto', got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"--lr must be > 0, got {text!r}")
    return v


def _checked(convert, ok, what: str):
    """An argparse ``type``: ``convert`` the text, then require ``ok(value)``."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


_fraction = _checked(float, lambda v: 0.0 <= v < 1.0, "a fraction in [0, 1)")
_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_nonnegative_float = _checked(float, lambda v: 0.0 <= v < math.inf, "a number >= 0")


def _check_outputs(args) -> None:
    """Fail before training, not after it, when --plot or --save cannot be written."""
    for option in ("plot", "save"):
        path = getattr(args, option, None)
        if path is None:
            continue
        directory = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise DataError(f"--{option} {path}: is a directory; give a file name")
        if not os.path.isdir(directory):
            raise DataError(f"--{option} {path}: the directory {directory} does not exist")
    if getattr(args, "plot", None):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise DataError("--plot needs matplotlib: pip install 'fastmlp[plot]'") from None


def _make_optimizer(name: str, lr):
    from . import optim

    classes = {"adam": optim.Adam, "adamw": optim.AdamW, "sgd": optim.SGD, "rmsprop": optim.RMSprop,
               "adagrad": optim.AdaGrad}
    if name == "sgd":
        return optim.SGD(lr if lr is not None else 0.01, momentum=0.9, nesterov=True)
    cls = classes[name]
    return cls(lr) if lr is not None else cls()


# -- commands -----------------------------------------------------------------------------------------


def cmd_train(args, out) -> int:
    import fastmlp
    from . import MLP, Trainer

    _check_outputs(args)
    X, y, source = load_data(args.data, args.target)
    y = np.asarray(y)
    classification = _is_classification(y, args.task)
    if not classification and y.dtype.kind in "US":
        raise DataError(f"{source}: --task regression needs a numeric target; this one holds class names")
    n = X.shape[0]
    if classification:
        classes, y_enc = np.unique(y, return_inverse=True)
        if classes.size < 2:
            raise DataError(f"{source}: the target has a single class ({classes[0]}); nothing to learn")
        labels = y_enc
    else:
        y_enc = y.astype(np.float64)
        labels = None
    tr, te = _split(n, args.test_fraction, args.seed, labels) if args.test_fraction > 0 else (np.arange(n), None)
    n_out = int(classes.size) if classification else (1 if y_enc.ndim == 1 else y_enc.shape[1])
    model = MLP([X.shape[1]] + args.hidden + [n_out], activation=args.activation,
                output="softmax" if classification else "identity", dropout=args.dropout,
                batch_norm=args.batch_norm, seed=args.seed)
    trainer = Trainer(model, optimizer=_make_optimizer(args.optimizer, args.lr), batch_size=args.batch_size,
                      epochs=args.epochs, validation=args.validation or None, early_stopping=args.early_stopping,
                      standardize=True, progress=not args.no_progress, seed=args.seed)
    print(f"training an MLP {model.sizes} ({'classification' if classification else 'regression'}) on {source}: "
          f"{tr.size} training rows, {0 if te is None else te.size} test rows; {fastmlp.get_num_threads()} "
          f"thread(s), {fastmlp.get_isa()} kernels", file=out)
    start = time.perf_counter()
    history = trainer.fit(X[tr], y_enc[tr])
    seconds = time.perf_counter() - start
    epochs_run = len(history)
    samples_per_s = epochs_run * tr.size / max(sum(history.time_s), 1e-9)
    print(f"{epochs_run} epochs in {seconds:.2f} s ({history.stop_reason}); {samples_per_s:,.0f} samples/s "
          f"(training steps only)", file=out)
    if te is not None and te.size:
        if classification:
            acc = float(np.mean(model.predict(X[te]) == y_enc[te]))
            print(f"test accuracy: {acc:.4f}", file=out)
        else:
            from .train import compute_metric

            pred = model.predict(X[te]).reshape(te.size, -1)
            r2 = compute_metric("squared", pred, y_enc[te].reshape(te.size, -1))
            print(f"test R^2: {r2:.4f}", file=out)
    if args.plot:
        try:
            history.plot(args.plot, title=f"fastmlp train on {os.path.basename(str(source))}")
        except ImportError as e:
            raise DataError(str(e)) from None
        print(f"learning curves written to {args.plot}", file=out)
    if args.save:
        model.save(args.save)
        print(f"model saved to {args.save}", file=out)
        if classification and not np.array_equal(classes, np.arange(classes.size)):
            shown = ", ".join(f"{i}: {c:g}" if isinstance(c, float) else f"{i}: {c}" for i, c in
                              enumerate(classes.tolist()[:20]))
            print(f"its predict gives class indices; index: label = {shown}{', ...' if classes.size > 20 else ''}",
                  file=out)
    return 0


def cmd_autoencode(args, out) -> int:
    from . import DenoisingAutoencoder, optim

    if args.plot and args.code != 2:
        raise DataError("--plot draws the codes and needs --code 2")
    if args.noise == "mask" and not args.level < 1:
        raise DataError(f"--level is the fraction of inputs masked and must be < 1, got {args.level}")
    _check_outputs(args)
    X, y, source = load_data(args.data, args.target, need_target=False)
    ae = DenoisingAutoencoder([X.shape[1]] + args.hidden + [args.code], noise=args.noise, level=args.level,
                              activation=args.activation, seed=args.seed)
    print(f"training a denoising autoencoder {ae.sizes} ({args.noise} noise, level {args.level}) on {source}: "
          f"{X.shape[0]} rows", file=out)
    ae.fit(X, optimizer=optim.Adam(args.lr if args.lr is not None else 1e-3), epochs=args.epochs,
           batch_size=args.batch_size, standardize=True, progress=not args.no_progress, seed=args.seed)
    errors = ae.reconstruction_error(X)
    scale = float(np.sum(np.var(X, axis=0)))
    print(f"mean reconstruction error (sum of squares per row): {errors.mean():.4f} "
          f"({errors.mean() / max(scale, 1e-12):.3f} of the data's total variance)", file=out)
    top = np.argsort(errors)[::-1][: args.top]
    print(f"top {len(top)} outliers (row: error): " + ", ".join(f"{i}: {errors[i]:.3f}" for i in top), file=out)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        codes = ae.encode(X)
        fig, ax = plt.subplots(figsize=(6, 5))
        if y is not None and y.dtype.kind in "US":  # class names: one colour each
            y = np.unique(y, return_inverse=True)[1]
        sc = ax.scatter(codes[:, 0], codes[:, 1], c=y if y is not None else errors, s=6, cmap="tab10" if y is not None
                        else "viridis")
        fig.colorbar(sc, ax=ax, label="label" if y is not None else "reconstruction error")
        ax.set_title("autoencoder codes")
        fig.tight_layout()
        fig.savefig(args.plot)
        plt.close(fig)
        print(f"codes plotted to {args.plot}", file=out)
    if args.save:
        ae.save(args.save)
        print(f"autoencoder saved to {args.save}", file=out)
    return 0


def cmd_kernels(args, out) -> int:
    from ._kernel_demo import demo

    demo(args.epochs, args.batch_size, args.hidden[0], args.seed, out=out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastmlp", description="Train MLPs and autoencoders on fastmlp's kernels.")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="kernel threads (default: all available CPUs)")
    sub = parser.add_subparsers(dest="command")

    def common(p, epochs, hidden, batch, target_help):
        p.add_argument("--data", default=None, help="data file: .npz with X (and y) or .csv (default: bundled digits)")
        p.add_argument("--target", default=None, help=target_help)
        p.add_argument("--hidden", type=_sizes, default=hidden, help="hidden layer widths, e.g. 128,64")
        p.add_argument("--activation", choices=["relu", "tanh", "sigmoid"], default="relu")
        p.add_argument("--epochs", type=_positive_int, default=epochs)
        p.add_argument("--batch-size", type=_positive_int, default=batch)
        p.add_argument("--lr", type=_lr, default=None, help="step size, or 'auto' for the step-size search")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--plot", default=None, help="write a PNG (learning curves / codes)")
        p.add_argument("--save", default=None, help="save the trained model (.npz)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    t = sub.add_parser("train", help="train an MLP classifier or regressor (default command)")
    common(t, 30, [128, 64], 32, "CSV target column (name or index; default: the last column); a column of "
                                 "class names means classification")
    t.add_argument("--optimizer", choices=["adam", "adamw", "sgd", "rmsprop", "adagrad"], default="adam")
    t.add_argument("--dropout", type=_fraction, default=0.1)
    t.add_argument("--batch-norm", action="store_true")
    t.add_argument("--early-stopping", type=_positive_int, default=None, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without validation improvement")
    t.add_argument("--validation", type=_fraction, default=0.1, help="validation fraction (0: none)")
    t.add_argument("--test-fraction", type=_fraction, default=0.2)
    t.add_argument("--task", choices=["auto", "classification", "regression"], default="auto")

    a = sub.add_parser("autoencode", help="train a denoising autoencoder and report outliers")
    common(a, 30, [32], 32, "CSV label column (name or index) to leave out of the features; it colours the "
                            "--plot (default: every column is a feature)")
    a.add_argument("--code", type=_positive_int, default=2, help="code width (2 for a plot)")
    a.add_argument("--noise", choices=["gaussian", "mask"], default="mask")
    a.add_argument("--level", type=_nonnegative_float, default=0.2,
                   help="noise level: the std of gaussian noise, or the fraction of inputs masked")
    a.add_argument("--top", type=_positive_int, default=5, help="how many outliers to list")

    k = sub.add_parser("kernels", help="demo: a network trained with fastmlp.kernels only")
    k.add_argument("--epochs", type=_positive_int, default=5)
    k.add_argument("--batch-size", type=_positive_int, default=128)
    k.add_argument("--hidden", type=_sizes, default=[256])
    k.add_argument("--seed", type=int, default=0)
    return parser


COMMANDS = ("train", "autoencode", "kernels")


def _with_default_command(argv: List[str]) -> List[str]:
    """``train`` is the default command: insert it after the global options when none is named."""
    i = 0
    while i < len(argv) and argv[i].startswith("--threads"):
        i += 1 if "=" in argv[i] else 2
    if i < len(argv) and (argv[i] in COMMANDS or argv[i] in ("-h", "--help")):
        return argv
    return argv[:i] + ["train"] + argv[i:]


def main(argv: Optional[List[str]] = None, out=None) -> int:
    """Run the command line; returns the exit status (argparse exits with 2 on usage errors)."""
    from .train import NonFiniteLossError

    out = out if out is not None else sys.stdout
    argv = _with_default_command(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        import fastmlp

        fastmlp.set_num_threads(args.threads)
    commands = {"train": cmd_train, "autoencode": cmd_autoencode, "kernels": cmd_kernels}
    try:
        return commands[args.command](args, out)
    except (DataError, NonFiniteLossError, OSError) as e:
        print(f"fastmlp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastmlp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
