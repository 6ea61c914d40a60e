"""MLflow runs -> tidy pandas frames. Reads the record described in DESIGN.md; never writes to it.

Two frames come out of an experiment:

* ``load_runs``: one row per training run (sweep children and single runs; sweep parents are
  dropped), with its params (typed: ints, floats, bools where they parse), final metrics, status and
  failure flag.
* ``load_history``: one row per run x metric x step (``run_id, metric, step, value``), the
  per-epoch record; ``layer_frame`` splits ``grad_norm/layer_3`` into ``stat`` and ``layer`` columns.
"""
from __future__ import annotations

import fnmatch
import math
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence
from urllib.parse import urlparse

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from nnlab.record.names import (EPOCH_METRICS, FAILURE_TAG, FINAL_METRICS, FINGERPRINT_TAG, GROUP_PARAMS,  # noqa: F401
                                LAYER_STATS, PARENT_TAG, SWEEP_TAG)

RUN_COLUMNS = ("run_id", "run_name", "status", "failed", "failure", "parent_run_id", "sweep_id",
               "fingerprint", "start_time", "end_time")
_LAYER_RE = re.compile(r"^(?P<stat>" + "|".join(LAYER_STATS) + r")/layer_(?P<layer>\d+)$")
_PAGE = 1000


class AnalysisError(RuntimeError):
    """The record cannot answer the question asked: no such experiment, no runs, missing metrics,
    or a tracking store that cannot be reached. The message says which and what exists instead."""

    def _render_traceback_(self) -> list[str]:
        # IPython (Jupyter, papermill) shows this instead of a traceback: a notebook whose experiment
        # is missing stops at its first cell with the one line that says what is wrong
        return [f"AnalysisError: {self}"]


# --- connecting -------------------------------------------------------------------------------

def resolve_uri(tracking_uri: str | None = None) -> str:
    """The URI that will be read: the argument, else ``MLFLOW_TRACKING_URI``, else MLflow's default."""
    return tracking_uri or mlflow.get_tracking_uri()


def local_store_uri(tracking_uri: str | None = None) -> str:
    """For notebooks, which run in ``notebooks/``: the argument, else ``MLFLOW_TRACKING_URI``, else
    ``mlflow.db`` in the current folder or its parent (the repo root, where the studies write)."""
    if tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return resolve_uri(tracking_uri)
    for folder in (Path.cwd(), Path.cwd().parent):
        if (folder / "mlflow.db").is_file():
            return f"sqlite:///{folder / 'mlflow.db'}"
    return resolve_uri(None)


@contextmanager
def _fail_fast_http() -> Iterator[None]:
    """Probe a remote server without MLflow's minutes-long retry schedule (unless the user set one)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _check_local_store(uri: str) -> None:
    """A local store must already exist: reading must not create an empty database or folder."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else parsed.path
        if path and path != ":memory:" and not Path(path).is_file():
            raise AnalysisError(f"no MLflow database at {path!r} (tracking URI {uri!r}); "
                                "run a study there first or pass the right --tracking-uri")
    elif parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        if not Path(path).is_dir():
            raise AnalysisError(f"no MLflow store at {path!r} (tracking URI {uri!r})")


def connect(tracking_uri: str | None = None) -> MlflowClient:
    """A client on ``tracking_uri`` that has been checked to answer; raises ``AnalysisError`` if not."""
    uri = resolve_uri(tracking_uri)
    _check_local_store(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        with _fail_fast_http():
            client.search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure here means "cannot read this store"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AnalysisError(f"cannot reach the MLflow tracking store {uri!r}: {first_line}") from exc
    return client


def _client(client: MlflowClient | None, tracking_uri: str | None) -> MlflowClient:
    return client if client is not None else connect(tracking_uri)


def experiment_names(client: MlflowClient) -> list[str]:
    """Names of the active experiments in the store, sorted."""
    return sorted(e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY))


