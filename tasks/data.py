"""Datasets for the tasks: bundled scikit-learn sets, synthetic generators, user files by path.

One entry point, :func:`load` ``(source, **options) -> Dataset``, where ``source`` is

- the name of a bundled scikit-learn set (``BUNDLED``: diabetes, breast_cancer, digits, iris,
  wine), shipped with scikit-learn, no download;
- the name of a synthetic generator at real scale (``SYNTHETIC``):
  ``ijcnn1_like`` (dense, 141,691 × 22, 10% positives: the shape and class balance of ijcnn1,
  via ``make_classification``) and ``rcv1_like`` (a sparse CSR design, 20,242 × 47,236 at
  density 0.16%, like rcv1.binary's train split; labels ±1 from a sparse linear model) and
  ``sparse_regression`` (a correlated Gaussian design with a sparse ±1 signal);
- a path to a user file: svmlight/libsvm (``.svm``, ``.svmlight``, ``.libsvm``, ``.txt``),
  CSV (``.csv``; the label is the last column unless ``label_column`` says otherwise; one
  header row is detected and skipped) or npz (``.npz`` with arrays ``X`` and ``y``). Pass
  ``file_format`` to override the extension.

The returned labels are checked against ``labels``: ``"regression"`` (any finite reals),
``"binary"`` (exactly two distinct values; mapped to ``±1``, the smaller to −1) or
``"multiclass"`` (integers ``0 … n_classes − 1``; with ``n_classes`` given, a label outside
that range is an error).

Raises (all from :func:`load`):
    FileNotFoundError: ``source`` is neither a known name nor an existing file (names the path).
    DataFormatError: the file cannot be parsed in its format, or the arrays are malformed.
    LabelError: labels do not fit the task (out of range, not integers, wrong class count).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from sklearn import datasets
from torch import Tensor

LABEL_KINDS = ("regression", "binary", "multiclass")
FILE_FORMATS = {
    ".svm": "svmlight", ".svmlight": "svmlight", ".libsvm": "svmlight", ".txt": "svmlight",
    ".csv": "csv", ".npz": "npz",
}


class DataFormatError(ValueError):
    """A data file (or array) is not what its format promises."""


class LabelError(ValueError):
    """Labels do not fit the task (out of range, not integers, wrong number of classes)."""


@dataclass
class Dataset:
    """A design matrix and its labels.

    Attributes:
        X: ``(n, p)`` float64, a numpy array or a scipy CSR matrix.
        y: ``(n,)`` float64 (regression, binary ±1) or int64 (multiclass ``0 … K−1``).
        name: where it came from (a bundled/generator name or the file path).
    """

    X: np.ndarray | sp.csr_matrix
    y: np.ndarray
    name: str

    @property
    def n_classes(self) -> int:
        """Number of distinct labels (0 for float regression targets)."""
        return int(self.y.max()) + 1 if self.y.dtype.kind == "i" else 0

    def dense(self) -> np.ndarray:
        """``X`` as a dense float64 array."""
        return self.X.toarray() if sp.issparse(self.X) else np.asarray(self.X)


# -- bundled and synthetic ------------------------------------------------------------------


def _bundled(loader: Callable[..., Any]) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    def load_bundled(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        return loader(return_X_y=True)
    return load_bundled


BUNDLED = {
    "diabetes": _bundled(datasets.load_diabetes),
    "breast_cancer": _bundled(datasets.load_breast_cancer),
    "digits": _bundled(datasets.load_digits),
    "iris": _bundled(datasets.load_iris),
    "wine": _bundled(datasets.load_wine),
}


def ijcnn1_like(n_samples: int = 141_691, n_features: int = 22,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dense binary classification with ijcnn1's shape (141,691 × 22) and 90/10 class balance.

    ``make_classification(n_informative=12, weights=[0.9, 0.1])``; labels ``{0, 1}``.
    """
    return datasets.make_classification(
        n_samples=n_samples, n_features=n_features, n_informative=min(12, n_features),
        n_redundant=0, weights=[0.9, 0.1], random_state=seed,
    )


