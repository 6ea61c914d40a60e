"""Hydra's basic grid sweeper, minus its second composition of every job.

Before any job starts, ``nnlab.tracking.SweepCallback`` composes and validates every job of the
grid (``nnlab.config.sweep_jobs``: once per distinct group combination) so that a refused value
creates no MLflow run. ``BasicSweeper`` would then compose each job again only to check it
(``validate_batch_is_legal``, ~50 ms a job) before the launcher composes it once more to run it.
This sweeper skips that middle composition when nnlab's check has run, and only then.
"""
from __future__ import annotations

import os
from typing import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

# set by SweepCallback.on_multirun_start once every job of the sweep is validated
CHECKED_ENV = "NNLAB_SWEEP_ID"


class NnlabSweeper(BasicSweeper):
    """``BasicSweeper`` (same grid, same ``params`` and ``max_batch_size``) for nnlab's app."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        if os.environ.get(CHECKED_ENV):
            return
        super().validate_batch_is_legal(batch)