def get_experiment_id(client: MlflowClient, experiment: str) -> str:
    """The id of experiment ``experiment``; ``AnalysisError`` listing the existing names if absent."""
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage != "active":
        names = experiment_names(client)
        raise AnalysisError(f"no experiment named {experiment!r} in {client.tracking_uri!r}; "
                            f"existing experiments: {', '.join(names) if names else '(none)'}")
    return found.experiment_id


# --- runs -------------------------------------------------------------------------------------

def search_all_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Every active run of an experiment, oldest first: read as plain columns from MLflow's SQL store
    (``_runs_columns``), else through ``MlflowClient.search_runs``, following its pagination."""
    store = _bulk_store(client)
    runs = _runs_columns(store, experiment_id) if store is not None else None
    return runs if runs is not None else _search_runs_api(client, experiment_id)


def _search_runs_api(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Every active run of an experiment through MLflow's public search, page by page."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=_PAGE, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _runs_columns(store, experiment_id: str) -> list[Run] | None:
    """The same runs as :func:`_search_runs_api` (info, params, tags, latest metrics; same order: start
    time, then run id), read with four column queries from MLflow's SQL store.

    ``search_runs`` builds an ORM object per run, param, tag and latest metric (the 135-run init_depth
    study logs ~180 metric names a run: 24,000 objects, ~0.7 s a search on an idle 2-core machine); plain
    columns take ~0.1 s. ``None`` for any other store, or an MLflow release the columns were not checked against
    (``nnlab.record.store.SQL_WRITER_MLFLOW``): the caller falls back to the public API.
    """
    try:
        from mlflow.entities import LifecycleStage, Metric, Param, RunData, RunInfo, RunTag
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlParam, SqlRun, SqlTag
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
    except ImportError:  # pragma: no cover - an MLflow without its SQL store
        return None
    from nnlab.record.store import sql_tables_checked

    if not isinstance(store, SqlAlchemyStore) or not sql_tables_checked():
        return None
    with store.ManagedSessionMaker() as session:
        # the hook MLflow's own search applies (workspaces may hide experiments)
        experiment_ids = store._filter_experiment_ids(session, [int(experiment_id)])
        active = (SqlRun.experiment_id.in_(experiment_ids), SqlRun.lifecycle_stage == LifecycleStage.ACTIVE)
        infos = (session.query(SqlRun.run_uuid, SqlRun.name, SqlRun.experiment_id, SqlRun.user_id, SqlRun.status,
                               SqlRun.start_time, SqlRun.end_time, SqlRun.lifecycle_stage, SqlRun.artifact_uri)
                 .filter(*active).order_by(SqlRun.start_time.is_(None), SqlRun.start_time, SqlRun.run_uuid).all())

        def of_runs(*columns):  # rows of a run's child table, for every active run of the experiment
            return session.query(*columns).join(SqlRun, SqlRun.run_uuid == columns[0]).filter(*active)

        params: dict[str, list] = {}
        for run, key, value in of_runs(SqlParam.run_uuid, SqlParam.key, SqlParam.value):
            params.setdefault(run, []).append(Param(key, value))
        tags: dict[str, list] = {}
        for run, key, value in of_runs(SqlTag.run_uuid, SqlTag.key, SqlTag.value):
            tags.setdefault(run, []).append(RunTag(key, value))
        metrics: dict[str, list] = {}
        for run, key, value, timestamp, step, is_nan in of_runs(
                SqlLatestMetric.run_uuid, SqlLatestMetric.key, SqlLatestMetric.value, SqlLatestMetric.timestamp,
                SqlLatestMetric.step, SqlLatestMetric.is_nan):
            metrics.setdefault(run, []).append(Metric(key, math.nan if is_nan else value, timestamp, step))
    runs = []
    for run_id, name, exp_id, user, status, start, end, stage, artifact_uri in infos:
        run_tags = tags.get(run_id, [])
        # a run created without a name is named by its mlflow.runName tag, as MLflow's entity does
        name = name or next((t.value for t in run_tags if t.key == MLFLOW_RUN_NAME), name)
        info = RunInfo(run_id=run_id, run_name=name, experiment_id=str(exp_id), user_id=user, status=status,
                       start_time=start, end_time=end, lifecycle_stage=stage, artifact_uri=artifact_uri)
        runs.append(Run(info, RunData(metrics=metrics.get(run_id, []), params=params.get(run_id, []),
                                      tags=run_tags)))
    return runs


def training_runs(runs: list[Run]) -> list[Run]:
    """Drop sweep parents: runs another run names in ``mlflow.parentRunId``, and runs without any
    param (a sweep parent whose jobs never started; every training run logs its config)."""
    parents = {r.data.tags.get(PARENT_TAG) for r in runs} - {None}
    return [r for r in runs if r.info.run_id not in parents and r.data.params]


def parse_param(text: object) -> object:
    """An MLflow param string -> int, float, bool, None or the string itself (absent/NaN -> None)."""
    if not isinstance(text, str):
        return None
    lowered = text.strip().lower()
    if lowered in ("none", "null", ""):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _typed(column: pd.Series) -> pd.Series:
    """Give a param column one dtype: Int64 / float / boolean when every value parses, else object."""
    values = [parse_param(v) for v in column]
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, index=column.index, dtype="boolean")
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series(values, index=column.index, dtype="Int64")
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.Series([np.nan if v is None else float(v) for v in values], index=column.index, dtype=float)
    return pd.Series([None if v is None else c for v, c in zip(values, column)], index=column.index, dtype=object)


def _run_row(run: Run, metric_names: Sequence[str]) -> dict[str, object]:
    info, tags = run.info, run.data.tags
    failure = tags.get(FAILURE_TAG)
    row: dict[str, object] = {
        "run_id": info.run_id, "run_name": info.run_name, "status": info.status,
        # anything but FINISHED (FAILED, KILLED, still RUNNING) stays out of the aggregates
        "failed": info.status != "FINISHED" or failure is not None, "failure": failure,
        "parent_run_id": tags.get(PARENT_TAG), "sweep_id": tags.get(SWEEP_TAG),
        "fingerprint": tags.get(FINGERPRINT_TAG, info.run_id),
        "start_time": pd.to_datetime(info.start_time, unit="ms", utc=True),
        "end_time": pd.to_datetime(info.end_time, unit="ms", utc=True) if info.end_time else pd.NaT,
    }
    row.update({f"param:{k}": v for k, v in run.data.params.items()})
    row.update({m: run.data.metrics.get(m, np.nan) for m in metric_names})
    return row


def runs_frame(runs: list[Run], metrics: Sequence[str] = FINAL_METRICS + EPOCH_METRICS) -> pd.DataFrame:
    """One row per run: ``RUN_COLUMNS``, then params by name (typed), then ``metrics`` (last value)."""
    rows = [_run_row(r, metrics) for r in runs]
    frame = pd.DataFrame(rows, columns=None if rows else list(RUN_COLUMNS) + list(metrics))
    param_cols = sorted((c for c in frame.columns if c.startswith("param:")), key=_param_order)
    params = frame[param_cols].rename(columns=lambda c: c[len("param:"):]).apply(_typed) if param_cols else None
    parts = [frame[list(RUN_COLUMNS)]] + ([params] if params is not None else []) + [frame[list(metrics)]]
    out = pd.concat(parts, axis=1)
    return out.astype({"failed": bool}).reset_index(drop=True)


def _param_order(column: str) -> tuple[int, str]:
    """Group choices first (init, activation, ...), then dotted leaves alphabetically."""
    name = column[len("param:"):]
    return (GROUP_PARAMS.index(name) if name in GROUP_PARAMS else len(GROUP_PARAMS), name)


def load_runs(experiment: str, tracking_uri: str | None = None, *, client: MlflowClient | None = None,
              require: Iterable[str] = ()) -> pd.DataFrame:
    """The training runs of ``experiment`` (parents of sweeps excluded), one row each.

    Columns: ``run_id, run_name, status, failed, failure, parent_run_id, sweep_id, start_time,
    end_time``, every param under its name (``init``, ``model.depth``, ...) and the final metrics
    (``test_acc``, ...; NaN where a run did not log one, e.g. FAILED runs). FAILED runs are kept and
    flagged. ``require`` lists metrics every non-failed run must have (``AnalysisError`` otherwise).
    """
    client = _client(client, tracking_uri)
    return runs_table(experiment, search_training_runs(client, experiment), client.tracking_uri, require)


def search_training_runs(client: MlflowClient, experiment: str) -> list[Run]:
    """The training runs of ``experiment`` as MLflow runs (sweep parents dropped, duplicates kept): what
    :func:`load_runs` and :func:`load_history` read; pass them on as ``runs_table(..)``/``load_history(searched=..)``
    to read both from one search."""
    return training_runs(search_all_runs(client, get_experiment_id(client, experiment)))


def runs_table(experiment: str, runs: list[Run], tracking_uri: str, require: Iterable[str] = ()) -> pd.DataFrame:
    """:func:`load_runs`' frame of already searched runs (:func:`search_training_runs`)."""
    if not runs:
        raise AnalysisError(f"experiment {experiment!r} has no runs in {tracking_uri!r}; "
                            f"run its study first (python -m nnlab.run -m +experiment=...)")
    require = list(require)
    frame = latest_per_config(runs_frame(runs, tuple(dict.fromkeys(list(FINAL_METRICS + EPOCH_METRICS) + require))))
    check_metrics(frame, require, experiment)
    return frame


