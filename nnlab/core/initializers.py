"""Weight initialisers, keyed by the names users type.

Every initialiser has the signature ``init(fan_in, fan_out, *, rng, dtype, **params) -> W`` with
``W`` of shape (fan_in, fan_out), and draws only from the ``np.random.Generator`` it is handed.
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


INITIALIZERS: dict[str, Initializer] = {
    "he": he,
    "xavier": xavier,
    "lecun": lecun,
    "random": random,
    "orthogonal": orthogonal,
}


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
