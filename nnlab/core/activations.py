"""Activation functions and their derivatives, in one registry keyed by the names users type.

Each activation gives ``f(z)``, its derivative ``df(z, a)`` written in terms of the stored
pre-activation ``z`` and output ``a = f(z)`` (whichever is cheaper), and ``saturated(z, a)``:
the statistic nnlab reports as ``act_saturation/layer_{i}``.

Saturation means "this unit has stopped passing gradient":
- squashing units (sigmoid, tanh, softsign): the fraction of (sample, unit) entries in the flat
  tails, e.g. |tanh| > 0.99 or sigmoid outside [0.01, 0.99];
- rectifiers (relu, leaky_relu, elu, gelu): the fraction of *dead* units, i.e. units whose
  pre-activation is <= 0 for every sample of the probe batch (for ReLU: output exactly 0);
- identity never saturates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

Array = np.ndarray

# tanh approximation of GELU (Hendrycks & Gimpel 2016), so the derivative stays closed-form.
_GELU_C = float(np.sqrt(2.0 / np.pi))  # a Python float: an np.float64 would upcast float32 arrays
_GELU_K = 0.044715


@dataclass(frozen=True)
class Activation:
    """One activation: ``f``, its derivative ``df(z, a)`` and the saturation statistic."""

    name: str
    f: Callable[..., Array]
    df: Callable[..., Array] | None  # None: derivative is 1 everywhere (identity)
    saturated: Callable[[Array, Array], float]
    params: dict = field(default_factory=dict)
    f_into: Callable[[Array, Array], Array] | None = None  # f(z) written into a given buffer (training path)

    def __call__(self, z: Array) -> Array:
        return self.f(z, **self.params)

    def forward_into(self, z: Array, out: Array) -> Array:
        """``f(z)`` into ``out`` (same shape) when the activation can write in place, else a new array."""
        if self.df is None:
            return z  # identity: the pre-activation is the output
        if self.f_into is not None:
            return self.f_into(z, out)
        return self(z)

    def backward_inplace(self, z: Array, a: Array, grad_a: Array) -> Array:
        """dL/dz = dL/da * f'(z), overwriting ``grad_a`` (N, units), which the caller owns."""
        if self.df is not None:
            grad_a *= self.df(z, a, **self.params)
        return grad_a

    def backward(self, z: Array, a: Array, grad_a: Array) -> Array:
        """dL/dz = dL/da * f'(z) for a batch; shapes (N, units)."""
        if self.df is None:
            return grad_a
        return grad_a * self.df(z, a, **self.params)


def _dead_fraction(z: Array, a: Array) -> float:
    # A unit is dead when no probe sample switches it on.
    return float(np.mean(np.all(z <= 0, axis=0)))


def _never(z: Array, a: Array) -> float:
    return 0.0


def _sigmoid(z: Array) -> Array:
    # Split by sign so exp never overflows: for z < 0, sigmoid(z) = e^z / (1 + e^z).
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)


def _elu(z: Array, alpha: float = 1.0) -> Array:
    return np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0))).astype(z.dtype, copy=False)


def _gelu_tanh(z: Array) -> Array:
    return np.tanh(_GELU_C * z * (1.0 + _GELU_K * z * z))  # z*z, not z**3: pow is several times slower


def _gelu(z: Array) -> Array:
    return 0.5 * z * (1.0 + _gelu_tanh(z))


def _gelu_grad(z: Array, a: Array) -> Array:
    t = _gelu_tanh(z)
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _GELU_C * (1.0 + 3.0 * _GELU_K * z * z)


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("identity", lambda z: z, None, _never),
        Activation("relu", lambda z: np.maximum(z, 0), lambda z, a: z > 0, _dead_fraction,  # bool: x*True = x
                   f_into=lambda z, out: np.maximum(z, 0, out=out)),
        Activation(
            "leaky_relu",
            lambda z, alpha=0.01: np.where(z > 0, z, alpha * z).astype(z.dtype, copy=False),
            lambda z, a, alpha=0.01: np.where(z > 0, 1.0, alpha).astype(z.dtype),
            _dead_fraction,
            {"alpha": 0.01},
        ),
        Activation(
            "sigmoid",
            _sigmoid,
            lambda z, a: a * (1 - a),
            lambda z, a: float(np.mean((a < 0.01) | (a > 0.99))),
        ),
        Activation("tanh", np.tanh, lambda z, a: 1 - a * a, lambda z, a: float(np.mean(np.abs(a) > 0.99)),
                   f_into=lambda z, out: np.tanh(z, out=out)),
        Activation(
            "elu",
            _elu,
            # for z <= 0, a = alpha (e^z - 1) so f'(z) = alpha e^z = a + alpha
            lambda z, a, alpha=1.0: np.where(z > 0, 1.0, a + alpha).astype(z.dtype),
            _dead_fraction,
            {"alpha": 1.0},
        ),
        Activation("gelu", _gelu, _gelu_grad, _dead_fraction),
        Activation(
            "softsign",
            lambda z: z / (1 + np.abs(z)),
            # f'(z) = 1 / (1 + |z|)^2 = (1 - |a|)^2
            lambda z, a: (1 - np.abs(a)) ** 2,
            # |a| > 0.9: the derivative is below 1% of its value at 0
            lambda z, a: float(np.mean(np.abs(a) > 0.9)),
        ),
    ]
}


def get_activation(name: str | Activation, **params: float) -> Activation:
    """Look up an activation by name, optionally overriding its parameters (``alpha``)."""
    if isinstance(name, Activation):
        return name
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid choices: {', '.join(sorted(ACTIVATIONS))}")
    act = ACTIVATIONS[name]
    unknown = set(params) - set(act.params)
    if unknown:
        valid = ", ".join(sorted(act.params)) or "none"
        raise ValueError(f"activation {name!r} got unknown parameter(s) {sorted(unknown)}; valid: {valid}")
    return Activation(act.name, act.f, act.df, act.saturated, {**act.params, **params}, act.f_into)
