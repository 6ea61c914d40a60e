"""The training objective on one batch: forward, loss, backward, weight decay -- the gradient every
optimiser step and every instrument (gradient noise scale, sharpness) starts from."""
from __future__ import annotations

import numpy as np

from .diagnostics import TrainMeter
from .losses import LossFn, l2_penalty, softmax_cross_entropy
from .network import MLP

Array = np.ndarray


def loss_and_grads(model: MLP, x: Array, y: Array, weight_decay: float = 0.0,
                   train_meter: TrainMeter | None = None, loss_fn: LossFn = softmax_cross_entropy) -> float:
    """Forward + backward on one batch: fills ``model.grads()``, returns the regularised loss.

    ``train_meter`` (if given) is shown the batch's loss and logits; ``loss_fn`` is one of
    ``nnlab.core.losses.LOSSES``."""
    logits = model.forward(x, reuse=True)
    loss, dlogits = loss_fn(logits, y)
    if train_meter is not None:
        train_meter.update(loss, logits, y)
    model.backward(dlogits)
    if weight_decay:
        loss += l2_penalty(model.weights, weight_decay)
        model.add_weight_decay(weight_decay)
    return loss
