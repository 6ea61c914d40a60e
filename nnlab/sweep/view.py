"""How a sweep's parent run reads in the MLflow UI: its name and its summary. Pure functions.

The parent of a multirun is the row a researcher looks for in the runs table, so its name says
what the sweep compared before when it ran::

    init_depth: init×activation×model.depth 2026-11-25 14:54 (845b)

and it carries the sweep's outcome as metrics and tags (jobs finished and failed, the best
``test_acc`` and the run that reached it, the sweep's wall time), so that sweeps can be sorted and
compared like runs. Nothing here talks to MLflow: the sweep's lifecycle (``nnlab.sweep.callback``) calls
these with what it read back and logs the result.
"""
from __future__ import annotations

import time
from typing import Any, Iterable, Mapping, Sequence

AXIS_SEPARATOR = "×"
MAX_AXES_SHOWN = 4  # beyond this the name would be cut off in the runs table: "+N more"
# names of what parent_summary returns (also the parent run's record: metrics and tags)
from nnlab.record.names import (BEST_METRIC, BEST_RUN_ID_TAG, BEST_RUN_TAG, JOBS_FAILED, JOBS_FINISHED,  # noqa: E402,F401
                                SUMMARY_METRIC, SWEEP_SECONDS)


def _axis_label(key: str) -> str:
    """How an axis reads in a name: ``init``; ``model.depth`` -> ``depth``; ``+experiment`` -> ``experiment``;
    a config group with its package, ``+experiment/depth_arch@_global_`` -> ``depth_arch``."""
    return key.lstrip("~+").split("@", 1)[0].rsplit("/", 1)[-1].rsplit(".", 1)[-1]


def parent_run_name(study: str, axes: Sequence[str], started: float, sweep_id: str) -> str:
    """The parent run's name: ``<study>: <axis>×<axis>… <YYYY-mm-dd HH:MM> (<id>)``, e.g.
    ``init_depth: init×activation×depth×seed 2026-11-25 14:54 (845b)``.

    ``study`` is the sweep's MLflow experiment (``tracking.experiment``: the study's name for
    ``+experiment=NAME``, ``nnlab`` otherwise); ``axes`` are the keys the sweep varies, in the order
    given (dotted keys by their last part: ``model.depth`` -> ``depth``; more than four end in
    ``+N more``); ``started`` is a Unix time, shown in local time as the UI shows start times;
    ``sweep_id``'s last 4 characters keep two sweeps started in the same minute apart. No axes (a
    sweep that repeats one configuration) reads ``<study>: 1 configuration``.
    """
    factors = list(dict.fromkeys(_axis_label(a) for a in axes))
    if len(factors) > MAX_AXES_SHOWN:
        shown = AXIS_SEPARATOR.join(factors[:MAX_AXES_SHOWN]) + f" +{len(factors) - MAX_AXES_SHOWN} more"
    else:
        shown = AXIS_SEPARATOR.join(factors) or "1 configuration"
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(started))
    suffix = sweep_id.rsplit("-", 1)[-1][-4:] or sweep_id
    return f"{study}: {shown} {when} ({suffix})"


def _status(run: Any) -> str:
    return str(run.info.status)


def _metric(run: Any, name: str) -> float | None:
    value = run.data.metrics.get(name)
    return None if value is None or value != value else float(value)  # NaN -> None


def parent_summary(children: Iterable[Any], n_jobs: int | None = None, started: float | None = None,
                   ended: float | None = None, metric: str = SUMMARY_METRIC) -> tuple[dict[str, float],
                                                                                        dict[str, str]]:
    """(metrics, tags) summarising a sweep from its child runs (``mlflow.entities.Run``-like objects).

    Metrics: ``sweep/jobs_finished``, ``sweep/jobs_failed``, ``sweep/best_<metric>`` (only when a
    finished run has ``metric``: an absent metric is never logged as 0) and ``sweep/seconds``
    (``ended - started``, when both are given). Tags: ``nnlab.best_run`` (the best run's name) and
    ``nnlab.best_run_id``. ``n_jobs``: the jobs the sweep launched; jobs that failed before their
    run existed count as failed. Any status other than FINISHED (FAILED, KILLED, still RUNNING)
    counts as failed.
    """
    runs = list(children)
    finished = [r for r in runs if _status(r) == "FINISHED"]
    n_failed = len(runs) - len(finished)
    if n_jobs is not None:
        n_failed = max(n_failed, n_jobs - len(finished))
    metrics: dict[str, float] = {JOBS_FINISHED: float(len(finished)), JOBS_FAILED: float(n_failed)}
    tags: dict[str, str] = {}
    scored = [(v, r) for r in finished if (v := _metric(r, metric)) is not None]
    if scored:
        value, best = max(scored, key=lambda pair: pair[0])
        key = BEST_METRIC if metric == SUMMARY_METRIC else f"sweep/best_{metric}"
        metrics[key] = value
        tags[BEST_RUN_TAG] = str(best.info.run_name)
        tags[BEST_RUN_ID_TAG] = str(best.info.run_id)
    if started is not None and ended is not None:
        metrics[SWEEP_SECONDS] = round(float(ended - started), 3)
    return metrics, tags


def summary_fields(metrics: Mapping[str, float], tags: Mapping[str, str]) -> str:
    """One line of the summary for a console or a log: ``12 finished, 1 failed, best test_acc=0.9750
    (relu-he-d2-s0), 42 s``."""
    parts = [f"{int(metrics[JOBS_FINISHED])} finished", f"{int(metrics[JOBS_FAILED])} failed"]
    best = [k for k in metrics if k.startswith("sweep/best_")]
    if best:
        parts.append(f"best {best[0][len('sweep/best_'):]}={metrics[best[0]]:.4f} ({tags.get(BEST_RUN_TAG, '?')})")
    if SWEEP_SECONDS in metrics:
        parts.append(f"{metrics[SWEEP_SECONDS]:.0f} s")
    return ", ".join(parts)
