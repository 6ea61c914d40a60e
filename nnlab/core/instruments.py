"""Instruments of training: step size, distance travelled, gradient noise and sharpness, per epoch.

What a researcher debugging a run looks at beside the losses (cf. Cockpit, Schneider et al. 2021):

- ``update_ratio/layer_{i}``: ||W_after - W_before|| / ||W_before|| over the epoch's *last* optimiser
  step (the classic "about 1e-3" check; one step, not a mean, so it costs one copy per epoch);
- ``dist_init/layer_{i}``: ||W - W_0|| / ||W_0||, how far each layer's weights have moved from initialisation;
- ``grad_noise_scale``: B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018) on a probe batch, from
  per-sample gradient norms (a dense layer's per-sample weight gradient is an outer product, so its norm is
  ||x_n|| ||delta_n||: no per-sample loop);
- ``sharpness``: the largest eigenvalue of the training loss's Hessian by power iteration on Hessian-vector
  products (central differences of the gradient, in float64), and ``sharpness_x_lr`` = sharpness * lr / 2,
  which is 1 at the edge of stability of gradient descent (Cohen et al. 2021).

Weights only (not biases), layer i = 1 nearest the input, as for ``grad_norm/layer_{i}``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .losses import softmax_cross_entropy
from .network import MLP
from .objective import loss_and_grads

Array = np.ndarray


@dataclass
class InstrumentConfig:
    """Which instruments run, and on how much data. Off means absent from the record."""

    update_ratio: bool = True
    dist_init: bool = True
    grad_noise_scale: bool = True
    sharpness_every: int = 0  # epochs between sharpness measurements (0, 1*k, 2*k, ...); 0 = off
    sharpness_size: int = 1000  # training samples the Hessian is taken on (the first ones)
    sharpness_iters: int = 20  # power iterations (each: two gradients on sharpness_size samples)
    coord_steps: int = 0  # the coordinate check: coord/* at optimiser steps 0..coord_steps (0 = off)

    def __post_init__(self) -> None:
        for name in ("update_ratio", "dist_init", "grad_noise_scale"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name, low in (("sharpness_every", 0), ("sharpness_size", 1), ("sharpness_iters", 1),
                          ("coord_steps", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _weight_norms(model: MLP, flat: Array) -> Array:
    """||W_i|| (float64) of each layer's weights in a flat parameter vector laid out like ``model``."""
    return np.array([math.sqrt(np.vdot(w, w)) for w in model.weight_views(flat)])


def update_ratios(model: MLP, before: Array) -> dict[str, float]:
    """``update_ratio/layer_{i}`` = ||W_i - W_i_before|| / ||W_i_before||; ``before`` (P,) laid out like
    ``model.flat_params``. Absent for a layer whose ``before`` is all zeros (Fixup's readout at
    initialisation): the ratio is undefined there."""
    diffs = [w - b for w, b in zip(model.weights, model.weight_views(before))]
    norms = _weight_norms(model, before)
    return {f"update_ratio/layer_{i}": math.sqrt(np.vdot(d, d)) / n
            for i, (d, n) in enumerate(zip(diffs, norms), 1) if n > 0}


def dist_from_init(model: MLP, initial: Array) -> dict[str, float]:
    """``dist_init/layer_{i}`` = ||W_i - W_i(0)|| / ||W_i(0)||; ``initial`` (P,) laid out like ``model.flat_params``."""
    out = update_ratios(model, initial)
    return {k.replace("update_ratio", "dist_init"): v for k, v in out.items()}


def per_sample_grad_sq_norms(model: MLP) -> Array:
    """||grad of l_n||^2 over all weights and biases, for each sample n of the last backward pass -> (N,).

    After ``loss_and_grads`` on N samples, layer k holds dL/dz = delta_n / N for the *mean* loss L; sample n's
    own gradient is x_n delta_n^T for W (norm ||x_n|| ||delta_n||) and delta_n for b, so
    ||g_n||^2 = sum_k N^2 ||dL/dz_n||^2 (||x_n||^2 + 1). Residual and normalised layers add their own
    parameters' shares (gate, shift, LayerNorm gain and bias: ``Block.per_sample_sq_norms``).
    """
    n = len(model.layers[0].x)
    total = np.zeros(n)
    for layer in model.layers:
        x_sq = np.einsum("ij,ij->i", layer.x, layer.x, dtype=np.float64)
        d_sq = np.einsum("ij,ij->i", layer.grad_z, layer.grad_z, dtype=np.float64)
        total += d_sq * (x_sq + 1.0)
    for block in model.blocks:
        if hasattr(block, "per_sample_sq_norms"):
            total += block.per_sample_sq_norms()
    return total * n * n


