"""Losses of (N, C) logits against (N,) integer labels, each returning (mean loss, dL/dlogits) in one
fused pass: softmax cross-entropy and the squared error against one-hot targets; plus L2 weight decay.
``LOSSES`` keys them by the names ``TrainConfig.loss`` takes."""
from __future__ import annotations

from typing import Callable

import numpy as np

Array = np.ndarray


def log_softmax(logits: Array) -> Array:
    """Row-wise log-softmax of (N, C) logits, stable for logits of any size."""
    shifted = logits - logits.max(axis=1, keepdims=True)  # largest logit becomes 0: exp never overflows
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: Array) -> Array:
    """Row-wise softmax of (N, C) logits; rows sum to 1."""
    return np.exp(log_softmax(logits))


def softmax_cross_entropy(logits: Array, y: Array) -> tuple[float, Array]:
    """Mean cross-entropy of (N, C) logits against (N,) integer labels, and dL/dlogits (N, C).

    Fusing softmax with cross-entropy gives the gradient ``(probs - onehot(y)) / N``: the
    softmax Jacobian cancels against d(-log p_y)/dp. This holds only because the loss is the
    negative log-likelihood of the softmax output, which is why the two are one function.
    """
    n = logits.shape[0]
    rows = np.arange(n)
    shifted = logits - logits.max(axis=1, keepdims=True)  # largest logit becomes 0: exp never overflows
    dlogits = np.exp(shifted)
    total = dlogits.sum(axis=1, keepdims=True)  # in [1, C]: its log is safe
    loss = float((np.log(total[:, 0]) - shifted[rows, y]).sum()) / n  # mean of -log p_y = log sum e^s - s_y
    dlogits /= total
    dlogits[rows, y] -= 1.0
    dlogits /= n
    return loss, dlogits


def mse_one_hot(logits: Array, y: Array) -> tuple[float, Array]:
    """Mean squared error of (N, C) logits against the one-hot rows of (N,) labels, and dL/dlogits (N, C).

    L = (1/(N C)) sum_{n,c} (z_nc - [c = y_n])^2, the mean over every entry (torch's ``mse_loss`` on one-hot
    targets, as mup's coordinate check uses), so dL/dz = 2 (z - onehot) / (N C). The residual is built in
    the gradient's own array: one (N, C) array per call, like the cross-entropy.
    """
    n, c = logits.shape
    dlogits = np.array(logits, dtype=np.result_type(logits.dtype, np.float32), copy=True)  # z - onehot, in place
    dlogits[np.arange(n), y] -= 1.0
    loss = float(np.vdot(dlogits, dlogits)) / (n * c)
    dlogits *= 2.0 / (n * c)
    return loss, dlogits


LossFn = Callable[[Array, Array], tuple[float, Array]]
LOSSES: dict[str, LossFn] = {"cross_entropy": softmax_cross_entropy, "mse": mse_one_hot}


def get_loss(name: str) -> LossFn:
    """The loss function ``(logits (N, C), y (N,)) -> (mean loss, dL/dlogits (N, C))`` for a name."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid choices: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def l2_penalty(weights: list[Array], weight_decay: float) -> float:
    """0.5 * weight_decay * sum ||W||^2 over weight matrices (biases are not decayed)."""
    if weight_decay == 0:
        return 0.0
    return 0.5 * weight_decay * float(sum(np.vdot(w, w) for w in weights))