class DuplicateRunsWarning(UserWarning):
    """The experiment holds the same configuration more than once; only the latest run is kept."""


def _format_nnlab_warning(message, category, filename, lineno, line=None, _previous=warnings.formatwarning):
    # nnlab's own warnings read as one line in nnlab's words, not Python's `file:line: Category:` and
    # the source line (a notebook, a script and `python -m nnlab.report` show the same); others unchanged
    if isinstance(category, type) and issubclass(category, DuplicateRunsWarning):
        return f"nnlab: {message}\n"
    return _previous(message, category, filename, lineno, line)


warnings.formatwarning = _format_nnlab_warning


def latest_per_config(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (``fingerprint``): its latest FINISHED run, else its latest run.

    A sweep re-run without ``resume=true``, or a resumed job that had been half-run, leaves the same
    configuration twice; counted twice it would read as two seeds and shrink every interval. Warns
    (``DuplicateRunsWarning``) with how many rows were dropped; ``frame.attrs["duplicates_dropped"]``
    holds the number.
    """
    if runs.empty:
        return runs
    order = runs.assign(_finished=runs["status"].eq("FINISHED"), _start=runs["start_time"])
    order = order.sort_values(["fingerprint", "_finished", "_start"], ascending=[True, False, False], kind="stable")
    kept = order.drop_duplicates("fingerprint").drop(columns=["_finished", "_start"])
    kept = runs.loc[runs.index.isin(kept.index)].reset_index(drop=True)
    dropped = len(runs) - len(kept)
    kept.attrs["duplicates_dropped"] = dropped
    if dropped:
        warnings.warn(f"{dropped} run(s) repeat a configuration already in the experiment (same nnlab.fingerprint): "
                      "kept the latest FINISHED run of each, so no configuration counts as two seeds",
                      DuplicateRunsWarning, stacklevel=2)
    return kept


def logged_steps(metric: str, epochs_run: int) -> range | None:
    """The steps at which a complete run of ``epochs_run`` epochs records ``metric`` (DESIGN.md): the
    final metrics at the last step; ``theory/*``, ``preact_std/*``, ``lr_mult/*``, ``init_std/*``,
    ``lsuv_*`` and ``act_len_logvar`` at initialisation (0) only; ``coord/*`` at optimiser steps (None here);
    ``update_ratio/*`` from the first step on (1..epochs_run); every other per-epoch metric at
    0..epochs_run. None where the steps are not fixed: ``grad_noise_scale`` (absent at an epoch where
    its estimate of |G|^2 is <= 0) and ``sharpness``/``sharpness_x_lr`` (every ``sharpness_every``)."""
    if metric in FINAL_METRICS:
        return range(epochs_run, epochs_run + 1)
    if metric.startswith(("theory/", "preact_std/", "lr_mult/", "init_std/", "lsuv_")) or metric == "act_len_logvar":
        return range(0, 1)
    if metric.startswith("coord/"):  # optimiser steps 0..diagnostics.coord_steps, not epochs
        return None
    if metric.startswith("update_ratio/"):
        return range(1, epochs_run + 1)
    if metric in ("grad_noise_scale", "sharpness", "sharpness_x_lr"):
        return None
    return range(0, epochs_run + 1)


def check_metrics(runs: pd.DataFrame, metrics: Iterable[str], experiment: str = "") -> None:
    """Raise ``AnalysisError`` naming the non-failed runs of ``runs`` that lack any of ``metrics``."""
    ok = runs[~runs["failed"]]
    for metric in metrics:
        if metric not in ok.columns:
            missing = ok
        else:
            missing = ok[ok[metric].isna()]
        if len(missing):
            names = ", ".join(str(n) for n in missing["run_name"].head(5))
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            where = f" of experiment {experiment!r}" if experiment else ""
            raise AnalysisError(f"{len(missing)} finished run(s){where} have no metric {metric!r}: {names}{more}")


# --- histories --------------------------------------------------------------------------------

def _wanted(keys: Iterable[str], metrics: Sequence[str] | None) -> list[str]:
    """Keys matching any of ``metrics`` (exact names or glob patterns like ``grad_norm/*``)."""
    keys = list(keys)
    if metrics is None:
        return keys
    return [k for k in keys if any(fnmatch.fnmatchcase(k, pattern) for pattern in metrics)]


def _bulk_store(client: MlflowClient):
    """The SQL store's one-query-per-metric bulk reader, if this store has one (else None).

    MLflow's own server uses ``store.get_metric_history_bulk`` the same way; ``MlflowClient`` does
    not expose it, so this reaches through the client and falls back to the public API.
    """
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    return store if hasattr(store, "get_metric_history_bulk") else None


def _history_bulk(store, run_ids: list[str], key: str) -> list[tuple[str, str, int, float, int]]:
    return [(m.run_id, key, m.step, m.value, m.timestamp)
            for m in store.get_metric_history_bulk(run_ids, key, max_results=2**62)]


def _history_columns(store, keys_by_run: dict[str, list[str]]) -> pd.DataFrame | None:
    """The same rows as ``_history_bulk`` (as a frame), one query per 500 runs for every key at once, read as
    plain columns.

    ``get_metric_history_bulk`` builds an ORM object and an MLflow entity per value: on the 135-run
    init_depth study (165,000 values) that is ~15 s of a 17 s read; plain columns take ~2 s. Only for
    MLflow's SQL store (``None`` for any other store: the caller falls back to the public bulk reader).
    """
    try:
        from mlflow.entities.entity_type import EntityAssociationType
        from mlflow.store.tracking.dbmodels.models import SqlMetric
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from sqlalchemy import select
    except ImportError:  # pragma: no cover - an MLflow without its SQL store
        return None
    if not isinstance(store, SqlAlchemyStore):
        return None
    keys = sorted({key for run_keys in keys_by_run.values() for key in run_keys})
    run_ids = sorted(run_id for run_id, run_keys in keys_by_run.items() if run_keys)
    rows: list[tuple] = []
    for start in range(0, len(run_ids), 500):  # SQLite allows 32,766 bound values; 500 runs + keys stay far below
        with store.ManagedSessionMaker() as session:
            # the hook MLflow's own bulk reader applies (workspaces may hide runs)
            chunk = store._filter_entity_ids(session, EntityAssociationType.RUN, run_ids[start:start + 500])
            query = select(SqlMetric.run_uuid, SqlMetric.key, SqlMetric.step, SqlMetric.value, SqlMetric.timestamp,
                           SqlMetric.is_nan).where(SqlMetric.run_uuid.in_(chunk), SqlMetric.key.in_(keys))
            rows += _fetch_plain(session, query)
    names = ["run_id", "metric", "step", "value", "timestamp", "is_nan"]
    frame = pd.DataFrame(dict(zip(names, zip(*rows))) if rows else {name: [] for name in names})
    frame["value"] = frame["value"].astype("float64").mask(frame["is_nan"].astype(bool))
    frame = frame.drop(columns="is_nan")
    if any(len(run_keys) != len(keys) for run_keys in keys_by_run.values() if run_keys):
        # runs asked for different keys: keep each run's own (one query for all keys read a few more rows)
        wanted = pd.MultiIndex.from_tuples([(r, k) for r, run_keys in keys_by_run.items() for k in run_keys])
        frame = frame[pd.MultiIndex.from_frame(frame[["run_id", "metric"]]).isin(wanted)]
    return frame


def _fetch_plain(session, query) -> list[tuple]:
    """The rows of a SQLAlchemy ``select`` as the database driver returns them (plain tuples).

    Compiled by SQLAlchemy for the session's database, run on its DBAPI cursor: SQLAlchemy's own result
    rows cost ~0.5 s more for the init_depth study's 165,000 values (a type check per value, a Row per row),
    and a frame made from them inspects each row again.
    """
    compiled = query.compile(dialect=session.bind.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.construct_params()
    args = tuple(params[name] for name in compiled.positiontup) if compiled.positional else params
    cursor = session.connection().connection.cursor()
    try:
        cursor.execute(str(compiled), args)
        return cursor.fetchall()
    finally:
        cursor.close()


def _history_one(client: MlflowClient, run_id: str, key: str) -> list[tuple[str, str, int, float, int]]:
    return [(run_id, key, m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key)]


def history_frame(client: MlflowClient, keys_by_run: dict[str, list[str]], *, bulk: bool = True,
                  workers: int = 8) -> pd.DataFrame:
    """Tidy per-epoch record ``run_id, metric, step, value`` for the given run -> metric keys.

    A metric logged twice at one step keeps its latest value.
    """
    store = _bulk_store(client) if bulk else None
    frame = _history_columns(store, keys_by_run) if store is not None else None
    if frame is None:
        rows: list[tuple] = []
        if store is not None:
            runs_by_key: dict[str, list[str]] = {}
            for run_id, keys in keys_by_run.items():
                for key in keys:
                    runs_by_key.setdefault(key, []).append(run_id)
            for key, run_ids in runs_by_key.items():
                rows.extend(_history_bulk(store, run_ids, key))
        else:
            pairs = [(run_id, key) for run_id, keys in keys_by_run.items() for key in keys]
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for part in pool.map(lambda p: _history_one(client, *p), pairs):
                    rows.extend(part)
        frame = pd.DataFrame(rows, columns=["run_id", "metric", "step", "value", "timestamp"])
    frame = frame.sort_values(["run_id", "metric", "step", "timestamp"], kind="stable")
    frame = frame.drop_duplicates(["run_id", "metric", "step"], keep="last").drop(columns="timestamp")
    return frame.astype({"step": "int64", "value": "float64"}).reset_index(drop=True)


def load_history(experiment: str, tracking_uri: str | None = None, *, metrics: Sequence[str] | None = None,
                 run_ids: Iterable[str] | None = None, client: MlflowClient | None = None,
                 bulk: bool = True, searched: Sequence[Run] | None = None) -> pd.DataFrame:
    """Per-epoch metrics of the training runs of ``experiment`` as rows ``run_id, metric, step, value``.

    ``metrics`` selects names or glob patterns (``["val_acc", "grad_norm/*"]``; default: all);
    ``run_ids`` restricts to some runs (default: the runs ``load_runs`` keeps, one per configuration).
    ``searched``: the experiment's training runs as :func:`search_training_runs` returned them (not searched
    again). Steps are epochs, 0 = at initialisation.
    """
    client = _client(client, tracking_uri)
    runs = list(searched) if searched is not None else search_training_runs(client, experiment)
    if run_ids is None and runs:  # one run per configuration, as in load_runs
        run_ids = latest_per_config(runs_frame(runs, ()))["run_id"]
    if run_ids is not None:
        wanted = set(run_ids)
        runs = [r for r in runs if r.info.run_id in wanted]
    if not runs:
        raise AnalysisError(f"experiment {experiment!r} has no runs to read a history from")
    # each distinct name tested once against the patterns (135 runs repeat the same ~200 names)
    matching = set(_wanted({key for r in runs for key in r.data.metrics}, metrics))
    keys_by_run = {r.info.run_id: [key for key in r.data.metrics if key in matching] for r in runs}
    if metrics is not None and not any(keys_by_run.values()):
        raise AnalysisError(f"no run of experiment {experiment!r} logged a metric matching {list(metrics)}")
    return history_frame(client, keys_by_run, bulk=bulk)


def name_parts(names: pd.Series, pattern: str | re.Pattern) -> pd.DataFrame:
    """``names.str.extract(pattern)``, the regex run once per distinct name.

    A history repeats a few hundred metric names over its rows (165,000 in the 135-run init_depth study);
    pandas' ``extract`` runs the regex on every row, even of a categorical column (about 0.3 s a call there).
    """
    codes, uniques = pd.factorize(names)
    parts = pd.Series(list(uniques)).str.extract(pattern)
    return parts.reindex(codes).set_axis(names.index)  # code -1 (a missing name): a row of NaN


def layer_frame(history: pd.DataFrame) -> pd.DataFrame:
    """Per-layer rows of a history: ``metric`` ``grad_norm/layer_3`` -> ``stat`` = grad_norm, ``layer`` = 3.

    Other metrics (``train_loss``, ``grad_norm/global``, ...) are dropped.
    """
    parts = name_parts(history["metric"], _LAYER_RE)
    keep = parts["stat"].notna()
    out = history.loc[keep].copy()
    out["stat"] = parts.loc[keep, "stat"]
    out["layer"] = parts.loc[keep, "layer"].astype("int64")
    return out.reset_index(drop=True)


def at_step(history: pd.DataFrame, which: str | int) -> pd.DataFrame:
    """Rows of each run's step ``which``: ``"init"`` (0), ``"last"`` (the run's last step), or an int."""
    if which == "init":
        which = 0
    if which == "last":
        last = history.groupby("run_id")["step"].transform("max")
        return history[history["step"] == last].reset_index(drop=True)
    if isinstance(which, (int, np.integer)):
        return history[history["step"] == which].reset_index(drop=True)
    raise ValueError(f"which must be 'init', 'last' or an int step, got {which!r}")


def with_params(frame: pd.DataFrame, runs: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """``frame`` (with a ``run_id`` column) joined with run columns (default: every param and ``failed``).

    Rows of runs absent from ``runs`` are dropped, so ``with_params(history, runs[~runs.failed])`` keeps
    only the runs that finished.
    """
    if columns is None:
        columns = [c for c in runs.columns if c not in RUN_COLUMNS and c not in FINAL_METRICS + EPOCH_METRICS]
        columns = ["failed", *columns]
    missing = [c for c in columns if c not in runs.columns]
    if missing:
        raise KeyError(f"runs frame has no column(s) {missing}; available: {list(runs.columns)}")
    return frame.merge(runs[["run_id", *columns]], on="run_id", how="inner")
