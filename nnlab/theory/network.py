"""A whole network's mean-field prediction at initialisation: plain, residual and LayerNorm MLPs.

Hidden layer l = 1..L reads x_l (the data for l = 1, else the previous hidden output h_{l-1}, or
LN(h_{l-1}) with LayerNorm), computes z_l = x_l W_l + b_l, and outputs h_l = phi(z_l) (plain) or,
for a residual layer (l >= 2), h_l = h_{l-1} + alpha_l phi(z_l). At infinite width each unit's z_l
is Gaussian with variance q_l = sigma_{w,l}^2 E[x_l^2] + sigma_b^2 and independent of the same
unit of h_{l-1} (W_l is independent of h_{l-1}), which gives, with m = E[phi(z)], s = E[phi(z)^2],

    E[h_l]   = E[h_{l-1}] + alpha m                                   (the mean over units and inputs)
    E[h_l^2] = E[h_{l-1}^2] + 2 alpha E[h_{l-1}] m + alpha^2 s         (Yang & Schoenholz's reduced resnet)

LayerNorm (gain 1, bias 0 at initialisation) maps each sample to mean 0 and mean square 1 over
units, so E[x_l^2] = 1 and q_l = sigma_w^2 + sigma_b^2; its Jacobian is (I - 11'/n - x x'/n) / sd,
sd^2 = E[h^2] - E[h]^2 the sample's variance over units: at infinite width the two projections
remove 2 of n directions and change no mean squared value, while dividing by the standard
deviation (not the root mean square) is what the mean E[h] changes.

Per layer the growth of a small perturbation's mean square (per unit), chi_l, is
sigma_w^2 E[phi'(z)^2] (/ sd_{l-1}^2 after LayerNorm), and 1 + alpha^2 times that for a residual
layer (the skip and the branch are uncorrelated at initialisation). In the mean field the per-unit
mean square of dLoss/dh_{l-1} is (n_l / n_{l-1}) chi_l times that of dLoss/dh_l, and the input-output
Jacobian d h_L / d x has mean squared singular value n_L / min(n_0, n_L) prod_l chi_l: nnlab's
prediction for plain nets and residual nets with LayerNorm. Two finite-width terms that depth
amplifies are added (docs/theory.md):

- residual nets without norm: a tangent's (or gradient's) components along the stream h and its
  mean direction 1 grow faster than chi when the units' slope rises with z (relu, gelu, elu, relu
  with a bias: the stream gains a mean), through the skip-branch cross term the mean field sets to 0;
  they are tracked beside its length, to first order in 1/n (_stream_transition);
- plain nets with LayerNorm: each LayerNorm multiplies chi by 1 + beta / n (E[1 / sd^2] > 1 / E[sd^2]
  over n units, less the two directions LN removes).

``chi`` (and ``theory/chi``) stays the mean field's; ``grad_ratio`` and ``jacobian_msv`` include both.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from nnlab.core.activations import Activation, get_activation
from nnlab.theory.meanfield import Q_MIN, FixedPoint, fixed_point_summary
from nnlab.theory.quadrature import _W, _Z, Array

NORMS = (None, "layernorm")


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
    L + 1 (the output layer last). For residual and normalised nets every per-layer quantity is
    about the hidden layer's output h (the sum, for a residual layer)."""

    q: Array  # (L,) pre-activation variance q^l
    act_mean: Array  # (L,) E[h^l] over units and inputs
    act_std: Array  # (L,) std of h^l over units and inputs
    chi: Array  # (L,) per-unit mean-square growth of a perturbation from h^{l-1} to h^l
    grad_ratio: Array  # (L+1,) ||dL/dW_l|| / ||dL/dW_{L+1}|| for one input (output layer = 1)
    jacobian_msv: float  # predicted mean squared singular value of d h^L / d x
    fixed: FixedPoint | None  # plain nets: at the last hidden layer's sigma_w^2, from q^L; else None
    mean_sq: Array | None = None  # (L,) E[(h^l)^2]
    branch_scale: Array | None = None  # (L,) alpha_l of each residual layer (NaN: no skip)
    act_len_logvar: float | None = None  # see nnlab.theory.fluctuations; None where not defined

    @property
    def preact_std(self) -> Array:
        return np.sqrt(self.q)


def _branch_scales(depth: int, residual: bool, branch_scale: float | None, branch_gate: bool) -> Array:
    alpha = np.full(depth, np.nan)
    if residual:
        if branch_gate:
            value = 0.0  # SkipInit / ReZero: the gate starts at 0
        elif branch_scale is None:
            value = 1.0 / math.sqrt(depth)
        else:
            value = float(branch_scale)
        alpha[1:] = value  # the first hidden layer has no skip (its width differs from the input's)
    return alpha


