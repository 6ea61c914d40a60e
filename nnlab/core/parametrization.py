"""How each layer's initial scale and learning rate depend on width: SP, NTK and muP.

A parametrisation is a rule for changing per-layer scales when the network's widths change (Yang et al.
2022, "Tensor Programs V", Table 3; Microsoft ``mup``). nnlab reads every width relative to a *base*
width n0: m = n / n0, so that at the base width every parametrisation is SP and a learning rate tuned
there means the same thing in all three. Each layer l has a fan-in multiplier ``m_in`` and a fan-out
multiplier ``m_out`` (1 for the input size d and the number of classes, which do not grow with width;
width lists give each hidden layer its own m). Layer kinds: *input* (d -> n), *hidden* (n -> n),
*output* (n -> classes); with no hidden layer the one layer is both input and output and nothing scales.

Initialisation: the initialiser (``he``, ``xavier``, ...) chooses the distribution and is drawn at the
layer's real shape, as in SP; for ``ntk`` and ``mup`` the draw is then rescaled so that its variance is
the initialiser's variance *at the base shape* times the parametrisation's width factor:

    =========  ==========  ==============  ===================
    variance    input       hidden          output
    =========  ==========  ==============  ===================
    sp          v(d, n)     v(n, n)         v(n, C)               (the initialiser as it is)
    ntk         v(d, n0)    v(n0, n0)/m_in  v(n0, C)/m_in
    mup         v(d, n0)    v(n0, n0)/m_in  v(n0, C)/m_in^2  (0 with readout_zero_init)
    =========  ==========  ==============  ===================

For fan-in initialisers (he, lecun, variance_scaling) v(n0, .)/m_in = v(n, .): NTK's and muP's input and
hidden layers are SP's draw untouched. Biases keep the initialiser's (zero, or sigma_b for
variance_scaling): they are O(1) in every parametrisation.

Learning-rate multipliers (the optimiser multiplies the global rate by them, element-wise):

    ============  =======================  ==================  ==================
    weights        input                    hidden              output
    ============  =======================  ==================  ==================
    sp             1                        1                   1
    ntk, SGD       1/m_in (= 1)             1/m_in              1/m_in
    ntk, Adam      1/sqrt(m_in) (= 1)       1/sqrt(m_in)        1/sqrt(m_in)
    mup, SGD       m_out                    m_out/m_in          1/m_in
    mup, Adam      1                        1/m_in              1/m_in
    ============  =======================  ==================  ==================

Biases: 1, except muP with SGD: m_out (the bias's own width; 1 for the output bias).
NTK is realised in SP terms: the textbook form W = w/sqrt(fan_in) with w ~ N(0, 1) and one global rate
gives, on W, the variance above and an SGD rate of eta/fan_in (its gradient is scaled twice); with Adam
the update of w is normalised, so W moves by eta/sqrt(fan_in). nnlab stores W itself with those
multipliers: the same trajectories (Adam's eps aside), with every instrument seeing the real weights.
SGD and momentum share the SGD column (their updates are linear in the gradient).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

Array = np.ndarray
PARAMETRIZATIONS = ("sp", "ntk", "mup")
# optimiser name -> the column of the tables above (SGD-like: update linear in the gradient; Adam-like: normalised)
OPTIMIZER_KINDS = {"sgd": "sgd", "momentum": "sgd", "adam": "adam"}


def _orthogonal_variance(fan_in: int, fan_out: int, gain: float = 1.0) -> float:
    # a semi-orthogonal matrix's columns (or rows) are unit vectors of max(fan_in, fan_out) entries
    return gain**2 / max(fan_in, fan_out)


# initialiser name -> its weights' variance as a function of (fan_in, fan_out, **its params)
INIT_VARIANCES = {
    "he": lambda fan_in, fan_out, distribution="normal": 2.0 / fan_in,
    "lecun": lambda fan_in, fan_out, distribution="normal": 1.0 / fan_in,
    "xavier": lambda fan_in, fan_out, distribution="uniform": 2.0 / (fan_in + fan_out),
    "random": lambda fan_in, fan_out, std=0.01: std**2,
    "orthogonal": _orthogonal_variance,
    "variance_scaling": lambda fan_in, fan_out, sigma_w=1.0, sigma_b=0.0: sigma_w**2 / fan_in,
}


def init_variance(init: str, fan_in: int, fan_out: int, **params) -> float:
    """Variance of the weights ``init`` draws for a (fan_in, fan_out) layer (its params bound)."""
    if not isinstance(init, str) or init not in INIT_VARIANCES:
        raise ValueError(f"init {init!r} has no known variance, so no parametrisation can rescale it; "
                         f"valid choices with ntk/mup: {', '.join(sorted(INIT_VARIANCES))}")
    return float(INIT_VARIANCES[init](fan_in, fan_out, **params))


@dataclass(frozen=True)
class LayerScale:
    """One layer's parametrisation: its kind, width multipliers, the factor its SP draw is multiplied by,
    its nominal initial weight std and its learning-rate multipliers (weights, biases) per optimiser kind."""

    kind: str  # "input", "hidden", "output" or "input+output" (no hidden layer)
    fan_in: int
    fan_out: int
    m_in: float
    m_out: float
    init_factor: float  # the initialiser's draw at the real shape is multiplied by this (0: zero readout)
    init_std: float  # the std of the weights this rule prescribes (nominal, not measured)
    lr_weight: dict  # optimiser kind ("sgd", "adam") -> multiplier of the weights' rate
    lr_bias: dict  # likewise for the bias


def check_parametrization(parametrization: str, base_width, readout_zero_init: bool) -> None:
    """Refuse values that cannot be built: one line naming the value and the valid choices."""
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"unknown parametrization {parametrization!r}; valid choices: {', '.join(PARAMETRIZATIONS)}")
    if not isinstance(readout_zero_init, (bool, np.bool_)):
        raise ValueError(f"readout_zero_init must be true or false, got {readout_zero_init!r}")
    if base_width is None:
        if parametrization != "sp":
            raise ValueError(f"parametrization {parametrization!r} needs base_width (the width the base learning "
                             "rate and init are meant at: an integer >= 1, or one per hidden layer), got None")
        return
    widths = [base_width] if isinstance(base_width, (int, np.integer)) else base_width
    try:
        bad = [w for w in widths if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1]
    except TypeError:
        bad = [base_width]
    if bad or not len(widths):
        raise ValueError(f"base_width must be an integer >= 1 (or one per hidden layer), got {base_width!r}")


def layer_scales(sizes: Sequence[int], parametrization: str = "sp", base_width: int | Sequence[int] | None = None,
                 init: str = "he", init_params: dict | None = None, readout_zero_init: bool = False
                 ) -> list[LayerScale]:
    """The per-layer scales of an MLP of ``sizes`` [n_in, h_1, ..., h_depth, n_out] (see the module's tables).

    ``base_width``: an int for every hidden layer, or one per hidden layer; unused by ``sp``."""
    check_parametrization(parametrization, base_width, readout_zero_init)
    sizes = [int(s) for s in sizes]
    depth = len(sizes) - 2
    init_params = dict(init_params or {})
    if base_width is None:
        base_hidden = sizes[1:-1]  # sp only: every m is 1
    elif isinstance(base_width, (int, np.integer)):
        base_hidden = [int(base_width)] * depth
    else:
        base_hidden = [int(w) for w in base_width]
        if len(base_hidden) != depth:
            raise ValueError(f"got {len(base_hidden)} base widths {base_hidden} for depth {depth}; "
                             "give one per hidden layer or a single integer")
    base_sizes = [sizes[0], *base_hidden, sizes[-1]]
    n_layers = len(sizes) - 1
    out = []
    for i in range(n_layers):
        fan_in, fan_out = sizes[i], sizes[i + 1]
        m_in, m_out = fan_in / base_sizes[i], fan_out / base_sizes[i + 1]
        first, last = i == 0, i == n_layers - 1
        kind = "input+output" if first and last else "input" if first else "output" if last else "hidden"
        out.append(_one_layer(parametrization, kind, fan_in, fan_out, base_sizes[i], base_sizes[i + 1], m_in, m_out,
                              init, init_params, readout_zero_init))
    return out


def _one_layer(par: str, kind: str, fan_in: int, fan_out: int, base_in: int, base_out: int, m_in: float,
               m_out: float, init, init_params: dict, zero: bool) -> LayerScale:
    zero = zero and kind in ("output", "input+output")
    if par == "sp":
        std = 0.0 if zero else (math.sqrt(init_variance(init, fan_in, fan_out, **init_params))
                                if isinstance(init, str) and init in INIT_VARIANCES else math.nan)
        return LayerScale(kind, fan_in, fan_out, m_in, m_out, 0.0 if zero else 1.0, std,
                          {"sgd": 1.0, "adam": 1.0}, {"sgd": 1.0, "adam": 1.0})
    # the width factor of the variance (module docstring's first table); m_in is 1 for the input layer
    factor = 1.0 / m_in**2 if par == "mup" and kind == "output" else 1.0 / m_in
    var = init_variance(init, base_in, base_out, **init_params) * factor
    drawn = init_variance(init, fan_in, fan_out, **init_params)
    init_factor = 0.0 if zero else math.sqrt(var / drawn)
    std = 0.0 if zero else math.sqrt(var)
    if par == "ntk":
        lr_w = {"sgd": 1.0 / m_in, "adam": 1.0 / math.sqrt(m_in)}
        lr_b = {"sgd": 1.0, "adam": 1.0}
    elif kind == "input":
        lr_w, lr_b = {"sgd": m_out, "adam": 1.0}, {"sgd": m_out, "adam": 1.0}
    elif kind == "hidden":
        lr_w, lr_b = {"sgd": m_out / m_in, "adam": 1.0 / m_in}, {"sgd": m_out, "adam": 1.0}
    elif kind == "output":
        lr_w, lr_b = {"sgd": 1.0 / m_in, "adam": 1.0 / m_in}, {"sgd": 1.0, "adam": 1.0}
    else:  # input+output: nothing has a width
        lr_w, lr_b = {"sgd": 1.0, "adam": 1.0}, {"sgd": 1.0, "adam": 1.0}
    return LayerScale(kind, fan_in, fan_out, m_in, m_out, init_factor, std, lr_w, lr_b)


def optimizer_kind(optimizer) -> str:
    """``"sgd"`` or ``"adam"``: the column of the lr tables for an optimiser name or instance."""
    name = optimizer if isinstance(optimizer, str) else getattr(optimizer, "name", None)
    if name not in OPTIMIZER_KINDS:
        raise ValueError(f"no learning-rate rule for optimizer {optimizer!r}; valid choices: "
                         f"{', '.join(sorted(OPTIMIZER_KINDS))}")
    return OPTIMIZER_KINDS[name]


def lr_multiplier_vector(scales: Sequence[LayerScale], optimizer, dtype=np.float32) -> Array:
    """The multipliers (P,) laid out like ``MLP.flat_params`` ([W1, b1, ..., W_L, b_L]) for ``optimizer``."""
    kind = optimizer_kind(optimizer)
    parts = []
    for s in scales:
        parts.append(np.full(s.fan_in * s.fan_out, s.lr_weight[kind], dtype))
        parts.append(np.full(s.fan_out, s.lr_bias[kind], dtype))
    return np.concatenate(parts)


def scale_record(scales: Sequence[LayerScale], optimizer) -> dict[str, float]:
    """``lr_mult/layer_{i}`` (the weights' multiplier for ``optimizer``) and ``init_std/layer_{i}`` (the
    nominal initial weight std), layer i = 1 nearest the input, the readout i = depth + 1."""
    kind = optimizer_kind(optimizer)
    out: dict[str, float] = {}
    for i, s in enumerate(scales, 1):
        out[f"lr_mult/layer_{i}"] = float(s.lr_weight[kind])
    for i, s in enumerate(scales, 1):
        if math.isfinite(s.init_std):  # unknown for a custom initialiser under sp: absent, never NaN
            out[f"init_std/layer_{i}"] = float(s.init_std)
    return out


def coord_stats(model, x: Array) -> dict[str, float]:
    """The coordinate check's numbers on a fixed batch ``x`` (N, n_in): ``coord/layer_{i}`` = mean |h_i| of
    each hidden layer's output (i = 1 nearest the input) and ``coord/logits`` = mean |logits|.

    One forward pass; it overwrites the layers' caches, which the next training step rebuilds."""
    logits = model.forward(x, reuse=True)
    out = {f"coord/layer_{i}": float(np.abs(a).mean(dtype=np.float64))
           for i, (_, a) in enumerate(model.hidden_activations(), 1)}
    out["coord/logits"] = float(np.abs(logits).mean(dtype=np.float64))
    return out
