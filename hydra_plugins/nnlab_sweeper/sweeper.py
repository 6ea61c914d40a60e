"""Hydra's basic grid sweeper, minus its second composition of every job, plus longest-first order.

Before any job starts, ``nnlab.sweep.callback.SweepCallback`` composes and validates every job of the
grid (``nnlab.spec.sweep_jobs``: once per distinct group combination) so that a refused value
creates no MLflow run. ``BasicSweeper`` would then compose each job again only to check it
(``validate_batch_is_legal``, ~50 ms a job) before the launcher composes it once more to run it.
This sweeper skips that middle composition when nnlab's check has run, and only then.

For a parallel launcher (joblib) it also hands the jobs over longest first: a grid in its own
order ends with its deepest networks, and the last of them would run while the other workers sit
idle. Longest-first keeps every worker busy until the end. Same jobs, same run names; only the
job numbers (Hydra's ``hydra.job.num``) follow the new order. The in-process launcher keeps the
grid's order. With ``resume=true``, the jobs ``nnlab.sweep.callback`` found FINISHED are left out.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from omegaconf import DictConfig, ListConfig, OmegaConf

# set by SweepCallback.on_multirun_start once every job of the sweep is validated
CHECKED_ENV = "NNLAB_SWEEP_ID"
# (input features, training examples) per dataset, for the estimate only
_DATASET_SIZE = {"digits": (64, 1437), "mnist": (784, 54000)}


def estimated_cost(config: DictConfig, overrides: Sequence[str]) -> float:
    """Multiply-adds of one job's training, roughly: epochs x examples x weights (0 if unknown).

    Read from the sweep's primary config and the job's own overrides of ``model.depth``,
    ``model.width``, ``trainer.epochs`` and ``dataset``: it only orders jobs, so an estimate that
    misses something (early stopping, activation cost) costs a little balance, never a result.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values: dict[str, Any] = {"model.depth": OmegaConf.select(config, "model.depth"),
                              "model.width": OmegaConf.select(config, "model.width"),
                              "trainer.epochs": OmegaConf.select(config, "trainer.epochs"),
                              "dataset": OmegaConf.select(config, "dataset.name")}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.key_or_group in values and not override.is_delete():
            values[override.key_or_group] = override.value()
    try:
        depth, width, epochs = int(values["model.depth"]), values["model.width"], int(values["trainer.epochs"])
        widths = list(width) if isinstance(width, (list, ListConfig)) else [int(width)] * depth
        n_in, n_train = _DATASET_SIZE.get(str(values["dataset"]), _DATASET_SIZE["digits"])
        sizes = [n_in, *map(int, widths), 10]
    except (TypeError, ValueError):
        return 0.0
    return float(epochs * n_train * sum(a * b for a, b in zip(sizes, sizes[1:])))


class NnlabSweeper(BasicSweeper):
    """``BasicSweeper`` (same grid, same ``params`` and ``max_batch_size``) for nnlab's app."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        if os.environ.get(CHECKED_ENV):
            return
        super().validate_batch_is_legal(batch)

    def get_job_batch(self) -> Sequence[Sequence[str]]:
        from nnlab.sweep.workers import uses_joblib

        from nnlab.sweep.callback import SKIPPED

        # resume=true: jobs whose config already has a FINISHED run are not launched again
        batch = [job for job in super().get_job_batch() if tuple(job) not in SKIPPED]
        if not uses_joblib(self.config):
            return batch
        return sorted(batch, key=lambda job: estimated_cost(self.config, job), reverse=True)  # stable for ties
