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
layer (the skip and the branch are uncorrelated at initialisation). Backwards, the per-unit mean
square of dLoss/dh_{l-1} is (n_l / n_{l-1}) chi_l times that of dLoss/dh_l, and the input-output
Jacobian d h_L / d x has mean squared singular value n_L / min(n_0, n_L) prod_l chi_l.
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
    a branch's weight gradient, and so its ratio, is 0.
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
    q, mean, second, chis, dsq, in_sq, kappa = (np.empty((k, depth)) for _ in range(7))
    gain = np.empty(depth)
    h_mean, h_sq = np.zeros(k), x_sq.copy()  # E[x] is not needed: layer 1 has neither skip nor norm
    for l in range(depth):
        normed = norm == "layernorm" and l > 0
        in_sq[:, l] = 1.0 if normed else h_sq  # E[x_l^2]
        q[:, l] = sw2[l] * in_sq[:, l] + sigma_b2
        u = np.sqrt(np.maximum(q[:, l], Q_MIN))[:, None] * _Z  # (K, nodes): phi and phi' once per layer
        f = act(u)
        d2 = np.square(act.backward(u, f, np.ones_like(u)))
        m, s, dsq[:, l] = f @ _W, (f * f) @ _W, d2 @ _W
        d2p, d2p2 = (d2 * f) @ _W, (d2 * f * f) @ _W  # E[phi'^2 phi], E[phi'^2 phi^2]
        branch_chi = sw2[l] * dsq[:, l]
        if normed:
            branch_chi = branch_chi / np.maximum(h_sq - h_mean**2, Q_MIN)  # LN divides by the sample's std
        if np.isnan(alpha[l]):
            kappa[:, l] = d2p2
            h_mean, h_sq, chis[:, l], gain[l] = m, s, branch_chi, 1.0
        else:
            a = alpha[l]
            kappa[:, l] = h_sq * dsq[:, l] + 2 * a * h_mean * d2p + a * a * d2p2  # E[phi'(z)^2 h^2], h the sum
            h_mean, h_sq = h_mean + a * m, h_sq + 2 * a * h_mean * m + a * a * s
            chis[:, l], gain[l] = 1.0 + a * a * branch_chi, a
        mean[:, l], second[:, l] = h_mean, h_sq
    n = np.asarray(sizes, dtype=np.float64)
    hidden = n[1:-1]
    # Backward: ||dLoss/dh^l||^2 = G_L tr(J J^T) for J = d h^L / d h^l and an isotropic dLoss/dh^L of
    # per-unit mean square G_L (the readout's dLoss/dz per unit = 1). A generic direction of h^l
    # grows by prod_{k>l} chi_k; a positively homogeneous net without bias or norm has one
    # direction more, h^l itself, with J h^l = h^L exactly, which grows as E[(h^L)^2] / E[(h^l)^2]:
    # in a residual relu net faster than chi (the skip-branch cross term), by (3/2)^l at alpha = 1.
    # (In a plain net that direction grows like any other and its share is 1/n: left out, as the mean
    # field leaves out every 1/n.)
    homogeneous = residual and act.name in ("relu", "leaky_relu", "identity") and sigma_b2 == 0 and norm is None
    g_last = n[-1] * sw2[-1] / n[-2]
    after = np.concatenate([np.cumprod(chis[:, ::-1], axis=1)[:, ::-1][:, 1:], np.ones((k, 1))], axis=1)
    generic = n[-2] / hidden * after  # ||J e||^2 for a unit e of a generic direction, (K, L)
    if homogeneous:
        along_h, kappa = n[-2] * second[:, -1:] / (hidden * second), kappa / second
    else:
        along_h, kappa = generic, dsq
    dz = gain**2 * g_last * (dsq * (hidden - 1) * generic + kappa * along_h)  # ||dLoss/dz^l||^2
    grad_sq = np.concatenate([n[:-2] * in_sq * dz, n[-2] * second[:, -1:] * n[-1]], axis=1).mean(axis=0)
    if homogeneous:
        special = n[-2] * second[:, -1] / (n[0] * x_sq)
    else:
        special = n[-2] / n[0] * after[:, 0] * chis[:, 0]
    msv = float(np.mean(((n[0] - 1) / n[0] * n[-2] * np.prod(chis, axis=1) + special) / min(n[0], n[-2])))
    q, mean, second, chis = q.mean(0), mean.mean(0), second.mean(0), chis.mean(0)
    plain = not residual and norm is None
    fixed = fixed_point_summary(act, sw2[depth - 1], sigma_b2, q0=q[-1]) if plain else None
    return Prediction(q=q, act_mean=mean, act_std=np.sqrt(np.maximum(second - mean**2, 0.0)), chi=chis,
                      grad_ratio=np.sqrt(grad_sq / grad_sq[-1]), jacobian_msv=float(msv), fixed=fixed, mean_sq=second,
                      branch_scale=alpha)


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
