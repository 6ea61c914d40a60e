"""A synthetic sweep written with the record's exact names, for tests and for trying the analysis
without training anything. Values follow simple closed forms, so aggregates can be checked exactly."""
from __future__ import annotations

import itertools
import time
from typing import Sequence

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from .records import FAILURE_TAG, PARENT_TAG, SWEEP_TAG

_BASE_ACC = {"he": 0.95, "xavier": 0.93, "random": 0.40}
_GRAD_RATIO = {"he": 1.0, "xavier": 0.8, "random": 0.1}  # grad norm shrinks by this per layer towards the input


def fake_test_acc(init: str, activation: str, depth: int, seed: int) -> float:
    """The final test accuracy the fake sweep records for one configuration and seed."""
    return _BASE_ACC[init] - 0.01 * depth - (0.05 if activation == "tanh" else 0.0) + 0.01 * seed


def fake_epoch(init: str, activation: str, depth: int, seed: int, epoch: int) -> dict[str, float]:
    """The per-epoch record of one fake run (same metric names as nnlab.core)."""
    out = {"train_loss": 2.3 / (1 + epoch) + 0.01 * seed, "val_loss": 2.4 / (1 + epoch) + 0.01 * seed,
           "train_acc": min(1.0, 0.1 + 0.3 * epoch), "val_acc": min(1.0, 0.1 + 0.25 * epoch + 0.01 * seed)}
    n_layers = depth + 1
    for i in range(1, n_layers + 1):
        out[f"grad_norm/layer_{i}"] = (1.0 + epoch) * _GRAD_RATIO[init] ** (n_layers - i)
    out["grad_norm/global"] = sum(out[f"grad_norm/layer_{i}"] ** 2 for i in range(1, n_layers + 1)) ** 0.5
    for i in range(1, depth + 1):
        out[f"act_mean/layer_{i}"] = 0.1 * i
        out[f"act_std/layer_{i}"] = _GRAD_RATIO[init] ** i / (1 + epoch)
        out[f"act_saturation/layer_{i}"] = min(1.0, 0.05 * i * (1 + epoch))
    return out


def _log_child(client: MlflowClient, experiment_id: str, parent_id: str, sweep_id: str, init: str,
               activation: str, depth: int, seed: int, epochs: int, failed: bool) -> str:
    name = f"{activation}-{init}-d{depth}-s{seed}"
    run = client.create_run(experiment_id, run_name=name, tags={PARENT_TAG: parent_id, SWEEP_TAG: sweep_id})
    run_id = run.info.run_id
    params = {"init": init, "activation": activation, "optimizer": "sgd", "dataset": "digits",
              "init.name": init, "activation.name": activation, "optimizer.name": "sgd", "optimizer.lr": "0.05",
              "model.depth": str(depth), "model.width": "16", "trainer.epochs": str(epochs), "seed": str(seed),
              "tracking.experiment": client.get_experiment(experiment_id).name}
    if init == "random":
        params["init.std"] = "0.01"
    now = int(time.time() * 1000)
    last = 1 if failed else epochs
    metrics = [Metric(k, v, now + e, e) for e in range(last + 1)
               for k, v in fake_epoch(init, activation, depth, seed, e).items()]
    if not failed:
        final = {"test_acc": fake_test_acc(init, activation, depth, seed), "test_loss": 0.3,
                 "best_val_acc": fake_epoch(init, activation, depth, seed, epochs)["val_acc"],
                 "epochs_run": float(epochs), "train_seconds": 0.1 * (depth + 1)}
        metrics += [Metric(k, v, now, epochs) for k, v in final.items()]
    tags = [RunTag(FAILURE_TAG, "diverged at epoch 2")] if failed else []
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()], tags=tags)
    client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
    return run_id


def log_fake_sweep(client: MlflowClient, experiment: str = "fake", *, inits: Sequence[str] = ("he", "random"),
                   activations: Sequence[str] = ("relu", "tanh"), depths: Sequence[int] = (1, 3),
                   seeds: Sequence[int] = (0, 1, 2), epochs: int = 3,
                   fail: Sequence[tuple[str, str, int, int]] = (("random", "tanh", 3, 2),)) -> dict[str, str]:
    """Log one parent run and a child per (init, activation, depth, seed); ``fail`` lists children
    that end FAILED with a ``nnlab.failure`` tag and no final metrics. Returns child run_id -> name."""
    experiment_id = client.get_experiment_by_name(experiment)
    experiment_id = experiment_id.experiment_id if experiment_id else client.create_experiment(experiment)
    sweep_id = f"fake-{int(time.time() * 1e6)}"
    parent = client.create_run(experiment_id, run_name=sweep_id, tags={SWEEP_TAG: sweep_id})
    children = {}
    for init, activation, depth, seed in itertools.product(inits, activations, depths, seeds):
        failed = (init, activation, depth, seed) in set(map(tuple, fail))
        run_id = _log_child(client, experiment_id, parent.info.run_id, sweep_id, init, activation, depth, seed,
                            epochs, failed)
        children[run_id] = f"{activation}-{init}-d{depth}-s{seed}"
    client.set_terminated(parent.info.run_id, "FINISHED")
    return children
