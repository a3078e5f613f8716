"""tasks.data: every loader on small files written here, and every error it promises."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import dump_svmlight_file, load_breast_cancer, load_digits

from tasks import data


def small_problem(n: int = 12, p: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    return X, rng.integers(0, 3, n).astype(float)


# -- bundled and synthetic ------------------------------------------------------------------


def test_bundled_sets_match_sklearn():
    digits = data.load("digits", labels="multiclass")
    X, y = load_digits(return_X_y=True)
    np.testing.assert_array_equal(digits.X, X)
    np.testing.assert_array_equal(digits.y, y)
    assert digits.y.dtype == np.int64 and digits.n_classes == 10
    cancer = data.load("breast_cancer", labels="binary")
    _, yc = load_breast_cancer(return_X_y=True)
    np.testing.assert_array_equal(cancer.y, np.where(yc == 1, 1.0, -1.0))


def test_ijcnn1_like_has_the_real_shape_and_balance():
    ds = data.load("ijcnn1_like", labels="binary")
    assert ds.X.shape == (141_691, 22)
    assert 0.09 < float(np.mean(ds.y == 1)) < 0.11  # ijcnn1: 9.7% positives


def test_rcv1_like_is_sparse_with_unit_rows():
    ds = data.load("rcv1_like", labels="binary", n_samples=500, n_features=2000, density=0.01)
    assert sp.issparse(ds.X) and ds.X.shape == (500, 2000)
    assert ds.X.nnz == pytest.approx(0.01 * 500 * 2000, rel=0.01)
    norms = np.sqrt(np.asarray(ds.X.multiply(ds.X).sum(1))).ravel()
    np.testing.assert_allclose(norms[norms > 0], 1.0, rtol=1e-12)
    assert set(np.unique(ds.y)) == {-1.0, 1.0}
    full = data.rcv1_like.__defaults__  # (n_samples, n_features, density, …): rcv1's train split
    assert full[:3] == (20_242, 47_236, 0.0016)


def test_sparse_regression_is_reproducible_and_sparse():
    a = data.load("sparse_regression", seed=3, n_samples=200, n_features=30, n_informative=4)
    b = data.load("sparse_regression", seed=3, n_samples=200, n_features=30, n_informative=4)
    np.testing.assert_array_equal(a.X, b.X)
    # the signal lives on 4 features: least squares recovers ±1 there and ≈0 elsewhere
    coef = np.linalg.lstsq(a.X, a.y, rcond=None)[0]
    big = np.sort(np.abs(coef))[::-1]
    assert np.all(big[:4] > 0.7) and np.all(big[4:] < 0.3)


def test_generator_options_go_to_generators_only():
    with pytest.raises(TypeError, match="n_samples"):
        data.load("digits", n_samples=10)


# -- files ----------------------------------------------------------------------------------


def test_svmlight_file_roundtrip(tmp_path):
    X, y = small_problem()
    X[X < 0] = 0.0  # sparse rows
    path = tmp_path / "train.svm"
    dump_svmlight_file(X, y, str(path))
    ds = data.load(str(path), labels="multiclass", n_classes=3)
    assert sp.issparse(ds.X)
    np.testing.assert_allclose(ds.dense(), X, rtol=1e-12)
    np.testing.assert_array_equal(ds.y, y.astype(int))


def test_csv_last_column_is_the_label_and_a_header_is_skipped(tmp_path):
    X, y = small_problem()
    path = tmp_path / "train.csv"
    rows = [",".join(f"{v:.17g}" for v in [*x, t]) for x, t in zip(X, y, strict=True)]
    path.write_text("a,b,c,d,label\n" + "\n".join(rows) + "\n")
    ds = data.load(str(path), labels="regression")
    np.testing.assert_array_equal(ds.X, X)
    np.testing.assert_array_equal(ds.y, y)


def test_csv_label_column_is_configurable(tmp_path):
    X, y = small_problem()
    path = tmp_path / "first.csv"
    np.savetxt(path, np.column_stack([y, X]), delimiter=",")
    ds = data.load(str(path), labels="multiclass", label_column=0)
    np.testing.assert_allclose(ds.X, X, rtol=1e-15)
    np.testing.assert_array_equal(ds.y, y.astype(int))


def test_npz_file(tmp_path):
    X, y = small_problem()
    path = tmp_path / "train.npz"
    np.savez(path, X=X, y=y)
    ds = data.load(str(path), labels="multiclass", n_classes=3)
    np.testing.assert_array_equal(ds.X, X)
    assert ds.n_classes == 3


def test_file_format_overrides_the_extension(tmp_path):
    X, y = small_problem()
    path = tmp_path / "train.dat"
    np.savetxt(path, np.column_stack([X, y]), delimiter=",")
    with pytest.raises(data.DataFormatError, match=r"\.dat"):
        data.load(str(path))
    assert data.load(str(path), file_format="csv").X.shape == (12, 4)


# -- errors ---------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "train.csv"
    with pytest.raises(FileNotFoundError, match="nowhere/train.csv"):
        data.load(str(path))


def test_unknown_name_is_a_missing_file_listing_the_choices():
    with pytest.raises(FileNotFoundError, match="digits"):
        data.load("digitz")


def test_garbage_svmlight_is_a_format_error(tmp_path):
    path = tmp_path / "bad.svm"
    path.write_text("1 3:0.5 oops\n0 1:2\n")
    with pytest.raises(data.DataFormatError, match="bad.svm.*svmlight"):
        data.load(str(path))


def test_csv_with_text_cells_or_ragged_rows_is_a_format_error(tmp_path):
    path = tmp_path / "text.csv"
    path.write_text("x,y\n1,2\n3,abc\n")
    with pytest.raises(data.DataFormatError, match="not a number"):
        data.load(str(path))
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("1,2,3\n4,5\n")
    with pytest.raises(data.DataFormatError, match="ragged.csv"):
        data.load(str(ragged))


def test_npz_without_X_or_y_is_a_format_error(tmp_path):
    path = tmp_path / "keys.npz"
    np.savez(path, features=np.ones((3, 2)), y=np.zeros(3))
    with pytest.raises(data.DataFormatError, match=r"lacks \['X'\]"):
        data.load(str(path))
    not_zip = tmp_path / "text.npz"
    not_zip.write_text("1,2,3\n")
    with pytest.raises(data.DataFormatError, match="text.npz"):
        data.load(str(not_zip))


def test_mismatched_rows_and_nan_are_format_errors(tmp_path):
    path = tmp_path / "rows.npz"
    np.savez(path, X=np.ones((3, 2)), y=np.zeros(4))
    with pytest.raises(data.DataFormatError, match="3 rows but y has 4"):
        data.load(str(path))
    nan = tmp_path / "nan.npz"
    np.savez(nan, X=np.array([[1.0, np.nan]]), y=np.zeros(1))
    with pytest.raises(data.DataFormatError, match="NaN"):
        data.load(str(nan))


def test_labels_out_of_range_name_them(tmp_path):
    X, _ = small_problem(n=4)
    path = tmp_path / "labels.npz"
    np.savez(path, X=X, y=np.array([0, 1, 5, 1]))
    with pytest.raises(data.LabelError, match=r"\[5\.0\] are out of range 0…2"):
        data.load(str(path), labels="multiclass", n_classes=3)
    np.savez(path, X=X, y=np.array([0, 1.5, 1, 1]))
    with pytest.raises(data.LabelError, match="integers"):
        data.load(str(path), labels="multiclass")
    np.savez(path, X=X, y=np.array([0, 1, 2, 1]))
    with pytest.raises(data.LabelError, match="exactly 2 distinct labels, got 3"):
        data.load(str(path), labels="binary")


def test_split_standardises_with_train_statistics():
    ds = data.load("diabetes")
    s = data.split(ds, 0.25, 0.25, seed=0)
    assert len(s.y_train) + len(s.y_val) + len(s.y_test) == 442
    np.testing.assert_allclose(s.X_train.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(s.X_train.std(0), 1.0, rtol=1e-12)
    assert abs(s.X_test.mean()) > 1e-6  # test rows are not re-centred on themselves
    with pytest.raises(ValueError, match="sum below 1"):
        data.split(ds, 0.5, 0.5, seed=0)
