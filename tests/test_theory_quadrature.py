"""The two-input Gaussian expectation and the chaotic phase's c* and xi_c, against closed forms
(the arc-cosine kernels of Cho & Saul 2009) and against an independent reference computed here:
a Cartesian rule that conditions on z_1 and splits the z_2 integral at each node's own kink
c z_1 + sqrt(1 - c^2) z_2 = 0 (checked itself against scipy's adaptive quad), with q* found by
scipy's brentq on scipy's quad, c* by brentq, and the slope at c* by a central difference of the
map (not by Price's theorem, which nnlab uses)."""
import math

import numpy as np
import pytest
from scipy import integrate, optimize

from nnlab import theory as T
from nnlab.core.activations import get_activation

Z = 10.0  # the reference's truncation: P(|z| > 10) ~ 1.5e-23


def _pieces(edges: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre with m nodes on each piece between consecutive ``edges`` (..., k + 1) ->
    nodes and weights (..., k * m), the standard normal density folded in."""
    x, w = np.polynomial.legendre.leggauss(m)
    a, b = edges[..., :-1, None], edges[..., 1:, None]
    z = ((a + b) / 2 + (b - a) / 2 * x).reshape(*edges.shape[:-1], -1)
    wz = ((b - a) / 2 * w).reshape(*edges.shape[:-1], -1) * np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    return z, wz


OUTER = np.array([-Z, -6, -3, -1, -0.25, 0, 0.25, 1, 3, 6, Z])
INNER = np.array([-Z, -6, -3, -1, 1, 3, 6, Z])


def reference_pair(f, g, q, c, m=60):
    """E[f(u_1) g(u_2)] by conditioning on z_1: (u_1, u_2) = sqrt(q) (z_1, c z_1 + s z_2)."""
    s = math.sqrt(max(1 - c * c, 0.0))
    z1, w1 = _pieces(OUTER, m)
    kink = np.clip(-c * z1 / s, -Z, Z) if s > 0 else np.full_like(z1, Z)
    edges = np.sort(np.column_stack([np.broadcast_to(INNER, (len(z1), len(INNER))),
                                     *(np.clip(kink + d, -Z, Z) for d in (-1, -0.25, 0, 0.25, 1))]), axis=1)
    z2, w2 = _pieces(edges, 40)
    inner = np.sum(w2 * g(math.sqrt(q) * (c * z1[:, None] + s * z2)), axis=1)
    return float(np.sum(w1 * f(math.sqrt(q) * z1) * inner))


def scipy_pair(f, g, q, c, tol=1e-11):
    """The same expectation by scipy's adaptive quad, nested, split at both kinks (slow: ~1 s)."""
    s, r = math.sqrt(1 - c * c), math.sqrt(q)
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731

    def inner(z1):
        kink = min(max(-c * z1 / s, -Z), Z)
        h = lambda z2: float(g(np.array(r * (c * z1 + s * z2)))) * pdf(z2)  # noqa: E731
        return sum(integrate.quad(h, a, b, epsabs=tol, epsrel=tol, limit=200)[0] for a, b in [(-Z, kink), (kink, Z)])

    outer = lambda z1: float(f(np.array(r * z1))) * inner(z1) * pdf(z1)  # noqa: E731
    return sum(integrate.quad(outer, a, b, epsabs=tol, epsrel=tol, limit=200)[0] for a, b in [(-Z, 0), (0, Z)])


def reference_fixed_point(activation, sigma_w2, sigma_b2):
    """(q*, c*, xi_c) computed independently of nnlab.theory's quadrature and root finding."""
    act = get_activation(activation)
    phi = lambda u: act(np.asarray(u, dtype=np.float64))  # noqa: E731
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731

    def length(q):
        h = lambda z: float(phi(math.sqrt(q) * z)) ** 2 * pdf(z)  # noqa: E731
        return sigma_w2 * sum(integrate.quad(h, a, b, epsabs=1e-13, epsrel=1e-13, limit=200)[0]
                              for a, b in [(-Z, 0), (0, Z)]) + sigma_b2

    q_star = optimize.brentq(lambda q: length(q) - q, 1e-3, 1e4, xtol=1e-13, rtol=1e-14)
    norm = sigma_w2 * reference_pair(phi, phi, q_star, 1.0) + sigma_b2

    def cmap(c):
        return (sigma_w2 * reference_pair(phi, phi, q_star, c) + sigma_b2) / norm

    c_star = optimize.brentq(lambda c: cmap(c) - c, 0.0, 1 - 1e-5, xtol=1e-13)
    h = 1e-5
    slope = (cmap(c_star + h) - cmap(c_star - h)) / (2 * h)
    return q_star, c_star, -1 / math.log(slope)


# --- closed forms -------------------------------------------------------------------------------
CS = np.concatenate([np.linspace(-1, 1, 41), [-0.999999, -0.99, 0.99, 0.9977, 0.999, 0.999999, 1 - 1e-9]])


def arccos_kernel(degree, c):
    """E[relu(u)^n relu(v)^n] / q^n for unit Gaussians of correlation c = (1 / 2 pi) J_n(theta)."""
    theta = math.acos(c)
    j = {0: math.pi - theta,
         1: math.sin(theta) + (math.pi - theta) * math.cos(theta),
         2: 3 * math.sin(theta) * math.cos(theta) + (math.pi - theta) * (1 + 2 * math.cos(theta) ** 2)}[degree]
    return j / (2 * math.pi)


@pytest.mark.parametrize("degree", [0, 1, 2])
def test_pair_expectation_is_the_arccos_kernel_at_every_correlation(degree):
    step = lambda u: (u > 0).astype(float) * np.maximum(u, 0) ** degree if degree else (u > 0).astype(float)  # noqa
    for q in (0.3, 1.0, 50.0):
        for c in CS:
            want = q**degree * arccos_kernel(degree, float(c))
            got = T.pair_expectation(step, step, q, float(c))
            assert got == pytest.approx(want, rel=1e-11, abs=1e-14 * q**degree), (q, c)


def test_relu_correlation_map_is_the_normalised_arccos_kernel():
    # relu, He, sigma_b = 0: c^{l+1} = (sin theta + (pi - theta) c) / pi, exactly 1 at c = 1
    for c in CS:
        want = 2 * arccos_kernel(1, float(c))
        assert T.correlation_map("relu", 2.0, 0.0, 1.7, float(c)) == pytest.approx(want, rel=1e-11, abs=1e-14)


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "elu", "softsign", "sigmoid", "leaky_relu"])
def test_c_equal_one_is_an_exact_fixed_point(activation):
    for sigma_w2, sigma_b2 in [(1.99, 0.5), (3.0, 0.1), (1.2, 0.0)]:
        q = T.fixed_point(activation, sigma_w2, sigma_b2)
        q = min(max(q, 1e-3), 1e3)
        assert T.correlation_map(activation, sigma_w2, sigma_b2, q, 1.0) == 1.0


