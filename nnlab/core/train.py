"""The training loop: shuffled mini-batches, per-epoch metrics through a callback.

``fit`` reports epoch 0 (the network at initialisation, before any update) and then one record
per epoch; each record is a flat ``{metric name: value}`` dict using the names of the record.
With ``InstrumentConfig.coord_steps = k`` it also records the coordinate check (``coord/*``) at
optimiser steps 0..k, through ``coord_callback`` and ``History.coord``: its step is the optimiser's.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .diagnostics import GradNormMeter, TrainMeter, activation_length_logvar, activation_stats
from .instruments import InstrumentConfig, Instruments
from .losses import LossFn, get_loss, softmax_cross_entropy
from .network import MLP
from .objective import loss_and_grads
from .optim import Optimizer, get_schedule
from .parametrization import coord_stats

Array = np.ndarray
Callback = Callable[[int, dict[str, float]], None]
Probe = Callable[[MLP, Array], dict[str, float]]  # (model, probe batch) -> extra metrics of the epoch


class DivergenceError(FloatingPointError):
    """Training produced a NaN or infinite loss."""

    def __init__(self, epoch: int, loss: float):
        self.epoch, self.loss = epoch, loss
        super().__init__(f"training diverged at epoch {epoch}: loss is {loss}")


@dataclass
class TrainConfig:
    """How to train: epochs, mini-batch size, L2 weight decay, lr schedule, early stopping."""

    epochs: int = 30
    batch_size: int = 32
    weight_decay: float = 1e-2  # L2 on weights; 0.01 lifts digits test accuracy ~0.5 points
    schedule: str = "constant"
    schedule_params: dict = field(default_factory=dict)
    patience: int | None = None  # stop after this many epochs without a better val_acc
    probe_size: int = 512  # training samples used for activation statistics
    train_eval_size: int | None = 5000  # train_loss/train_acc (and epoch 0's gradient) on this many; None = all
    loss: str = "cross_entropy"  # or "mse": squared error on one-hot targets (train/val/test loss alike)
    instruments: InstrumentConfig = field(default_factory=InstrumentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.instruments, dict):
            self.instruments = InstrumentConfig(**self.instruments)
        tes = self.train_eval_size
        if tes is not None and (isinstance(tes, bool) or not isinstance(tes, (int, np.integer)) or tes < 1):
            raise ValueError(f"train_eval_size must be None or an integer >= 1, got {tes!r}")
        for name in ("epochs", "batch_size", "probe_size"):
            value = getattr(self, name)
            low = 0 if name == "epochs" else 1
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < math.inf):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.patience is not None and (not isinstance(self.patience, (int, np.integer)) or self.patience < 1):
            raise ValueError(f"patience must be None or an integer >= 1, got {self.patience!r}")
        get_schedule(self.schedule, **self.schedule_params)  # fail now on a bad name
        get_loss(self.loss)


@dataclass
class History:
    """Per-epoch records (epoch 0 = at initialisation) and the run's summary numbers."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0  # wall time of fit, without the time spent in its callbacks (recording)
    coord: list[dict[str, float]] = field(default_factory=list)  # coord[t]: coordinate check after t optimiser steps

    @property
    def epochs_run(self) -> int:
        return len(self.epochs) - 1

    @property
    def best_val_acc(self) -> float:
        return max(e["val_acc"] for e in self.epochs)

    def metric(self, name: str) -> Array:
        """One metric over epochs 0..epochs_run."""
        return np.array([e[name] for e in self.epochs])


def predict(model: MLP, x: Array, batch_size: int = 4096) -> Array:
    """Predicted class of each row of ``x`` (N, n_in) -> (N,)."""
    return np.concatenate([model.forward(x[i : i + batch_size]).argmax(axis=1) for i in range(0, len(x), batch_size)])


def accuracy(model: MLP, x: Array, y: Array) -> float:
    """Fraction of rows of ``x`` classified as ``y``."""
    return float(np.mean(predict(model, x) == y))


def evaluate(model: MLP, x: Array, y: Array, batch_size: int = 4096,
             loss_fn: LossFn = softmax_cross_entropy) -> tuple[float, float]:
    """Mean loss (default cross-entropy; without weight decay) and accuracy on (N, n_in) inputs, (N,) labels."""
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        logits = model.forward(x[i : i + batch_size])
        loss, _ = loss_fn(logits, y[i : i + batch_size])
        loss_sum += loss * len(logits)
        correct += int((logits.argmax(axis=1) == y[i : i + batch_size]).sum())
    return loss_sum / len(x), correct / len(x)


