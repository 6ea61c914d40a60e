"""Residual and LayerNorm nets at initialisation: nnlab.theory's per-layer prediction against a plain
NumPy simulation written here (forward, backward and a forward-mode Jacobian of
h <- h + alpha phi(W LN(h) + b)), width 512, depth 16 and 32."""
import functools
import math

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from nnlab import theory as T
from nnlab.core.activations import get_activation
from nnlab.data import load_digits_dataset


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def layernorm(h, eps=1e-5):
    """Per sample over units, gain 1 and bias 0 (their values at initialisation) -> (x_hat, 1 / sd)."""
    mu = h.mean(axis=1, keepdims=True)
    inv = 1 / np.sqrt(h.var(axis=1, keepdims=True) + eps)
    return (h - mu) * inv, inv


def layernorm_backward(dx_hat, x_hat, inv):
    """d/dh of LN given d/dx_hat (the same formula is LN's Jacobian, symmetric, for tangents)."""
    return inv * (dx_hat - dx_hat.mean(axis=-1, keepdims=True) - x_hat * (dx_hat * x_hat).mean(axis=-1, keepdims=True))


def simulate(activation, sizes, sigma_w2, sigma_b2, x, rng, *, residual, alpha, norm, n_tangents=1):
    """One random net -> per-layer std of z and of h over units and inputs, sqrt(mean over inputs
    of ||dLoss/dW_l||^2) for a random N(0, 1) dLoss/dlogits (l = 1..L+1), and the mean squared
    singular value of d h_L / d x (from Jacobian-vector products with isotropic v)."""
    act = get_activation(activation)
    dphi = lambda z: act.backward(z, act(z), np.ones_like(z))  # noqa: E731
    n = sizes
    depth = len(n) - 2
    ws = [rng.normal(0, math.sqrt(sigma_w2 / n[i]), (n[i], n[i + 1])) for i in range(depth + 1)]
    bs = [rng.normal(0, math.sqrt(sigma_b2), n[i + 1]) for i in range(depth + 1)]
    v = rng.normal(0, 1 / math.sqrt(n[0]), (n_tangents,) + x.shape)  # E||v||^2 = 1 per input
    h, dh = x, v
    cache, z_std, h_std = [], [], []
    for l in range(depth):
        skip = residual and l > 0
        use_ln = norm and l > 0
        if use_ln:
            x_in, inv = layernorm(h)
            dx_in = layernorm_backward(dh, x_in, inv)
        else:
            x_in, inv, dx_in = h, None, dh
        z = x_in @ ws[l] + bs[l]
        a, da = act(z), dphi(z) * (dx_in @ ws[l])
        cache.append((x_in, inv, z))
        h, dh = (h + alpha * a, dh + alpha * da) if skip else (a, da)
        z_std.append(z.std())
        h_std.append(h.std())
    msv = n[0] / min(n[0], n[depth]) * float(np.mean(np.sum(dh**2, axis=-1)))
    delta = rng.normal(size=(len(x), n[-1]))
    grad_sq = [np.mean(np.sum(h**2, 1) * np.sum(delta**2, 1))]
    g = delta @ ws[-1].T  # dLoss/dh_L
    for l in range(depth - 1, -1, -1):
        x_in, inv, z = cache[l]
        skip = residual and l > 0
        dz = (alpha if skip else 1.0) * dphi(z) * g
        grad_sq.append(np.mean(np.sum(x_in**2, 1) * np.sum(dz**2, 1)))
        if l == 0:
            break
        dx_in = dz @ ws[l].T
        dh_prev = layernorm_backward(dx_in, x_in, inv) if inv is not None else dx_in
        g = g + dh_prev if skip else dh_prev
    grad = np.sqrt(np.array(grad_sq[::-1]))
    return np.array(z_std), np.array(h_std), grad / grad[-1], msv


def gaussian_inputs(rng, n=200, d=64):
    return rng.normal(0, 1.0, (n, d))


