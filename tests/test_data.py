"""Datasets: digits split and scaling, MNIST from local IDX / npz files."""
import gzip
import struct

import numpy as np
import pytest

from nnlab.data import check_dataset, load_dataset, read_idx


def test_digits_split_is_stratified_fixed_and_independent_of_anything_else():
    a = load_dataset("digits", split_seed=0)
    b = load_dataset("digits", split_seed=0)
    c = load_dataset("digits", split_seed=1)
    n = len(a.y_train) + len(a.y_val) + len(a.y_test)
    assert n == 1797 and len(a.y_test) >= 0.2 * n
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.y_test, c.y_test)
    # stratified: every class's share in test is within 1 sample of its overall share
    for k in range(10):
        assert abs(np.sum(a.y_test == k) - len(a.y_test) * np.mean(np.r_[a.y_train, a.y_val, a.y_test] == k)) <= 1
    assert a.n_features == 64 and a.n_classes == 10 and a.x_train.dtype == np.float32


def test_digits_scaler_is_fitted_on_the_training_part_only():
    ds = load_dataset("digits", dtype=np.float64)
    varying = ds.x_train.std(axis=0) > 0
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(ds.x_train.std(axis=0)[varying], 1, atol=1e-10)
    assert np.abs(ds.x_test.mean(axis=0)).max() > 1e-3  # test is transformed, not re-fitted


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "cifar"}, r"unknown dataset 'cifar'; valid choices: digits, mnist"),
    ({"name": "digits", "test_size": 0.0}, r"test_size must be a fraction in \(0, 1\), got 0.0"),
    ({"name": "digits", "val_size": 0.5, "test_size": 0.5}, r"val_size \+ test_size must be < 1"),
])
def test_bad_dataset_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(**kwargs)


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    (gzip.open if compress else open)(path, "wb").write(header + array.astype(np.uint8).tobytes())


def fake_mnist(rng, n):
    y = np.arange(n) % 10
    x = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
    x[:, 0, 0] = y * 20  # make one pixel informative so the arrays are not pure noise
    return x, y


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_from_idx_files(tmp_path, compress):
    rng = np.random.default_rng(0)
    (x_tr, y_tr), (x_te, y_te) = fake_mnist(rng, 200), fake_mnist(rng, 50)
    suffix = ".gz" if compress else ""
    for stem, arr in [("train-images-idx3-ubyte", x_tr), ("train-labels-idx1-ubyte", y_tr),
                      ("t10k-images-idx3-ubyte", x_te), ("t10k-labels-idx1-ubyte", y_te)]:
        write_idx(tmp_path / f"{stem}{suffix}", arr, compress)
    np.testing.assert_array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), x_tr)
    ds = load_dataset("mnist", path=str(tmp_path), val_size=0.1)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (180, 20, 50)
    assert ds.n_features == 784 and ds.n_classes == 10
    np.testing.assert_array_equal(ds.y_test, y_te)


def test_mnist_from_npz(tmp_path):
    rng = np.random.default_rng(1)
    (x_tr, y_tr), (x_te, y_te) = fake_mnist(rng, 100), fake_mnist(rng, 30)
    np.savez(tmp_path / "mnist.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    ds = load_dataset("mnist", path=str(tmp_path / "mnist.npz"))
    assert len(ds.y_test) == 30 and ds.x_train.shape[1] == 784
    assert len(load_dataset("mnist", path=str(tmp_path)).y_test) == 30  # a folder holding mnist.npz


def test_missing_mnist_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST not found at '.*nowhere'.*train-images-idx3-ubyte"):
        load_dataset("mnist", path=str(tmp_path / "nowhere"))


def test_check_dataset_finds_files_without_loading_them(tmp_path):
    check_dataset("digits")  # ships with scikit-learn
    with pytest.raises(FileNotFoundError, match=r"MNIST not found at '.*nowhere'"):
        check_dataset("mnist", path=str(tmp_path / "nowhere"))
    (tmp_path / "mnist.npz").write_bytes(b"not read by the check")
    check_dataset("mnist", path=str(tmp_path), split_seed=3)
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; valid choices: digits, mnist"):
        check_dataset("cifar")


def test_corrupt_idx_is_refused(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


# --- the digits cache: the split is computed by scikit-learn once per key, then read back ---------------
SPLITS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def cached_files(root):
    return sorted((root / "data").glob("digits-*.npz"))


@pytest.mark.parametrize("kwargs", [{}, {"split_seed": 3, "val_size": 0.15, "test_size": 0.25, "dtype": np.float64}],
                         ids=["defaults", "other-key"])
def test_the_digits_cache_gives_bit_for_bit_what_scikit_learn_computes(tmp_path, monkeypatch, kwargs):
    from nnlab.data import split_digits

    monkeypatch.setenv("NNLAB_CACHE_DIR", str(tmp_path))
    computed = load_dataset("digits", **kwargs)  # nothing cached yet: scikit-learn's path, then stored
    (stored,) = cached_files(tmp_path)
    read_back = load_dataset("digits", **kwargs)  # from the file
    reference = split_digits(**kwargs)  # never cached
    for name in SPLITS:
        for data in (computed, read_back):
            got, want = getattr(data, name), getattr(reference, name)
            assert got.dtype == want.dtype and got.shape == want.shape and got.flags.c_contiguous, name
            assert got.tobytes() == want.tobytes(), name
    assert cached_files(tmp_path) == [stored]  # read, not written again


def test_the_digits_cache_is_keyed_by_the_split_and_survives_a_damaged_file(tmp_path, monkeypatch):
    monkeypatch.setenv("NNLAB_CACHE_DIR", str(tmp_path))
    a = load_dataset("digits", split_seed=0)
    b = load_dataset("digits", split_seed=1)
    assert len(cached_files(tmp_path)) == 2 and not np.array_equal(a.y_test, b.y_test)
    assert len({len(load_dataset("digits", dtype=d).x_train.tobytes()) for d in (np.float32, np.float64)}) == 2
    for path in cached_files(tmp_path):
        path.write_bytes(path.read_bytes()[:100])  # truncated: computed again and replaced
    again = load_dataset("digits", split_seed=0)
    assert again.x_train.tobytes() == a.x_train.tobytes()
    assert sum(path.stat().st_size > 100 for path in cached_files(tmp_path)) == 1  # the one read again, rewritten


def test_a_cached_digits_load_does_not_import_scikit_learn(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from nnlab.data import load_dataset; d = load_dataset('digits'); "
            "print('sklearn' in sys.modules, d.x_train[:2].sum())")
    env = {**__import__("os").environ, "NNLAB_CACHE_DIR": str(tmp_path)}
    first, second = (subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                    check=True).stdout.split() for _ in range(2))
    assert first[0] == "True" and second[0] == "False"  # computed, then read without scikit-learn
    assert first[1] == second[1]


def test_an_unwritable_cache_is_no_error(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("NNLAB_CACHE_DIR", str(blocked))
    assert load_dataset("digits").n_features == 64