def predict(activation: Activation | str, sizes: Sequence[int], sigma_w2: Sequence[float] | float,
            sigma_b2: float, input_second_moment: float | Sequence[float], *, residual: bool = False,
            branch_scale: float | None = None, branch_gate: bool = False, norm: str | None = None) -> Prediction:
    """Propagate the mean field through an MLP of ``sizes`` [n_in, h_1, ..., h_L, n_out] from the
    data's mean squared input entry E[x^2] (one value, or one per input or group of inputs (K,):
    each is propagated on its own and the statistics averaged over them); ``sigma_w2`` per layer
    (len(sizes) - 1,) or one value.

    ``residual``: hidden layers 2..L are h + alpha phi(W h + b) (widths must then be equal after
    the first); ``branch_scale`` alpha (None: 1 / sqrt(L)); ``branch_gate``: alpha is a gate that
    starts at 0. ``norm="layernorm"``: LayerNorm on the input of hidden layers 2..L (inside the
    branch of a residual layer).

    Backward (Schoenholz et al. 2017, Sec. 5): for one input, ||dLoss/dW_l||^2 = n_{l-1} E[x_l^2]
    * n_l E[(dLoss/dz^l)^2], with dLoss/dz^l = alpha_l phi'(z^l) dLoss/dh^l in a residual layer;
    ``grad_ratio`` is its square root relative to the output layer's (whose pre-activation
    gradient is the loss's, which the theory leaves free). The Dense weights only: with a gate at 0
    a branch's weight gradient, and so its ratio, is 0. ``grad_ratio`` and ``jacobian_msv`` include
    the finite-width terms of the module's docstring (the stream's mean direction; LayerNorm's factor).
    """
    act = get_activation(activation)
    sizes = [int(s) for s in sizes]
    depth = len(sizes) - 2
    if depth < 1:
        raise ValueError(f"the theory describes hidden layers; sizes {sizes} have none")
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not offered; valid choices: None, layernorm")
    if residual and len(set(sizes[1:-1])) > 1:
        raise ValueError(f"a residual net needs equal hidden widths after the first; got sizes {sizes}")
    if not residual and (branch_gate or branch_scale is not None):
        raise ValueError(f"branch_scale={branch_scale!r} / branch_gate={branch_gate!r} need residual=True")
    sw2 = np.broadcast_to(np.asarray(sigma_w2, dtype=np.float64), (len(sizes) - 1,)).copy()
    alpha = _branch_scales(depth, residual, branch_scale, branch_gate)
    # every input its own mean field (its own q), averaged over inputs at the end: inputs whose
    # lengths differ (digits) do not share one q, which matters for a nonlinear phi and for E[h]
    x_sq = np.atleast_1d(np.asarray(input_second_moment, dtype=np.float64))  # (K,)
    k = len(x_sq)
    n = np.asarray(sizes, dtype=np.float64)
    q, mean, second, chis, dsq, in_sq = (np.empty((k, depth)) for _ in range(6))
    gain = np.empty(depth)
    # Residual nets without norm: a tangent's components along h and 1 are tracked beside its length,
    # as [N, P, Q, R] (see _stream_transition); transition[:, l] maps them from h^{l-1} to h^l (identity
    # for layer 1), start[:, l] is the ensemble phi'(z^l) e, e ~ N(0, I), at h^l (dLoss/dz^l's), and
    # tangent_in J_1 v at h^1 for an isotropic input tangent v.
    stream = residual and norm is None
    transition = np.tile(np.eye(4), (k, depth, 1, 1))
    start, tangent_in = np.empty((k, depth, 4)), None
    plain_ln = not residual and norm == "layernorm"
    ln_factor = np.ones((k, depth))  # plain nets with LayerNorm: its finite-width factor on chi (below)
    h_mean, h_sq = np.zeros(k), x_sq.copy()  # E[x] is not needed: layer 1 has neither skip nor norm
    for l in range(depth):
        normed = norm == "layernorm" and l > 0
        in_sq[:, l] = 1.0 if normed else h_sq  # E[x_l^2]
        q_w = sw2[l] * in_sq[:, l]
        q[:, l] = q_w + sigma_b2
        mo = _moments(act, q[:, l], q_w, stream=stream, ln_beta=plain_ln)
        dsq[:, l] = mo["d2"]
        branch_chi = sw2[l] * dsq[:, l]
        if normed:
            branch_chi = branch_chi / np.maximum(h_sq - h_mean**2, Q_MIN)  # LN divides by the sample's std
        if plain_ln and l + 1 < depth:  # layer l + 1 normalises this layer's n_l units
            ln_factor[:, l + 1] = 1.0 + mo["ln_beta"] / n[l + 1]
        if np.isnan(alpha[l]):
            a, new_mean, new_sq = 1.0, mo["m"], mo["s"]
            d2h, d2h2 = mo["d2p"], mo["d2p2"]  # E[phi'(z)^2 h], E[phi'(z)^2 h^2] for h = phi(z)
            chis[:, l], gain[l] = branch_chi, 1.0
        else:
            a = alpha[l]
            new_mean, new_sq = h_mean + a * mo["m"], h_sq + 2 * a * h_mean * mo["m"] + a * a * mo["s"]
            d2h = h_mean * mo["d2"] + a * mo["d2p"]  # the same for the sum h = h_prev + a phi(z)
            d2h2 = h_sq * mo["d2"] + 2 * a * h_mean * mo["d2p"] + a * a * mo["d2p2"]
            if stream:
                transition[:, l] = _stream_transition(mo, a, sw2[l], n[l + 1], h_mean, h_sq, new_sq)
            chis[:, l], gain[l] = 1.0 + a * a * branch_chi, a
        if stream:
            start[:, l] = np.stack([n[l + 1] * mo["d2"], d2h2 / _pos(new_sq), mo["d2"], d2h / np.sqrt(_pos(new_sq))],
                                   axis=1)
            if l == 0:
                tangent_in = _input_tangent(mo, sw2[0], n[0], n[1])
        h_mean, h_sq = new_mean, new_sq
        mean[:, l], second[:, l] = h_mean, h_sq
    g_last = n[-1] * sw2[-1] / n[-2]
    if stream:
        # Backward: ||dLoss/dz^l||^2 = alpha_l^2 G_L E||J D_l e||^2 for J = d h^L / d h^l, D_l = phi'(z^l),
        # e ~ N(0, I) and G_L the per-unit mean square of dLoss/dh^L: the ensemble D_l e (start[:, l])
        # carried to h^L by the linear recursion, whose N there is r_l . start_l, r_l = e_N T_L ... T_{l+1}.
        rows = np.empty((k, depth, 4))
        r = np.tile(np.array([1.0, 0.0, 0.0, 0.0]), (k, 1))
        for l in range(depth - 1, -1, -1):
            rows[:, l] = r
            r = np.einsum("ki,kij->kj", r, transition[:, l])
        dz = gain**2 * g_last * np.einsum("kli,kli->kl", rows, start)
        msv = np.mean(n[0] * np.einsum("ki,ki->k", rows[:, 0], tangent_in) / min(n[0], n[-2]))
    else:
        # Every direction of h^l grows by prod_{k>l} chi_k (those along h and 1 alike: without a skip
        # nothing carries them further, and LayerNorm removes them from the branch's input).
        grow = chis * ln_factor
        after = np.concatenate([np.cumprod(grow[:, ::-1], axis=1)[:, ::-1][:, 1:], np.ones((k, 1))], axis=1)
        dz = gain**2 * g_last * dsq * n[-2] * after  # ||dLoss/dz^l||^2, isotropic dLoss/dh^L
        msv = float(np.mean(n[-2] * np.prod(grow, axis=1) / min(n[0], n[-2])))
    grad_sq = np.concatenate([n[:-2] * in_sq * dz, n[-2] * second[:, -1:] * n[-1]], axis=1).mean(axis=0)
    q, mean, second, chis = q.mean(0), mean.mean(0), second.mean(0), chis.mean(0)
    plain = not residual and norm is None
    fixed = fixed_point_summary(act, sw2[depth - 1], sigma_b2, q0=q[-1]) if plain else None
    return Prediction(q=q, act_mean=mean, act_std=np.sqrt(np.maximum(second - mean**2, 0.0)), chi=chis,
                      grad_ratio=np.sqrt(grad_sq / grad_sq[-1]), jacobian_msv=float(msv), fixed=fixed, mean_sq=second,
                      branch_scale=alpha)