def rcv1_like(n_samples: int = 20_242, n_features: int = 47_236, density: float = 0.0016,
              n_informative: int = 500, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    """Sparse binary classification shaped like rcv1.binary's train split.

    ``X``: CSR with i.i.d. nonnegative (exponential) entries at ``density``, each row scaled to
    unit ℓ2 norm (as tf-idf rows are); labels ``sign(X w + noise)`` with ``w`` supported on
    ``n_informative`` random features, ``w_j ~ N(0, 1)``; ``±1`` floats.
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    rng = np.random.default_rng(seed)
    X = sp.random(n_samples, n_features, density=density, format="csr", random_state=rng,
                  data_rvs=lambda k: rng.exponential(size=k))
    norms = np.sqrt(np.asarray(X.multiply(X).sum(1))).ravel()
    norms[norms == 0] = 1.0
    X = sp.csr_matrix(sp.diags(1.0 / norms) @ X)
    w = np.zeros(n_features)
    support = rng.choice(n_features, size=min(n_informative, n_features), replace=False)
    w[support] = rng.standard_normal(support.size)
    score = X @ w
    score = score + 0.1 * score.std() * rng.standard_normal(n_samples)
    y = np.where(score > np.median(score), 1.0, -1.0)
    return X, y


def sparse_regression(n_samples: int = 1000, n_features: int = 100, n_informative: int = 10,
                      correlation: float = 0.5, snr: float = 5.0,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sparse linear regression on a correlated Gaussian design.

    Rows ``x ~ N(0, C)`` with Toeplitz ``C_jk = correlation^|j−k|``; ``y = x·w + ε`` with ``w``
    equal to ``±1`` on ``n_informative`` random features and 0 elsewhere, and
    ``ε ~ N(0, (std(Xw)/snr)²)``.
    """
    if not -1 < correlation < 1:
        raise ValueError(f"correlation must be in (−1, 1), got {correlation}")
    if not 0 < n_informative <= n_features:
        raise ValueError(f"need 0 < n_informative ≤ n_features, got {n_informative}")
    rng = np.random.default_rng(seed)
    lags = np.abs(np.subtract.outer(np.arange(n_features), np.arange(n_features)))
    factor = np.linalg.cholesky(correlation ** lags)
    X = rng.standard_normal((n_samples, n_features)) @ factor.T
    w = np.zeros(n_features)
    support = rng.choice(n_features, size=n_informative, replace=False)
    w[support] = rng.choice([-1.0, 1.0], size=n_informative)
    signal = X @ w
    return X, signal + signal.std() / snr * rng.standard_normal(n_samples)


SYNTHETIC: dict[str, Callable[..., tuple[Any, np.ndarray]]] = {
    "ijcnn1_like": ijcnn1_like,
    "rcv1_like": rcv1_like,
    "sparse_regression": sparse_regression,
}


# -- files ----------------------------------------------------------------------------------


def _read_svmlight(path: Path, label_column: int) -> tuple[sp.csr_matrix, np.ndarray]:
    try:
        X, y = datasets.load_svmlight_file(str(path), dtype=np.float64)
    except (ValueError, UnicodeDecodeError) as err:
        raise DataFormatError(
            f"{path}: not a valid svmlight/libsvm file ({err}); expected lines "
            "'<label> <index>:<value> ...', or pass file_format='csv' / 'npz'"
        ) from err
    return sp.csr_matrix(X), y


def _read_csv(path: Path, label_column: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not a text CSV file ({err})") from err
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataFormatError(f"{path}: the CSV file is empty")
    try:
        [float(v) for v in lines[0].split(",")]
    except ValueError:
        lines = lines[1:]  # a header row
    try:
        table = np.array([[float(v) for v in line.split(",")] for line in lines])
    except ValueError as err:
        raise DataFormatError(
            f"{path}: a CSV cell is not a number ({err}); expected comma-separated numbers, "
            "at most one header row"
        ) from err
    if table.ndim != 2 or table.shape[0] == 0 or table.shape[1] < 2:
        raise DataFormatError(
            f"{path}: rows of a CSV must all have the same number of ≥ 2 columns "
            "(features and a label)"
        )
    k = table.shape[1]
    if not -k <= label_column < k:
        raise DataFormatError(
            f"{path}: label_column={label_column} is out of range for {k} columns"
        )
    column = label_column % k
    return np.delete(table, column, axis=1), table[:, column]


def _read_npz(path: Path, label_column: int) -> tuple[np.ndarray, np.ndarray]:
    if not zipfile.is_zipfile(path):  # else np.load reads it as a pickle and suggests unpickling
        raise DataFormatError(
            f"{path}: not an npz archive (no zip structure: a truncated or corrupted file, or "
            "another format); save it with np.savez(path, X=X, y=y) or pass file_format"
        )
    with np.load(path, allow_pickle=False) as archive:
        missing = {"X", "y"} - set(archive.files)
        if missing:
            raise DataFormatError(
                f"{path}: the npz archive lacks {sorted(missing)} (has {archive.files}); "
                "save it with np.savez(path, X=X, y=y)"
            )
        return np.asarray(archive["X"], dtype=np.float64), np.asarray(archive["y"])


READERS = {"svmlight": _read_svmlight, "csv": _read_csv, "npz": _read_npz}


def read_file(path: str | Path, file_format: str | None = None,
              label_column: int = -1) -> tuple[Any, np.ndarray]:
    """Read ``(X, y)`` from a svmlight/libsvm, CSV or npz file (format from the extension)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"data file not found: {path} (resolved: {path.resolve()}); pass an existing "
            f"path, a bundled set {sorted(BUNDLED)} or a generator {sorted(SYNTHETIC)}"
        )
    if file_format is None:
        file_format = FILE_FORMATS.get(path.suffix.lower())
        if file_format is None:
            raise DataFormatError(
                f"{path}: cannot tell the format from the extension {path.suffix!r}; use one "
                f"of {sorted(FILE_FORMATS)} or pass file_format={sorted(READERS)}"
            )
    if file_format not in READERS:
        raise DataFormatError(f"unknown file_format {file_format!r}; use one of {sorted(READERS)}")
    try:
        return READERS[file_format](path, label_column)
    except Exception as err:
        if isinstance(err, DataFormatError):
            raise
        raise DataFormatError(f"{path}: cannot read it as {file_format} ({err})") from err


# -- labels ---------------------------------------------------------------------------------


def check_labels(y: np.ndarray, labels: str, n_classes: int | None = None,
                 where: str = "labels") -> np.ndarray:
    """Validate and normalise labels (see the module docstring); returns the new array."""
    if labels not in LABEL_KINDS:
        raise ValueError(f"labels must be one of {LABEL_KINDS}, got {labels!r}")
    y = np.asarray(y)
    if y.ndim != 1:
        raise LabelError(f"{where}: labels must be a 1-D array, got shape {y.shape}")
    if y.dtype.kind not in "biuf":
        raise LabelError(f"{where}: labels must be numbers, got dtype {y.dtype}")
    y = y.astype(np.float64)
    if not np.isfinite(y).all():
        raise LabelError(f"{where}: labels contain NaN or Inf")
    if labels == "regression":
        return y
    values = np.unique(y)
    if labels == "binary":
        if values.size != 2:
            raise LabelError(
                f"{where}: a binary task needs exactly 2 distinct labels, got {values.size} "
                f"({values[:10].tolist()}{' …' if values.size > 10 else ''})"
            )
        return np.where(y == values[1], 1.0, -1.0)
    if not np.array_equal(values, np.round(values)):
        raise LabelError(f"{where}: multiclass labels must be integers, got e.g. "
                         f"{values[values != np.round(values)][:5].tolist()}")
    if n_classes is not None and (values.min() < 0 or values.max() >= n_classes):
        bad = values[(values < 0) | (values >= n_classes)]
        raise LabelError(
            f"{where}: labels {bad[:10].tolist()} are out of range 0…{n_classes - 1} "
            f"(n_classes={n_classes}); relabel them or raise n_classes"
        )
    if values.min() < 0:
        raise LabelError(f"{where}: multiclass labels must be ≥ 0, got {values.min():g}")
    return y.astype(np.int64)


def _check_design(X: Any, y: np.ndarray, where: str) -> Any:
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float64)
        values = X.data
    else:
        X = np.asarray(X, dtype=np.float64)
        values = X
        if X.ndim != 2:
            raise DataFormatError(f"{where}: X must be 2-D (n_samples, n_features), got {X.shape}")
    if X.shape[0] != y.shape[0]:
        raise DataFormatError(f"{where}: X has {X.shape[0]} rows but y has {y.shape[0]} labels")
    if X.shape[0] == 0:
        raise DataFormatError(f"{where}: the dataset has no rows")
    if not np.isfinite(values).all():
        raise DataFormatError(f"{where}: X contains NaN or Inf")
    return X


def load(source: str, labels: str = "regression", n_classes: int | None = None,
         file_format: str | None = None, label_column: int = -1, seed: int = 0,
         **generator_options: Any) -> Dataset:
    """Load a bundled set, generate a synthetic one, or read a user file (module docstring).

    Args:
        source: a name of ``BUNDLED`` or ``SYNTHETIC``, or a file path.
        labels: ``"regression"``, ``"binary"`` or ``"multiclass"`` (validation and mapping).
        n_classes: for multiclass, the allowed range ``0 … n_classes − 1``.
        file_format: ``"svmlight"``, ``"csv"`` or ``"npz"`` (default: from the extension).
        label_column: CSV column holding the label (default: the last).
        seed: generator seed (synthetic sets only).
        generator_options: keyword arguments of the generator (e.g. ``n_samples``).

    Returns:
        a :class:`Dataset` with checked ``X`` and normalised labels.

    Raises:
        FileNotFoundError, DataFormatError, LabelError: see the module docstring.
    """
    if generator_options and source not in SYNTHETIC:
        raise TypeError(f"options {sorted(generator_options)} apply to the generators "
                        f"{sorted(SYNTHETIC)} only, not to {source!r}")
    if source in BUNDLED:
        X, y = BUNDLED[source]()
    elif source in SYNTHETIC:
        X, y = SYNTHETIC[source](seed=seed, **generator_options)
    else:
        X, y = read_file(source, file_format, label_column)
    y = check_labels(y, labels, n_classes, where=source)
    return Dataset(_check_design(X, y, source), y, source)


# -- splits ---------------------------------------------------------------------------------


@dataclass
class Splits:
    """Train / validation / test arrays, features standardised with the train mean and std.

    Attributes:
        X_train, X_val, X_test: dense float64 arrays.
        y_train, y_val, y_test: labels as loaded (regression targets are not centred here).
    """

    X_train: np.ndarray
    X_val: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_val: np.ndarray
    y_test: np.ndarray


def split(data: Dataset, val_fraction: float, test_fraction: float, seed: int,
          stratify: bool = False) -> Splits:
    """Shuffle-split ``data`` into train / validation / test and standardise the features.

    Args:
        data: the dataset (a sparse ``X`` is densified).
        val_fraction, test_fraction: fractions of all rows, each in (0, 1), summing below 1.
        seed: split seed.
        stratify: keep class proportions in every split (classification).

    Raises:
        ValueError: fractions out of range.
    """
    from sklearn.model_selection import train_test_split

    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum below 1")
    X, y = data.dense(), data.y
    X_rest, X_test, y_rest, y_test = train_test_split(
        X, y, test_size=test_fraction, random_state=seed, stratify=y if stratify else None
    )
    X_tr, X_val, y_tr, y_val = train_test_split(
        X_rest, y_rest, test_size=val_fraction / (1 - test_fraction), random_state=seed,
        stratify=y_rest if stratify else None,
    )
    mean, std = X_tr.mean(0), X_tr.std(0)
    std[std == 0] = 1.0
    return Splits((X_tr - mean) / std, (X_val - mean) / std, (X_test - mean) / std,
                  y_tr, y_val, y_test)


@dataclass
class TensorSplits:
    """:class:`Splits` as tensors on one dtype and device (``y`` as float for every task)."""

    X_train: Tensor
    X_val: Tensor
    X_test: Tensor
    y_train: Tensor
    y_val: Tensor
    y_test: Tensor


def to_tensors(splits: Splits, dtype: torch.dtype, device: str | torch.device,
               y_offset: float = 0.0) -> TensorSplits:
    """Convert every array of ``splits``; ``y_offset`` is subtracted from the targets (e.g. the
    train mean of a regression target)."""
    def tensor(a: np.ndarray) -> Tensor:
        return torch.as_tensor(a, dtype=dtype, device=device)

    return TensorSplits(
        tensor(splits.X_train), tensor(splits.X_val), tensor(splits.X_test),
        tensor(splits.y_train - y_offset), tensor(splits.y_val - y_offset),
        tensor(splits.y_test - y_offset),
    )


def group_shift(n_samples: int = 4000, minority_fraction: float = 0.1, n_noise: int = 3,
                spurious_noise: float = 1.0,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary classification with a minority group on which a spurious feature flips.

    Labels ``y = ±1`` (equiprobable); group ``g = 1`` (minority) with probability
    ``minority_fraction``, else 0. Features: a core feature ``y + N(0, 1)`` (same in both
    groups), a spurious feature ``s_g·y + N(0, spurious_noise²)`` with ``s_0 = +1``,
    ``s_1 = −1`` (as predictive as the core one on the majority at ``spurious_noise = 1``,
    misleading on the minority), and
    ``n_noise`` pure-noise features. Returns ``(X, y, g)``.
    """
    if not 0 < minority_fraction < 0.5:
        raise ValueError(f"minority_fraction must be in (0, 0.5), got {minority_fraction}")
    rng = np.random.default_rng(seed)
    y = rng.choice([-1.0, 1.0], size=n_samples)
    g = (rng.random(n_samples) < minority_fraction).astype(np.int64)
    core = y + rng.standard_normal(n_samples)
    spurious = np.where(g == 1, -y, y) + spurious_noise * rng.standard_normal(n_samples)
    X = np.column_stack([core, spurious, rng.standard_normal((n_samples, n_noise))])
    return X, y, g
