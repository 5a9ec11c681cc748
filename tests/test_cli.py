"""The command line: ``fastmlp train`` / ``autoencode`` / ``kernels``. The happy paths on the
bundled digits and on the user's own .npz and .csv files, and every error path: a clear message
on stderr and exit status 2. Runs ``main(argv, out)`` in-process for speed, plus one real
``python -m fastmlp`` subprocess."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastmlp
from fastmlp.__main__ import main
from fastmlp.datasets import load_digits

FAST = ["--epochs", "3", "--no-progress"]


def run(argv):
    """(exit status, stdout text) of ``fastmlp argv`` run in-process."""
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def _accuracy(text):
    return float(re.search(r"test accuracy: ([0-9.]+)", text).group(1))


def _samples_per_s(text):
    return float(re.search(r"([0-9,]+) samples/s", text).group(1).replace(",", ""))


@pytest.fixture(scope="module")
def digits():
    return load_digits("float64")


@pytest.fixture
def digits_npz(tmp_path, digits):
    X, y = digits
    path = tmp_path / "digits.npz"
    np.savez(path, X=X[:600], y=y[:600])
    return path


def _write_csv(path, header, rows):
    with open(path, "w") as f:
        if header is not None:
            f.write(",".join(header) + "\n")
        for row in rows:
            f.write(",".join(str(v) for v in row) + "\n")
    return path


@pytest.fixture
def classification_csv(tmp_path):
    """Three numeric features and a 0/1 label in the middle column 'label'."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    label = (X[:, 0] + X[:, 1] > 0).astype(int)
    rows = [[f"{a:.5f}", lab, f"{b:.5f}", f"{c:.5f}"] for (a, b, c), lab in zip(X, label)]
    return _write_csv(tmp_path / "points.csv", ["x0", "label", "x1", "x2"], rows)


# -- happy paths ----------------------------------------------------------------------------------

def test_train_with_no_arguments_trains_on_the_bundled_digits(capsys):
    status, out = run([])
    assert status == 0
    assert "bundled 8x8 digits" in out
    assert _accuracy(out) >= 0.9
    assert _samples_per_s(out) > 0
    assert "training" in capsys.readouterr().err  # the progress bar


def test_python_dash_m_fastmlp_train_runs_as_a_program():
    result = subprocess.run([sys.executable, "-m", "fastmlp", "train", "--epochs", "2", "--no-progress"],
                            capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert "test accuracy:" in result.stdout and "samples/s" in result.stdout
    assert result.stderr == ""


def test_train_on_an_npz_with_every_training_option(digits_npz, tmp_path):
    status, out = run(["train", "--data", str(digits_npz), "--hidden", "32,16", "--optimizer", "sgd", "--lr", "auto",
                       "--epochs", "20", "--dropout", "0.2", "--early-stopping", "3", "--batch-norm",
                       "--batch-size", "16", "--no-progress"])
    assert status == 0
    assert "[64, 32, 16, 10]" in out
    assert re.search(r"\d+ epochs in .* \((completed|early_stopping)\)", out)
    assert _accuracy(out) > 0.8


@pytest.mark.parametrize("target", [None, "label", "1", "-3"])
def test_train_on_a_csv_with_target_by_name_index_or_default(target, classification_csv, tmp_path):
    path = classification_csv
    if target is None:  # the default target is the last column: move the label there
        data = np.loadtxt(path, delimiter=",", skiprows=1)
        path = _write_csv(tmp_path / "last.csv", None, np.c_[data[:, [0, 2, 3]], data[:, 1].astype(int)].tolist())
    argv = ["train", "--data", str(path), "--epochs", "30", "--no-progress"]
    if target is not None:
        argv += ["--target", target]
    status, out = run(argv)
    assert status == 0
    assert "(classification)" in out and "[3, " in out
    assert _accuracy(out) > 0.85


def test_train_regression_csv_reports_r2(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 4))
    y = X[:, 0] * 2.5 - X[:, 1] + 0.1 * rng.normal(size=400)
    path = _write_csv(tmp_path / "reg.csv", ["a", "b", "c", "d", "price"], np.c_[X, y].round(6).tolist())
    status, out = run(["train", "--data", str(path), "--target", "price", "--epochs", "40", "--dropout", "0",
                       "--no-progress"])
    assert status == 0
    assert "(regression)" in out
    assert float(re.search(r"test R\^2: (-?[0-9.]+)", out).group(1)) > 0.9