def grad_noise_scale(model: MLP, x: Array, y: Array, weight_decay: float = 0.0) -> float | None:
    """B_simple = tr(Sigma) / |G|^2 of the training loss, estimated on the batch (x (N, n_in), y (N,)).

    With per-sample gradients g_n and their mean G_N: tr(Sigma) ~ N/(N-1) (mean ||g_n||^2 - ||G_N||^2) and
    |G|^2 ~ ||G_N + wd W||^2 - tr(Sigma)/N (unbiased; McCandlish et al. 2018, appendix A with B_small = 1).
    Weight decay shifts G but not Sigma. Returns None when the |G|^2 estimate is not positive (the
    gradient is lost in its own noise on this batch): no number is better than a wrong one.
    Leaves ``model``'s gradients overwritten (the next training step recomputes them). When ``model``'s
    caches already hold the forward pass of this very ``x`` (``activation_stats`` on the probe batch just ran),
    only the backward pass is run.
    """
    n = len(x)
    if model.layers[0].x is x and model.layers[-1].z is not None and len(model.layers[-1].z) == n:
        model.backward(softmax_cross_entropy(model.layers[-1].z, y)[1])  # reuse the cached forward pass
    else:
        loss_and_grads(model, x, y)
    per_sample = per_sample_grad_sq_norms(model)
    mean_sq = float(np.vdot(model.flat_grads, model.flat_grads))
    trace = n / (n - 1) * (float(per_sample.mean()) - mean_sq)
    if weight_decay:
        model.add_weight_decay(weight_decay)
    g_sq = float(np.vdot(model.flat_grads, model.flat_grads)) - trace / n
    if not (g_sq > 0 and math.isfinite(trace)):
        return None
    return trace / g_sq


def _as_float64(model: MLP, cache: MLP | None = None) -> MLP:
    """A float64 copy of ``model`` (reusing ``cache`` when it has the same shape)."""
    if cache is None or cache.sizes != model.sizes or cache.activation != model.activation \
            or cache.architecture != model.architecture:
        cache = model.empty_like(np.float64)
    cache.flat_params[...] = model.flat_params
    return cache


def loss_gradient(model: MLP, x: Array, y: Array, weight_decay: float = 0.0) -> Array:
    """Gradient (P,) of the mean cross-entropy + 0.5 wd sum ||W||^2 on (x, y), as a copy."""
    loss_and_grads(model, x, y, weight_decay)
    return model.flat_grads.copy()


def hvp(model: MLP, x: Array, y: Array, v: Array, weight_decay: float = 0.0, eps: float | None = None) -> Array:
    """Hessian-vector product H v (P,) of the regularised training loss on (x, y), ``v`` (P,).

    Central differences of the gradient, (g(theta + e v) - g(theta - e v)) / 2e: error O(e^2) from the
    third derivative plus rounding ~1e-16 / e, so ``model`` should be float64. Restores the parameters.
    """
    theta = model.flat_params.copy()
    v_norm = float(np.linalg.norm(v))
    if eps is None:
        eps = 1e-4 * max(1.0, float(np.linalg.norm(theta))) / max(v_norm, 1e-300)
    try:
        model.flat_params[...] = theta + eps * v
        up = loss_gradient(model, x, y, weight_decay)
        model.flat_params[...] = theta - eps * v
        down = loss_gradient(model, x, y, weight_decay)
    finally:
        model.flat_params[...] = theta
    return (up - down) / (2 * eps)


def power_iteration(matvec, v0: Array, iters: int, tol: float, shift: float = 0.0) -> tuple[float, Array]:
    """Dominant eigenvalue of the symmetric operator ``matvec(v) - shift v`` (plus ``shift``) and its unit
    eigenvector; at most ``iters`` products, or until the Rayleigh quotient moves by < ``tol`` (relative)."""
    v = v0 / np.linalg.norm(v0)
    value = 0.0
    for _ in range(iters):
        hv = matvec(v) - shift * v
        new = float(np.vdot(v, hv))  # Rayleigh quotient: v is a unit vector
        norm = float(np.linalg.norm(hv))
        if not (norm > 0 and math.isfinite(norm)):
            return new + shift, v
        v = hv / norm
        done = abs(new - value) <= tol * abs(new)
        value = new
        if done:
            break
    return value + shift, v