def _pos(x: Array) -> Array:
    return np.maximum(x, Q_MIN)


def _moments(act: Activation, q: Array, q_w: Array, stream: bool = False, ln_beta: bool = False) -> dict[str, Array]:
    """One layer's Gaussian expectations, per group (K,), for z ~ N(0, q) = sqrt(q_w) zeta + b (zeta the
    part of z that comes from the layer's input, b the bias): E[phi], E[phi^2], E[phi'^2],
    E[phi'^2 phi], E[phi'^2 phi^2]; with ``stream`` also E[phi' zeta], E[phi'^2 zeta^2], E[phi' phi zeta]
    (by E[f zeta] = sqrt(q_w)/q E[f z], E[f zeta^2] = q_w/q^2 E[f z^2] + (1 - q_w/q) E[f]); with
    ``ln_beta`` LayerNorm's finite-width coefficient."""
    qs = _pos(q)
    z = np.sqrt(qs)[:, None] * _Z  # (K, nodes)
    f = act(z)
    d = act.backward(z, f, np.ones_like(z))
    d2 = d * d
    e = lambda g: g @ _W  # noqa: E731
    m, s = e(f), e(f * f)
    out = {"m": m, "s": s, "d2": e(d2), "d2p": e(d2 * f), "d2p2": e(d2 * f * f)}
    if stream:
        share = np.minimum(q_w / qs, 1.0)
        out["d_zeta"] = np.sqrt(q_w) / qs * e(d * z)
        out["d2_zeta2"] = share / qs * e(d2 * z * z) + (1 - share) * out["d2"]
        out["dp_zeta"] = np.sqrt(q_w) / qs * e(d * f * z)
    # LayerNorm of h = phi(z) over n units: E[(1/(n sd^2)) sum_i phi'_i^2 (1 - 1/n - x_i^2/n)] / (E[phi'^2] / v)
    # = 1 + ln_beta / n + O(1/n^2) (the sample's variance, its fluctuation, and the two directions LN removes)
    if ln_beta:
        c2 = np.square(f - m[:, None])
        v = _pos(s - m * m)
        out["ln_beta"] = e(c2 * c2) / v**2 - 2 * e(d2 * c2) / (_pos(out["d2"]) * v)
    return out


