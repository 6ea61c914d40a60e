"""The input-output Jacobian of the hidden stack and its singular values (Pennington et al. 2017).

Which Jacobian: for one input x (n_in,), the derivative of the *last hidden layer's output* h^L
(after its activation; the sum, for a residual layer) with respect to the *network's input* x, the
readout (output layer) left out. For a plain net

    J(x) = d h^L / d x = D_L W_L^T ... D_2 W_2^T D_1 W_1^T,   shape (n_L, n_in),

with D_l = diag(phi'(z^l(x))) and W_l the (fan_in, fan_out) weight of hidden layer l; a residual layer
multiplies by (I + alpha D_l W_l^T M_l) instead, M_l the LayerNorm's Jacobian (or I). It is square
when the hidden width equals the input dimension (digits: 64) and is the Jacobian of the isometry
papers (Saxe et al. 2014; Pennington et al. 2017, x^0 -> x^L). Its min(n_L, n_in) singular values,
pooled over a fixed probe of inputs, are summarised as ``jacobian_sv_mean``, ``jacobian_sv_std``,
``jacobian_sv_min``, ``jacobian_sv_max``. A network without hidden layers has no such Jacobian (the
metrics are then absent).
"""
from __future__ import annotations

import numpy as np

from .network import MLP

Array = np.ndarray
SV_FLOOR = 1e-7  # relative: sqrt(float64 eps) ~ 1.5e-8 is the Gram matrix's rounding floor


def hidden_jacobians(model: MLP, x: Array) -> Array:
    """J(x) = d h^L / d x for each row of ``x`` (k, n_in) -> (k, n_L, n_in), in the model's dtype.

    Forward-mode accumulation, vectorised over the k inputs: each hidden layer maps the tangents J^{l-1}
    (k, n_{l-1}, n_in) to J^l (``jvp``; J^0 = I): J^l = D_l W_l^T J^{l-1} for a plain layer,
    J^{l-1} + alpha D_l W_l^T M_l J^{l-1} for a residual one. Overwrites the layers' forward caches
    (rebuilt by the next training step).
    """
    if model.depth == 0:
        raise ValueError("a network with depth 0 has no hidden layers, so no hidden-stack Jacobian")
    model.forward(x)
    jac = None
    for block in model.blocks:
        jac = block.jvp(jac)
    return jac


def jacobian_singular_values(model: MLP, x: Array, exact: bool = False) -> Array:
    """Singular values of J(x) for each row of ``x`` (k, n_in) -> (k, min(n_L, n_in)), float64,
    ascending.

    Computed as the square roots of the eigenvalues of the smaller Gram matrix (J J^T or J^T J)
    in float64: about half the cost of an SVD, and accurate to ~1e-8 of the largest singular value;
    values below ``SV_FLOOR`` times the largest (of the same input) are that rounding, reported as 0
    (e.g. the rows of dead ReLU units). ``exact=True`` uses an SVD instead (about twice the cost;
    the full float64 range, for spectra that span more than 7 decades).
    """
    jac = hidden_jacobians(model, x).astype(np.float64)
    if exact:  # below 1e-13 of the largest: rounding of exact zeros (products of rank-deficient layers)
        sv = np.sort(np.linalg.svd(jac, compute_uv=False), axis=1)
        return np.where(sv < 1e-13 * sv[:, -1:], 0.0, sv)
    t = jac.transpose(0, 2, 1)
    gram = jac @ t if jac.shape[1] <= jac.shape[2] else t @ jac
    sv = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))
    return np.where(sv < SV_FLOOR * sv[:, -1:], 0.0, sv)


def jacobian_stats(model: MLP, x_probe: Array) -> dict[str, float]:
    """``jacobian_sv_{mean,std,min,max}`` of the singular values of J(x), pooled over the rows of
    ``x_probe`` (k, n_in); empty for a network without hidden layers."""
    if model.depth == 0:
        return {}
    sv = jacobian_singular_values(model, x_probe)
    return {"jacobian_sv_mean": float(sv.mean()), "jacobian_sv_std": float(sv.std()),
            "jacobian_sv_min": float(sv.min()), "jacobian_sv_max": float(sv.max())}


class JacobianProbe:
    """A ``fit`` probe: ``jacobian_stats`` on the first ``n_inputs`` rows of the probe batch, the
    same inputs every epoch."""

    def __init__(self, n_inputs: int = 4):
        if isinstance(n_inputs, bool) or not isinstance(n_inputs, (int, np.integer)) or n_inputs < 1:
            raise ValueError(f"n_inputs must be an integer >= 1, got {n_inputs!r}")
        self.n_inputs = int(n_inputs)

    def __call__(self, model: MLP, x_probe: Array) -> dict[str, float]:
        return jacobian_stats(model, x_probe[: self.n_inputs])
