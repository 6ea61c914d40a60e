"""The joblib launcher's worker processes: started early, forked from one preloaded server.

A parallel sweep's workers would each spend ~2 s of CPU starting Python and importing MLflow,
Hydra and scikit-learn, and as long again tearing those modules down at exit — on a 2-core machine
that is time the launching process and the jobs wait for. Two things remove most of it:

* **forkserver**: loky (joblib's process pool, which hydra-joblib-launcher always uses) starts its
  workers through Python's forkserver, which imports nnlab's modules once (``PRELOAD``); each
  worker is then a ``fork`` of that single-threaded server, ready at once, and exits without
  tearing anything down. The server never opens an MLflow store or a thread before forking.
* **prestart**: the workers are asked for (through the same reusable executor the launcher will
  use) while the launching process opens the MLflow store, so the server's imports overlap with it.

The workers only import: they must not touch the store, whose first-time creation is the
launching process's job. Where forkserver does not exist (Windows) loky's default start is kept.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

# what every job needs, imported once in the forkserver instead of once per worker
PRELOAD = [
    "nnlab.sweep.forkserver_init",  # first: the server and its workers ignore SIGINT outside a job
    "numpy",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",  # the sqlite store; MLflow imports it on first use
    "sqlalchemy.dialects.sqlite",
    "alembic.command",  # MLflow checks the store's schema version when a worker opens it
    "alembic.config",
    "sklearn.datasets",
    "sklearn.model_selection",
    "sklearn.preprocessing",
    "threadpoolctl",
    "hydra_plugins.hydra_joblib_launcher._core",
    "hydra_plugins.nnlab_launcher.joblib_launcher",  # nnlab's launcher (hydra/launcher=joblib)
    "hydra_plugins.nnlab_sweeper.sweeper",  # Hydra's plugin registry, restored in each worker
    "hydra._internal.core_plugins.bash_completion",
    "hydra._internal.core_plugins.fish_completion",
    "hydra._internal.core_plugins.zsh_completion",
    "nnlab.core",
    "nnlab.data",
    "nnlab.run",
]


def uses_joblib(config: DictConfig | None) -> bool:
    """Whether a (Hydra) config runs its jobs with hydra-joblib-launcher (``hydra/launcher=joblib``)."""
    return config is not None and "joblib" in str(OmegaConf.select(config, "hydra.launcher._target_", default=""))


def _joblib_kwargs(config: DictConfig) -> dict[str, Any] | None:
    """``Parallel(...)`` arguments exactly as the joblib launcher will build them, or None."""
    if not uses_joblib(config):
        return None
    launcher = OmegaConf.select(config, "hydra.launcher")
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg

    kwargs = {k: v for k, v in OmegaConf.to_container(launcher, resolve=True).items() if k != "_target_"}
    kwargs["backend"] = "loky"  # as the launcher does: the executor is reused only if everything matches
    process_joblib_cfg(kwargs)
    return kwargs


def use_forkserver() -> bool:
    """Make loky start workers by forking a server that has imported ``PRELOAD``; False if unavailable.

    The server is started (once per process) by the first worker that is asked for, and inherits
    the environment of that moment: call this after setting anything the workers must see.
    """
    import multiprocessing

    from joblib.externals.loky.backend.context import START_METHODS, set_start_method

    if "forkserver" not in START_METHODS or "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    multiprocessing.set_forkserver_preload(PRELOAD)
    set_start_method("forkserver", force=True)
    return True


def start_forkserver() -> None:
    """Start the forkserver now, from the main thread, with SIGINT ignored while it is spawned.

    An ignored signal stays ignored through fork and exec, so the new server's interpreter start-up
    (site, its first imports: seconds on a busy machine) cannot be cut by Ctrl-C (a traceback from
    ``multiprocessing/forkserver.py``); ``nnlab.sweep.forkserver_init``, its first preloaded module,
    keeps it ignored. Elsewhere than the main thread the server starts on first use."""
    import multiprocessing.forkserver
    import signal

    if threading.current_thread() is not threading.main_thread():
        return
    # SIG_IGN survives fork and exec (a blocked mask does not: the child's is reset); a SIGINT that
    # lands in this window of a few milliseconds is discarded, here as in the server
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, handler)


def _worker_pid() -> int:
    import os

    return os.getpid()


def prestart(config: DictConfig) -> threading.Thread | None:
    """Begin starting the sweep's joblib workers in the background; wait for the thread's
    ``finished`` event before launch. (Not ``join()``: a signal that interrupts ``Thread.join``
    can leave the thread marked stopped while it still runs, CPython < 3.13.)"""
    kwargs = _joblib_kwargs(config)
    if kwargs is None:
        return None
    if use_forkserver():
        start_forkserver()

    def spawn() -> None:
        from joblib import Parallel, cpu_count, delayed

        n = kwargs["n_jobs"] if kwargs.get("n_jobs", -1) > 0 else cpu_count()
        try:
            Parallel(**kwargs)(delayed(_worker_pid)() for _ in range(n))
        except Exception:  # only a head start: the launcher starts (or reports) workers itself
            pass
        finally:
            thread.finished.set()

    thread = threading.Thread(target=spawn, name="nnlab-prestart-workers", daemon=True)
    thread.finished = threading.Event()
    thread.start()
    return thread


def stop(warming: threading.Thread | None = None) -> None:
    """End of a sweep: let the workers exit, then end the forkserver without its interpreter teardown.

    Left to interpreter exit, the server would tear down every module it preloaded (~1 s) while
    holding the sweep's stdout/stderr open, so whoever waits for the command's output (a shell
    pipe, CI, ``subprocess.run``) would wait for it too. It holds no state: SIGTERM is safe, and a
    later sweep in this process starts a new one. ``warming``: the ``prestart`` thread; if a signal
    stops the sweep while it still waits for the server's imports (seconds on a busy machine), the
    server is ended first, so the thread returns at once instead of finishing the warm-up.
    """
    from joblib.externals.loky import reusable_executor

    if warming is not None and not warming.finished.is_set():
        _end_forkserver()
        warming.finished.wait()
    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        # idle workers exit at once (forked: no teardown either); after an interrupt, busy ones are killed
        executor.shutdown(wait=True, kill_workers=True)
    _end_forkserver()


def _end_forkserver() -> None:
    import multiprocessing.forkserver
    import os
    import signal

    pid = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def worker_pids() -> list[int]:
    """Process ids of the joblib launcher's current worker processes (none when no pool exists)."""
    from joblib.externals.loky import reusable_executor

    executor = getattr(reusable_executor, "_executor", None)
    return list(getattr(executor, "_processes", None) or {})


def signal_workers(signum: int, grace: float, settled: Callable[[], bool]) -> None:
    """Send ``signum`` to every worker, then wait up to ``grace`` seconds until ``settled()``
    (their runs closed). The launcher kills whatever is left when the sweep unwinds."""
    import os
    import time

    for pid in worker_pids():
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not settled():
        time.sleep(0.05)