def train_epoch(model: MLP, optimizer: Optimizer, x: Array, y: Array, batch_size: int,
                rng: np.random.Generator, meter: GradNormMeter, weight_decay: float = 0.0,
                instruments: Instruments | None = None, train_meter: TrainMeter | None = None,
                loss_fn: LossFn = softmax_cross_entropy, after_step: Callable[[], None] | None = None) -> float:
    """One pass over (x, y) in shuffled mini-batches; returns the mean regularised batch loss.

    ``instruments`` (if given) is shown the parameters just before the epoch's last step; ``train_meter``
    (if given) every batch's loss and logits; ``after_step`` (if given) is called after every optimiser step."""
    order = rng.permutation(len(x))
    # The optimiser sees the whole network as one flat vector: one update instead of one per array.
    params, grads = [model.flat_params], [model.flat_grads]
    # Each batch is gathered into one reused array (a fresh one per step costs page faults at MNIST scale).
    batch = np.empty((min(batch_size, len(x)), *x.shape[1:]), x.dtype)
    total = 0.0
    last = (len(x) - 1) // batch_size * batch_size
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        xb = np.take(x, idx, axis=0, out=batch[: len(idx)])
        loss = loss_and_grads(model, xb, y[idx], weight_decay, train_meter, loss_fn)
        if not math.isfinite(loss):
            return loss
        meter.update(model)
        if instruments is not None and start == last:
            instruments.before_last_step(model)
        optimizer.step(params, grads)
        if after_step is not None:
            after_step()
        total += loss * len(idx)
    return total / len(x)


def epoch_metrics(model: MLP, x_train: Array, y_train: Array, x_val: Array, y_val: Array,
                  x_probe: Array, meter: GradNormMeter, instruments: Instruments | None = None, *,
                  epoch: int = 0, weight_decay: float = 0.0, lr: float = 0.0,
                  train_eval_size: int | None = None, train_meter: TrainMeter | None = None,
                  loss_fn: LossFn = softmax_cross_entropy) -> dict[str, float]:
    """The record of one epoch: losses, accuracies, gradient norms, activation statistics, instruments.

    ``train_loss``/``train_acc``: the running mean over the epoch's mini-batches when ``train_meter`` saw
    them (epochs >= 1: free), else a pass over the first ``train_eval_size`` training rows (epoch 0).
    ``val_loss``/``val_acc``: a pass over the validation split with the epoch's final weights."""
    if train_meter is not None:
        train = train_meter.summary()
    else:
        loss, acc = evaluate(model, x_train[:train_eval_size], y_train[:train_eval_size], loss_fn=loss_fn)
        train = {"train_loss": loss, "train_acc": acc}
    val_loss, val_acc = evaluate(model, x_val, y_val, loss_fn=loss_fn)
    metrics = {**train, "val_loss": val_loss, "val_acc": val_acc,
               **meter.summary(), **activation_stats(model, x_probe)}
    if epoch == 0:  # the spread of the activation length at initialisation (Hanin & Rolnick 2018)
        metrics.update(activation_length_logvar(model, x_probe))
    if instruments is not None:  # after activation_stats: the noise scale reuses its forward pass of the probe
        probe = (x_probe, y_train[: len(x_probe)])
        metrics.update(instruments.measure(model, epoch, x_train, y_train, weight_decay, lr, probe))
    return metrics


