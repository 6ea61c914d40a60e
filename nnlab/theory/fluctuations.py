"""Beyond mean field: the spread of the activation length of a finite-width ReLU net.

Mean field says a ReLU net with He init keeps E||h_L||^2 at any depth, yet narrow deep nets fail
to start training: the length's fluctuations grow with beta = sum_j 1/n_j (Hanin & Rolnick 2018,
"How to start training"; Hanin 2018 for the Jacobian). For a plain ReLU layer with Gaussian
weights and no bias the distribution is exact: given h_{l-1}, the n_l pre-activations are i.i.d.
N(0, sigma_w^2 ||h_{l-1}||^2 / n_{l-1}), so

    ||h_l||^2 / ||h_{l-1}||^2 = (sigma_w^2 / n_{l-1}) chi^2_{K_l},   K_l ~ Binomial(n_l, 1/2),

independent of h_{l-1} and across layers. Hence log ||h_L||^2 = log ||x||^2 + a constant + a sum of
independent terms, with

    Var[log ||h_L||^2]  (over random nets, one input) = sum_l V(n_l),
    V(n) = E[psi'(K/2)] + Var[psi(K/2)]  (K >= 1)  ~  5 / n,

psi the digamma function (log chi^2_k has mean psi(k/2) + log 2 and variance psi'(k/2)); 5 / n is
4 Var[relu(g)^2] / n with E relu(g)^2 = 1/2, E relu(g)^4 = 3/2.

The record's ``act_len_logvar`` is the variance over the probe batch of log ||h_L||^2 in one net.
Two inputs whose layer-l pre-activations have correlation c share part of that layer's noise: to
first order their log-ratios have covariance V(n_l) rho(c), rho(c) = (E[relu(u)^2 relu(v)^2] -
1/4) / (5/4) = (J_2(theta) / (2 pi) - 1/4) / (5/4), J_2 the degree-2 arc-cosine kernel (Cho & Saul
2009), theta = arccos c; c follows the degree-1 arc-cosine map layer by layer from the inputs'
cosines. The expected batch variance is then

    Var_batch[log ||x||^2] + (1 - 1/B) sum_l V(n_l) (1 - mean over pairs of rho(c_l)).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np

from nnlab.core.activations import Activation, get_activation
from nnlab.theory.quadrature import Array

GAUSSIAN_INITS = ("he", "lecun", "xavier", "random", "variance_scaling")  # i.i.d. weights; not orthogonal
MAX_PAIRS_ROWS = 64  # the pairwise mean over the first 64 inputs (2016 pairs, in 64 groups)


def _digamma_trigamma(x: Array) -> tuple[Array, Array]:
    """psi(x) and psi'(x) for x > 0: the recurrences up to x >= 8, then the asymptotic series."""
    x = np.asarray(x, dtype=np.float64).copy()
    psi, tri = np.zeros_like(x), np.zeros_like(x)
    while (small := x < 8).any():
        psi[small] -= 1 / x[small]
        tri[small] += 1 / x[small] ** 2
        x[small] += 1
    inv2 = 1 / (x * x)
    psi += np.log(x) - 0.5 / x - inv2 * (1 / 12 - inv2 * (1 / 120 - inv2 * (1 / 252 - inv2 / 240)))
    tri += 1 / x + 0.5 * inv2 + inv2 / x * (1 / 6 - inv2 * (1 / 30 - inv2 * (1 / 42 - inv2 / 30)))
    return psi, tri


@lru_cache(maxsize=None)
def layer_log_variance(n: int) -> float:
    """V(n) = Var[log chi^2_K], K ~ Binomial(n, 1/2) conditioned on K >= 1 (a layer of n relu units
    all off, probability 2^-n, kills the signal): the variance of one relu layer's log-length ratio."""
    k = np.arange(1, n + 1, dtype=np.float64)
    log_pmf = np.concatenate([[0.0], np.cumsum(np.log((n - k + 1) / k))])[1:] - n * math.log(2)
    p = np.exp(log_pmf - log_pmf.max())
    p /= p.sum()
    psi, tri = _digamma_trigamma(k / 2)
    mean = p @ psi
    return float(p @ tri + p @ (psi - mean) ** 2)


def log_length_variance(widths: Sequence[int]) -> float:
    """Var over random nets of log ||h_L||^2 for one input: sum_l V(n_l) over the hidden widths
    ``widths`` [n_1, ..., n_L] of a plain ReLU net with i.i.d. Gaussian weights and no bias."""
    return float(sum(layer_log_variance(int(n)) for n in widths))


def _relu_cosine_map(c: Array) -> Array:
    """Correlation of relu(u), relu(v) for (u, v) of correlation c: the degree-1 arc-cosine kernel
    normalised, (sin theta + (pi - theta) cos theta) / pi."""
    theta = np.arccos(np.clip(c, -1.0, 1.0))
    return (np.sin(theta) + (math.pi - theta) * np.cos(theta)) / math.pi


def _square_correlation(c: Array) -> Array:
    """rho(c) = Corr(relu(u)^2, relu(v)^2) = (J_2(theta) / (2 pi) - 1/4) / (5/4)."""
    theta = np.arccos(np.clip(c, -1.0, 1.0))
    j2 = 3 * np.sin(theta) * np.cos(theta) + (math.pi - theta) * (1 + 2 * np.cos(theta) ** 2)
    return (j2 / (2 * math.pi) - 0.25) / 1.25


def act_len_logvar_defined(activation: Activation | str, init: str, sigma_b2: float, residual: bool = False,
                           norm: str | None = None) -> bool:
    """Whether :func:`act_len_logvar` has a prediction: a plain relu net (no skip, no norm), no bias,
    i.i.d. weights (every initialiser but orthogonal)."""
    return (get_activation(activation).name == "relu" and sigma_b2 == 0 and init in GAUSSIAN_INITS
            and not residual and norm is None)


def act_len_logvar(sizes: Sequence[int], activation: Activation | str, init: str, x: Array, *,
                   sigma_b2: float = 0.0, residual: bool = False, norm: str | None = None) -> float | None:
    """Expected variance over the batch ``x`` (B, n_in) of log ||h_L||^2 in one random net of
    ``sizes`` [n_in, n_1, ..., n_L, n_out] at initialisation (module docstring); None where not
    defined (:func:`act_len_logvar_defined`) or for fewer than 2 inputs or a zero input."""
    if not act_len_logvar_defined(activation, init, sigma_b2, residual, norm) or len(x) < 2:
        return None
    x = np.asarray(x, dtype=np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    if not (sq > 0).all():
        return None
    widths = [int(n) for n in sizes[1:-1]]
    sub = x[:MAX_PAIRS_ROWS] / np.sqrt(sq[:MAX_PAIRS_ROWS])[:, None]
    c = np.sort((sub @ sub.T)[np.triu_indices(len(sub), 1)])  # the inputs' cosines = layer 1's correlations
    # the maps below are smooth and monotone: 64 groups of neighbouring cosines stand for the pairs
    c = np.array([part.mean() for part in np.array_split(c, min(64, len(c)))])
    shared = 0.0
    for n in widths:
        shared += layer_log_variance(n) * (1.0 - float(np.mean(_square_correlation(c))))
        if c.min() > 1 - 1e-15:  # every pair is fully correlated: later layers add nothing shared-free
            break
        c = _relu_cosine_map(c)
    return float(np.var(np.log(sq)) + (1 - 1 / len(x)) * shared)
