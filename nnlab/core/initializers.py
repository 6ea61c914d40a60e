"""Weight initialisers, keyed by the names users type.

Every initialiser has the signature ``init(fan_in, fan_out, *, rng, dtype, **params) -> W`` with
``W`` of shape (fan_in, fan_out), and draws only from the ``np.random.Generator`` it is handed.
Biases start at zero, except for ``variance_scaling``, the mean-field papers' parameterisation,
whose biases are drawn by :func:`get_bias_initializer` (``BIAS_INITIALIZERS``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Initializer = Callable[..., np.ndarray]


def _scaled(rng: np.random.Generator, shape: tuple[int, int], var: float, distribution: str) -> np.ndarray:
    """Zero-mean weights of variance ``var`` from a normal or a uniform distribution."""
    if distribution == "normal":
        return rng.normal(0.0, np.sqrt(var), size=shape)
    if distribution == "uniform":
        limit = np.sqrt(3.0 * var)  # U(-l, l) has variance l^2 / 3
        return rng.uniform(-limit, limit, size=shape)
    raise ValueError(f"unknown distribution {distribution!r}; valid choices: normal, uniform")


def he(fan_in: int, fan_out: int, *, rng: np.random.Generator, dtype=np.float32, distribution: str = "normal"):
    """He et al. 2015: Var(W) = 2 / fan_in keeps ReLU activations' scale constant with depth."""
    return _scaled(rng, (fan_in, fan_out), 2.0 / fan_in, distribution).astype(dtype)


def xavier(fan_in: int, fan_out: int, *, rng: np.random.Generator, dtype=np.float32, distribution: str = "uniform"):
    """Glorot & Bengio 2010: Var(W) = 2 / (fan_in + fan_out), a compromise for forward and backward."""
    return _scaled(rng, (fan_in, fan_out), 2.0 / (fan_in + fan_out), distribution).astype(dtype)


def lecun(fan_in: int, fan_out: int, *, rng: np.random.Generator, dtype=np.float32, distribution: str = "normal"):
    """LeCun 1998: Var(W) = 1 / fan_in."""
    return _scaled(rng, (fan_in, fan_out), 1.0 / fan_in, distribution).astype(dtype)


def random(fan_in: int, fan_out: int, *, rng: np.random.Generator, dtype=np.float32, std: float = 0.01):
    """The naive baseline: N(0, std^2) whatever the layer's size."""
    if std <= 0:
        raise ValueError(f"init std must be > 0, got {std}")
    return rng.normal(0.0, std, size=(fan_in, fan_out)).astype(dtype)


def orthogonal(fan_in: int, fan_out: int, *, rng: np.random.Generator, dtype=np.float32, gain: float = 1.0):
    """Saxe et al. 2014: a (semi-)orthogonal matrix times ``gain``."""
    a = rng.normal(size=(max(fan_in, fan_out), min(fan_in, fan_out)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))  # make the decomposition unique, so Q is uniform over orthogonal matrices
    w = q if fan_in >= fan_out else q.T
    return (gain * w).astype(dtype)


def variance_scaling(fan_in: int, fan_out: int, *, rng: np.random.Generator, dtype=np.float32,
                     sigma_w: float = 1.0, sigma_b: float = 0.0):
    """Poole et al. 2016 / Schoenholz et al. 2017: W ~ N(0, sigma_w^2 / fan_in), b ~ N(0, sigma_b^2).

    He is sigma_w^2 = 2, LeCun sigma_w^2 = 1 (both with sigma_b = 0); ``sigma_b`` is drawn by
    :func:`variance_scaling_bias`.
    """
    if not sigma_w > 0:
        raise ValueError(f"init sigma_w must be > 0, got {sigma_w}")
    return rng.normal(0.0, sigma_w / np.sqrt(fan_in), size=(fan_in, fan_out)).astype(dtype)


def variance_scaling_bias(fan_out: int, *, rng: np.random.Generator, dtype=np.float32, sigma_b: float = 0.0,
                          sigma_w: float = 1.0):
    """b ~ N(0, sigma_b^2) of shape (fan_out,); zeros (and no draw) when sigma_b = 0."""
    if not sigma_b >= 0:
        raise ValueError(f"init sigma_b must be >= 0, got {sigma_b}")
    if sigma_b == 0:
        return np.zeros(fan_out, dtype)
    return rng.normal(0.0, sigma_b, size=fan_out).astype(dtype)


INITIALIZERS: dict[str, Initializer] = {
    "he": he,
    "xavier": xavier,
    "lecun": lecun,
    "random": random,
    "orthogonal": orthogonal,
    "variance_scaling": variance_scaling,
}
# initialisers whose biases are not zero: name -> bias(fan_out, *, rng, dtype, **params)
BIAS_INITIALIZERS: dict[str, Initializer] = {"variance_scaling": variance_scaling_bias}


def get_initializer(name: str | Initializer, **params) -> Initializer:
    """Return ``init(fan_in, fan_out, *, rng, dtype)`` for a name, with ``params`` bound."""
    if callable(name):
        fn = name
    elif name in INITIALIZERS:
        fn = INITIALIZERS[name]
    else:
        raise ValueError(f"unknown initializer {name!r}; valid choices: {', '.join(sorted(INITIALIZERS))}")
    valid = set(fn.__code__.co_varnames[: fn.__code__.co_argcount + fn.__code__.co_kwonlyargcount])
    unknown = set(params) - (valid - {"fan_in", "fan_out", "rng", "dtype"})
    if unknown:
        choices = sorted(valid - {"fan_in", "fan_out", "rng", "dtype"})
        raise ValueError(f"initializer {name!r} got unknown parameter(s) {sorted(unknown)}; valid: {choices}")

    def init(fan_in: int, fan_out: int, *, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
        return fn(fan_in, fan_out, rng=rng, dtype=dtype, **params)

    return init


def get_bias_initializer(name: str | Initializer, **params) -> Initializer | None:
    """``bias(fan_out, *, rng, dtype) -> b`` for initialisers that draw biases; None: biases are zero.

    ``params`` are the initialiser's (validated by :func:`get_initializer`).
    """
    fn = BIAS_INITIALIZERS.get(name) if isinstance(name, str) else None
    if fn is None:
        return None

    def bias(fan_out: int, *, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
        return fn(fan_out, rng=rng, dtype=dtype, **params)

    return bias
