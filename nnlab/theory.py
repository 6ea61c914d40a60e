"""Mean-field signal propagation at initialisation: what a wide random network should do, per layer.

Pure NumPy (Gaussian integrals by Gauss quadrature); it imports neither Hydra nor MLflow
and uses the core only for its activation functions, so theory and network share one phi.

The model (Poole et al. 2016, "Exponential expressivity in deep neural networks through transient
chaos"; Schoenholz et al. 2017, "Deep information propagation"): hidden layer l computes
z^l = a^{l-1} W_l + b_l, a^l = phi(z^l), with W_l's entries of variance sigma_{w,l}^2 / n_{l-1}
and b_l's of variance sigma_b^2. For a wide layer, z^l is Gaussian over units, with variance

    q^l = sigma_{w,l}^2 E_z[phi(sqrt(q^{l-1}) z)^2] + sigma_b^2,      z ~ N(0, 1)        (length map)

and q^1 = sigma_{w,1}^2 E[x^2] + sigma_b^2 from the data's mean squared input entry (Poole et al.'s
"length map"; Schoenholz et al. write the same recursion for q^l_aa). Two inputs' pre-activations
have correlation c^l, which follows the correlation map

    c^l = (sigma_w^2 E[phi(u_1) phi(u_2)] + sigma_b^2) / q*,
    u_1 = sqrt(q*) z_1,  u_2 = sqrt(q*) (c^{l-1} z_1 + sqrt(1 - c^{l-1}^2) z_2)           (correlation map)

Its slope at c = 1 is

    chi_1 = sigma_w^2 E_z[phi'(sqrt(q*) z)^2],                                            (chi_1)

which sorts (sigma_w^2, sigma_b^2) into the ordered phase (chi_1 < 1: inputs become alike, gradients
vanish), the chaotic phase (chi_1 > 1: inputs decorrelate, gradients explode) and the critical line
chi_1 = 1 between them. Near a fixed point, q and c approach it as e^{-l/xi}, with depth scales
(Schoenholz et al. 2017, Sec. 3)

    xi_q^{-1} = -log(chi_1 + sigma_w^2 E[phi''(u) phi(u)]),  u = sqrt(q*) z                (xi_q)
    xi_c^{-1} = -log(sigma_w^2 E[phi'(u_1) phi'(u_2)])  at (q*, c*)                         (xi_c)

(= -log chi_1 in the ordered phase, where c* = 1); xi_c diverges on the critical line, and
Schoenholz et al. find that networks train up to a depth of about 6 xi_c. Backwards (their Sec. 5),
the per-unit gradient second moment obeys q~^l = q~^{l+1} (n_{l+1} / n_{l+2}) chi_1, i.e. it grows
or shrinks by chi_1 per layer. The input-output Jacobian J = d a^L / d x (Pennington et al. 2017,
"Resurrecting the sigmoid in deep learning through dynamical isometry") has mean squared singular
value n_L / min(n_0, n_L) * prod_l chi^l, chi^l = sigma_{w,l}^2 E[phi'(sqrt(q^l) z)^2] (the layer's
own chi; = chi_1^L at the fixed point).

nnlab's initialisers in this parameterisation (:func:`effective_sigma_w2`): sigma_{w,l}^2 =
fan_in * Var(W_l), i.e. He 2, LeCun 1, random fan_in * std^2, Xavier 2 fan_in / (fan_in + fan_out)
(different per layer when widths differ: each layer gets its own sigma_{w,l}^2, which is exact for
the length map; the fixed-point quantities use the last hidden layer's), orthogonal gain^2 *
min(1, fan_in / fan_out) (a semi-orthogonal matrix's entries have variance 1 / max(fan_in,
fan_out)); variance_scaling sigma_w^2 and sigma_b^2 as given. Every other initialiser has b = 0.
Orthogonal weights give the same length map as Gaussian ones (the pre-activations of a wide layer
are Gaussian either way) but a different Jacobian spectrum, which the mean field does not predict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from nnlab.core.activations import Activation, get_activation

Array = np.ndarray

# Nodes and weights for E_z[f(z)], z ~ N(0, 1): Gauss-Legendre on [-Z_MAX, 0] and [0, Z_MAX] with
# the normal density folded into the weights. Splitting at 0 matters: relu, leaky_relu, elu and
# softsign (or their derivatives) have a kink there, which plain Gauss-Hermite (smooth integrands
# only) integrates with errors of several percent; on each half the integrand is smooth.
Z_MAX = 12.0  # P(|z| > 12) ~ 4e-33


def _normal_rule(n_half: int) -> tuple[Array, Array]:
    x, w = np.polynomial.legendre.leggauss(n_half)
    z = np.concatenate([(x - 1) * Z_MAX / 2, (x + 1) * Z_MAX / 2])
    w = np.concatenate([w, w]) * Z_MAX / 2 * np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    return z, w


_Z, _W = _normal_rule(80)
_Z2, _W2 = _normal_rule(40)
_ZA, _ZB = (g.ravel() for g in np.meshgrid(_Z2, _Z2, indexing="ij"))
_WAB = np.outer(_W2, _W2).ravel()

Q_MIN, Q_MAX = 1e-300, 1e12  # below: q* = 0 (signal dies); above: q* = inf (grows without bound)
CRITICAL_TOL = 1e-6  # |chi* - 1| below this is the critical line


def _phi(act: Activation) -> Callable[[Array], Array]:
    return lambda u: act(u)


def _dphi(act: Activation) -> Callable[[Array], Array]:
    return lambda u: act.backward(u, act(u), np.ones_like(u))


def gaussian_expectation(f: Callable[[Array], Array], q: float) -> float:
    """E_z[f(sqrt(q) z)] for z ~ N(0, 1), by Gauss-Legendre quadrature split at 0 (q >= 0)."""
    return float(np.dot(f(math.sqrt(q) * _Z), _W))


def length_map(activation: Activation | str, sigma_w2: float, sigma_b2: float, q: float) -> float:
    """q^l = sigma_w^2 E[phi(sqrt(q^{l-1}) z)^2] + sigma_b^2 (Poole et al. 2016, the length map)."""
    act = get_activation(activation)
    return sigma_w2 * gaussian_expectation(lambda u: _phi(act)(u) ** 2, q) + sigma_b2


def chi(activation: Activation | str, sigma_w2: float, q: float) -> float:
    """chi = sigma_w^2 E[phi'(sqrt(q) z)^2]: the per-layer growth of a perturbation's (or a
    gradient's) squared size (Poole et al. 2016 / Schoenholz et al. 2017, chi_1 at q = q*)."""
    act = get_activation(activation)
    return sigma_w2 * gaussian_expectation(lambda u: _dphi(act)(u) ** 2, max(q, Q_MIN))


def length_map_slope(activation: Activation | str, sigma_w2: float, q: float) -> float:
    """d q^l / d q^{l-1} = chi_1 + sigma_w^2 E[phi''(u) phi(u)] (the argument of xi_q's log).

    Computed as sigma_w^2 E[phi(u) phi'(u) z] / sqrt(q) (Gaussian integration by parts), which needs
    no second derivative and is right for relu's kink too."""
    act = get_activation(activation)
    q = max(q, Q_MIN)
    return sigma_w2 * gaussian_expectation(lambda u: _phi(act)(u) * _dphi(act)(u) * u, q) / q


def fixed_point(activation: Activation | str, sigma_w2: float, sigma_b2: float, q0: float = 1.0) -> float:
    """q* reached by iterating the length map from q0: 0 when the signal dies out, inf when it
    grows without bound (unbounded phi in the chaotic phase), else the fixed point.

    The map is increasing in q for every activation of the core, so from q0 the iteration moves
    monotonically to the nearest fixed point in that direction; it is found by bisection on
    g(q) = map(q) - q (in log q), which is quick even at the critical point, where iterating
    converges only like 1/l.
    """
    act = get_activation(activation)

    def g(q: float) -> float:
        return length_map(act, sigma_w2, sigma_b2, q) - q

    g0 = g(q0)
    if abs(g0) <= 1e-12 * q0:
        return q0
    if g0 < 0:  # shrinking: the largest root below q0, or 0
        lo, hi = Q_MIN, q0
        if g(lo) < 0:
            return 0.0
    else:  # growing: the smallest root above q0, or inf
        lo, hi = q0, q0
        while g(hi) >= 0:
            hi *= 4
            if hi > Q_MAX:
                return math.inf
    for _ in range(200):  # g(lo) >= 0 > g(hi)
        mid = math.sqrt(lo * hi)
        if g(mid) >= 0:
            lo = mid
        else:
            hi = mid
        if hi / lo - 1 < 1e-12:
            break
    return math.sqrt(lo * hi)


def _pair_expectation(f: Callable[[Array], Array], g: Callable[[Array], Array], q: float, c: float) -> float:
    """E[f(u_1) g(u_2)] for (u_1, u_2) Gaussian, variances q, correlation c."""
    s = math.sqrt(q)
    u1 = s * _ZA
    u2 = s * (c * _ZA + math.sqrt(max(1 - c * c, 0.0)) * _ZB)
    return float(np.dot(f(u1) * g(u2), _WAB))


def correlation_map(activation: Activation | str, sigma_w2: float, sigma_b2: float, q: float, c: float) -> float:
    """c^l = (sigma_w^2 E[phi(u_1) phi(u_2)] + sigma_b^2) / q at q = q* (Poole et al. 2016)."""
    act = get_activation(activation)
    return (sigma_w2 * _pair_expectation(_phi(act), _phi(act), q, c) + sigma_b2) / q


def correlation_fixed_point(activation: Activation | str, sigma_w2: float, sigma_b2: float, q: float) -> float:
    """The stable fixed point c* of the correlation map in [0, 1]: 1 in the ordered phase, below 1
    in the chaotic phase (0 for an odd phi with sigma_b = 0)."""
    act = get_activation(activation)
    if not 0 < q < math.inf or chi(act, sigma_w2, q) <= 1:
        return 1.0

    def g(c: float) -> float:
        return correlation_map(act, sigma_w2, sigma_b2, q, c) - c

    lo, hi = 0.0, 1.0 - 1e-6
    if g(hi) >= 0:  # so close to critical that c* cannot be told from 1
        return 1.0
    for _ in range(60):  # g(lo) >= 0 > g(hi)
        mid = 0.5 * (lo + hi)
        if g(mid) >= 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def depth_scale(rate: float) -> float:
    """xi = -1 / log(rate) for a per-layer rate in (0, 1]; inf at rate 1 (no decay); for rate > 1
    (the distance from the fixed point grows) the depth scale of that growth, 1 / log(rate)."""
    if rate <= 0:
        return 0.0
    log = math.log(rate)
    return math.inf if abs(log) < 1e-12 else 1.0 / abs(log)


def phase(chi_star: float, tol: float = CRITICAL_TOL) -> str:
    """"ordered" (chi* < 1), "critical" (|chi* - 1| <= tol) or "chaotic" (chi* > 1)."""
    if abs(chi_star - 1) <= tol:
        return "critical"
    return "ordered" if chi_star < 1 else "chaotic"


@dataclass(frozen=True)
class FixedPoint:
    """The fixed-point quantities of one (phi, sigma_w^2, sigma_b^2)."""

    q_star: float
    c_star: float
    chi_star: float  # chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]
    xi_q: float
    xi_c: float
    phase: str


def fixed_point_summary(activation: Activation | str, sigma_w2: float, sigma_b2: float,
                        q0: float = 1.0) -> FixedPoint:
    """q*, c*, chi_1, xi_q, xi_c and the phase for one (phi, sigma_w^2, sigma_b^2), reached from q0.

    With q* = inf (unbounded phi, growing signal) chi and the slopes are taken at q = 1e12, their
    limit for positively homogeneous units such as relu."""
    act = get_activation(activation)
    q_star = fixed_point(act, sigma_w2, sigma_b2, q0)
    q_eval = min(max(q_star, Q_MIN), Q_MAX)
    chi_star = chi(act, sigma_w2, q_eval)
    c_star = correlation_fixed_point(act, sigma_w2, sigma_b2, q_eval)
    if c_star < 1:
        rate_c = sigma_w2 * _pair_expectation(_dphi(act), _dphi(act), q_eval, c_star)
    else:
        rate_c = chi_star
    xi_q = depth_scale(length_map_slope(act, sigma_w2, q_eval))
    return FixedPoint(float(q_star), float(c_star), float(chi_star), xi_q, depth_scale(rate_c), phase(chi_star))


# --- nnlab's initialisers in the mean-field parameterisation ------------------------------------
def _orthogonal(fan_in: Array, fan_out: Array, gain: float = 1.0) -> Array:
    return gain**2 * np.minimum(1.0, fan_in / fan_out)


_SIGMA_W2: dict[str, Callable[..., Array]] = {
    "he": lambda fan_in, fan_out, distribution="normal": np.full(len(fan_in), 2.0),
    "lecun": lambda fan_in, fan_out, distribution="normal": np.full(len(fan_in), 1.0),
    "xavier": lambda fan_in, fan_out, distribution="uniform": 2.0 * fan_in / (fan_in + fan_out),
    "random": lambda fan_in, fan_out, std=0.01: fan_in * std**2,
    "orthogonal": _orthogonal,
    "variance_scaling": lambda fan_in, fan_out, sigma_w=1.0, sigma_b=0.0: np.full(len(fan_in), sigma_w**2),
}


def effective_sigma_w2(init: str, sizes: Sequence[int], **params: float) -> Array:
    """sigma_{w,l}^2 = fan_in * Var(W_l) of each layer of an MLP of ``sizes`` [n_in, ..., n_out]
    -> (len(sizes) - 1,), for one of nnlab's initialisers and its parameters."""
    if init not in _SIGMA_W2:
        valid = ", ".join(sorted(_SIGMA_W2))
        raise ValueError(f"no mean-field sigma_w for initializer {init!r}; valid choices: {valid}")
    sizes = np.asarray(sizes, dtype=np.float64)
    return np.asarray(_SIGMA_W2[init](sizes[:-1], sizes[1:], **params), dtype=np.float64)


def effective_sigma_b2(init: str, **params: float) -> float:
    """sigma_b^2: variance_scaling's sigma_b^2; 0 for every other initialiser (b = 0)."""
    return float(params.get("sigma_b", 0.0)) ** 2 if init == "variance_scaling" else 0.0


# --- a whole network --------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """Mean-field predictions for the hidden layers l = 1..L of one network at initialisation.

    Arrays have one entry per hidden layer (index 0 = layer 1), except ``grad_ratio``, which has
    L + 1 (the output layer last)."""

    q: Array  # (L,) pre-activation variance q^l
    act_mean: Array  # (L,) E[phi(z^l)] over units and inputs
    act_std: Array  # (L,) std of phi(z^l) over units and inputs
    chi: Array  # (L,) chi^l = sigma_{w,l}^2 E[phi'(sqrt(q^l) z)^2]
    grad_ratio: Array  # (L+1,) ||dL/dW_l|| / ||dL/dW_{L+1}|| for one input (output layer = 1)
    jacobian_msv: float  # predicted mean squared singular value of d a^L / d x
    fixed: FixedPoint  # at the last hidden layer's sigma_w^2, reached from q^L

    @property
    def preact_std(self) -> Array:
        return np.sqrt(self.q)


def predict(activation: Activation | str, sizes: Sequence[int], sigma_w2: Sequence[float] | float,
            sigma_b2: float, input_second_moment: float) -> Prediction:
    """Propagate the length map through an MLP of ``sizes`` [n_in, h_1, ..., h_L, n_out] from the
    data's mean squared input entry E[x^2]; ``sigma_w2`` per layer (len(sizes) - 1,) or one value.

    Backward (Schoenholz et al. 2017, Sec. 5): for one input, the per-unit second moment of
    dLoss/da^{l-1} is (n_l / n_{l-1}) chi^l times that of dLoss/da^l, and ||dLoss/dW_l||^2 =
    n_{l-1} E[(a^{l-1})^2] * n_l E[(dLoss/dz^l)^2]; ``grad_ratio`` is its square root relative to the
    output layer's (whose pre-activation gradient is the loss's, which the theory leaves free).
    """
    act = get_activation(activation)
    sizes = [int(s) for s in sizes]
    depth = len(sizes) - 2
    if depth < 1:
        raise ValueError(f"the theory describes hidden layers; sizes {sizes} have none")
    sw2 = np.broadcast_to(np.asarray(sigma_w2, dtype=np.float64), (len(sizes) - 1,)).copy()
    phi, dphi = _phi(act), _dphi(act)
    q, mean, second, chis, dsq = (np.empty(depth) for _ in range(5))
    prev = input_second_moment  # E[(a^0)^2] = E[x^2]
    for l in range(depth):
        q[l] = sw2[l] * prev + sigma_b2
        mean[l] = gaussian_expectation(phi, q[l])
        second[l] = gaussian_expectation(lambda u: phi(u) ** 2, q[l])
        dsq[l] = gaussian_expectation(lambda u: dphi(u) ** 2, max(q[l], Q_MIN))
        chis[l] = sw2[l] * dsq[l]
        prev = second[l]
    n = np.asarray(sizes, dtype=np.float64)
    a_sq = np.concatenate([[input_second_moment], second])  # E[(a^{l-1})^2] for l = 1..L+1
    e_sq = np.concatenate([dsq, [1.0]])  # E[phi'(z^l)^2] for l = 1..L+1 (output: identity)
    dz = np.empty(depth + 1)  # per-unit E[(dLoss/dz^l)^2], output layer = 1
    dz[-1] = 1.0
    for l in range(depth - 1, -1, -1):  # layer l+1 (1-based) from layer l+2
        da = n[l + 2] * sw2[l + 1] / n[l + 1] * dz[l + 1]  # E[(dLoss/da^{l+1})^2] per unit
        dz[l] = e_sq[l] * da
    grad_sq = n[:-1] * a_sq * n[1:] * dz
    msv = n[depth] / min(n[0], n[depth]) * float(np.prod(chis))
    return Prediction(q=q, act_mean=mean, act_std=np.sqrt(np.maximum(second - mean**2, 0.0)), chi=chis,
                      grad_ratio=np.sqrt(grad_sq / grad_sq[-1]), jacobian_msv=msv,
                      fixed=fixed_point_summary(act, sw2[depth - 1], sigma_b2, q0=q[-1]))


def predict_network(sizes: Sequence[int], activation: str, init: str, x: Array, *,
                    activation_params: dict | None = None, init_params: dict | None = None) -> Prediction:
    """:func:`predict` for an nnlab MLP of ``sizes`` built with ``init`` (and its params), fed the
    inputs ``x`` (N, n_in), whose mean squared entry starts the length map."""
    init_params = dict(init_params or {})
    act = get_activation(activation, **(activation_params or {}))
    second_moment = float(np.mean(np.square(x, dtype=np.float64)))
    return predict(act, sizes, effective_sigma_w2(init, sizes, **init_params), effective_sigma_b2(init, **init_params),
                   second_moment)


def record(prediction: Prediction) -> dict[str, float]:
    """The prediction under the record's names (DESIGN.md), logged at step 0:
    ``theory/preact_std/layer_{i}``, ``theory/act_std/layer_{i}``, ``theory/chi/layer_{i}``,
    ``theory/grad_ratio/layer_{i}`` (i = 1..L+1), ``theory/chi_star``, ``theory/xi_c``."""
    out: dict[str, float] = {}
    for i, (s, a, c) in enumerate(zip(prediction.preact_std, prediction.act_std, prediction.chi), 1):
        out[f"theory/preact_std/layer_{i}"] = float(s)
        out[f"theory/act_std/layer_{i}"] = float(a)
        out[f"theory/chi/layer_{i}"] = float(c)
    for i, r in enumerate(prediction.grad_ratio, 1):
        out[f"theory/grad_ratio/layer_{i}"] = float(r)
    out["theory/chi_star"] = float(prediction.fixed.chi_star)
    out["theory/xi_c"] = float(prediction.fixed.xi_c)
    return out


def critical_sigma_w2(activation: Activation | str, sigma_b2: float, lo: float = 0.05, hi: float = 20.0,
                      q0: float = 1.0) -> float:
    """The sigma_w^2 where chi* = 1 for this sigma_b^2 (the order-to-chaos line), by bisection."""
    act = get_activation(activation)

    def excess(sw2: float) -> float:
        return fixed_point_summary(act, sw2, sigma_b2, q0).chi_star - 1

    if excess(lo) > 0 or excess(hi) < 0:
        raise ValueError(f"no critical sigma_w^2 in [{lo}, {hi}] for {act.name} at sigma_b^2={sigma_b2}")
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if excess(mid) > 0:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)
