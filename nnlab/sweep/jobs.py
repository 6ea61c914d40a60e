"""What the sweep hands each of its jobs, and the sweep's rule for when a job may start.

The launching process (``nnlab.sweep.callback``) publishes the sweep's identity in the environment
before any worker exists (in-process jobs and every launcher's workers inherit it: a joblib worker,
a Slurm job, a Ray actor); :func:`current` reads it back, with Hydra's view of the job, into the
job's plain :class:`nnlab.job.JobContext` and this module's :class:`SweepJob`.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from nnlab.job import JobContext
from nnlab.record import signals

ENV_PARENT, ENV_SWEEP_ID, ENV_SWEEP_SIZE = "NNLAB_PARENT_RUN_ID", "NNLAB_SWEEP_ID", "NNLAB_SWEEP_SIZE"
ENV_SWEEP_KEYS = "NNLAB_SWEEP_KEYS"  # the keys the sweep varies (they go into the run names)
ENV_STOP_FILE = "NNLAB_STOP_FILE"  # exists once the sweep is stopping: jobs not yet started do not start
ENV = (ENV_PARENT, ENV_SWEEP_ID, ENV_SWEEP_SIZE, ENV_SWEEP_KEYS, ENV_STOP_FILE)


@dataclass(frozen=True)
class SweepJob:
    """One job as its sweep sees it: the context handed to the job, and the sweep's own bookkeeping."""

    context: JobContext
    launcher: str = ""  # Hydra's launcher class path
    size: int | None = None  # jobs in the sweep (None: unknown, e.g. a tuning sweeper)
    stop_file: str | None = None
    sweep_dir: Path | None = None

    def check_may_start(self) -> None:
        """Raise :class:`Interrupted` if the sweep is stopping: a job not yet started does not start
        (a signal seen in this process, even if swallowed since, or the launching process's stop file)."""
        if not self.context.multirun:
            return
        seen = signals.stop_requested()
        if seen is not None:
            raise signals.Interrupted(seen)
        if self.stop_file and Path(self.stop_file).exists():
            raise signals.Interrupted(signal.SIGTERM)

    def ended(self, ok: bool):
        """Record that this job ended; the sweep's ``Progress`` (None outside a sweep)."""
        if not self.context.multirun or self.sweep_dir is None:
            return None
        from nnlab.sweep.progress import record

        return record(self.sweep_dir, ok, self.size)


def current() -> SweepJob:
    """The job Hydra is running now (a blank one when nothing runs under Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return SweepJob(JobContext())
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    launcher = str(OmegaConf.select(hc, "launcher._target_", default=""))
    env = os.environ if multirun else {}
    size = env.get(ENV_SWEEP_SIZE, "?")
    sweep_dir = None
    if multirun:
        depth = len(Path(str(hc.sweep.subdir)).parts)  # output_dir = <sweep dir>/<subdir>
        sweep_dir = Path(hc.runtime.output_dir).parents[depth - 1]
    context = JobContext(
        cwd=hc.runtime.cwd,
        overrides=tuple(hc.overrides.task),
        multirun=multirun,
        job_num=int(hc.job.num) if multirun else 0,
        parallel="joblib" in launcher,
        hydra_dir=Path(hc.runtime.output_dir) / hc.output_subdir if hc.output_subdir else None,
        parent_id=env.get(ENV_PARENT),
        sweep_id=env.get(ENV_SWEEP_ID),
        varying=tuple(k for k in env.get(ENV_SWEEP_KEYS, "").split(",") if k),
        choices=OmegaConf.to_container(hc.runtime.choices),
    )
    return SweepJob(context, launcher, int(size) if size.isdigit() else None, env.get(ENV_STOP_FILE), sweep_dir)


def stopping() -> bool:
    """Whether this process's sweep is being stopped by a signal (no new job may start)."""
    path = os.environ.get(ENV_STOP_FILE)
    return bool(path) and Path(path).exists()
