"""Optimisers and learning-rate schedules.

An optimiser keeps only its own state (velocities, moments) and is handed ``(params, grads)`` at
each step; it updates ``params`` in place. ``lr`` is a plain attribute so a schedule can set it.

``lr_mult`` (optional) holds per-element learning-rate multipliers, one array per parameter array (for
nnlab's MLP: one (P,) array beside ``flat_params``), e.g. a parametrisation's (``MLP.lr_multipliers``).
Multipliers that are all 1 are dropped, so the step is then exactly the plain one. No optimiser does an
extra pass over the parameters for them: each already multiplies the gradient by a scalar once (SGD and
momentum by ``lr``, Adam by ``1 - beta1`` on its way into the first moment, on which its step is linear),
and that multiply takes the multipliers along. A parametrisation's multipliers are constant per layer, so
they are applied run by run as scalars (a handful of ufunc calls, no extra memory traffic) where the runs are
long (``MIN_RUN``); short or many runs use a cached ``factor * lr_mult`` array (one more array read).
Adam therefore keeps its first moment in multiplied units (``m`` holds ``lr_mult * m``; setting new
multipliers converts it).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

Array = np.ndarray
MAX_RUNS = 64  # multipliers constant over at most this many runs are applied run by run, as scalars
MIN_RUN = 4096  # ... if the runs are this long on average: one ufunc call costs about what streaming 4k floats does


def _runs(mult: Array) -> list[tuple[int, int, float]] | None:
    """(start, stop, value) of each run of equal values in ``mult`` (flattened); None if there are too many
    or they are too short to beat one multiply by an array."""
    flat = mult.reshape(-1)
    cuts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    if len(cuts) >= MAX_RUNS or flat.size < MIN_RUN * (len(cuts) + 1):
        return None
    edges = [0, *cuts.tolist(), flat.size]
    return [(a, b, float(flat[a])) for a, b in zip(edges[:-1], edges[1:])]


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


class Optimizer:
    name = ""

    def __init__(self, lr: float, lr_mult: Array | list[Array] | None = None):
        self.lr = _positive("lr", lr)
        self._scratch: list[Array] | None = None
        self.lr_mult = lr_mult

    @property
    def lr_mult(self) -> list[Array] | None:
        """Per-element lr multipliers, one array per parameter array, or None (all 1)."""
        return self._lr_mult

    @lr_mult.setter
    def lr_mult(self, value: Array | list[Array] | None) -> None:
        arrays = None if value is None else [np.asarray(value)] if isinstance(value, np.ndarray) else \
            [np.asarray(v) for v in value]
        if arrays is not None:
            bad = [a for a in arrays if not (np.all(np.isfinite(a)) and np.all(a > 0))]
            if bad:
                raise ValueError(f"lr_mult must be finite and > 0, got values down to {np.min(bad[0])!r}")
            if all(np.all(a == 1) for a in arrays):
                arrays = None  # the plain step, bit for bit
        old = getattr(self, "_lr_mult", None)
        self._lr_mult = arrays
        self._runs: list | None = None  # built at the first step, when the parameters' shapes are known
        self._scaled: dict[int, list] = {}  # i -> [factor, factor * lr_mult[i]] where runs are None
        self._plans: dict[int, tuple] = {}  # i -> (g, out, factor, multiplies): see multiply_into
        self._rescale_state(old, arrays)

    def _rescale_state(self, old: list[Array] | None, new: list[Array] | None) -> None:
        """Keep optimiser state that is held in multiplied units consistent when ``lr_mult`` changes."""

    def _checked_mult(self, params: list[Array]) -> list[Array]:
        if [m.shape for m in self._lr_mult] != [p.shape for p in params]:
            raise ValueError(f"lr_mult shapes {[m.shape for m in self._lr_mult]} do not match the parameters' "
                             f"{[p.shape for p in params]}")
        return self._lr_mult

    def multiply_into(self, params: list[Array], i: int, g: Array, factor: float, out: Array) -> None:
        """``out = g * factor * lr_mult[i]`` in one pass over ``g`` (``out = g * factor`` without multipliers)."""
        if self._lr_mult is None:
            np.multiply(g, factor, out=out)
            return
        plan = self._plans.get(i)
        if plan is None or plan[0] is not g or plan[1] is not out or plan[2] != factor:
            plan = self._plans[i] = (g, out, factor, self._plan(params, i, g, factor, out))
        for source, scale, target in plan[3]:
            np.multiply(source, scale, out=target)

    def _plan(self, params: list[Array], i: int, g: Array, factor: float, out: Array) -> list[tuple]:
        """The multiplies ``multiply_into`` does for ``(g, out, factor)``: (source, scale, target) triples.

        Built once and reused while the step is handed the same arrays and ``factor`` (a schedule changes
        ``lr`` once an epoch): each run's views and ``factor * value`` are not rebuilt per step. Rebuilding
        them took about 2 of the 4 us the multipliers added to Adam's multiply on a 301k-parameter net
        (docs/parametrisation.md); what is left is one ufunc call per run."""
        if self._runs is None:
            self._runs = [_runs(m) for m in self._checked_mult(params)]
        runs = self._runs[i]
        if runs is not None and g.flags.c_contiguous and out.flags.c_contiguous:
            g_flat, out_flat = g.reshape(-1), out.reshape(-1)  # views: both are contiguous
            return [(g_flat[start:stop], factor * value, out_flat[start:stop]) for start, stop, value in runs]
        cached = self._scaled.get(i)
        if cached is None or cached[1].dtype != g.dtype:
            cached = self._scaled[i] = [None, np.empty(self._lr_mult[i].shape, g.dtype)]
        if cached[0] != factor:  # refreshed in place when a schedule changes lr
            np.multiply(self._lr_mult[i], factor, out=cached[1])
            cached[0] = factor
        return [(g, cached[1], out)]

    def step(self, params: list[Array], grads: list[Array]) -> None:
        raise NotImplementedError

    def scratch(self, params: list[Array]) -> list[Array]:
        """One work array per parameter, allocated once: a step then allocates nothing (at MNIST scale a
        fresh 2 MB temporary per operation costs more than the arithmetic)."""
        if self._scratch is None or [s.shape for s in self._scratch] != [p.shape for p in params]:
            self._scratch = [np.empty_like(p) for p in params]
        return self._scratch


class SGD(Optimizer):
    """p <- p - lr * lr_mult * g"""

    name = "sgd"

    def step(self, params: list[Array], grads: list[Array]) -> None:
        for i, (p, g, tmp) in enumerate(zip(params, grads, self.scratch(params))):
            self.multiply_into(params, i, g, self.lr, tmp)
            p -= tmp


class Momentum(Optimizer):
    """Heavy-ball momentum, optionally Nesterov (Sutskever et al. 2013 form).

    v <- mu v - lr g;  p <- p + v            (classic)
    v <- mu v - lr g;  p <- p + mu v - lr g  (Nesterov: the step looks ahead along v)
    (lr times lr_mult, element-wise, when multipliers are set)
    """

    name = "momentum"

    def __init__(self, lr: float, momentum: float = 0.9, nesterov: bool = False,
                 lr_mult: Array | list[Array] | None = None):
        super().__init__(lr, lr_mult)
        self.momentum = _fraction("momentum", momentum)
        self.nesterov = bool(nesterov)
        self.velocities: list[Array] | None = None

    def step(self, params: list[Array], grads: list[Array]) -> None:
        if self.velocities is None:
            self.velocities = [np.zeros_like(p) for p in params]
        for i, (p, g, v, tmp) in enumerate(zip(params, grads, self.velocities, self.scratch(params))):
            v *= self.momentum
            self.multiply_into(params, i, g, self.lr, tmp)
            v -= tmp
            if self.nesterov:
                p -= tmp
                np.multiply(v, self.momentum, out=tmp)
            else:
                tmp = v
            p += tmp


class Adam(Optimizer):
    """Kingma & Ba 2015, with the bias corrections folded into the step size (their section 2).

    The folded form adds ``eps`` to sqrt(v) rather than to sqrt(v_hat); the two differ only in
    the effective eps, by a factor sqrt(1 - beta2^t). With ``lr_mult`` each element's step is
    multiplied by its multiplier.
    """

    name = "adam"

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 lr_mult: Array | list[Array] | None = None):
        super().__init__(lr, lr_mult)
        self.beta1 = _fraction("beta1", beta1)
        self.beta2 = _fraction("beta2", beta2)
        self.eps = _positive("eps", eps)
        self.t = 0
        self.m: list[Array] | None = None
        self.v: list[Array] | None = None

    def _rescale_state(self, old: list[Array] | None, new: list[Array] | None) -> None:
        m = getattr(self, "m", None)
        if m is not None:  # m is held as lr_mult * m: convert it to the new multipliers
            for i, moment in enumerate(m):
                moment *= (1.0 if new is None else new[i]) / (1.0 if old is None else old[i])

    def step(self, params: list[Array], grads: list[Array]) -> None:
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        step_size = self.lr * math.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        for i, (p, g, m, v, tmp) in enumerate(zip(params, grads, self.m, self.v, self.scratch(params))):
            # m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  p <- p - step m / (sqrt(v) + eps), in place
            # (with lr_mult, m is lr_mult * m: the multipliers ride on the (1 - b1) multiply, and so does the step)
            m *= b1
            self.multiply_into(params, i, g, 1 - b1, tmp)
            m += tmp
            v *= b2
            np.multiply(g, g, out=tmp)
            tmp *= 1 - b2
            v += tmp
            np.sqrt(v, out=tmp)
            tmp += self.eps
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            p -= tmp


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "momentum": Momentum, "adam": Adam}


def make_optimizer(name: str, **params) -> Optimizer:
    """Build an optimiser by name: ``sgd(lr)``, ``momentum(lr, momentum, nesterov)``, ``adam(lr, beta1, beta2, eps)``;
    each also takes ``lr_mult`` (per-element multipliers, e.g. ``model.lr_multipliers(name)``)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid choices: {', '.join(sorted(OPTIMIZERS))}")
    try:
        return OPTIMIZERS[name](**params)
    except TypeError as err:
        raise ValueError(f"optimizer {name!r}: {err}") from None