def _input_tangent(mo: dict[str, Array], sw2: float, d: float, n: float) -> Array:
    """[N, P, Q, R] of h^1's tangent J_1 v for an isotropic input tangent v (E||v||^2 = 1): the part of v
    along x (share 1/d) moves z^1 along its own input part, the rest by an independent Gaussian."""
    along, rest = 1.0 / d, (d - 1.0) / d
    a_x = math.sqrt(n / d * sw2) * mo["dp_zeta"] / np.sqrt(_pos(mo["s"]))
    b_x = math.sqrt(n / d * sw2) * mo["d_zeta"]
    return np.stack([along * n / d * sw2 * mo["d2_zeta2"] + rest * n / d * sw2 * mo["d2"],
                     along * a_x**2 + rest * sw2 / d * mo["d2p2"] / _pos(mo["s"]),
                     along * b_x**2 + rest * sw2 / d * mo["d2"],
                     along * a_x * b_x + rest * sw2 / d * mo["d2p"] / np.sqrt(_pos(mo["s"]))], axis=1)


def _stream_transition(mo: dict[str, Array], a: float, sw2: float, n: float, h_mean: Array, h_sq: Array,
                       new_sq: Array) -> Array:
    """(K, 4, 4): a residual layer h' = h + a phi(W h + b) (no norm) acting on the second moments
    [N, P, Q, R] = E[||t||^2, (t.h_hat)^2, (t.1_hat)^2, (t.h_hat)(t.1_hat)] of a tangent t independent of
    W and b, to first order in 1/n (P, Q, R are O(N/n) unless they grow faster than N).

    W^T t = (t.h_hat) u + v with z = ||h|| u + b and v ~ N(0, sw2 ||t_perp||^2 / n) independent of u. The
    skip-branch cross term 2 a t.(phi'(z) (W^T t)) has mean 2 a C1 (t.h_hat)(t.1_hat), C1 = sigma E[phi' zeta]
    (zeta = the input's part of z, standardised): the gradient-independence assumption sets it to 0. The
    components along h and 1 feed each other through C1 and C3 = E[phi] / rms(h) (the branch adds a mean
    and reads the stream's length), and are fed by the sums over units of the fresh u and v (the noise,
    from ||t||^2 and ||t_perp||^2 = N - P). The branch's gain of the h component is taken as a generic
    direction's (sw2 E[phi'^2]; exact for relu, and C1 = C3 = 0 for an odd phi, whose N then grows by chi)."""
    sig = math.sqrt(sw2)
    m2 = _pos(h_sq)
    rho, gam = h_mean / np.sqrt(m2), _pos(new_sq) / m2
    c1, c3, c4 = sig * mo["d_zeta"], mo["m"] / np.sqrt(m2), sig * mo["dp_zeta"] / np.sqrt(m2)
    chi_b = sw2 * mo["d2"]
    kappa = mo["d2"] * h_sq + 2 * a * h_mean * mo["d2p"] + a * a * mo["d2p2"]  # E[phi'^2 h'^2], h' the sum
    coef = 1 + a * c1 * rho + a * a * c4  # of t.h_hat in (t'.h_hat') ||h'|| / ||h||
    xi = a * a * (mo["s"] - mo["m"] ** 2) / (n * m2)  # t.phi(z) - E[phi] sum t, from ||t||^2
    va = a * a * sw2 * kappa / (n * m2)  # v . (phi' h') / ||h||, from ||t_perp||^2
    vb = a * a * chi_b / n  # v . phi' / sqrt(n)
    cab = a * a * sw2 * (h_mean * mo["d2"] + a * mo["d2p"]) / (n * np.sqrt(m2))  # their covariance
    zero, one = np.zeros_like(rho), np.ones_like(rho)
    t = np.empty((len(rho), 4, 4))
    t[:, 0] = np.stack([1 + a * a * chi_b, zero, zero, 2 * a * c1], axis=1)
    t[:, 1] = np.stack([xi + va, coef**2 - va, (a * c3) ** 2, 2 * coef * a * c3], axis=1) / gam[:, None]
    t[:, 2] = np.stack([vb, (a * c1) ** 2 - vb, one, 2 * a * c1], axis=1)
    t[:, 3] = np.stack([cab, coef * a * c1 - cab, a * c3, coef + a * a * c1 * c3], axis=1) / np.sqrt(gam)[:, None]
    return t


