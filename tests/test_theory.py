"""nnlab.theory against closed forms and against wide random networks built with the core;
the Jacobian probe against finite differences and against the theory's product of chi's."""
import math

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from nnlab import theory as T
from nnlab.core import ACTIVATIONS, INITIALIZERS, MLP, preactivation_std
from nnlab.core.jacobian import JacobianProbe, hidden_jacobians, jacobian_singular_values, jacobian_stats


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Wide matrices on a shared 2-core machine: threaded BLAS only adds contention here."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# --- closed forms -------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma_w2, sigma_b2", [(0.5, 0.0), (1.0, 0.1), (2.0, 0.0), (3.0, 0.3)])
def test_identity_and_relu_length_maps(sigma_w2, sigma_b2):
    for q in (0.01, 0.7, 5.0):
        assert T.length_map("identity", sigma_w2, sigma_b2, q) == pytest.approx(sigma_w2 * q + sigma_b2, rel=1e-12)
        assert T.length_map("relu", sigma_w2, sigma_b2, q) == pytest.approx(sigma_w2 * q / 2 + sigma_b2, rel=1e-12)
    pred = T.predict("relu", [10, 20, 20, 20, 3], sigma_w2, sigma_b2, input_second_moment=1.3)
    q = 1.3 * sigma_w2 + sigma_b2
    for got in pred.q:
        assert got == pytest.approx(q, rel=1e-12)
        q = sigma_w2 * q / 2 + sigma_b2


def test_relu_he_is_critical():
    for q in (1e-3, 1.0, 40.0):
        assert T.chi("relu", 2.0, q) == pytest.approx(1.0, abs=1e-12)
    fixed = T.fixed_point_summary("relu", 2.0, 0.0)
    assert fixed.phase == "critical" and fixed.xi_c == math.inf
    assert T.fixed_point_summary("relu", 1.5, 0.0).phase == "ordered"
    assert T.fixed_point_summary("relu", 2.5, 0.0).phase == "chaotic"
    # ordered with sigma_b = 0: q* = 0, the correlation map's slope at 1 is 1 (relu's normalised map
    # does not depend on q), so there is no correlation depth scale; the gradient's is -1 / log chi_1
    ordered = T.fixed_point_summary("relu", 1.5, 0.0)
    assert ordered.q_star == 0 and ordered.xi_c == math.inf and not ordered.correlation_scale_defined
    assert ordered.xi_grad == pytest.approx(-1 / math.log(0.75), rel=1e-9)
    assert ordered.xi_trainable == ordered.xi_grad


def test_tanh_critical_point_at_zero_bias_is_sigma_w2_one():
    assert T.critical_sigma_w2("tanh", 0.0) == pytest.approx(1.0, abs=1e-6)
    assert T.fixed_point_summary("tanh", 0.9, 0.0).phase == "ordered"
    assert T.fixed_point_summary("tanh", 1.0, 0.0).phase == "critical"
    chaotic = T.fixed_point_summary("tanh", 1.5, 0.0)
    assert chaotic.phase == "chaotic" and chaotic.c_star == pytest.approx(0.0, abs=1e-6)  # odd phi, no bias
    # a bias moves the critical line to larger weights (Poole et al. 2016, Fig. 1)
    assert T.critical_sigma_w2("tanh", 0.05) > 1.5


def test_sigmoid_is_deep_in_the_ordered_phase():
    # sigmoid' <= 1/4, so chi_1 <= sigma_w^2 / 16: with Xavier-like sigma_w^2 ~ 1 the gradient shrinks
    fixed = T.fixed_point_summary("sigmoid", 1.0, 0.0)
    assert fixed.phase == "ordered" and fixed.chi_star < 1 / 16
    # its mean of 1/2 inflates q* as sigma_w grows: critical only at sigma_w^2 ~ 103 (README)
    assert T.critical_sigma_w2("sigmoid", 0.0, hi=1000.0) == pytest.approx(103.0, abs=0.5)


def test_gaussian_expectations_exact_for_polynomials_and_kinks():
    assert T.gaussian_expectation(lambda u: u**4, 2.0) == pytest.approx(3 * 4.0, rel=1e-12)
    # a kink at 0 (relu, softsign, elu): E|u| = sqrt(2 q / pi); plain Gauss-Hermite is off by ~0.5 % here
    assert T.gaussian_expectation(np.abs, 3.0) == pytest.approx(math.sqrt(6 / math.pi), rel=1e-10)
    # E[tanh(u)^2] by brute force
    z = np.random.default_rng(0).normal(size=2_000_000)
    assert T.gaussian_expectation(lambda u: np.tanh(u) ** 2, 0.8) == pytest.approx(
        np.mean(np.tanh(np.sqrt(0.8) * z) ** 2), rel=2e-3)