# --- the independent reference ------------------------------------------------------------------
@pytest.mark.slow  # scipy's nested adaptive quad / a grid of references: ~5 s per case
@pytest.mark.parametrize("activation, q, c", [("gelu", 92.4, 0.5), ("gelu", 92.4, 0.9977), ("softsign", 3.0, -0.7),
                                              ("elu", 8.8, 0.95)])
def test_reference_rule_agrees_with_scipy_and_nnlab(activation, q, c):
    act = get_activation(activation)
    phi = lambda u: act(np.asarray(u, dtype=np.float64))  # noqa: E731
    ref = reference_pair(phi, phi, q, c)
    assert ref == pytest.approx(scipy_pair(phi, phi, q, c), rel=1e-9)
    got, err = T.pair_expectation(phi, phi, q, c, with_error=True)
    assert got == pytest.approx(ref, rel=1e-9)
    assert err < 1e-6 * abs(ref)


@pytest.mark.slow  # scipy's nested adaptive quad / a grid of references: ~5 s per case
@pytest.mark.parametrize("activation", ["gelu", "softsign", "elu", "tanh", "relu", "sigmoid"])
def test_pair_expectation_matches_the_reference_for_phi_and_its_derivative(activation):
    act = get_activation(activation)
    phi = lambda u: act(np.asarray(u, dtype=np.float64))  # noqa: E731
    dphi = lambda u: act.backward(u, act(u), np.ones_like(u))  # noqa: E731
    for q in (0.5, 4.0, 92.4):
        for c in (-0.95, -0.3, 0.2, 0.8, 0.99, 0.9999):
            for f in (phi, dphi):
                # within 1e-7 (softsign' at q = 92 and c near 1, a cusp of width 0.1 beside a second one
                # 0.014 rad away, is the hardest: 1.2e-8), and never outside the error estimate
                want = reference_pair(f, f, q, c)
                got, err = T.pair_expectation(f, f, q, c, with_error=True)
                assert got == pytest.approx(want, rel=1e-7, abs=1e-13), (q, c)
                assert abs(got - want) <= err + 1e-13 * abs(want), (q, c)  # + rounding


