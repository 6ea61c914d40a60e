"""Start the joblib launcher's worker processes early, while the launching process is busy.

A parallel sweep's workers each spend ~2 s starting and importing MLflow and scikit-learn before
their first job. ``prestart`` spawns them (through the same reusable loky executor the launcher
will ask for) while the launching process opens the MLflow store, so that time overlaps instead
of adding up. The workers only import: they must not touch the store, whose first-time creation
is the launching process's job.
"""
from __future__ import annotations

import threading
from typing import Any

from omegaconf import DictConfig, OmegaConf


def _import_heavy_modules() -> None:
    import mlflow  # noqa: F401
    import sklearn.model_selection  # noqa: F401

    import nnlab.core  # noqa: F401
    import nnlab.data  # noqa: F401
    import nnlab.run  # noqa: F401


def _joblib_kwargs(config: DictConfig) -> dict[str, Any] | None:
    """``Parallel(...)`` arguments exactly as the joblib launcher will build them, or None."""
    launcher = OmegaConf.select(config, "hydra.launcher")
    if launcher is None or "joblib" not in str(launcher.get("_target_", "")):
        return None
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg

    kwargs = {k: v for k, v in OmegaConf.to_container(launcher, resolve=True).items() if k != "_target_"}
    kwargs["backend"] = "loky"  # as the launcher does: the executor is reused only if everything matches
    process_joblib_cfg(kwargs)
    return kwargs


def prestart(config: DictConfig) -> threading.Thread | None:
    """Begin spawning the sweep's joblib workers in the background; ``join()`` the thread before launch."""
    kwargs = _joblib_kwargs(config)
    if kwargs is None:
        return None

    def spawn() -> None:
        from joblib import Parallel, cpu_count, delayed

        n = kwargs["n_jobs"] if kwargs.get("n_jobs", -1) > 0 else cpu_count()
        try:
            Parallel(**kwargs)(delayed(_import_heavy_modules)() for _ in range(n))
        except Exception:  # only a head start: the launcher starts (or reports) workers itself
            pass

    thread = threading.Thread(target=spawn, name="nnlab-prestart-workers", daemon=True)
    thread.start()
    return thread
