"""What nnlab's command-line entry points share."""
from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import signal
import sys
from typing import Iterator


@functools.cache
def exit_without_final_collection() -> None:
    """Let this process end without the garbage collector's last passes over the heap.

    At exit CPython collects cycles among everything still alive; with MLflow, SQLAlchemy, pandas
    and scikit-learn imported that takes ~0.9 s of every command's wall time and frees nothing the
    operating system would not. Freezing the heap from an exit handler skips those passes; every
    other exit handler (logging's flush, MLflow's, joblib's) and every finaliser still runs.
    Registered once, by the command-line entry points (``cli`` in nnlab.run, nnlab.runs and nnlab.report),
    before anything else registers one, so it runs last.

    It also ignores SIGINT and SIGTERM for what follows: Python 3.11 puts the default actions back
    before it tears the modules down (``_PySignal_Fini`` in ``Py_FinalizeEx``), and a Ctrl-C in those
    ~50 ms would kill a command that has done everything (status -2, not its own). Nothing is left to stop.
    """
    atexit.register(_last_exit_handler)


def _last_exit_handler() -> None:
    gc.freeze()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def first_import_without_collection(module: str) -> Iterator[None]:
    """Inside: the first import of ``module`` (and what comes with it) in this process, with the cyclic
    garbage collector paused; what is left alive afterwards is frozen out of later collections (module-level
    objects: never garbage; cycles made later are still collected).

    The report command's imports (MLflow, pandas, matplotlib) leave ~200k objects alive and trigger full
    collections over all of them as the heap grows: ~0.3 s of its ~1.3 s import CPU. Nothing changes where
    ``module`` is imported already or the collector is off (a test session, a notebook)."""
    if module in sys.modules or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
        gc.freeze()
    finally:
        gc.enable()


@functools.cache
def freeze_startup_heap() -> None:
    """Keep what start-up left alive out of every later garbage collection. Once per process.

    A job process holds ~400k long-lived objects (MLflow, SQLAlchemy, Hydra, scikit-learn, pandas)
    that are never garbage; each full collection walks them all, ~0.2 s, and a job's allocations
    (Hydra composing its config, MLflow's ORM writing its metrics) trigger one every few jobs.
    ``gc.freeze`` moves them to a generation the collector skips; cycles created later are still
    collected. Called by the task function at its first job, in a process that runs jobs
    (the launching process of an in-process sweep, each joblib worker) and for nothing else.
    """
    gc.freeze()
