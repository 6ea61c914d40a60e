"""The per-epoch statistics nnlab reports: gradient norms and activation statistics.

Names returned here are the MLflow metric names (see DESIGN.md); layer i = 1 is nearest the input.
"""
from __future__ import annotations

import math

import numpy as np

from .network import MLP

Array = np.ndarray


def squared_norms(grads: list[Array]) -> Array:
    """Squared L2 norm of each gradient array, as float64 (len(grads),)."""
    return np.array([np.vdot(g, g) for g in grads], dtype=np.float64)


class GradNormMeter:
    """Accumulates per-step gradient norms and reports their mean over an epoch's steps."""

    def __init__(self, n_layers: int):
        self.n_layers = n_layers
        self.reset()

    def reset(self) -> None:
        self._layer_sum = np.zeros(self.n_layers)
        self._global_sum = 0.0
        self._steps = 0

    def update(self, model: MLP) -> None:
        """Add the gradients of one step, as left in ``model`` by its backward pass."""
        self._layer_sum += np.sqrt(squared_norms([layer.dW for layer in model.layers]))  # weights only
        self._global_sum += math.sqrt(np.vdot(model.flat_grads, model.flat_grads))
        self._steps += 1

    def summary(self) -> dict[str, float]:
        steps = max(self._steps, 1)
        out = {f"grad_norm/layer_{i}": float(s / steps) for i, s in enumerate(self._layer_sum, 1)}
        out["grad_norm/global"] = self._global_sum / steps
        return out


class TrainMeter:
    """Running ``train_loss`` (cross-entropy without weight decay) and ``train_acc`` over an epoch's
    mini-batches, each batch seen with the weights of its own step: free, since the logits exist anyway."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._loss_sum, self._correct, self._n = 0.0, 0, 0

    def update(self, loss: float, logits: Array, y: Array) -> None:
        """One batch: its mean loss, its (N, C) logits and (N,) labels."""
        self._loss_sum += loss * len(y)
        self._correct += int(np.count_nonzero(logits.argmax(axis=1) == y))
        self._n += len(y)

    def summary(self) -> dict[str, float]:
        return {"train_loss": self._loss_sum / max(self._n, 1), "train_acc": self._correct / max(self._n, 1)}


def activation_stats(model: MLP, x_probe: Array) -> dict[str, float]:
    """Mean, std and saturation (or dead fraction) of each hidden layer's output on a probe batch, and
    ``branch_ratio/layer_{i}`` of each residual layer.

    Mean and std are of the layer's output h (the sum h + alpha phi(z), for a residual layer); saturation is
    of its activation's units phi(z) (the branch, for a residual layer: the sum is not an activation's output).
    ``branch_ratio/layer_{i}`` = ||alpha phi(z)|| / ||h_{i-1}|| (Frobenius norms over the batch): how much
    the branch adds to the skip; absent for plain layers and where the skip is zero.
    Runs a forward pass on ``x_probe`` (N, n_in); the caches it overwrites are rebuilt by the
    next training step.
    """
    model.forward(x_probe)
    stats: dict[str, float] = {}
    for i, ((z, h), layer) in enumerate(zip(model.hidden_activations(), model.layers), 1):
        stats[f"act_mean/layer_{i}"] = float(h.mean(dtype=np.float64))
        stats[f"act_std/layer_{i}"] = float(h.std(dtype=np.float64))
        stats[f"act_saturation/layer_{i}"] = model.activation.saturated(z, layer.a)
    for i, block in model.residual_blocks():
        ratio = block.branch_ratio()
        if ratio is not None:
            stats[f"branch_ratio/layer_{i}"] = ratio
    return stats


def activation_length_logvar(model: MLP, x_probe: Array) -> dict[str, float]:
    """``act_len_logvar``: the variance over the probe batch ``x_probe`` (N, n_in) of log ||h_L||^2, h_L the
    last hidden layer's output (population variance, ddof = 0). The spread of the activation length across
    inputs, which grows with sum 1/n_j in deep narrow nets (Hanin & Rolnick 2018); it includes the spread of
    the inputs' own lengths. Empty for depth 0 and when some ||h_L|| is 0 or not finite (log undefined)."""
    if model.depth == 0:
        return {}
    model.forward(x_probe)
    h = model.hidden_activations()[-1][1]
    sq = np.einsum("ij,ij->i", h, h, dtype=np.float64)
    if not (np.all(sq > 0) and np.all(np.isfinite(sq))):
        return {}
    return {"act_len_logvar": float(np.var(np.log(sq)))}


def preactivation_std(model: MLP, x_probe: Array) -> dict[str, float]:
    """``preact_std/layer_{i}``: std of each hidden layer's pre-activation z (N, units), pooled over
    samples and units, on the probe batch ``x_probe`` (N, n_in). Mean-field theory predicts it as
    sqrt(q^i) (``nnlab.theory``); the harness records it at initialisation."""
    model.forward(x_probe)
    return {f"preact_std/layer_{i}": float(z.std(dtype=np.float64))
            for i, (z, _) in enumerate(model.hidden_activations(), 1)}
