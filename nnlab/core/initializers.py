"""Weight initialisers, keyed by the names users type.

Every initialiser has the signature ``init(fan_in, fan_out, *, rng, dtype, **params) -> W`` with
``W`` of shape (fan_in, fan_out), and draws only from the ``np.random.Generator`` it is handed.
Biases start at zero, except for ``variance_scaling``, the mean-field papers' parameterisation,
whose biases are drawn by :func:`get_bias_initializer` (``BIAS_INITIALIZERS``).

Two initialisers need more than one layer's shape (``MODEL_INITIALIZERS``: names ``MLP(init=...)`` takes,
not ``get_initializer``): ``fixup`` (Zhang, Dauphin & Ma 2019) needs the architecture, and :func:`fixup`
applies it when the MLP is built; ``lsuv`` (Mishkin & Matas 2016) needs data: the MLP starts orthogonal and
:func:`lsuv` rescales it on a training batch. docs/depth.md says exactly what each does.
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
    elif name in MODEL_INITIALIZERS:
        raise ValueError(f"initializer {name!r} initialises a whole network, not one layer: pass it to "
                         f"MLP(init={name!r}); per-layer choices: {', '.join(sorted(INITIALIZERS))}")
    else:
        raise ValueError(f"unknown initializer {name!r}; valid choices: {', '.join(sorted(INITIALIZERS))}; "
                         f"for a whole network (MLP only): {', '.join(sorted(MODEL_INITIALIZERS))}")
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


# --- initialisers that need the architecture or data -------------------------------------------------
# name -> the per-layer initialiser the MLP draws its weights with first (its parameters are that one's)
MODEL_INITIALIZERS: dict[str, str] = {"fixup": "he", "lsuv": "orthogonal"}


def fixup(model) -> None:
    """Fixup adapted to one-weight-layer branches, in place on a freshly built residual ``MLP`` (He weights,
    zero biases, gates and shifts at 0, which ``MLP(init="fixup")`` provides).

    Zhang et al.'s rules are: the classifier and the last layer of each branch at 0; the other weight layers
    of a branch scaled by L^(-1/(2m-2)) for m layers per branch; a scalar multiplier and scalar biases.
    Here a branch is ``g * phi(W (h + s) + b)``: W cannot be the zero layer (a ReLU branch with W = 0, b = 0
    has phi'(0) = 0 and never learns), so the scalar multiplier g plays the zero-initialised last layer.
    That makes m = 2 multiplicative factors (W, g), hence W is scaled by L^(-1/2) with L = depth - 1 residual
    branches; the readout's W and b are set to 0. Each branch's first SGD step then changes the output by
    O(lr / L), so the whole network's by O(lr) at any depth (the paper's argument, with m = 2).
    """
    branches = model.residual_blocks()
    for _, block in branches:
        block.dense.W *= len(branches) ** -0.5
    model.readout.W[...] = 0
    model.readout.b[...] = 0


def lsuv(model, x: np.ndarray, tol: float | None = None, max_passes: int | None = None) -> dict:
    """Layer-sequential unit variance (Mishkin & Matas 2016) on one batch ``x`` (N, n_in), in place.

    From the first weight layer to the readout, in order: measure the variance of the layer's output
    z = W u + b (before the activation; pooled over the batch's samples and units) and divide W by sqrt(Var)
    until |Var - 1| < ``tol``, at most ``max_passes`` rescalings per layer. Earlier layers are fixed when a
    layer is treated, so only that layer is re-run. The weights are expected orthogonal (``MLP(init="lsuv")``).
    ``tol`` and ``max_passes`` default to the model's ``init_params`` (``model.lsuv_options``), else 0.1 and 10.

    Returns what the record needs: ``{"batch_size": N, "tol", "max_passes", "passes": [rescalings of layer
    1..depth+1], "variance": [final Var of layer 1..depth+1], "converged": every |Var - 1| < tol}``.
    Raises ValueError when a layer's output has zero or non-finite variance (nothing to rescale).
    """
    options = getattr(model, "lsuv_options", {})
    tol = options.get("tol", 0.1) if tol is None else tol
    max_passes = options.get("max_passes", 10) if max_passes is None else max_passes
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"lsuv tol must be a number in (0, 1), got {tol!r}")
    if isinstance(max_passes, bool) or not isinstance(max_passes, (int, np.integer)) or max_passes < 1:
        raise ValueError(f"lsuv max_passes must be an integer >= 1, got {max_passes!r}")
    h = np.ascontiguousarray(x, dtype=model.dtype)
    if h.ndim != 2 or len(h) < 2:
        raise ValueError(f"lsuv needs a batch of >= 2 rows (N, n_in), got shape {h.shape}")
    passes, variances = [], []
    for i, (step, layer) in enumerate(zip(model._stack, model.layers), 1):
        count = 0
        while True:
            out = step.forward(h)
            var = float(layer.z.var(dtype=np.float64))
            if abs(var - 1.0) < tol or count == max_passes:
                break
            if not (var > 0 and np.isfinite(var)):
                raise ValueError(f"lsuv: layer {i}'s output has variance {var} on the batch; cannot rescale it")
            layer.W /= np.sqrt(var).astype(layer.W.dtype)
            count += 1
        passes.append(count)
        variances.append(var)
        h = out  # layer i is final: its output is layer i+1's input (a work array of layer i, not touched again)
    model.needs_data_init = False
    return {"batch_size": len(x), "tol": float(tol), "max_passes": int(max_passes), "passes": passes,
            "variance": variances, "converged": all(abs(v - 1.0) < tol for v in variances)}