def test_effective_sigma_w_of_every_initialiser_matches_its_weights():
    sizes = [64, 400, 300, 100]  # unequal widths: Xavier and orthogonal differ per layer
    rng = np.random.default_rng(0)
    params = {"random": {"std": 0.05}, "orthogonal": {"gain": 1.3},
              "variance_scaling": {"sigma_w": 1.7, "sigma_b": 0.3}}
    for name in INITIALIZERS:
        model = MLP(sizes, "tanh", name, init_params=params.get(name, {}), rng=rng, dtype=np.float64)
        measured = np.array([w.shape[0] * np.mean(w**2) for w in model.weights])
        np.testing.assert_allclose(T.effective_sigma_w2(name, sizes, **params.get(name, {})), measured, rtol=0.03,
                                   err_msg=name)
    np.testing.assert_allclose(T.effective_sigma_w2("xavier", sizes), [2 * 64 / 464, 2 * 400 / 700, 2 * 300 / 400])
    assert T.effective_sigma_b2("variance_scaling", sigma_w=1.0, sigma_b=0.3) == pytest.approx(0.09)
    assert T.effective_sigma_b2("he") == 0.0
    with pytest.raises(ValueError, match="valid choices: .*he.*variance_scaling"):
        T.effective_sigma_w2("glorot", sizes)


# --- Monte Carlo: wide networks built with the core --------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("activation, sigma_w, sigma_b", [
    ("tanh", 1.0, 0.0), ("tanh", 1.6, 0.3), ("relu", np.sqrt(2), 0.0), ("relu", 1.2, 0.2),
    ("sigmoid", 1.0, 0.0), ("sigmoid", 3.0, 0.5), ("elu", 1.3, 0.1), ("gelu", 1.5, 0.0), ("softsign", 2.0, 0.2),
    ("leaky_relu", 1.4, 0.0), ("identity", 0.9, 0.1),
])
def test_per_layer_variance_matches_wide_random_networks(activation, sigma_w, sigma_b):
    """Mean over 16 independent networks of width 1000: one network's variance is a multiplicative
    random walk over layers (finite-width fluctuations of ~sqrt(5 depth / width) for relu, about
    10 % at depth 5), which the mean-field limit averages out."""
    width, depth, n_nets = 1000, 5, 16
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.2, size=(64, 300))
    params = {"sigma_w": sigma_w, "sigma_b": sigma_b}
    pred = T.predict_network([300, *[width] * depth, 10], activation, "variance_scaling", x, init_params=params)
    var, act_std = np.zeros(depth), np.zeros(depth)
    for _ in range(n_nets):
        model = MLP.from_shape(300, 10, depth, width, activation=activation, init="variance_scaling",
                               init_params=params, rng=rng, dtype=np.float64)
        var += np.array(list(preactivation_std(model, x).values())) ** 2 / n_nets
        act_std += np.array([a.std() for _, a in model.hidden_activations()]) / n_nets
    np.testing.assert_allclose(var, pred.q, rtol=0.04)
    np.testing.assert_allclose(act_std, pred.act_std, rtol=0.04)