def fit(model: MLP, optimizer: Optimizer, x_train: Array, y_train: Array, x_val: Array, y_val: Array,
        config: TrainConfig | None = None, *, seed: int | None = 0, rng: np.random.Generator | None = None,
        callback: Callback | None = None, probes: Sequence[Probe] = (),
        coord_callback: Callback | None = None) -> History:
    """Train ``model`` on (N, n_in) ``x_train`` / (N,) ``y_train``; report every epoch to ``callback``.

    Epoch 0 is measured before any update; its gradient norms are those of one batch of the first
    ``config.train_eval_size`` training samples (the training metrics' subset). Each of ``probes``
    (e.g. ``nnlab.core.jacobian.JacobianProbe``) adds its metrics to every epoch's record, computed on
    the fixed probe batch. Raises ``DivergenceError`` as soon as a loss is NaN or infinite.

    The optimiser gets the model's parametrisation multipliers (``model.lr_multipliers``) unless it
    already has its own ``lr_mult``. With ``config.instruments.coord_steps = k > 0`` the coordinate check
    (``coord_stats`` on the probe batch) is taken at initialisation and after each of the first k
    optimiser steps: ``coord_callback(step, metrics)`` with step = optimiser step 0..k, and ``History.coord``.
    """
    config = config or TrainConfig()
    loss_fn = get_loss(config.loss)
    if optimizer.lr_mult is None and getattr(model, "parametrization", "sp") != "sp":
        optimizer.lr_mult = model.lr_multipliers(optimizer)
    rng = rng if rng is not None else np.random.default_rng(seed)
    x_train, x_val = (np.ascontiguousarray(a, dtype=model.dtype) for a in (x_train, x_val))
    x_probe = x_train[: config.probe_size]
    schedule = get_schedule(config.schedule, **config.schedule_params)
    base_lr = optimizer.lr
    meter = GradNormMeter(len(model.layers))
    train_meter = TrainMeter()
    instruments = Instruments(config.instruments, model)
    history = History()
    start = time.perf_counter()
    outside = 0.0  # seconds spent in the callbacks (recording, a stalled store): not training time
    coord_steps = config.instruments.coord_steps
    x_coord = x_probe  # the coordinate check's fixed batch: the probe batch

    def record_coord() -> None:
        nonlocal outside
        step = len(history.coord)
        if step > coord_steps:
            return
        metrics = coord_stats(model, x_coord)
        history.coord.append(metrics)
        if coord_callback is not None:
            called = time.perf_counter()
            coord_callback(step, metrics)
            outside += time.perf_counter() - called

    def record(epoch: int) -> None:
        nonlocal outside
        metrics = epoch_metrics(model, x_train, y_train, x_val, y_val, x_probe, meter, instruments, epoch=epoch,
                                weight_decay=config.weight_decay, lr=optimizer.lr,
                                train_eval_size=config.train_eval_size, train_meter=train_meter if epoch else None,
                                loss_fn=loss_fn)
        for probe in probes:
            metrics.update(probe(model, x_probe))
        if not math.isfinite(metrics["train_loss"]):
            raise DivergenceError(epoch, metrics["train_loss"])
        history.epochs.append(metrics)
        if callback is not None:
            called = time.perf_counter()
            callback(epoch, metrics)
            outside += time.perf_counter() - called

    # Overflow on the way to a NaN loss is expected when training diverges; the loss check below
    # turns it into one DivergenceError instead of a page of RuntimeWarnings.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        n_eval = config.train_eval_size
        init_loss = loss_and_grads(model, x_train[:n_eval], y_train[:n_eval], config.weight_decay, loss_fn=loss_fn)
        if not math.isfinite(init_loss):
            raise DivergenceError(0, init_loss)
        meter.update(model)
        if coord_steps:
            record_coord()  # step 0; after the gradient above, before epoch 0's record (which reads no caches)
        optimizer.lr = schedule(base_lr, 0, config.epochs)  # the rate the first epoch uses (sharpness_x_lr)
        record(0)
        best, since_best = history.best_val_acc, 0
        for epoch in range(1, config.epochs + 1):
            optimizer.lr = schedule(base_lr, epoch - 1, config.epochs)
            meter.reset()
            train_meter.reset()
            after_step = record_coord if coord_steps and len(history.coord) <= coord_steps else None
            loss = train_epoch(model, optimizer, x_train, y_train, config.batch_size, rng, meter, config.weight_decay,
                               instruments, train_meter, loss_fn, after_step)
            if not math.isfinite(loss):
                raise DivergenceError(epoch, loss)
            record(epoch)
            if history.epochs[-1]["val_acc"] > best:
                best, since_best = history.epochs[-1]["val_acc"], 0
            else:
                since_best += 1
            if config.patience is not None and since_best >= config.patience:
                break
    optimizer.lr = base_lr
    history.train_seconds = time.perf_counter() - start - outside
    return history
