"""Datasets -> standardised float arrays with a fixed, stratified train/val/test split.

The split has its own seed (``split_seed``), independent of the training seed, so every run of a
sweep sees the same validation and test sets. The scaler is fitted on the training part only.
"""
from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# scikit-learn is imported inside the loaders, not here: validating a sweep's configs needs only the
# names in DATASETS, and a launching process that never loads data skips a ~0.9 s import

Array = np.ndarray


@dataclass(frozen=True)
class Dataset:
    """Features (N, n_features) in the model's dtype and integer labels (N,) for each split."""

    name: str
    x_train: Array
    y_train: Array
    x_val: Array
    y_val: Array
    x_test: Array
    y_test: Array

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_val.max(), self.y_test.max())) + 1

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={len(self.y_train)}, val={len(self.y_val)}, "
                f"test={len(self.y_test)}, features={self.n_features}, classes={self.n_classes})")


def _check_fraction(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name} must be a fraction in (0, 1), got {value!r}")


def _standardise(name: str, splits: list[tuple[Array, Array]], dtype) -> Dataset:
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = splits
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_tr)
    cast = lambda x: np.ascontiguousarray(scaler.transform(x), dtype=dtype)  # noqa: E731
    labels = lambda y: np.asarray(y, dtype=np.int64)  # noqa: E731
    return Dataset(name, cast(x_tr), labels(y_tr), cast(x_va), labels(y_va), cast(x_te), labels(y_te))


def load_digits_dataset(*, split_seed: int = 0, val_size: float = 0.1, test_size: float = 0.2,
                        dtype=np.float32) -> Dataset:
    """scikit-learn's 1797 8x8 digits (ships with scikit-learn), split train/val/test by class."""
    _check_fraction("test_size", test_size)
    _check_fraction("val_size", val_size)
    if val_size + test_size >= 1:
        raise ValueError(f"val_size + test_size must be < 1, got {val_size} + {test_size}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=test_size, stratify=y, random_state=split_seed)
    x_tr, x_val, y_tr, y_val = train_test_split(
        x_rest, y_rest, test_size=val_size / (1 - test_size), stratify=y_rest, random_state=split_seed)
    return _standardise("digits", [(x_tr, y_tr), (x_val, y_val), (x_test, y_test)], dtype)


# --- MNIST from local files: IDX (optionally .gz) as published, or one .npz (Keras layout)
_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> Array:
    """Read one IDX file (the format MNIST is published in), gzipped or not."""
    path = Path(path)
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values")
    return data.reshape(shape)


def _find(root: Path, stem: str) -> Path | None:
    for candidate in (root / stem, root / f"{stem}.gz", root / stem.replace("-idx", ".idx")):
        if candidate.exists():
            return candidate
    return None


def _mnist_source(path: str | Path) -> Path | dict[str, Path]:
    """Where MNIST is under ``path``: an ``.npz`` file, or the four IDX files; refuses what is missing."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".npz":
        return path
    if path.is_dir() and (path / "mnist.npz").exists():
        return path / "mnist.npz"
    found = {key: _find(path, stem) for key, stem in _IDX_FILES.items()} if path.is_dir() else {}
    if not path.exists() or not all(found.values()):
        wanted = ", ".join(f"{s}[.gz]" for s in _IDX_FILES.values())
        raise FileNotFoundError(
            f"MNIST not found at {str(path)!r}: expected a folder with {wanted} (or mnist.npz), or an .npz file. "
            "nnlab never downloads data; put the files there or set dataset.path.")
    return found


def read_mnist(path: str | Path) -> dict[str, Array]:
    """Raw MNIST arrays from a folder of IDX files or an ``.npz`` with x_train, y_train, x_test, y_test."""
    source = _mnist_source(path)
    if isinstance(source, dict):
        return {key: read_idx(p) for key, p in source.items()}
    with np.load(source, allow_pickle=False) as f:
        missing = set(_IDX_FILES) - set(f.files)
        if missing:
            raise ValueError(f"{source} lacks array(s) {sorted(missing)}; it needs {sorted(_IDX_FILES)}")
        return {k: f[k] for k in _IDX_FILES}


def load_mnist_dataset(path: str | Path, *, split_seed: int = 0, val_size: float = 0.1,
                       dtype=np.float32, **_unused) -> Dataset:
    """Full 28x28 MNIST from local files; the official 10k test set, validation split from train."""
    _check_fraction("val_size", val_size)
    from sklearn.model_selection import train_test_split

    raw = read_mnist(path)
    flat = {k: v.reshape(len(v), -1).astype(np.float32) / 255.0 if k.startswith("x") else v for k, v in raw.items()}
    x_tr, x_val, y_tr, y_val = train_test_split(
        flat["x_train"], flat["y_train"], test_size=val_size, stratify=flat["y_train"], random_state=split_seed)
    return _standardise("mnist", [(x_tr, y_tr), (x_val, y_val), (flat["x_test"], flat["y_test"])], dtype)


DATASETS = {"digits": load_digits_dataset, "mnist": load_mnist_dataset}


def check_dataset(name: str, path: str | Path | None = None, **_unused) -> None:
    """Cheap: is the dataset there to load? (digits ships with scikit-learn; MNIST needs its files.)"""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(sorted(DATASETS))}")
    if name == "mnist":
        _mnist_source(path if path is not None else "")


def load_dataset(name: str, **kwargs) -> Dataset:
    """Load a dataset by name (``digits`` or ``mnist``); kwargs go to its loader."""
    check_dataset(name, **kwargs)
    return DATASETS[name](**kwargs)


@functools.lru_cache(maxsize=4)
def _shared(key: tuple[tuple[str, object], ...]) -> Dataset:
    data = load_dataset(**dict(key))
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        getattr(data, name).setflags(write=False)  # shared by every job of an in-process sweep
    return data


def load_shared(name: str, **kwargs) -> Dataset:
    """``load_dataset``, cached per process and read-only: an in-process sweep loads and splits once."""
    return _shared(tuple(sorted({"name": name, **kwargs}.items())))