# --- learning-rate schedules: (base_lr, epoch (0-based), total epochs) -> lr for that epoch
Schedule = Callable[[float, int, int], float]


def _step_schedule(base_lr: float, epoch: int, epochs: int, step_size: int = 30, gamma: float = 0.1) -> float:
    return base_lr * gamma ** (epoch // step_size)


def _cosine_schedule(base_lr: float, epoch: int, epochs: int, min_lr: float = 0.0) -> float:
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * epoch / max(epochs, 1)))


SCHEDULES: dict[str, Callable[..., float]] = {
    "constant": lambda base_lr, epoch, epochs: base_lr,
    "step": _step_schedule,
    "cosine": _cosine_schedule,
}


def get_schedule(name: str, **params) -> Schedule:
    """A schedule by name (``constant``, ``step(step_size, gamma)``, ``cosine(min_lr)``)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid choices: {', '.join(sorted(SCHEDULES))}")
    fn = SCHEDULES[name]
    if params:
        valid = fn.__code__.co_varnames[3 : fn.__code__.co_argcount]
        unknown = set(params) - set(valid)
        if unknown:
            raise ValueError(f"schedule {name!r} got unknown parameter(s) {sorted(unknown)}; valid: {list(valid)}")
    return lambda base_lr, epoch, epochs: fn(base_lr, epoch, epochs, **params)