def predict_network(sizes: Sequence[int], activation: str, init: str, x: Array, *,
                    activation_params: dict | None = None, init_params: dict | None = None,
                    residual: bool = False, branch_scale: float | None = None, branch_gate: bool = False,
                    norm: str | None = None) -> Prediction:
    """:func:`predict` for an nnlab MLP of ``sizes`` built with ``init`` (and its params), fed the
    inputs ``x`` (N, n_in), whose mean squared entry starts the length map; with the
    activation-length spread :func:`nnlab.theory.act_len_logvar` where it is defined."""
    from nnlab.theory.fluctuations import act_len_logvar

    init_params = dict(init_params or {})
    act = get_activation(activation, **(activation_params or {}))
    second_moment = _input_groups(x)
    sigma_b2 = effective_sigma_b2(init, **init_params)
    pred = predict(act, sizes, effective_sigma_w2(init, sizes, **init_params), sigma_b2, second_moment,
                   residual=residual, branch_scale=branch_scale, branch_gate=branch_gate, norm=norm)
    spread = act_len_logvar(sizes, act, init, x, sigma_b2=sigma_b2, residual=residual, norm=norm)
    return dataclasses.replace(pred, act_len_logvar=spread)


def _input_groups(x: Array, groups: int = 16) -> Array:
    """The inputs' mean squared entries (N,), sorted and averaged in ``groups`` equal groups -> (K,)
    (K <= 16: the spread of input lengths at a fixed cost; the overall mean is kept exactly)."""
    ms = np.sort(np.mean(np.square(np.asarray(x, dtype=np.float64)), axis=1))
    return np.array([part.mean() for part in np.array_split(ms, min(groups, len(ms)))])


def record(prediction: Prediction) -> dict[str, float]:
    """The prediction under the record's names (DESIGN.md), logged at step 0:
    ``theory/preact_std/layer_{i}``, ``theory/act_std/layer_{i}``, ``theory/chi/layer_{i}``,
    ``theory/grad_ratio/layer_{i}`` (i = 1..L+1); for plain nets ``theory/chi_star``,
    ``theory/xi_grad`` and, where it is a correlation depth scale (0 < q* < inf), ``theory/xi_c``;
    ``theory/act_len_logvar`` where defined. Names that do not apply are absent."""
    out: dict[str, float] = {}
    for i, (s, a, c) in enumerate(zip(prediction.preact_std, prediction.act_std, prediction.chi), 1):
        out[f"theory/preact_std/layer_{i}"] = float(s)
        out[f"theory/act_std/layer_{i}"] = float(a)
        out[f"theory/chi/layer_{i}"] = float(c)
    for i, r in enumerate(prediction.grad_ratio, 1):
        out[f"theory/grad_ratio/layer_{i}"] = float(r)
    fixed = prediction.fixed
    if fixed is not None:
        out["theory/chi_star"] = float(fixed.chi_star)
        out["theory/xi_grad"] = float(fixed.xi_grad)
        if fixed.correlation_scale_defined:
            out["theory/xi_c"] = float(fixed.xi_c)
    if prediction.act_len_logvar is not None:
        out["theory/act_len_logvar"] = float(prediction.act_len_logvar)
    return out
