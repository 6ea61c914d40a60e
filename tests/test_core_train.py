"""The training loop: the record it reports, determinism, divergence, early stopping, accuracy on digits."""
import numpy as np
import pytest

from nnlab.core import MLP, DivergenceError, TrainConfig, evaluate, fit, make_optimizer
from nnlab.data import load_dataset


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def small_run(ds, *, seed=0, epochs=3, depth=2, lr=1e-3, optimizer="adam", callback=None, **train_kw):
    model = MLP.from_shape(ds.n_features, ds.n_classes, depth, 32, seed=seed)
    history = fit(model, make_optimizer(optimizer, lr=lr), ds.x_train, ds.y_train, ds.x_val, ds.y_val,
                  TrainConfig(epochs=epochs, **train_kw), seed=seed, callback=callback)
    return model, history


def test_history_reports_every_record_name_from_epoch_zero(digits):
    seen = []
    _, history = small_run(digits, depth=3, callback=lambda epoch, m: seen.append((epoch, sorted(m))))
    expected = {"train_loss", "train_acc", "val_loss", "val_acc", "grad_norm/global"}
    expected |= {f"grad_norm/layer_{i}" for i in range(1, 5)}
    expected |= {f"act_{s}/layer_{i}" for s in ("mean", "std", "saturation") for i in range(1, 4)}
    expected |= {f"dist_init/layer_{i}" for i in range(1, 5)} | {"grad_noise_scale"}  # default instruments
    stepped = expected | {f"update_ratio/layer_{i}" for i in range(1, 5)}  # no step before epoch 1
    assert [e for e, _ in seen] == [0, 1, 2, 3]
    assert set(seen[0][1]) == expected | {"act_len_logvar"}  # the activation length's spread: at initialisation
    assert all(set(names) == stepped for _, names in seen[1:])
    assert history.epochs_run == 3 and len(history.epochs) == 4
    assert all(np.isfinite(v) for e in history.epochs for v in e.values())
    assert history.train_seconds > 0


def test_epoch_zero_is_the_untrained_network(digits):
    model, history = small_run(digits, epochs=0)
    first = history.epochs[0]
    assert first["train_loss"] == pytest.approx(evaluate(model, digits.x_train, digits.y_train)[0])
    assert first["train_acc"] < 0.3  # chance is 0.1; an untrained net is nowhere near trained
    _, trained = small_run(digits, epochs=5)
    assert trained.epochs[-1]["train_loss"] < 0.5 * trained.epochs[0]["train_loss"]


def test_gradient_norms_are_the_mean_over_the_epochs_steps(digits):
    """One epoch with a single full batch: the reported norm is that batch's gradient norm."""
    from nnlab.core import loss_and_grads

    model = MLP.from_shape(digits.n_features, digits.n_classes, 1, 16, seed=0)
    probe = MLP.from_shape(digits.n_features, digits.n_classes, 1, 16, seed=0)
    history = fit(model, make_optimizer("sgd", lr=0.1), digits.x_train, digits.y_train, digits.x_val, digits.y_val,
                  TrainConfig(epochs=1, batch_size=10**6, weight_decay=0.0), seed=0)
    loss_and_grads(probe, digits.x_train[np.random.default_rng(0).permutation(len(digits.x_train))],
                   digits.y_train[np.random.default_rng(0).permutation(len(digits.x_train))])
    dW1, db1, dW2, db2 = probe.grads()
    assert history.epochs[1]["grad_norm/layer_1"] == pytest.approx(np.linalg.norm(dW1), rel=1e-4)
    assert history.epochs[1]["grad_norm/layer_2"] == pytest.approx(np.linalg.norm(dW2), rel=1e-4)
    glob = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in (dW1, db1, dW2, db2)))
    assert history.epochs[1]["grad_norm/global"] == pytest.approx(glob, rel=1e-4)


def test_same_seed_gives_bit_identical_histories(digits):
    _, a = small_run(digits, seed=3)
    _, b = small_run(digits, seed=3)
    _, c = small_run(digits, seed=4)
    assert a.epochs == b.epochs
    assert a.epochs != c.epochs


def test_divergence_raises_a_typed_error_at_once(digits):
    seen = []
    with pytest.raises(DivergenceError, match="diverged at epoch 1") as err:
        small_run(digits, epochs=20, optimizer="sgd", lr=1e6, callback=lambda e, m: seen.append(e))
    assert err.value.epoch == 1 and not np.isfinite(err.value.loss)
    assert seen == [0]
    assert isinstance(err.value, FloatingPointError)


def test_early_stopping_stops_after_patience_epochs_without_improvement(digits):
    _, history = small_run(digits, epochs=200, patience=3, lr=1e-2)
    val = history.metric("val_acc")
    assert history.epochs_run < 200
    best_epoch = int(np.argmax(val))  # first best
    assert history.epochs_run == best_epoch + 3
    assert history.best_val_acc == val.max()


def test_float64_training_keeps_float64(digits):
    model = MLP.from_shape(digits.n_features, digits.n_classes, 1, 8, seed=0, dtype=np.float64)
    fit(model, make_optimizer("adam", lr=1e-3), digits.x_train, digits.y_train, digits.x_val, digits.y_val,
        TrainConfig(epochs=1))
    assert all(p.dtype == np.float64 for p in model.params)


def test_default_configuration_reaches_97_percent_on_digits(digits):
    """Defaults: 2 x 128 ReLU, He init, Adam 1e-3, batch 32, weight decay 0.01, 30 epochs."""
    model = MLP.from_shape(digits.n_features, digits.n_classes, depth=2, width=128, seed=0)
    fit(model, make_optimizer("adam", lr=1e-3), digits.x_train, digits.y_train, digits.x_val, digits.y_val,
        TrainConfig(), seed=0)
    _, test_acc = evaluate(model, digits.x_test, digits.y_test)
    assert test_acc >= 0.97


def test_train_metrics_are_the_running_mean_over_the_epochs_batches(digits):
    """Epochs >= 1 report the mean over the epoch's mini-batches, each seen with its own step's weights: with
    one full batch per epoch, epoch 1's numbers are those of the initial weights (epoch 0's full pass)."""
    _, history = small_run(digits, epochs=2, optimizer="sgd", lr=0.5, batch_size=10**6, weight_decay=0.0)
    first, second = history.epochs[0], history.epochs[1]
    assert second["train_loss"] == pytest.approx(first["train_loss"], rel=1e-5)
    assert second["train_acc"] == pytest.approx(first["train_acc"])
    assert history.epochs[2]["train_loss"] < first["train_loss"]  # the step was taken
