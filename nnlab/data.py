"""Datasets -> standardised float arrays with a fixed, stratified train/val/test split.

The split has its own seed (``split_seed``), independent of the training seed, so every run of a
sweep sees the same validation and test sets. The scaler is fitted on the training part only.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# scikit-learn is imported inside the loaders, not here: validating a sweep's configs needs only the
# names in DATASETS, and a launching process that never loads data skips a ~0.9 s import. The digits
# split is cached (see _cached_digits), so a command that finds the cache skips it too

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
    """scikit-learn's 1797 8x8 digits (ships with scikit-learn), split train/val/test by class.

    The result is cached per user (:func:`cache_dir`), keyed by these arguments and by what produced
    it (scikit-learn's and NumPy's versions, the digits file's SHA-256): a later call with the same
    key reads the arrays back, bit for bit those of the scikit-learn path, without importing
    scikit-learn (~1 s of CPU, most of a one-epoch command's own start-up)."""
    _check_fraction("test_size", test_size)
    _check_fraction("val_size", val_size)
    if val_size + test_size >= 1:
        raise ValueError(f"val_size + test_size must be < 1, got {val_size} + {test_size}")
    return _cached_digits(split_seed, val_size, test_size, np.dtype(dtype))


def split_digits(*, split_seed: int = 0, val_size: float = 0.1, test_size: float = 0.2,
                 dtype=np.float32) -> Dataset:
    """The digits split with scikit-learn, never cached (what the cache stores, and is tested against)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=test_size, stratify=y, random_state=split_seed)
    x_tr, x_val, y_tr, y_val = train_test_split(
        x_rest, y_rest, test_size=val_size / (1 - test_size), stratify=y_rest, random_state=split_seed)
    return _standardise("digits", [(x_tr, y_tr), (x_val, y_val), (x_test, y_test)], dtype)


# --- the digits cache ------------------------------------------------------------------------------
_SPLITS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
_CACHE_FORMAT = 1  # bump when what the cache holds changes meaning


def cache_dir() -> Path:
    """Where nnlab caches derived data: ``$NNLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/nnlab``, else
    ``~/.cache/nnlab``. Safe to delete at any time: whatever is missing is computed again."""
    explicit = os.environ.get("NNLAB_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "nnlab"


def _digits_key(split_seed: int, val_size: float, test_size: float, dtype: np.dtype) -> str | None:
    """A digest of everything the digits split depends on, found without importing scikit-learn:
    the arguments, scikit-learn's and NumPy's versions and the packaged digits file's bytes.
    None when scikit-learn or its digits file cannot be found (the uncached path then says why)."""
    import importlib.metadata
    import importlib.util

    if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)):
        return None  # random_state=None is a new split every call: nothing to cache
    spec = importlib.util.find_spec("sklearn")  # finds the package; imports nothing
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    try:
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        version = importlib.metadata.version("scikit-learn")
    except (OSError, importlib.metadata.PackageNotFoundError):
        return None
    key = {"format": _CACHE_FORMAT, "dataset": "digits", "split_seed": int(split_seed), "val_size": float(val_size),
           "test_size": float(test_size), "dtype": dtype.str, "scikit-learn": version, "numpy": np.__version__,
           "digits.csv.gz": digest}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _cached_digits(split_seed: int, val_size: float, test_size: float, dtype: np.dtype) -> Dataset:
    """The digits split from the cache if there, else computed with scikit-learn and stored. A cache
    that cannot be read or written is never an error: the split is computed as if there were none."""
    key = _digits_key(split_seed, val_size, test_size, dtype)
    path = cache_dir() / "data" / f"digits-{key}.npz" if key is not None else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {name: f[name] for name in _SPLITS}
            if all(arrays[name].dtype == dtype for name in _SPLITS if name.startswith("x")):
                return Dataset("digits", **arrays)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # truncated or foreign: computed again
            pass
    data = split_digits(split_seed=split_seed, val_size=val_size, test_size=test_size, dtype=dtype)
    if path is not None:
        _store(path, {name: getattr(data, name) for name in _SPLITS})
    return data


def _store(path: Path, arrays: dict[str, Array]) -> None:
    """Write ``arrays`` to ``path`` atomically (a temporary file renamed): concurrent workers that
    compute the same split each write a whole file, and a reader never sees half of one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        pass  # a read-only or full home: no cache, same data


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
