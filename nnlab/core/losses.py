"""Softmax and the fused softmax cross-entropy loss, plus L2 weight decay."""
from __future__ import annotations

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


def l2_penalty(weights: list[Array], weight_decay: float) -> float:
    """0.5 * weight_decay * sum ||W||^2 over weight matrices (biases are not decayed)."""
    if weight_decay == 0:
        return 0.0
    return 0.5 * weight_decay * float(sum(np.vdot(w, w) for w in weights))
