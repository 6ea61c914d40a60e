"""Registries, shapes, numerical stability and bad input of the core."""
import warnings

import numpy as np
import pytest

from nnlab.core import (ACTIVATIONS, INITIALIZERS, MLP, OPTIMIZERS, TrainConfig, activation_stats, get_activation,
                        get_initializer, make_optimizer, softmax, softmax_cross_entropy)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [1e4, 0.0, -1e4], [-1e4, -1e4, -1e4]], dtype=np.float32)
    y = np.array([0, 1, 2])
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        loss, dlogits = softmax_cross_entropy(logits, y)
    # per row: 0, 1e4, log(3)
    assert loss == pytest.approx((0 + 1e4 + np.log(3)) / 3, rel=1e-6)
    assert np.all(np.isfinite(dlogits))
    np.testing.assert_allclose(dlogits.sum(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(softmax(logits).sum(axis=1), 1, rtol=1e-6)


def test_softmax_cross_entropy_value_and_gradient_on_a_small_case():
    logits, y = np.array([[0.0, np.log(3.0)]]), np.array([1])  # probs = [1/4, 3/4]
    loss, dlogits = softmax_cross_entropy(logits, y)
    assert loss == pytest.approx(-np.log(0.75))
    np.testing.assert_allclose(dlogits, [[0.25, -0.25]])


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_builds_and_trains_one_step(name):
    model = MLP([4, 5, 5, 3], activation=name, seed=0)
    x, y = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32), np.arange(8) % 3
    before = [p.copy() for p in model.params]
    logits = model.forward(x)
    assert logits.shape == (8, 3) and logits.dtype == np.float32
    model.backward(softmax_cross_entropy(logits, y)[1])
    make_optimizer("sgd", lr=0.1).step(model.params, model.grads())
    assert all(not np.array_equal(a, b) for a, b in zip(before[::2], model.params[::2]))


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
def test_every_initializer_builds_with_the_right_shape_dtype_and_zero_biases(name):
    model = MLP([30, 20, 10], init=name, seed=0, dtype=np.float64)
    assert [p.shape for p in model.params] == [(30, 20), (20,), (20, 10), (10,)]
    assert all(p.dtype == np.float64 for p in model.params)
    assert not model.params[1].any() and not model.params[3].any()


@pytest.mark.parametrize("name, params, expected_var", [
    ("he", {}, 2 / 400), ("he", {"distribution": "uniform"}, 2 / 400), ("xavier", {}, 2 / 700),
    ("xavier", {"distribution": "normal"}, 2 / 700), ("lecun", {}, 1 / 400), ("random", {"std": 0.01}, 1e-4),
])
def test_initializer_variances(name, params, expected_var):
    w = get_initializer(name, **params)(400, 300, rng=np.random.default_rng(0), dtype=np.float64)
    assert w.var() == pytest.approx(expected_var, rel=0.02)
    assert abs(w.mean()) < 0.01 * np.sqrt(expected_var) * 10


def test_orthogonal_initializer_is_orthogonal_times_gain():
    w = get_initializer("orthogonal", gain=2.0)(50, 30, rng=np.random.default_rng(0), dtype=np.float64)
    np.testing.assert_allclose(w.T @ w, 4.0 * np.eye(30), atol=1e-10)
    w = get_initializer("orthogonal")(30, 50, rng=np.random.default_rng(0), dtype=np.float64)
    np.testing.assert_allclose(w @ w.T, np.eye(30), atol=1e-10)


def test_initializers_use_only_the_given_generator():
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    a = MLP([10, 8, 3], init="he", rng=np.random.default_rng(5)).params[0]
    b = MLP([10, 8, 3], init="he", rng=np.random.default_rng(5)).params[0]
    np.testing.assert_array_equal(a, b)
    assert np.array_equal(np.random.get_state()[1], state)


def test_width_list_and_depth_zero():
    assert MLP.from_shape(64, 10, 3, [32, 16, 8]).sizes == [64, 32, 16, 8, 10]
    assert MLP.from_shape(64, 10, 0, 128).sizes == [64, 10]


def test_dead_relu_units_are_counted():
    model = MLP([4, 6, 3], activation="relu", seed=0)
    model.layers[0].b[:3] = -100.0  # three units can never switch on
    stats = activation_stats(model, np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32))
    assert stats["act_saturation/layer_1"] == pytest.approx(0.5)