def digits_inputs(rng, n=200):
    return load_digits_dataset().x_train[:n].astype(np.float64)


CASES = [  # (activation, sigma_w^2, sigma_b^2): relu with He, tanh with a bias
    ("relu", 2.0, 0.0), ("tanh", 1.5, 0.05)]
INPUTS = {"gaussian": gaussian_inputs, "digits": digits_inputs}


@functools.lru_cache(maxsize=None)
def measured(activation, sigma_w2, sigma_b2, alpha, norm, inputs, width=512, depth=16, n_nets=8, residual=True,
             n_inputs=200):
    """(prediction, mean over n_nets simulated nets of (z std, h std, grad ratio, Jacobian msv)), on the
    first n_inputs of the 200 inputs."""
    rng = np.random.default_rng(17)
    x = INPUTS[inputs](rng)[:n_inputs]
    sizes = [x.shape[1], *[width] * depth, 10]
    pred = T.predict(activation, sizes, sigma_w2, sigma_b2, np.mean(x**2, axis=1), residual=residual,
                     branch_scale=alpha if residual else None, norm=norm)
    a = 1 / math.sqrt(depth) if alpha is None else alpha
    runs = [simulate(activation, sizes, sigma_w2, sigma_b2, x, rng, residual=residual, alpha=a, norm=norm)
            for _ in range(n_nets)]
    return pred, [np.mean([r[i] for r in runs], axis=0) for i in range(4)]


CONFIGS = [pytest.param(act, sw2, sb2, alpha, norm, inputs, marks=pytest.mark.slow)
           for act, sw2, sb2 in CASES for alpha in (1.0, None) for norm in (None, "layernorm")
           for inputs in ("gaussian", "digits")]


def sample(activation, alpha, norm):
    """How many nets to average. ReLU with alpha = 1 and no norm varies far more from net to net than the
    rest (the stream's length is a product of 16 random factors of about 3, and its mean direction holds
    an O(1) share of the gradient): per net 11 % (z, h), 16-18 % (gradient ratio) and 17-25 % (Jacobian
    msv) at width 512, so 8 nets (standard error up to 9 %) cannot resolve 5 %; 128 nets of 50 inputs
    can (standard error <= 2 %). Every other case varies by 5 % or less per net."""
    return dict(n_nets=128, n_inputs=50) if (activation, alpha, norm) == ("relu", 1.0, None) else {}


@pytest.mark.parametrize("activation, sigma_w2, sigma_b2, alpha, norm, inputs", CONFIGS)
def test_residual_prediction_matches_simulation(activation, sigma_w2, sigma_b2, alpha, norm, inputs):
    """Mean over 8 nets of width 512, depth 16, 200 inputs (alpha None = 1 / sqrt(depth); see sample()):
    within 5 % per layer for the pre-activation std, the hidden output's std and the gradient ratio."""
    pred, (z_std, h_std, grad, _) = measured(activation, sigma_w2, sigma_b2, alpha, norm, inputs,
                                             **sample(activation, alpha, norm))
    np.testing.assert_allclose(z_std, pred.preact_std, rtol=0.05)
    np.testing.assert_allclose(h_std, pred.act_std, rtol=0.05)
    np.testing.assert_allclose(grad, pred.grad_ratio, rtol=0.05)


