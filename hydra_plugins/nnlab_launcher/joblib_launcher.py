"""hydra-joblib-launcher, except that a worker that dies takes only its own job with it.

When one of loky's worker processes dies (SIGKILL, the kernel's OOM killer, a segfault in a native
library), loky marks the whole pool broken, SIGKILLs every other worker and fails every pending
job with ``TerminatedWorkerError``: with the stock launcher, one lost process ends a sweep that
may have had days left to run. ``NnlabJoblibLauncher`` (``hydra/launcher=joblib``, nnlab's
``conf/hydra/launcher/joblib.yaml``) takes the same options and runs the jobs the same way, and
on a broken pool:

1. **finds the victim, not a guess.** Just before loky kills the other workers it has found which
   of them had already ended; a small wrapper around loky's ``terminate_broken`` records those
   processes and their exit codes at that moment. Every job writes its worker's pid into a file of
   the sweep folder (``.nnlab-workers/<pid>`` holds the job number) when it starts, so a dead pid
   names the job it was running, even one that died before its MLflow run existed;
2. **records it:** that job's run is closed FAILED, ``nnlab.failure=worker_died`` with the exit
   signal (``nnlab.worker_exit=SIGKILL``); a run is created for it if it died before making one;
3. **closes the collateral:** the other jobs that were running when loky killed their workers
   are closed KILLED, ``nnlab.failure=requeued`` (their metrics so far are kept as a record of
   the attempt) and run again in a new pool, with every job that had not started yet. A job whose
   run already reached FINISHED is never run twice.

If loky's internals ever stop telling which worker died first, no job is blamed: every
unfinished job is run again, at most ``MAX_POOL_RESTARTS`` times, after which the jobs left are
recorded ``worker_died``. A sweep with a dead worker exits 1 (a job failed) and its summary says
which worker died and what was re-run.

``hydra/launcher=joblib`` selects it: this module replaces the plugin's ``joblib`` entry in Hydra's
ConfigStore (same options, nnlab's ``_target_``) when Hydra scans its plugins. A YAML file of that
name in nnlab's ``conf/`` would win too, but Hydra then validates it against the plugin's entry
of the same name and prints a deprecation warning in every job.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals

from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

log = logging.getLogger(__name__)

# loky measures each worker's memory after its first job and replaces a worker that has grown by 300 MB
# since: a worker that has trained a depth-256 LayerNorm net (its per-layer buffers at the evaluation batch,
# ~1.3 GB, kept by the allocator afterwards) after a smaller one. The replacement is harmless (the next job
# starts in a fresh worker; no job is lost), but loky then warns of "a memory leak" on the sweep's console.
warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given to the executor",
                        category=UserWarning)

MARKER_DIR = ".nnlab-workers"  # in the sweep folder: one file per worker pid, holding its current job number
MAX_POOL_RESTARTS = 3  # broken pools in which no dead worker could be named, before the rest is given up


def run_in_worker(idx: int, overrides: Sequence[str], markers: str, *args: Any) -> tuple[int, JobReturn]:
    """In a joblib worker: record which job this process runs, then run it as the stock launcher does."""
    from hydra_plugins.hydra_joblib_launcher._core import execute_job

    marker = Path(markers, str(os.getpid()))
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(str(idx))
    os.replace(tmp, marker)  # atomic: a reader never sees half a number
    return idx, execute_job(idx, overrides, *args)


# --- which worker died: loky knows for a moment, just before it kills the others ----------------
_DEAD: list[dict[int, int | None]] = []  # per broken pool: {pid: exit code} of the workers found dead


def _watch_broken_pools() -> bool:
    """Wrap loky's ``terminate_broken`` (once per process) to record the dead workers; False if
    this loky has no such hook (then no victim can be named)."""
    try:
        from joblib.externals.loky.process_executor import _ExecutorManagerThread
    except ImportError:
        return False
    original = getattr(_ExecutorManagerThread, "terminate_broken", None)
    if original is None:
        return False
    if getattr(original, "_nnlab", False):
        return True

    def terminate_broken(self, bpe):
        try:
            dead = {pid: p.exitcode for pid, p in list(self.processes.items()) if p.exitcode is not None}
        except Exception:  # never stand in the way of loky's own clean-up
            dead = {}
        _DEAD.append(dead)
        return original(self, bpe)

    terminate_broken._nnlab = True
    _ExecutorManagerThread.terminate_broken = terminate_broken
    return True


def exit_reason(exitcode: int | None) -> str:
    """``SIGKILL`` for a process killed by signal 9 (exit code -9), ``exit 3`` for ``sys.exit(3)``."""
    import signal

    if exitcode is None:
        return "unknown"
    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit {exitcode}"


def _victims(dead: dict[int, int | None], markers: Path, pending: set[int]) -> dict[int, tuple[int, str]]:
    """Jobs (among ``pending``) that the dead workers were running: {job number: (pid, exit reason)}."""
    found = {}
    for pid, code in dead.items():
        try:
            idx = int((markers / str(pid)).read_text())
        except (OSError, ValueError):  # died before its first job
            continue
        if idx in pending:
            found[idx] = (pid, exit_reason(code))
    return found


class NnlabJoblibLauncher(JoblibLauncher):
    """``JoblibLauncher`` (same options) that survives the death of a worker process."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
        from joblib import Parallel, delayed
        from joblib.externals.loky.process_executor import TerminatedWorkerError

        setup_globals()
        assert self.config is not None and self.task_function is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        markers = sweep_dir / MARKER_DIR
        markers.mkdir(parents=True, exist_ok=True)
        joblib_cfg = dict(self.joblib)
        joblib_cfg["backend"] = "loky"  # as the stock launcher: threads are incompatible with Hydra
        process_joblib_cfg(joblib_cfg)
        log.info("Joblib.Parallel(%s) is launching %d jobs",
                 ",".join(f"{k}={v}" for k, v in joblib_cfg.items()), len(job_overrides))
        log.info("Launching jobs, sweep output dir : %s", sweep_dir)
        jobs = {initial_job_idx + i: list(o) for i, o in enumerate(job_overrides)}
        for idx, overrides in jobs.items():
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        named = _watch_broken_pools()
        state = Singleton.get_state()
        results: dict[int, JobReturn] = {}
        blind_restarts = 0
        while len(results) < len(jobs):
            pending = [i for i in jobs if i not in results]
            calls = [delayed(run_in_worker)(i, jobs[i], str(markers), self.hydra_context, self.config,
                                            self.task_function, state) for i in pending]
            seen = len(_DEAD)
            try:
                for idx, ret in Parallel(**joblib_cfg, return_as="generator_unordered")(calls):
                    results[idx] = ret
            except TerminatedWorkerError:
                if _stopping():
                    raise  # the sweep is being stopped by a signal: nothing is relaunched
                dead = {pid: code for d in _DEAD[seen:] for pid, code in d.items()}
                left = {i for i in jobs if i not in results}
                victims = _victims(dead, markers, left) if named else {}
                if not victims:
                    blind_restarts += 1
                    if blind_restarts > MAX_POOL_RESTARTS:
                        victims = {i: (0, exit_reason(None)) for i in left}
                done = _worker_lost({i: (jobs[i], *v) for i, v in victims.items()},
                                    {i: jobs[i] for i in left if i not in victims}, dead)
                for idx in [*victims, *done]:
                    results[idx] = _no_result(jobs[idx])
        return [results[i] for i in sorted(jobs)]


def _no_result(overrides: list[str]) -> JobReturn:
    # the job's outcome is in its MLflow run (FAILED worker_died, or FINISHED before the pool broke);
    # a COMPLETED return with no value keeps Hydra's sweeper going, as nnlab.run's main does for a failed job
    return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=None)


def _stopping() -> bool:
    from nnlab.sweep.jobs import stopping

    return stopping()


def _worker_lost(victims: dict[int, tuple[list[str], int, str]], others: dict[int, list[str]],
                 dead: dict[int, int | None]) -> list[int]:
    """Record the loss in the sweep (nnlab.sweep.callback); returns the jobs among ``others`` that already
    FINISHED (not run again)."""
    from nnlab.sweep.callback import worker_lost

    return worker_lost(victims, others, {pid: exit_reason(code) for pid, code in dead.items()})

