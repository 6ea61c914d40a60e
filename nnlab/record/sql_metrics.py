"""Metric points written straight into MLflow's SQL store: the rows ``log_batch`` writes, without its objects.

MLflow's SQL store turns every value of a ``log_batch`` into a ``Metric`` entity and an ORM ``SqlMetric``,
and every key into an ORM ``SqlLatestMetric`` it loads and updates: about 117 µs of CPU per value on
sqlite. A depth-256 network records ~2,300 per-layer values an epoch, so that was a quarter of its
training time (docs/speed.md, "The record at depth"). :class:`SqlMetricWriter` writes the same rows into
the same tables -- MLflow's own table definitions, session and run check -- as three ``executemany``
statements (the points; the keys seen the first time; the keys whose latest value moved): about 16 µs
per value (2,304 keys x 5 steps into a sqlite store, measured side by side with ``log_batch``).

What ends up in the store is what ``log_batch`` leaves there (``tests/test_sql_metrics.py`` compares the
two table by table):

* ``metrics``: one row per distinct point, MLflow's identity (key, timestamp, step, value, is_nan);
  NaN stored as 0 with ``is_nan``, +-inf as +-the largest double, as MLflow's ``sanitize_metric_value``;
* ``latest_metrics``: per key the point with the largest (step, timestamp, value), an earlier point
  winning a tie, as MLflow's ``_update_latest_metrics_if_necessary`` compares them.

A point already in the store (a batch sent again after a commit whose answer was lost) makes the write
return False with nothing written: the caller then sends that batch with ``log_batch``, which skips
duplicates. Names are validated by MLflow's own check, once per key; values are floats and steps and
timestamps ints (``RunLogger.log_metrics`` makes them so).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

_MAX_DOUBLE = 1.7976931348623157e308  # what MLflow stores for +-inf (SQL has no infinity)
_KEYS_PER_QUERY = 500  # bound values per IN (...) list, as MLflow's own latest-metrics query


def _sanitized(value: float) -> tuple[float, bool]:
    """(the stored value, is_nan), as MLflow's ``SqlAlchemyStore.sanitize_metric_value``."""
    if math.isnan(value):
        return 0.0, True
    if math.isinf(value):
        return (_MAX_DOUBLE if value > 0 else -_MAX_DOUBLE), False
    return value, False


class SqlMetricWriter:
    """Writes one run's metric points into an MLflow ``SqlAlchemyStore`` (see the module's docstring)."""

    def __init__(self, store: Any):
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric

        self.store = store
        self.metrics = SqlMetric.__table__
        self.latest = SqlLatestMetric.__table__
        self._valid_keys: set[str] = set()

    def _validate(self, points: Sequence[tuple[str, float, int, int]]) -> None:
        from mlflow.utils.validation import _validate_metric

        for key, value, timestamp, step in points:
            if key not in self._valid_keys:
                _validate_metric(key, value, timestamp, step)
                self._valid_keys.add(key)

    def write(self, run_id: str, points: Sequence[tuple[str, float, int, int]]) -> bool:
        """Write ``(key, value, timestamp ms, step)`` points to run ``run_id`` in one transaction.
        True when written; False (nothing written) when one of them is already in the store. Raises
        what the store raises (a run that is not active, a locked or read-only database, ...)."""
        import sqlalchemy as sa

        self._validate(points)
        rows: dict[tuple, dict] = {}  # identity -> row, first occurrence kept (MLflow's de-duplication)
        latest: dict[str, dict] = {}  # key -> its latest row in this batch
        for key, raw, timestamp, step in points:
            value, is_nan = _sanitized(raw)
            identity = (key, timestamp, step, value, is_nan)
            if identity in rows:
                continue
            row = rows[identity] = {"run_uuid": run_id, "key": key, "value": value, "timestamp": timestamp,
                                    "step": step, "is_nan": is_nan}
            best = latest.get(key)
            if best is None or (step, timestamp, value) > (best["step"], best["timestamp"], best["value"]):
                latest[key] = row
        if not rows:
            return True
        lm = self.latest.c
        with self.store.ManagedSessionMaker(read_only=False) as session:
            self.store._check_run_is_active(self.store._get_run(session=session, run_uuid=run_id))
            try:  # the transaction's first write: a duplicate point leaves nothing to undo but this
                session.execute(sa.insert(self.metrics), list(rows.values()))
            except sa.exc.IntegrityError:
                session.rollback()
                return False
            keys = sorted(latest)  # one locking order for every writer, as MLflow's own
            stored: dict[str, tuple] = {}
            for start in range(0, len(keys), _KEYS_PER_QUERY):
                query = (sa.select(lm.key, lm.step, lm.timestamp, lm.value)
                         .where(lm.run_uuid == run_id, lm.key.in_(keys[start:start + _KEYS_PER_QUERY]))
                         .order_by(lm.run_uuid, lm.key).with_for_update())
                stored.update((key, (step, timestamp, value)) for key, step, timestamp, value in session.execute(query))
            new = [latest[key] for key in keys if key not in stored]
            if new:
                session.execute(sa.insert(self.latest), new)
            moved = [latest[key] for key in keys if key in stored and
                     (latest[key]["step"], latest[key]["timestamp"], latest[key]["value"]) > stored[key]]
            if moved:
                session.execute(sa.update(self.latest)
                                .where(lm.run_uuid == sa.bindparam("b_run_uuid"), lm.key == sa.bindparam("b_key"))
                                .values(value=sa.bindparam("b_value"), timestamp=sa.bindparam("b_timestamp"),
                                        step=sa.bindparam("b_step"), is_nan=sa.bindparam("b_is_nan")),
                                [{f"b_{k}": v for k, v in row.items()} for row in moved])
        return True