@pytest.mark.parametrize("activation, sigma_w2, sigma_b2, alpha, norm, inputs", CONFIGS)
def test_residual_jacobian_msv_matches_simulation(activation, sigma_w2, sigma_b2, alpha, norm, inputs):
    """The mean squared singular value of d h^L / d x within 5 %."""
    pred, (_, _, _, msv) = measured(activation, sigma_w2, sigma_b2, alpha, norm, inputs,
                                    **sample(activation, alpha, norm))
    assert msv == pytest.approx(pred.jacobian_msv, rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("activation, sigma_w2, sigma_b2, inputs", [("gelu", 2.0, 0.0, "gaussian"),
                                                                    ("relu", 2.0, 0.1, "digits")])
def test_stream_mean_direction_of_other_units(activation, sigma_w2, sigma_b2, inputs):
    """Units whose slope rises with z other than bias-free ReLU (gelu; ReLU with a bias), alpha = 1 / sqrt(16),
    no norm: the stream's mean direction carries them too. The mean field without it is off by 4-5 % in the
    first layers' gradient ratio and by 33-48 % in the Jacobian's msv; with it, within 5 %."""
    pred, (z_std, h_std, grad, msv) = measured(activation, sigma_w2, sigma_b2, None, None, inputs)
    np.testing.assert_allclose(z_std, pred.preact_std, rtol=0.05)
    np.testing.assert_allclose(h_std, pred.act_std, rtol=0.05)
    np.testing.assert_allclose(grad, pred.grad_ratio, rtol=0.05)
    assert msv == pytest.approx(pred.jacobian_msv, rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("activation, sigma_w2, sigma_b2, inputs", [
    (act, sw2, sb2, inputs) for act, sw2, sb2 in CASES for inputs in ("gaussian", "digits")])
def test_plain_layernorm_prediction_matches_simulation(activation, sigma_w2, sigma_b2, inputs):
    """LayerNorm before hidden layers 2..L of a plain net, 8 nets of width 512, depth 16: 5 % (with
    LayerNorm's finite-width factor; without it relu's gradient ratio is 5.1 % off at layer 1)."""
    pred, (z_std, h_std, grad, msv) = measured(activation, sigma_w2, sigma_b2, 1.0, "layernorm", inputs,
                                               residual=False)
    np.testing.assert_allclose(z_std, pred.preact_std, rtol=0.05)
    np.testing.assert_allclose(h_std, pred.act_std, rtol=0.05)
    np.testing.assert_allclose(grad, pred.grad_ratio, rtol=0.05)
    assert msv == pytest.approx(pred.jacobian_msv, rel=0.05)


def test_residual_prediction_small_fast_case():
    """The fast tier's check: tanh, LayerNorm, alpha = 1 / sqrt(16), width 256, 2 nets: 5 %."""
    pred, (z_std, h_std, grad, msv) = measured("tanh", 1.5, 0.05, None, "layernorm", "gaussian", width=256,
                                               n_nets=2)
    np.testing.assert_allclose(z_std, pred.preact_std, rtol=0.05)
    np.testing.assert_allclose(h_std, pred.act_std, rtol=0.05)
    np.testing.assert_allclose(grad, pred.grad_ratio, rtol=0.05)
    assert msv == pytest.approx(pred.jacobian_msv, rel=0.05)


def test_gate_at_zero_is_the_first_layer_alone_and_bad_configurations_say_why():
    sizes = [20, 64, 64, 64, 10]
    gated = T.predict("relu", sizes, 2.0, 0.0, 1.0, residual=True, branch_gate=True)
    np.testing.assert_allclose(gated.act_std, gated.act_std[0])  # h = h_1 + 0 * branch
    np.testing.assert_allclose(gated.chi[1:], 1.0)
    assert (gated.grad_ratio[1:-1] == 0).all() and gated.grad_ratio[0] > 0  # branch weights get no gradient
    record = T.record(gated)
    assert "theory/chi_star" not in record and "theory/xi_c" not in record and "theory/act_len_logvar" not in record
    assert record["theory/grad_ratio/layer_2"] == 0.0
    default = T.predict("tanh", sizes, 1.0, 0.0, 1.0, residual=True)
    assert np.nanmax(default.branch_scale) == pytest.approx(1 / math.sqrt(3))
    with pytest.raises(ValueError, match="equal hidden widths"):
        T.predict("relu", [20, 64, 32, 10], 2.0, 0.0, 1.0, residual=True)
    with pytest.raises(ValueError, match="need residual=True"):
        T.predict("relu", sizes, 2.0, 0.0, 1.0, branch_scale=0.5)
    with pytest.raises(ValueError, match="norm='batchnorm' is not offered; valid choices: None, layernorm"):
        T.predict("relu", sizes, 2.0, 0.0, 1.0, norm="batchnorm")


def test_layernorm_fixes_q_and_plain_homogeneous_nets_need_no_h_direction():
    ln = T.predict("tanh", [20, 64, 64, 64, 10], 1.7, 0.1, 3.0, norm="layernorm")
    assert ln.q[0] == pytest.approx(1.7 * 3.0 + 0.1) and ln.q[1:] == pytest.approx([1.8, 1.8])
    # plain relu: the h direction grows exactly like a generic one, so the backward is Schoenholz's
    plain = T.predict("relu", [30, 50, 70, 40, 10], [1.5, 2.0, 2.5, 1.0], 0.0, 1.0)
    n = np.array([30, 50, 70, 40, 10.0])
    sw2 = np.array([1.5, 2.0, 2.5, 1.0])
    dz = np.ones(4)
    for l in (2, 1, 0):
        dz[l] = 0.5 * n[l + 2] * sw2[l + 1] / n[l + 1] * dz[l + 1]
    a_sq = np.concatenate([[1.0], np.cumprod(sw2[:3] / 2)])
    want = np.sqrt(n[:-1] * a_sq * n[1:] * dz / (n[-2] * a_sq[-1] * n[-1]))
    np.testing.assert_allclose(plain.grad_ratio, want, rtol=1e-10)


def test_simulated_layernorm_jacobian_matches_finite_differences():
    """The simulation's LayerNorm Jacobian for a batch of tangents (n_tangents, N, n): its means are over
    units (an earlier version took them over the batch axis and measured a wrong Jacobian msv)."""
    rng = np.random.default_rng(0)
    h, t = rng.normal(1.0, 2.0, (5, 32)), rng.normal(size=(3, 5, 32))
    x_hat, inv = layernorm(h)
    eps = 1e-6
    fd = np.stack([(layernorm(h + eps * v)[0] - layernorm(h - eps * v)[0]) / (2 * eps) for v in t])
    np.testing.assert_allclose(layernorm_backward(t, x_hat, inv), fd, atol=1e-7)
    np.testing.assert_allclose(layernorm_backward(t[0], x_hat, inv), fd[0], atol=1e-7)


def test_plain_layernorm_finite_width_factor_is_relus_closed_form():
    """A plain LayerNorm layer's backward (and tangent) growth is chi (1 + beta / n) for the width n it
    normalises: E[1 / sd^2] exceeds 1 / E[sd^2] by the sample variance's spread, and LN removes the mean
    and h directions. ReLU's beta in closed form: mu4 / v^2 - 4 E[1(z > 0) (relu z - mu)^2] / v (z ~ N(0, 1))."""
    mu = 1 / math.sqrt(2 * math.pi)
    v = 0.5 - mu**2
    mu4 = 1.5 - 4 * mu * math.sqrt(2 / math.pi) + 3 * mu**2 - 3 * mu**4
    beta = mu4 / v**2 - 4 * (0.5 - 1.5 * mu**2) / v  # 2.343
    width = 256
    pred = T.predict("relu", [20, width, width, width, 10], 2.0, 0.0, 1.0, norm="layernorm")
    chi = 2 * 0.5 / (2 * v)  # sigma_w^2 E[phi'^2] / Var(relu(z)), q = 2
    assert pred.chi[1:] == pytest.approx([chi, chi], rel=1e-9)  # the recorded chi stays the mean field's
    assert (pred.grad_ratio[1] / pred.grad_ratio[2]) ** 2 == pytest.approx(chi * (1 + beta / width), rel=1e-9)
    assert (pred.grad_ratio[0] / pred.grad_ratio[1]) ** 2 == pytest.approx(20 / width * chi * (1 + beta / width),
                                                                           rel=1e-9)
    assert pred.jacobian_msv == pytest.approx(width / 20 * chi**2 * (1 + beta / width) ** 2, rel=1e-9)
