"""The instruments against references computed the slow, obvious way: full finite-difference Hessians of a
tiny network, an explicit per-sample loop, one SGD step by hand."""
import numpy as np
import pytest

from nnlab.core import MLP, TrainConfig, fit, l2_penalty, loss_and_grads, make_optimizer, softmax_cross_entropy
from nnlab.core import instruments as I


def tiny_problem(activation="tanh", seed=0, n=12):
    rng = np.random.default_rng(seed)
    model = MLP([3, 4, 3], activation=activation, init="xavier", seed=seed, dtype=np.float64)
    model.flat_params[...] += rng.normal(0, 0.3, model.flat_params.shape)  # biases off zero: a generic point
    x, y = rng.normal(size=(n, 3)), rng.integers(0, 3, size=n)
    return model, x, y


def loss_at(model, theta, x, y, wd):
    model.flat_params[...] = theta
    return softmax_cross_entropy(model.forward(x), y)[0] + l2_penalty(model.weights, wd)


def hessian_from_loss(model, x, y, wd=0.0, h=1e-4):
    """H_ij by central second differences of the loss *values* (never touches the gradient code)."""
    theta = model.flat_params.copy()
    p = theta.size
    hess = np.zeros((p, p))
    e = np.eye(p) * h
    for i in range(p):
        for j in range(i, p):
            f = [loss_at(model, theta + si * e[i] + sj * e[j], x, y, wd) for si, sj in ((1, 1), (1, -1), (-1, 1), (-1, -1))]
            hess[i, j] = hess[j, i] = (f[0] - f[1] - f[2] + f[3]) / (4 * h * h)
    model.flat_params[...] = theta
    return hess


def hessian_from_gradient(model, x, y, wd=0.0, h=1e-5):
    """Column i of H by central differences of the backprop gradient along the i-th basis vector."""
    theta = model.flat_params.copy()
    cols = []
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = h
        cols.append((I.loss_gradient(_at(model, theta + e), x, y, wd) - I.loss_gradient(_at(model, theta - e), x, y, wd))
                    / (2 * h))
    model.flat_params[...] = theta
    return np.array(cols).T


def _at(model, theta):
    model.flat_params[...] = theta
    return model