# the cases of issue 17: gelu near critical with a large q*, softsign and elu in the chaotic phase
CHAOTIC = [("gelu", 1.99, 0.5), ("softsign", 8.0, 0.5), ("softsign", 6.0, 0.3), ("elu", 1.8, 0.3),
           ("elu", 1.9, 0.1), ("tanh", 2.0, 0.1), ("sigmoid", 200.0, 0.5)]


@pytest.mark.parametrize("activation, sigma_w2, sigma_b2", CHAOTIC)
def test_chaotic_fixed_point_matches_the_independent_computation(activation, sigma_w2, sigma_b2):
    q_ref, c_ref, xi_ref = reference_fixed_point(activation, sigma_w2, sigma_b2)
    got = T.fixed_point_summary(activation, sigma_w2, sigma_b2)
    assert got.phase == "chaotic"
    assert got.q_star == pytest.approx(q_ref, rel=1e-9)
    assert got.c_star == pytest.approx(c_ref, abs=1e-8)
    assert got.xi_c == pytest.approx(xi_ref, rel=1e-4)


def test_gelu_near_critical_numbers_of_issue_17():
    got = T.fixed_point_summary("gelu", 1.99, 0.5)
    assert got.c_star == pytest.approx(0.99772, abs=1e-5)  # the old grid gave 1 (map(1) = 1 + 1.1e-7)
    assert got.xi_c == pytest.approx(176.3, abs=0.05)  # the old value was 1 / log chi_1 = 162.8
    assert got.xi_grad == pytest.approx(162.838, abs=1e-3)


def test_near_critical_c_star_is_resolved_until_the_quadrature_cannot_tell_it_from_one():
    # tanh with sigma_b^2 = 0.05 just above its critical sigma_w^2 = 1.761: 1 - c* shrinks with
    # chi_1 - 1 and stays resolved (and equal to the reference) down to ~1e-4 of the distance
    critical = T.critical_sigma_w2("tanh", 0.05)
    previous = 0.0
    for excess in (1e-1, 3e-2, 1e-2):
        sw2 = critical * (1 + excess)
        got = T.fixed_point_summary("tanh", sw2, 0.05)
        _, c_ref, xi_ref = reference_fixed_point("tanh", sw2, 0.05)
        assert got.c_star == pytest.approx(c_ref, abs=1e-8) and got.xi_c == pytest.approx(xi_ref, rel=1e-4)
        assert got.c_star > previous
        previous = got.c_star
    # where chi_1 - 1 ~ 1e-12, map(c) - c is below the rule's error at every 1 - delta: c* = 1 and
    # xi_c = xi_grad, continuous with the ordered side
    barely = T.fixed_point_summary("tanh", critical * (1 + 1e-12), 0.05)
    assert barely.c_star == 1.0 and barely.xi_c == pytest.approx(barely.xi_grad)
