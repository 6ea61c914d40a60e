"""One layer's mean-field maps and their fixed points (Poole et al. 2016; Schoenholz et al. 2017).

The length map q -> sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2, its fixed point q*, the correlation
map and its stable fixed point c*, chi_1 and the depth scales xi_q, xi_c and xi_grad.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from nnlab.core.activations import Activation, get_activation
from nnlab.theory.quadrature import Array, gaussian_expectation, pair_expectation

Q_MIN, Q_MAX = 1e-300, 1e12  # below: q* = 0 (signal dies); above: q* = inf (grows without bound)
CRITICAL_TOL = 1e-6  # |chi* - 1| below this is the critical line
ERROR_MARGIN = 10.0  # a value of the correlation map counts only when it exceeds 10x the quadrature's error


def _phi(act: Activation) -> Callable[[Array], Array]:
    return lambda u: act(u)


def _dphi(act: Activation) -> Callable[[Array], Array]:
    return lambda u: act.backward(u, act(u), np.ones_like(u))


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


class _CorrelationMap:
    """c -> (sigma_w^2 E[phi(u_1) phi(u_2)] + sigma_b^2) / (the same at c = 1), at variance q.

    Dividing by the map's own value at c = 1 (the length map at q, by the same quadrature rule)
    makes c = 1 an exact fixed point, so the sign of map(c) - c near 1 is decided by the map's
    slope, not by the rule's rounding (with the old grid, map(1) = 1 + 1.1e-7 for gelu at q* = 92
    hid c* = 0.9977)."""

    def __init__(self, act: Activation, sigma_w2: float, sigma_b2: float, q: float):
        self.phi, self.w2, self.b2, self.q = _phi(act), sigma_w2, sigma_b2, q
        top, err = pair_expectation(self.phi, self.phi, q, 1.0, with_error=True)
        self.norm, self.norm_err = sigma_w2 * top + sigma_b2, sigma_w2 * err

    def __call__(self, c: float) -> tuple[float, float]:
        """(map(c), an estimate of its absolute error)."""
        value, err = pair_expectation(self.phi, self.phi, self.q, c, with_error=True)
        num = self.w2 * value + self.b2
        return num / self.norm, (self.w2 * err + abs(num) * self.norm_err / self.norm) / self.norm


def correlation_map(activation: Activation | str, sigma_w2: float, sigma_b2: float, q: float, c: float) -> float:
    """c^l = (sigma_w^2 E[phi(u_1) phi(u_2)] + sigma_b^2) / q at q = q* (Poole et al. 2016), with q
    the same expression at c = 1 (= the length map at q*, so that map(1) = 1 exactly)."""
    return _CorrelationMap(get_activation(activation), sigma_w2, sigma_b2, q)(c)[0]


def _root(g: Callable[[float], float], lo: float, hi: float, tol: float = 1e-13) -> float:
    """A root of g in [lo, hi] with g(lo) >= 0 > g(hi), by the Illinois variant of regula falsi
    (superlinear, and never leaves the bracket)."""
    glo, ghi, side = g(lo), g(hi), 0
    while hi - lo > tol:
        mid = hi - ghi * (hi - lo) / (ghi - glo) if ghi != glo else 0.5 * (lo + hi)
        if not lo < mid < hi:
            mid = 0.5 * (lo + hi)
        gm = g(mid)
        if gm >= 0:
            lo, glo = mid, gm
            if side == -1:
                ghi *= 0.5
            side = -1
        else:
            hi, ghi = mid, gm
            if side == 1:
                glo *= 0.5
            side = 1
        if gm == 0:
            return mid
    return 0.5 * (lo + hi)


def correlation_fixed_point(activation: Activation | str, sigma_w2: float, sigma_b2: float, q: float) -> float:
    """The stable fixed point c* of the correlation map in [0, 1]: 1 in the ordered phase, below 1
    in the chaotic phase (0 for an odd phi with sigma_b = 0).

    In the chaotic phase map(c) - c is negative just below c = 1 (slope chi_1 > 1 at the exact fixed
    point 1) and >= 0 at c = 0. The bracket's upper end is the largest 1 - delta, delta = 1e-12,
    1e-11, ..., where map(c) - c is told from 0 (|value| > 10x the quadrature's error estimate):
    negative there means c* lies below it; positive means c* is closer to 1 than the quadrature
    resolves, and c* = 1 is returned."""
    act = get_activation(activation)
    if not Q_MIN < q < Q_MAX or chi(act, sigma_w2, q) <= 1:
        return 1.0
    cmap = _CorrelationMap(act, sigma_w2, sigma_b2, q)
    for k in range(12, 0, -1):
        hi = 1.0 - 10.0**-k
        value, err = cmap(hi)
        excess = value - hi
        if abs(excess) > ERROR_MARGIN * max(err, 1e-14):  # 1e-14: rounding of values near 1
            break
    else:
        return 1.0
    if excess >= 0:
        return 1.0
    return _root(lambda c: cmap(c)[0] - c, 0.0, hi)


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
    """The fixed-point quantities of one (phi, sigma_w^2, sigma_b^2).

    ``xi_c`` is the correlation depth scale, -1 / log(slope of the correlation map at c*). It is one
    only when 0 < q* < inf: with q* = 0 (sigma_b = 0 in the ordered phase) or q* = inf (relu-like
    units with sigma_w^2 above critical) the normalised correlation map's slope at c = 1 is exactly
    1, correlations approach their limit as a power law (relu: 1 - c ~ 1/l^2) or freeze (units
    linear near 0, such as tanh, as q -> 0), and xi_c is inf. ``xi_grad`` = 1 / |log chi_1| is the
    depth over which the gradient's second moment changes by e (equal to xi_c in the ordered phase
    at finite q*, where c* = 1)."""

    q_star: float
    c_star: float
    chi_star: float  # chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]
    xi_q: float
    xi_c: float
    phase: str
    xi_grad: float = math.nan

    @property
    def correlation_scale_defined(self) -> bool:
        """Whether ``xi_c`` is a correlation depth scale (0 < q* < inf)."""
        return 0.0 < self.q_star < math.inf

    @property
    def xi_trainable(self) -> float:
        """The depth scale of Schoenholz et al.'s "trainable up to ~6 xi": xi_c where it is a
        correlation depth scale, else the gradient's xi_grad (the only exponential scale left)."""
        return self.xi_c if self.correlation_scale_defined else self.xi_grad