@pytest.mark.parametrize("activation, wd", [("tanh", 0.0), ("tanh", 0.1), ("gelu", 0.0), ("relu", 0.0)])
def test_hvp_matches_finite_differences_of_the_gradient_and_of_the_loss(activation, wd):
    model, x, y = tiny_problem(activation)
    h_grad = hessian_from_gradient(model, x, y, wd)
    h_loss = hessian_from_loss(model, x, y, wd)
    np.testing.assert_allclose(h_grad, h_loss, atol=1e-5)  # the two references agree with each other
    theta = model.flat_params.copy()
    for seed in range(3):
        v = np.random.default_rng(seed).normal(size=theta.size)
        hv = I.hvp(model, x, y, v, wd)
        np.testing.assert_allclose(hv, h_grad @ v, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(hv, h_loss @ v, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(model.flat_params, theta)  # parameters restored


@pytest.mark.parametrize("activation, seed", [("tanh", 0), ("tanh", 1), ("relu", 2)])
def test_sharpness_is_the_top_eigenvalue_of_the_full_hessian(activation, seed):
    model, x, y = tiny_problem(activation, seed)
    eig = np.linalg.eigvalsh(hessian_from_loss(model, x, y))
    assert eig[-1] > abs(eig[0])  # the top eigenvalue is also the largest in magnitude: power iteration's target
    value, vec = I.sharpness(model, x, y, iters=500, tol=1e-10)
    assert value == pytest.approx(eig[-1], rel=1e-4)
    assert np.linalg.norm(vec) == pytest.approx(1.0)


def test_sharpness_of_a_float32_model_is_taken_in_float64():
    model, x, y = tiny_problem("tanh")
    model32 = MLP([3, 4, 3], activation="tanh", seed=0)
    model32.flat_params[...] = model.flat_params
    value64, _ = I.sharpness(_at(model, model32.flat_params.astype(np.float64)), x, y, iters=300, tol=1e-10)
    value32, _ = I.sharpness(model32, x.astype(np.float32), y, iters=300, tol=1e-10)
    assert value32 == pytest.approx(value64, rel=1e-5)


@pytest.mark.parametrize("activation", ["relu", "tanh", "identity"])
def test_per_sample_gradient_norms_match_an_explicit_per_sample_loop(activation):
    rng = np.random.default_rng(3)
    model = MLP([5, 7, 6, 4], activation=activation, seed=3, dtype=np.float64)
    model.flat_params[...] += rng.normal(0, 0.1, model.flat_params.shape)
    x, y = rng.normal(size=(9, 5)), rng.integers(0, 4, size=9)
    loop = []
    for n in range(len(x)):
        loss_and_grads(model, x[n : n + 1], y[n : n + 1])
        loop.append(np.vdot(model.flat_grads, model.flat_grads))
    loss_and_grads(model, x, y)
    np.testing.assert_allclose(I.per_sample_grad_sq_norms(model), loop, rtol=1e-10)


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_grad_noise_scale_matches_its_definition_on_explicit_per_sample_gradients(wd):
    rng = np.random.default_rng(4)
    model = MLP([5, 8, 3], activation="tanh", seed=4, dtype=np.float64)
    x, y = rng.normal(size=(40, 5)), rng.integers(0, 3, size=40)
    per_sample = []
    for n in range(len(x)):
        loss_and_grads(model, x[n : n + 1], y[n : n + 1])
        per_sample.append(model.flat_grads.copy())
    g = np.array(per_sample)  # (N, P)
    mean = g.mean(axis=0)
    trace = np.sum((g - mean) ** 2) / (len(x) - 1)
    decay = np.concatenate([wd * p.ravel() if p.ndim == 2 else np.zeros(p.size) for p in model.params])
    g_sq = np.sum((mean + decay) ** 2) - trace / len(x)
    assert g_sq > 0
    assert I.grad_noise_scale(model, x, y, wd) == pytest.approx(trace / g_sq, rel=1e-8)


def test_grad_noise_scale_is_none_when_the_gradient_is_lost_in_noise():
    """Labels independent of inputs at a point where the mean gradient is ~0: the |G|^2 estimate goes <= 0."""
    model = MLP([2, 2], activation="identity", seed=0, dtype=np.float64)
    model.flat_params[...] = 0  # uniform prediction
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    y = np.array([0, 0, 1, 1])  # x and -x share a label: the weight gradient cancels, the bias gradient too
    assert I.grad_noise_scale(model, x, y) is None


def _digits_like(seed=0, n=60):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype(np.float32), rng.integers(0, 3, size=n)


def test_update_ratio_and_dist_init_by_hand():
    """Full-batch SGD: the one step of epoch 1 is -lr * grad, so both ratios are lr ||dW|| / ||W_0||; after
    epoch 2 the distance from init is ||W_2 - W_0|| / ||W_0|| from the weights themselves."""
    x, y = _digits_like()
    lr = 0.5
    model = MLP([6, 5, 3], activation="tanh", seed=1)
    w0 = [w.copy() for w in model.weights]
    probe = MLP([6, 5, 3], activation="tanh", seed=1)
    loss_and_grads(probe, x, y)
    expected = [lr * np.linalg.norm(layer.dW) / np.linalg.norm(w) for layer, w in zip(probe.layers, w0)]
    seen = []
    fit(model, make_optimizer("sgd", lr=lr), x, y, x, y, TrainConfig(epochs=1, batch_size=len(x), weight_decay=0.0),
        callback=lambda e, m: seen.append(m))
    assert "update_ratio/layer_1" not in seen[0]  # no step has been taken at epoch 0
    assert seen[0]["dist_init/layer_1"] == 0.0 and seen[0]["dist_init/layer_2"] == 0.0
    for i in (1, 2):
        assert seen[1][f"update_ratio/layer_{i}"] == pytest.approx(expected[i - 1], rel=1e-4)
        assert seen[1][f"dist_init/layer_{i}"] == pytest.approx(expected[i - 1], rel=1e-4)
    w1 = [w.copy() for w in model.weights]
    seen.clear()
    model2 = MLP([6, 5, 3], activation="tanh", seed=1)
    fit(model2, make_optimizer("sgd", lr=lr), x, y, x, y, TrainConfig(epochs=2, batch_size=len(x), weight_decay=0.0),
        callback=lambda e, m: seen.append(m))
    for i, (a, b, c) in enumerate(zip(model2.weights, w1, w0), 1):
        assert seen[2][f"update_ratio/layer_{i}"] == pytest.approx(np.linalg.norm(a - b) / np.linalg.norm(b), rel=1e-4)
        assert seen[2][f"dist_init/layer_{i}"] == pytest.approx(np.linalg.norm(a - c) / np.linalg.norm(c), rel=1e-4)


def test_update_ratio_is_over_the_epochs_last_step():
    """Mini-batches: the ratio is the last step's, not the epoch's total movement."""
    x, y = _digits_like(n=50)
    model = MLP([6, 5, 3], activation="tanh", seed=1)
    seen = []
    fit(model, make_optimizer("sgd", lr=0.5), x, y, x, y, TrainConfig(epochs=1, batch_size=16, weight_decay=0.0),
        callback=lambda e, m: seen.append(m))
    assert seen[1]["update_ratio/layer_1"] < 0.8 * seen[1]["dist_init/layer_1"]  # 4 steps moved it further


def test_instruments_that_are_off_are_absent_and_sharpness_runs_every_k_epochs():
    x, y = _digits_like()
    off = I.InstrumentConfig(update_ratio=False, dist_init=False, grad_noise_scale=False)
    seen = []
    fit(MLP([6, 5, 3], seed=0), make_optimizer("sgd", lr=0.1), x, y, x, y,
        TrainConfig(epochs=2, batch_size=20, instruments=off), callback=lambda e, m: seen.append(m))
    names = {k.split("/")[0] for m in seen for k in m}
    assert not names & {"update_ratio", "dist_init", "grad_noise_scale", "sharpness", "sharpness_x_lr"}
    every = I.InstrumentConfig(sharpness_every=2, sharpness_iters=5)
    seen.clear()
    fit(MLP([6, 5, 3], seed=0), make_optimizer("sgd", lr=0.1), x, y, x, y,
        TrainConfig(epochs=3, batch_size=20, instruments=every), callback=lambda e, m: seen.append(m))
    assert ["sharpness" in m for m in seen] == [True, False, True, False]
    assert seen[2]["sharpness_x_lr"] == pytest.approx(seen[2]["sharpness"] * 0.1 / 2)
    assert seen[0]["sharpness"] > 0


@pytest.mark.parametrize("bad, message", [
    ({"sharpness_every": -1}, "sharpness_every must be an integer >= 0, got -1"),
    ({"sharpness_iters": 0}, "sharpness_iters must be an integer >= 1, got 0"),
    ({"update_ratio": "yes"}, "update_ratio must be true or false, got 'yes'"),
])
def test_bad_instrument_settings_are_refused_by_name(bad, message):
    with pytest.raises(ValueError, match=message):
        I.InstrumentConfig(**bad)


def test_top_eigenvalue_is_the_largest_even_when_a_negative_one_dominates_in_magnitude():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    h = q @ np.diag([-9.0, 4.0, 2.0, 1.0, -1.0, 0.5]) @ q.T  # |-9| > 4: plain power iteration finds -9
    plain, _ = I.power_iteration(lambda v: h @ v, rng.normal(size=6), 500, 1e-12)
    assert plain == pytest.approx(-9.0, rel=1e-6)
    top, vec = I.top_eigenvalue(lambda v: h @ v, rng.normal(size=6), 500, 1e-12)
    assert top == pytest.approx(4.0, rel=1e-6)
    np.testing.assert_allclose(h @ vec, 4.0 * vec, atol=1e-5)