# --- the Jacobian probe -------------------------------------------------------------------------
def finite_difference_jacobian(model: MLP, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d a^L / d x of one input (n_in,), column by column with central differences -> (n_L, n_in)."""
    def last_hidden(v):
        model.forward(v[None, :])
        return model.layers[-2].a[0].copy()

    cols = []
    for j in range(len(x)):
        e = np.zeros_like(x)
        e[j] = eps
        cols.append((last_hidden(x + e) - last_hidden(x - e)) / (2 * eps))
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("sizes", [[7, 9, 9, 9, 3], [7, 5, 12, 3], [7, 11, 3]])
def test_jacobian_singular_values_match_finite_differences(activation, sizes):
    rng = np.random.default_rng(2)
    model = MLP(sizes, activation, "variance_scaling", init_params={"sigma_w": 1.5, "sigma_b": 0.3}, rng=rng,
                dtype=np.float64)
    x = rng.normal(size=(3, sizes[0]))
    sv = jacobian_singular_values(model, x)
    assert sv.shape == (3, min(sizes[0], sizes[-2]))
    for i in range(3):
        reference = np.linalg.svd(finite_difference_jacobian(model, x[i]), compute_uv=False)
        np.testing.assert_allclose(np.sort(sv[i]), np.sort(reference), atol=1e-6 * reference.max())
        np.testing.assert_allclose(hidden_jacobians(model, x[i:i + 1])[0], finite_difference_jacobian(model, x[i]),
                                   atol=1e-7)


@pytest.mark.parametrize("activation, sigma_w2, sigma_b2", [("tanh", 1.5, 0.05), ("relu", 2.0, 0.0),
                                                            ("tanh", 0.8, 0.0), ("softsign", 2.5, 0.1)])
def test_mean_squared_singular_value_is_the_product_of_the_layers_chi(activation, sigma_w2, sigma_b2):
    """Mean over 8 networks of width 300 (one network's value is a finite-width random walk)."""
    n, depth, n_nets = 300, 5, 8
    rng = np.random.default_rng(3)
    params = {"sigma_w": math.sqrt(sigma_w2), "sigma_b": math.sqrt(sigma_b2)}
    x = rng.normal(size=(4, n))
    pred = T.predict_network([n, *[n] * depth, 10], activation, "variance_scaling", x, init_params=params)
    msv = 0.0
    for _ in range(n_nets):
        model = MLP.from_shape(n, 10, depth, n, activation=activation, init="variance_scaling",
                               init_params=params, rng=rng, dtype=np.float64)
        msv += float(np.mean(jacobian_singular_values(model, x) ** 2)) / n_nets
    assert msv == pytest.approx(float(np.prod(pred.chi)), rel=0.06)
    # each input's product of chi's, averaged (chi is recorded averaged over inputs): ~ the product
    assert pred.jacobian_msv == pytest.approx(float(np.prod(pred.chi)), rel=1e-3)


def test_orthogonal_tanh_is_more_isometric_than_gaussian():
    """Pennington et al. 2017: at the critical point, orthogonal weights keep the tanh Jacobian's
    singular values near 1; Gaussian weights of the same variance spread them."""
    n, depth = 200, 16
    rng = np.random.default_rng(4)
    x = rng.normal(0, 0.3, size=(4, n))
    spread = {}
    for init, params in [("orthogonal", {"gain": 1.0}), ("variance_scaling", {"sigma_w": 1.0})]:
        model = MLP.from_shape(n, 10, depth, n, activation="tanh", init=init, init_params=params, rng=rng,
                               dtype=np.float64)
        sv = jacobian_singular_values(model, x)
        spread[init] = sv.max() / max(sv.min(), 1e-300)
    assert spread["orthogonal"] < spread["variance_scaling"] / 10


def test_jacobian_probe_and_depth_zero():
    model = MLP([5, 3], "tanh", "he", seed=0)
    assert jacobian_stats(model, np.ones((2, 5), np.float32)) == {}
    with pytest.raises(ValueError, match="depth 0"):
        hidden_jacobians(model, np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="n_inputs must be an integer >= 1, got 0"):
        JacobianProbe(0)
    model = MLP([5, 8, 8, 3], "tanh", "he", seed=0)
    stats = JacobianProbe(2)(model, np.random.default_rng(0).normal(size=(10, 5)).astype(np.float32))
    assert sorted(stats) == ["jacobian_sv_max", "jacobian_sv_mean", "jacobian_sv_min", "jacobian_sv_std"]
    assert 0 < stats["jacobian_sv_min"] <= stats["jacobian_sv_mean"] <= stats["jacobian_sv_max"]


def test_record_names():
    pred = T.predict("tanh", [64, 32, 32, 10], 1.2, 0.01, 1.0)
    names = set(T.record(pred))
    expected = {f"theory/{s}/layer_{i}" for s in ("preact_std", "act_std", "chi") for i in (1, 2)}
    expected |= {f"theory/grad_ratio/layer_{i}" for i in (1, 2, 3)} | {"theory/chi_star", "theory/xi_c",
                                                                      "theory/xi_grad"}
    assert names == expected
    with pytest.raises(ValueError, match="have none"):
        T.predict("tanh", [64, 10], 1.0, 0.0, 1.0)


# --- the variance_scaling initialiser -----------------------------------------------------------
def test_variance_scaling_draws_weights_and_biases_others_keep_zero_bias():
    model = MLP([300, 2000, 10], "tanh", "variance_scaling", init_params={"sigma_w": 1.5, "sigma_b": 0.4}, seed=0,
                dtype=np.float64)
    w, b = model.layers[0].W, model.layers[0].b
    assert np.std(w) * np.sqrt(300) == pytest.approx(1.5, rel=0.01)
    assert np.std(b) == pytest.approx(0.4, rel=0.05) and abs(np.mean(b)) < 0.03
    for name in sorted(set(INITIALIZERS) - {"variance_scaling"}):
        assert all(not layer.b.any() for layer in MLP([5, 7, 3], "tanh", name, seed=0).layers), name
    # sigma_b = 0 draws nothing: the same weights as a model without biases to draw
    a = MLP([5, 7, 7, 3], "tanh", "variance_scaling", init_params={"sigma_w": 1.0}, seed=3)
    c = MLP([5, 7, 7, 3], "tanh", "lecun", seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a.weights, c.weights))
    with pytest.raises(ValueError, match="sigma_w must be > 0, got 0"):
        MLP([5, 3], "tanh", "variance_scaling", init_params={"sigma_w": 0.0})
    with pytest.raises(ValueError, match="sigma_b must be >= 0, got -1"):
        MLP([5, 3], "tanh", "variance_scaling", init_params={"sigma_b": -1.0})