def test_train_plot_writes_learning_curves(digits_npz, tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "curves.png"
    status, out = run(["train", "--data", str(digits_npz), "--plot", str(plot)] + FAST)
    assert status == 0 and f"learning curves written to {plot}" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_save_writes_a_model_fastmlp_load_reads(digits_npz, tmp_path, digits):
    saved = tmp_path / "model.npz"
    status, out = run(["train", "--data", str(digits_npz), "--save", str(saved), "--epochs", "15", "--no-progress"])
    assert status == 0 and f"model saved to {saved}" in out
    model = fastmlp.load(saved)
    X, y = digits
    assert np.mean(model.predict(X[600:]) == y[600:]) > 0.85  # the file holds the scaler too


def test_autoencode_reports_reconstruction_error_and_outliers():
    status, out = run(["autoencode", "--epochs", "3", "--top", "4", "--no-progress"])
    assert status == 0
    assert "mean reconstruction error" in out
    outliers = re.search(r"top 4 outliers \(row: error\): (.*)", out).group(1)
    errors = [float(item.split(": ")[1]) for item in outliers.split(", ")]
    assert len(errors) == 4 and errors == sorted(errors, reverse=True)


def test_autoencode_plots_2d_codes_and_saves(digits_npz, tmp_path):
    pytest.importorskip("matplotlib")
    plot, saved = tmp_path / "codes.png", tmp_path / "ae.npz"
    status, out = run(["autoencode", "--data", str(digits_npz), "--code", "2", "--plot", str(plot), "--save",
                       str(saved), "--lr", "auto"] + FAST)
    assert status == 0 and "codes plotted" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert fastmlp.load(saved).encode(np.load(digits_npz)["X"][:5]).shape == (5, 2)


def test_kernels_demo_runs():
    status, out = run(["kernels", "--epochs", "1"])
    assert status == 0 and "samples/s" in out


def test_global_threads_option_before_the_default_command(threads):
    status, out = run(["--threads", "1", "--epochs", "1", "--no-progress"])
    assert status == 0 and "1 thread(s)" in out


# -- error paths: status 2 and a message that names the problem ------------------------------------

def assert_cli_fails(argv, capsys, *fragments):
    status, out = run(argv)
    err = capsys.readouterr().err
    assert status == 2, out
    assert err.startswith("fastmlp: error: ")
    for fragment in fragments:
        assert fragment in err, err
    assert "Traceback" not in err


def test_missing_file(tmp_path, capsys):
    assert_cli_fails(["train", "--data", str(tmp_path / "nope.csv")], capsys, "nope.csv", "no such file")


def test_directory_instead_of_a_file(tmp_path, capsys):
    assert_cli_fails(["train", "--data", str(tmp_path)], capsys, "is a directory")


def test_unknown_extension(tmp_path, capsys):
    path = tmp_path / "data.json"
    path.write_text("{}")
    assert_cli_fails(["train", "--data", str(path)], capsys, "unknown data format", ".npz", ".csv")


def test_wrong_target_column_name_lists_the_columns(classification_csv, capsys):
    assert_cli_fails(["train", "--data", str(classification_csv), "--target", "price"], capsys, "no column 'price'",
           "x0, label, x1, x2")


def test_target_column_index_out_of_range(classification_csv, capsys):
    assert_cli_fails(["train", "--data", str(classification_csv), "--target", "7"], capsys, "index 7 is out of range",
           "4 columns")


def test_csv_with_only_the_target_column(tmp_path, capsys):
    path = _write_csv(tmp_path / "one.csv", ["y"], [[0], [1], [0], [1], [1]])
    assert_cli_fails(["train", "--data", str(path)], capsys, "at least one feature column")


def test_target_option_with_an_npz(digits_npz, capsys):
    assert_cli_fails(["train", "--data", str(digits_npz), "--target", "y"], capsys, "--target", "'y'")


def test_non_numeric_csv_cell_names_row_and_column(tmp_path, capsys):
    path = _write_csv(tmp_path / "bad.csv", ["a", "b", "label"], [[1, 2, 0], [3, 4, 1], [5, "high", 0], [7, 8, 1]])
    assert_cli_fails(["train", "--data", str(path)], capsys, "non-numeric value 'high'", "row 4", "column 'b'")


def test_a_target_column_of_class_names(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    names = np.array(["setosa", "versicolor", "virginica"])[np.argmax(X, axis=1)]
    path = tmp_path / "named.csv"
    # first column, a byte-order mark as Excel writes "CSV UTF-8", spaces around the names
    with open(path, "w", encoding="utf-8-sig") as f:
        f.write("species,a,b,c\n")
        for name, row in zip(names, X):
            f.write(f" {name} ," + ",".join(f"{v:.6f}" for v in row) + "\n")
    status, text = run(["train", "--data", str(path), "--target", "species", "--save", str(tmp_path / "m.npz"),
                        "--epochs", "40", "--no-progress"])
    assert status == 0, capsys.readouterr().err
    assert "(classification)" in text and _accuracy(text) >= 0.8
    assert "0: setosa, 1: versicolor, 2: virginica" in text
    assert_cli_fails(["train", "--data", str(path), "--target", "species", "--task", "regression"], capsys,
                     "needs a numeric target", "class names")
    # autoencode drops the named column without reading it as a number; without --target every
    # column is a feature (its help says so)
    status, text = run(["autoencode", "--data", str(path), "--target", "species", "--code", "2"] + FAST)
    assert status == 0, capsys.readouterr().err
    assert "[3, 32, 2]" in text and "120 rows" in text
    numeric = _write_csv(tmp_path / "numeric.csv", ["a", "b", "label"], [[v, 2 * v, v % 2] for v in range(20)])
    status, text = run(["autoencode", "--data", str(numeric), "--code", "2"] + FAST)
    assert status == 0 and "[3, 32, 2]" in text
    status, text = run(["autoencode", "--data", str(numeric), "--target", "label", "--code", "2"] + FAST)
    assert status == 0 and "[2, 32, 2]" in text


def test_a_csv_without_header_whose_last_column_holds_class_names(tmp_path, capsys):
    """UCI's iris.data: no header, class names in the last column. A word above words is data, so
    the first row is not taken for a header."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 4))
    names = np.array(["Iris-setosa", "Iris-versicolor", "Iris-virginica"])[np.argmax(X[:, :3], axis=1)]
    path = tmp_path / "iris.data.csv"
    with open(path, "w") as f:
        for name, row in zip(names, X):
            f.write(",".join(f"{v:.4f}" for v in row) + f",{name}\n")
    status, text = run(["train", "--data", str(path), "--test-fraction", "0.5"] + FAST)
    assert status == 0, capsys.readouterr().err
    assert "30 training rows, 30 test rows" in text


def test_a_csv_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.csv"
    path.write_bytes("a,b,label\n1,2,0\n3,4,1\n5,6,caf\u00e9\n".encode("latin-1"))
    assert_cli_fails(["train", "--data", str(path)], capsys, "not UTF-8", "latin1.csv")


def test_ragged_csv_rows(tmp_path, capsys):
    path = _write_csv(tmp_path / "ragged.csv", None, [[1, 2, 0], [3, 4, 1], [5, 0], [7, 8, 1]])
    assert_cli_fails(["train", "--data", str(path)], capsys, "row 3 has 2 columns, expected 3")


def test_empty_and_header_only_csv(tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("\n\n")
    assert_cli_fails(["train", "--data", str(empty)], capsys, "empty")
    header_only = _write_csv(tmp_path / "header.csv", ["a", "b"], [])
    assert_cli_fails(["train", "--data", str(header_only)], capsys, "no data rows")


def test_binary_file_named_csv(tmp_path, capsys):
    path = tmp_path / "binary.csv"
    path.write_bytes(bytes(range(256)) * 4)
    status, _ = run(["train", "--data", str(path)])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("fastmlp: error: ") and "binary.csv" in err


@pytest.mark.parametrize("arrays, fragment", [
    (dict(y=np.zeros(10)), "needs an array 'X'"),
    (dict(X=np.zeros((10, 3))), "no array 'y'"),
    (dict(X=np.zeros(10), y=np.zeros(10)), "X must be 2-D"),
    (dict(X=np.array([["a", "b"]] * 10), y=np.zeros(10)), "non-numeric"),
    (dict(X=np.zeros((10, 3)), y=np.zeros(9)), "X has 10 rows but y has 9"),
    (dict(X=np.zeros((3, 3)), y=np.arange(3)), "at least 4 rows"),
], ids=["no_X", "no_y", "X_1d", "X_strings", "row_mismatch", "too_few_rows"])
def test_malformed_npz(arrays, fragment, tmp_path, capsys):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    assert_cli_fails(["train", "--data", str(path)], capsys, fragment)


def test_npz_that_is_not_a_zip(tmp_path, capsys):
    path = tmp_path / "data.npz"
    path.write_bytes(b"not a zip file at all")
    assert_cli_fails(["train", "--data", str(path)], capsys, "cannot read the .npz")


@pytest.mark.parametrize("where", ["csv_feature", "csv_target", "npz_feature", "npz_inf"])
def test_nan_or_infinite_data(where, tmp_path, capsys):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 3)), np.arange(20) % 2
    if where.startswith("csv"):
        rows = np.c_[X, y].astype(object)
        rows[5, 1 if where == "csv_feature" else 3] = "nan"
        path = _write_csv(tmp_path / "nan.csv", None, rows.tolist())
    else:
        X[4, 2] = np.nan if where == "npz_feature" else np.inf
        path = tmp_path / "nan.npz"
        np.savez(path, X=X, y=y)
    assert_cli_fails(["train", "--data", str(path)], capsys, "NaN or infinite")


def test_single_class_target(tmp_path, capsys):
    path = _write_csv(tmp_path / "one_class.csv", ["a", "b", "label"], [[i, i * 2, 3] for i in range(10)])
    assert_cli_fails(["train", "--data", str(path)], capsys, "single class")


def test_save_into_a_missing_directory_fails_before_training(tmp_path, capsys):
    assert_cli_fails(["train", "--save", str(tmp_path / "no" / "model.npz")] + FAST, capsys, "does not exist")


def test_autoencode_plot_needs_a_2d_code(capsys):
    assert_cli_fails(["autoencode", "--code", "3", "--plot", "codes.png"] + FAST, capsys, "needs --code 2")


def test_autoencode_mask_level_must_be_below_one(capsys):
    assert_cli_fails(["autoencode", "--noise", "mask", "--level", "1.5"] + FAST, capsys, "--level")


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--hidden", "a,b"], "comma-separated layer widths"),
    (["train", "--hidden", "64,0"], "must be positive"),
    (["train", "--lr", "fast"], "--lr must be a number or 'auto'"),
    (["train", "--lr", "-0.1"], "--lr must be > 0"),
    (["train", "--epochs", "0"], "positive integer"),
    (["train", "--epochs", "many"], "positive integer"),
    (["train", "--batch-size", "-4"], "positive integer"),
    (["train", "--dropout", "1.0"], "fraction in [0, 1)"),
    (["train", "--optimizer", "lbfgs"], "invalid choice"),
    (["train", "--no-such-option"], "unrecognized arguments"),
    (["autoencode", "--code", "0"], "positive integer"),
    (["autoencode", "--level", "-1"], "number >= 0"),
    (["--threads", "0"], "positive integer"),
    (["frobnicate"], "unrecognized arguments"),
], ids=lambda v: "_".join(v) if isinstance(v, list) else None)
def test_bad_option_values_exit_with_status_2(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv, out=io.StringIO())
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: fastmlp" in err and fragment in err


def test_saved_classifier_notes_how_indices_map_to_labels(tmp_path):
    rows = [[i % 7, (i * 3) % 5, 7 if i % 2 else 9] for i in range(40)]
    path = _write_csv(tmp_path / "labels.csv", ["a", "b", "label"], rows)
    status, out = run(["train", "--data", str(path), "--save", str(tmp_path / "m.npz")] + FAST)
    assert status == 0 and "index: label = 0: 7, 1: 9" in out


def test_a_diverging_run_is_reported_not_raised(capsys):
    assert_cli_fails(["train", "--optimizer", "sgd", "--lr", "1e12"] + FAST, capsys, "non-finite training loss",
           "Lower the learning rate")
