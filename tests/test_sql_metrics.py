"""Metric points written straight into MLflow's SQL store leave the rows MLflow's own log_batch leaves."""
import importlib.util
import math
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from daemons import skip_or_fail
from nnlab import server
from nnlab.record import spool as S
from nnlab.record import store as T
from nnlab.record.sql_metrics import SqlMetricWriter

NAN, INF = float("nan"), float("inf")

# (key, value, timestamp ms, step) batches with every case the latest-value rule and the sanitising meet
BATCHES = [
    [("a", 1.0, 10, 0), ("b", NAN, 10, 0), ("c", INF, 10, 0), ("d", -INF, 10, 0), ("a", 1.0, 10, 0),  # a duplicate
     ("b", NAN, 10, 0),  # a NaN duplicate (MLflow finds it only when the insert fails)
     ("e", 0.5, 10, 3), ("e", 0.7, 10, 1),  # a later step first: the latest stays at step 3
     ("f", 0.2, 10, 2), ("f", 0.1, 10, 2),  # same step and time: the larger value is the latest
     ("g", 0.0, 10, 1), ("g", -0.0, 10, 1),  # equal values: one point
     ("h", 0.4, 12, 1), ("h", 0.3, 11, 1),  # same step: the later timestamp is the latest
     ("j", 0.0, 10, 1), ("j", NAN, 10, 1)],  # NaN is stored as 0: a tie, and the first point stays the latest
    [("a", 2.0, 20, 1), ("e", 0.9, 20, 2), ("b", 0.3, 20, 1), ("f", 0.3, 10, 2), ("i", 5.0, 20, 0),
     ("c", -1.0, 20, 0), ("d", 7.0, 20, 1), ("g", NAN, 20, 1)],
    [("e", 0.1, 30, 3), ("a", 3.0, 5, 1), ("h", 0.9, 12, 1)],  # ties and an earlier timestamp at the latest step
]


@pytest.fixture
def store(tmp_path, fresh_store):
    return fresh_store(tmp_path / "mlflow.db")


@pytest.fixture(scope="module")
def postgres():
    """A private PostgreSQL (as ``nnlab.server`` starts one), its URI; skipped where it cannot run."""
    try:
        server._pg_bin("initdb"), server._pg_bin("pg_ctl")
    except server.ServerError as err:
        skip_or_fail(str(err))
    if importlib.util.find_spec("psycopg") is None:
        skip_or_fail("psycopg is not installed: pip install 'nnlab[server]'")
    folder = Path(tempfile.mkdtemp(prefix="nnlab-pg-"))
    try:
        with server.local_postgres(folder / "data") as pg, pytest.MonkeyPatch.context() as patch:
            for key, value in pg.env.items():
                patch.setenv(key, value)
            yield pg.uri
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def rows(client, table, run_id):
    """(key, value, timestamp, step, is_nan) of ``table``'s rows of ``run_id``, sorted."""
    with client._tracking_client.store.engine.connect() as db:
        found = db.execute(sa.text(f"SELECT key, value, timestamp, step, is_nan FROM {table} WHERE run_uuid = :r"),
                           {"r": run_id})
        return sorted((key, value, timestamp, step, bool(is_nan)) for key, value, timestamp, step, is_nan in found)


def two_runs(store):
    client = MlflowClient(store)
    experiment = client.create_experiment(f"sql-{uuid.uuid4().hex}")
    return client, client.create_run(experiment).info.run_id, client.create_run(experiment).info.run_id


def check_the_same_rows(store):
    client, by_mlflow, by_writer = two_runs(store)
    writer = SqlMetricWriter(client._tracking_client.store)
    for batch in BATCHES:
        client.log_batch(by_mlflow, metrics=[Metric(*point) for point in batch])
        assert writer.write(by_writer, batch)
    for table in ("metrics", "latest_metrics"):
        assert rows(client, table, by_writer) == rows(client, table, by_mlflow), table
    assert len(rows(client, "latest_metrics", by_writer)) == 10  # a..j
    mine, theirs = client.get_run(by_writer).data.metrics, client.get_run(by_mlflow).data.metrics
    assert mine.keys() == theirs.keys() and mine["c"] == -1.0 and mine["e"] == 0.1
    assert (mine["a"], mine["f"], mine["h"], mine["j"]) == (2.0, 0.3, 0.9, 0.0)
    assert all(mine[k] == theirs[k] or (math.isnan(mine[k]) and math.isnan(theirs[k])) for k in mine)
    assert {m.step: m.value for m in client.get_metric_history(by_writer, "e")} == {3: 0.1, 1: 0.7, 2: 0.9}


def test_the_writer_leaves_the_rows_log_batch_leaves(store):
    check_the_same_rows(store)