def fixed_point_summary(activation: Activation | str, sigma_w2: float, sigma_b2: float,
                        q0: float = 1.0) -> FixedPoint:
    """q*, c*, chi_1, xi_q, xi_c, xi_grad and the phase for one (phi, sigma_w^2, sigma_b^2), from q0.

    With q* = 0 or inf the chi and slopes are taken at q = 1e-300 or 1e12, their limits (exact for
    positively homogeneous units such as relu); xi_c is then inf (see :class:`FixedPoint`)."""
    act = get_activation(activation)
    q_star = fixed_point(act, sigma_w2, sigma_b2, q0)
    q_eval = min(max(q_star, Q_MIN), Q_MAX)
    chi_star = chi(act, sigma_w2, q_eval)
    xi_q = depth_scale(length_map_slope(act, sigma_w2, q_eval))
    xi_grad = depth_scale(chi_star)
    if not 0 < q_star < math.inf:
        return FixedPoint(float(q_star), 1.0, float(chi_star), xi_q, math.inf, phase(chi_star), xi_grad)
    c_star = correlation_fixed_point(act, sigma_w2, sigma_b2, q_eval)
    if c_star < 1:
        # the slope of the normalised map at c*: sigma_w^2 E[phi'(u_1) phi'(u_2)] q* / (map's norm)
        cmap = _CorrelationMap(act, sigma_w2, sigma_b2, q_eval)
        rate_c = sigma_w2 * pair_expectation(_dphi(act), _dphi(act), q_eval, c_star) * q_eval / cmap.norm
    else:
        rate_c = chi_star
    return FixedPoint(float(q_star), float(c_star), float(chi_star), xi_q, depth_scale(rate_c), phase(chi_star),
                      xi_grad)


def critical_sigma_w2(activation: Activation | str, sigma_b2: float, lo: float = 0.05, hi: float = 20.0,
                      q0: float = 1.0) -> float:
    """The sigma_w^2 where chi* = 1 for this sigma_b^2 (the order-to-chaos line), by bisection."""
    act = get_activation(activation)

    def excess(sw2: float) -> float:
        q = min(max(fixed_point(act, sw2, sigma_b2, q0), Q_MIN), Q_MAX)
        return chi(act, sw2, q) - 1

    if excess(lo) > 0 or excess(hi) < 0:
        raise ValueError(f"no critical sigma_w^2 in [{lo}, {hi}] for {act.name} at sigma_b^2={sigma_b2}")
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if excess(mid) > 0:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)