def top_eigenvalue(matvec, v0: Array, iters: int = 20, tol: float = 1e-4) -> tuple[float, Array]:
    """Largest (algebraic) eigenvalue of a symmetric operator by power iteration. Power iteration finds the
    largest in *magnitude*; when that one is negative (a saddle direction dominates), a second run on the
    operator shifted by it (``H - lambda_neg I``, whose dominant eigenvalue is then lambda_max - lambda_neg)
    finds the top one."""
    value, v = power_iteration(matvec, v0, iters, tol)
    if value < 0:
        value, v = power_iteration(matvec, v0, iters, tol, shift=value)
    return value, v


def sharpness(model: MLP, x: Array, y: Array, weight_decay: float = 0.0, iters: int = 20, tol: float = 1e-4,
              v0: Array | None = None, seed: int = 0) -> tuple[float, Array]:
    """Largest eigenvalue of the training loss's Hessian on (x, y), and its unit eigenvector (P,).

    Power iteration (``top_eigenvalue``) on Hessian-vector products of a float64 copy of ``model``; at most
    ``iters`` products per run, or until the Rayleigh quotient changes by less than ``tol`` (relative). ``v0``
    warm-starts it (last epoch's eigenvector: the top direction moves slowly, so a few products suffice).
    """
    model64 = model if model.dtype == np.float64 else _as_float64(model)
    x64 = np.asarray(x, dtype=np.float64)
    if v0 is None or v0.shape != model64.flat_params.shape:
        v0 = np.random.default_rng(seed).normal(size=model64.flat_params.shape)
    return top_eigenvalue(lambda v: hvp(model64, x64, y, v, weight_decay), v0, iters, tol)


class Instruments:
    """The per-epoch instruments of one training run: keeps W_0, the last step's snapshot and the last
    top eigenvector; ``measure`` returns the enabled metrics by their record names."""

    def __init__(self, config: InstrumentConfig, model: MLP):
        self.config = config
        self.initial = model.flat_params.copy() if config.dist_init else None
        self._before = np.empty_like(model.flat_params) if config.update_ratio else None
        self._stepped = False
        self._eigvec: Array | None = None
        self._model64: MLP | None = None

    def before_last_step(self, model: MLP) -> None:
        """Called by the training loop just before an epoch's last optimiser step."""
        if self._before is not None:
            self._before[...] = model.flat_params
            self._stepped = True

    def measure(self, model: MLP, epoch: int, x: Array, y: Array, weight_decay: float, lr: float,
                probe: tuple[Array, Array] | None = None) -> dict[str, float]:
        """The enabled instruments after ``epoch`` (0 = at initialisation); ``x`` (N, n_in), ``y`` (N,) are the
        training split (sharpness uses its first ``sharpness_size`` rows); ``probe`` = (x_probe, y_probe), the
        batch the gradient noise scale is measured on (default: the first 512 rows).

        ``update_ratio`` is absent at epoch 0 (no step yet); ``grad_noise_scale`` is absent when its
        estimate is undefined; ``sharpness`` only every ``sharpness_every`` epochs."""
        c = self.config
        out: dict[str, float] = {}
        if c.update_ratio and self._stepped and epoch > 0:
            out.update(update_ratios(model, self._before))
        if c.dist_init:
            out.update(dist_from_init(model, self.initial))
        if c.grad_noise_scale:
            x_probe, y_probe = probe if probe is not None else (x[:512], y[:512])
            b = grad_noise_scale(model, x_probe, y_probe, weight_decay)
            if b is not None:
                out["grad_noise_scale"] = b
        if c.sharpness_every and epoch % c.sharpness_every == 0:
            self._model64 = _as_float64(model, self._model64)
            value, self._eigvec = sharpness(self._model64, x[: c.sharpness_size], y[: c.sharpness_size],
                                            weight_decay, c.sharpness_iters, v0=self._eigvec)
            out["sharpness"] = value
            out["sharpness_x_lr"] = value * lr / 2
        return out