def test_tanh_saturation_fraction():
    model = MLP([4, 10, 3], activation="tanh", init="random", init_params={"std": 100.0}, seed=0)
    stats = activation_stats(model, np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32))
    assert stats["act_saturation/layer_1"] > 0.9
    model = MLP([4, 10, 3], activation="tanh", init="random", init_params={"std": 0.01}, seed=0)
    assert activation_stats(model, np.ones((5, 4), np.float32))["act_saturation/layer_1"] == 0.0


def test_he_keeps_deep_relu_activations_alive_where_xavier_shrinks_them():
    """The classic finding the per-layer statistics exist to show (He et al. 2015, fig. 2 spirit)."""
    x = np.random.default_rng(0).normal(size=(512, 64)).astype(np.float32)
    stds = {}
    for init in ("he", "xavier"):
        model = MLP.from_shape(64, 10, 10, 256, activation="relu", init=init, seed=0)
        stats = activation_stats(model, x)
        stds[init] = stats["act_std/layer_10"] / stats["act_std/layer_1"]
    assert 0.5 < stds["he"] < 2.0
    assert stds["xavier"] < 0.1  # halves in variance per layer: (1/2)^(9/2) ~ 0.04


@pytest.mark.parametrize("make, match", [
    (lambda: get_activation("swish"), r"unknown activation 'swish'; valid choices: elu, gelu, identity"),
    (lambda: get_initializer("kaiming"), r"unknown initializer 'kaiming'; valid choices: he, lecun, orthogonal"),
    (lambda: make_optimizer("rmsprop", lr=0.1), r"unknown optimizer 'rmsprop'; valid choices: adam, momentum, sgd"),
    (lambda: get_initializer("he", distribution="cauchy")(3, 3, rng=np.random.default_rng(0)), r"'cauchy'.*normal, uniform"),
    (lambda: get_initializer("he", std=1.0), r"unknown parameter.*std"),
    (lambda: get_activation("relu", alpha=0.1), r"unknown parameter.*alpha"),
    (lambda: MLP.from_shape(64, 10, -1, 32), r"depth must be an integer >= 0, got -1"),
    (lambda: MLP.from_shape(64, 10, 2, 0), r"width must be an integer >= 1, got 0"),
    (lambda: MLP.from_shape(64, 10, 2, [32]), r"1 widths \[32\] for depth 2"),
    (lambda: make_optimizer("adam", lr=0), r"lr must be a finite number > 0, got 0"),
    (lambda: make_optimizer("sgd", lr=-1e-3), r"lr must be a finite number > 0, got -0.001"),
    (lambda: make_optimizer("momentum", lr=0.1, momentum=1.5), r"momentum must be in \[0, 1\), got 1.5"),
    (lambda: make_optimizer("sgd", lr=0.1, beta1=0.9), r"optimizer 'sgd'.*beta1"),
    (lambda: TrainConfig(batch_size=0), r"batch_size must be an integer >= 1, got 0"),
    (lambda: TrainConfig(epochs=-2), r"epochs must be an integer >= 0, got -2"),
    (lambda: TrainConfig(weight_decay=-1.0), r"weight_decay must be a finite number >= 0, got -1.0"),
    (lambda: TrainConfig(schedule="linear"), r"unknown schedule 'linear'; valid choices: constant, cosine, step"),
])
def test_bad_input_raises_a_clear_value_error(make, match):
    assert OPTIMIZERS  # registries are importable
    with pytest.raises(ValueError, match=match):
        make()