@pytest.mark.daemon
def test_the_writer_leaves_the_rows_log_batch_leaves_on_postgresql(postgres):
    check_the_same_rows(postgres)


def test_a_point_already_in_the_store_writes_nothing_and_is_left_to_log_batch(store):
    client, _, run_id = two_runs(store)
    writer = SqlMetricWriter(client._tracking_client.store)
    assert writer.write(run_id, BATCHES[0])
    before = {table: rows(client, table, run_id) for table in ("metrics", "latest_metrics")}
    assert not writer.write(run_id, [("new", 1.0, 40, 5), *BATCHES[0][:1]])  # "a" at step 0 is there already
    assert {table: rows(client, table, run_id) for table in before} == before


def test_a_run_sent_twice_by_its_logger_is_recorded_once(store):
    """A flush whose commit went through but whose answer was lost is sent again: each point once."""
    tracker = T.Tracker(store)
    with tracker.start_run(tracker.experiment_id("e"), "resent", flush_seconds=3600) as run:
        run.log_metrics({f"m{i}": i / 7 for i in range(30)}, step=0)
        assert run.flush()
        run._metrics_sent = 0  # as if the answer had been lost
        run.log_metrics({"m0": 1.5}, step=1)
    assert len(rows(MlflowClient(store), "metrics", run.run_id)) == 31
    stored = MlflowClient(store).get_run(run.run_id)
    assert stored.info.status == "FINISHED" and stored.data.metrics["m0"] == 1.5


def test_nnlabs_own_client_on_sqlite_writes_its_metrics_without_log_batch(store):
    tracker = T.Tracker(store)
    run = tracker.start_run(tracker.experiment_id("e"), "direct", flush_seconds=3600)
    inner, sent = run.client._client, []
    real = inner.log_batch
    inner.log_batch = lambda run_id, metrics=(), **kw: (sent.append(len(metrics)), real(run_id, metrics=metrics, **kw))
    with run:
        run.log_params({"lr": 0.1})
        for epoch in range(101):
            run.log_metrics({f"layer_{i}": epoch + i / 100 for i in range(15)}, step=epoch)
    assert sent and not any(sent)  # params and tags went by log_batch, no metric did
    history = MlflowClient(store).get_metric_history(run.run_id, "layer_3")
    assert sorted(m.step for m in history) == list(range(101))
    stored = MlflowClient(store).get_run(run.run_id)
    assert stored.info.status == "FINISHED" and stored.data.params == {"lr": "0.1"}
    assert stored.data.metrics["layer_14"] == 100.14


def test_an_mlflow_release_the_writer_was_not_checked_against_writes_through_log_batch(store, monkeypatch):
    import mlflow

    tracker = T.Tracker(store)
    run = tracker.start_run(tracker.experiment_id("e"), "other-release", flush_seconds=3600)
    monkeypatch.setattr(mlflow, "__version__", "3.99.0")
    inner, sent = run.client._client, []
    real = inner.log_batch
    inner.log_batch = lambda run_id, metrics=(), **kw: (sent.append(len(metrics)), real(run_id, metrics=metrics, **kw))
    with run:
        run.log_metrics({f"layer_{i}": float(i) for i in range(15)}, step=0)
    assert sum(sent) == 15  # every point by log_batch
    assert MlflowClient(store).get_run(run.run_id).data.metrics["layer_14"] == 14.0


def test_a_store_that_fails_the_direct_write_gets_the_run_spooled_never_finished(tmp_path, fresh_store, monkeypatch):
    store = fresh_store(tmp_path / "mlflow.db")
    tracker = T.Tracker(store, settings=T.StoreSettings(spool_dir=str(tmp_path / "spool"), retry_seconds=0))

    def full(self, run_id, points):
        raise MlflowException("(sqlite3.OperationalError) database or disk is full")

    monkeypatch.setattr(SqlMetricWriter, "write", full)
    with tracker.start_run(tracker.experiment_id("e"), "full", flush_seconds=3600) as run:
        run.log_metrics({"loss": 1.0}, step=0)
    stored = MlflowClient(store).get_run(run.run_id)
    assert stored.info.status == "FAILED" and stored.data.tags["nnlab.failure"] == "not_recorded"
    assert run.spooled is not None and S.read_run(run.spooled).metrics[0][:2] == ("loss", 1.0)


def test_a_deleted_run_is_refused_as_log_batch_refuses_it(store):
    client, _, run_id = two_runs(store)
    client.delete_run(run_id)
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        SqlMetricWriter(client._tracking_client.store).write(run_id, BATCHES[0])
    with pytest.raises(MlflowException, match="Names may only contain"):
        SqlMetricWriter(client._tracking_client.store).write(run_id, [("bad\nname", 1.0, 1, 0)])
