"""Backprop against central finite differences, in float64, for every activation x initialiser x depth."""
import numpy as np
import pytest

from nnlab.core import ACTIVATIONS, INITIALIZERS, MLP, l2_penalty, loss_and_grads, softmax_cross_entropy

EPS = 1e-5
TOL = 1e-6


def numerical_grads(model: MLP, loss_fn) -> list[np.ndarray]:
    """Central differences of ``loss_fn()`` with respect to every parameter entry."""
    out = []
    for p in model.params:
        g = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + EPS
            up = loss_fn()
            p[idx] = old - EPS
            down = loss_fn()
            p[idx] = old
            g[idx] = (up - down) / (2 * EPS)
        out.append(g)
    return out


def relative_error(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    a, b = np.concatenate([x.ravel() for x in a]), np.concatenate([x.ravel() for x in b])
    return float(np.linalg.norm(a - b) / (np.linalg.norm(a) + np.linalg.norm(b)))


def make_problem(activation: str, init: str, depth: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(7, 5))
    y = rng.integers(0, 3, size=7)
    # With the default std=0.01, a deep net's pre-activations shrink to ~1e-6, inside the +-eps
    # band around the ReLU kink where central differences are not a derivative; a larger std
    # tests the same code path away from the kink.
    init_params = {"std": 0.5} if init == "random" else {}
    model = MLP.from_shape(5, 3, depth, 6, activation=activation, init=init, init_params=init_params,
                           seed=seed, dtype=np.float64)
    return model, x, y


def check(model: MLP, x, y, weight_decay: float = 0.0) -> float:
    loss_and_grads(model, x, y, weight_decay)
    analytic = [g.copy() for g in model.grads()]

    def loss_fn():
        loss, _ = softmax_cross_entropy(model.forward(x), y)
        return loss + l2_penalty(model.weights, weight_decay)

    return relative_error(analytic, numerical_grads(model, loss_fn))


@pytest.mark.parametrize("depth", [0, 1, 3])
@pytest.mark.parametrize("init", sorted(INITIALIZERS))
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_backprop_matches_finite_differences(activation, init, depth):
    model, x, y = make_problem(activation, init, depth)
    assert check(model, x, y) < TOL


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_weight_decay_gradient(activation):
    model, x, y = make_problem(activation, "xavier", 2, seed=1)
    assert check(model, x, y, weight_decay=0.3) < TOL


def test_softmax_cross_entropy_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    logits, y = rng.normal(size=(4, 5)) * 3, np.array([0, 4, 2, 2])
    _, analytic = softmax_cross_entropy(logits, y)
    numeric = np.zeros_like(logits)
    for idx in np.ndindex(logits.shape):
        up, down = logits.copy(), logits.copy()
        up[idx] += EPS
        down[idx] -= EPS
        numeric[idx] = (softmax_cross_entropy(up, y)[0] - softmax_cross_entropy(down, y)[0]) / (2 * EPS)
    assert relative_error([analytic], [numeric]) < TOL


def test_gradient_check_detects_a_wrong_derivative(monkeypatch):
    """The check itself can fail: break tanh's derivative and it must notice."""
    from nnlab.core import activations

    broken = activations.Activation("tanh", np.tanh, lambda z, a: 1 - a, activations.ACTIVATIONS["tanh"].saturated)
    model, x, y = make_problem(broken, "xavier", 2)
    assert check(model, x, y) > 1e-3
