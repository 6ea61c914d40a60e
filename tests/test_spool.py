"""The spool and the tracker's failure paths in-process: the spool format, offline runs and the
sweep functions built on it, a run whose store refuses connections, sync, and fit's train_seconds."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from nnlab.record import spool as S
from nnlab.record import store as T
from nnlab.sync import sync


def closed_port_uri() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket is closed


def test_spool_folder_round_trip_skips_a_torn_line_and_orders_parents_first(tmp_path):
    child = S.SpoolWriter(tmp_path, "c")
    child.write({"uid": "c", "parent": "p", "status": "FINISHED"}, {"lr": "0.1"}, {"t": "1"},
                [("loss", 2.0, 1000, 0), ("loss", 1.0, 1001, 1)])
    with open(tmp_path / "c" / S.METRICS, "a") as f:
        f.write('{"key": "loss", "val')  # a writer killed mid-line
    S.SpoolWriter(tmp_path, "p").write({"uid": "p", "parent": None, "status": "FINISHED"}, {}, {}, [])
    (tmp_path / "half").mkdir()  # a folder whose manifest was never written: ignored
    runs = S.read_spool(tmp_path)
    assert [r.uid for r in runs] == ["p", "c"]
    assert runs[1].metrics == [("loss", 2.0, 1000, 0), ("loss", 1.0, 1001, 1)]
    assert runs[1].params == {"lr": "0.1"} and runs[1].manifest["format"] == S.FORMAT
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".")]  # no temporary files left


def test_metrics_are_appended_not_rewritten(tmp_path):
    writer = S.SpoolWriter(tmp_path, "r")
    points = [("a", 1.0, 1, 0)]
    writer.write({"uid": "r"}, {}, {}, points)
    points.append(("a", 2.0, 2, 1))
    writer.write({"uid": "r"}, {}, {}, points)
    assert (tmp_path / "r" / S.METRICS).read_text().count("\n") == 2


def offline_tracker(tmp_path):
    return T.Tracker.from_settings(T.StoreSettings(offline=True, spool_dir=str(tmp_path / "spool")), base=tmp_path)


def test_offline_sweep_parent_and_children_live_in_the_spool(tmp_path):
    """What the sweep callback calls in offline mode: parent run, its lookup by sweep id, its children."""
    tracker = offline_tracker(tmp_path)
    experiment = tracker.experiment_id("study")
    parent = tracker.start_run(experiment, "a sweep", {"sweep_id": "S1", T.ROLE_TAG: "sweep"})
    assert (tmp_path / "spool" / parent.run_id / "manifest.json").exists()  # there from the start
    assert tracker.sweep_parent(experiment, "S1") == parent.run_id
    with tracker.start_run(experiment, "job0", {"sweep_id": "S1"}, parent_id=parent.run_id, flush_seconds=0) as run:
        run.log_params({"seed": 0})
        run.log_metrics({"test_acc": 0.9}, step=3)
    (child,) = tracker.children(experiment, parent.run_id)
    assert (child.info.run_name, child.info.status, child.data.metrics) == ("job0", "FINISHED", {"test_acc": 0.9})
    parent.close()
    assert run.spooled == tmp_path / "spool" / run.uid
    assert not (tmp_path / "mlflow.db").exists()

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert [o.action for o in sync(tmp_path / "spool", store)] == ["created", "created"]
    assert [o.action for o in sync(tmp_path / "spool", store)] == ["unchanged", "unchanged"]
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    (synced_parent,) = [r for r in runs if r.info.run_name == "a sweep"]
    (synced_child,) = [r for r in runs if r.info.run_name == "job0"]
    assert synced_child.data.tags["mlflow.parentRunId"] == synced_parent.info.run_id
    assert synced_child.data.params == {"seed": "0"}


def test_a_killed_offline_run_is_synced_as_failed_interrupted(tmp_path):
    tracker = offline_tracker(tmp_path)
    run = tracker.start_run(tracker.experiment_id("e"), "killed", flush_seconds=0)
    run.log_metrics({"loss": 1.0}, step=0)
    manifest = json.loads((run.spooled or tmp_path / "spool" / run.uid / "manifest.json").read_text())
    assert manifest["status"] == "RUNNING" and manifest["owner"]["pid"] == os.getpid()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert [o.action for o in sync(tmp_path / "spool", store)] == ["skipped"]  # its process is alive
    manifest["owner"]["pid"] = 2 ** 22 + 1  # no such process
    S.write_json(tmp_path / "spool" / run.uid / "manifest.json", manifest)
    sync(tmp_path / "spool", store)
    (stored,) = MlflowClient(store).search_runs(["1"])
    assert (stored.info.status, stored.data.tags["nnlab.failure"]) == ("FAILED", "interrupted")


@pytest.fixture
def http_env(monkeypatch):
    """The Tracker sets MLflow's HTTP variables for its process: undo that after the test."""
    for key in T._HTTP_ENV:
        monkeypatch.delenv(key, raising=False)


def test_a_server_that_goes_away_in_the_middle_of_its_answer_is_named_as_a_lost_connection(tmp_path, http_env):
    """A real socket that answers half a response and hangs up: what a server stopped mid-request does."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"ex")

    threading.Thread(target=serve, daemon=True).start()
    try:
        settings = T.StoreSettings(spool_dir=str(tmp_path / "spool"), retries=0, retry_seconds=0)
        tracker = T.Tracker(f"http://127.0.0.1:{listener.getsockname()[1]}", settings=settings)
        with pytest.raises(T.StoreUnavailable, match="connection lost"):
            tracker.open_run("e", "single", {})
    finally:
        listener.close()


def test_a_run_whose_server_refuses_connections_trains_on_and_is_spooled_whole(tmp_path, capsys, http_env):
    settings = T.StoreSettings(spool_dir=str(tmp_path / "spool"), retries=0, retry_seconds=0)
    tracker = T.Tracker(closed_port_uri(), settings=settings)
    with pytest.raises(T.StoreUnavailable, match="connection refused"):
        tracker.open_run("e", "single", {})  # a run on its own: refused before it exists
    started = time.monotonic()
    with tracker.open_run("e", "job", {"sweep_id": "S"}, spool_if_unreachable=True, flush_seconds=0) as run:
        run.log_params({"lr": 0.1})
        for epoch in range(50):
            run.log_metrics({"loss": 1.0 / (epoch + 1)}, step=epoch)
        (tmp_path / "w.txt").write_text("weights")
        run.log_artifact(tmp_path / "w.txt", "model")
    assert time.monotonic() - started < 5  # backoff: not one blocking attempt per epoch
    assert run.spooled is not None
    err = capsys.readouterr().err
    assert err.count("failed (connection refused)") == 1 and "python -m nnlab.sync" in err
    (spooled,) = S.read_spool(tmp_path / "spool")
    assert spooled.manifest["status"] == "FINISHED" and spooled.manifest["store"]["run_id"] is None
    assert [s for _, _, _, s in spooled.metrics] == list(range(50))
    assert spooled.params == {"lr": "0.1"} and spooled.tags["sweep_id"] == "S"
    assert [rel for _, rel in spooled.artifact_files()] == ["model/w.txt"]

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sync(tmp_path / "spool", store)
    client = MlflowClient(store)
    (stored,) = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert stored.info.status == "FINISHED" and stored.data.tags[T.RUN_UID_TAG] == run.uid
    assert len(client.get_metric_history(stored.info.run_id, "loss")) == 50
    assert [a.path for a in client.list_artifacts(stored.info.run_id, "model")] == ["model/w.txt"]


def test_finished_only_if_the_final_flush_succeeded(tmp_path):
    """A store that takes the status write but not the record (a full disk): spooled, never FINISHED."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = T.Tracker(store, settings=T.StoreSettings(spool_dir=str(tmp_path / "spool"), retry_seconds=0))
    run = tracker.start_run(tracker.experiment_id("e"), "full", flush_seconds=3600)

    class FullDisk:
        def __init__(self, client):
            self.client = client

        def log_batch(self, *args, **kwargs):
            raise OSError("database or disk is full")

        def __getattr__(self, name):
            return getattr(self.client, name)

    run.client = FullDisk(run.client)
    with run:
        run.log_metrics({"loss": 1.0}, step=0)
    stored = MlflowClient(store).get_run(run.run_id)
    assert stored.info.status == "FAILED" and stored.data.tags["nnlab.failure"] == "not_recorded"
    assert run.spooled is not None and S.read_run(run.spooled).metrics[0][:2] == ("loss", 1.0)


@pytest.mark.parametrize("uri", ["bogus://x", "mlruns", "file:///tmp/mlruns", "sqlite://rel.db"])
def test_uris_that_are_not_stores_are_refused_with_the_valid_kinds(uri):
    with pytest.raises(T.BadStoreURI, match=r"not a tracking store URI; valid: sqlite:///path/to/file\.db"):
        T.Tracker(uri)


def test_credentials_never_appear_in_messages():
    err = T.StoreUnavailable("https://alice:s3cret@host:5000", "connection refused")
    assert "s3cret" not in str(err) and "https://***@host:5000" in str(err)


def test_bound_http_requests_sets_mlflow_environment(http_env):
    T.bound_http_requests(T.StoreSettings(connect_timeout=2.5, retries=1))
    assert [os.environ[k] for k in T._HTTP_ENV] == ["3", "1", "1"]


def test_fit_does_not_count_time_spent_in_its_callback_as_training():
    from nnlab.core import MLP, TrainConfig, fit, make_optimizer
    from nnlab.data import load_dataset

    data = load_dataset("digits")

    def train(callback):
        model = MLP.from_shape(data.n_features, data.n_classes, 1, 8, seed=0)
        return fit(model, make_optimizer("sgd", lr=0.05), data.x_train, data.y_train, data.x_val, data.y_val,
                   TrainConfig(epochs=3), callback=callback).train_seconds

    stalled = train(lambda epoch, metrics: time.sleep(0.5))  # a tracking store stalling 2 s in all
    assert stalled < 2.0 and stalled > 0


@pytest.mark.slow
def test_a_run_killed_in_its_first_second_has_its_params_in_the_store(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    job = subprocess.Popen([sys.executable, "-m", "nnlab.run", "trainer.epochs=100000", "model.width=8",
                            "tracking.flush_seconds=3600"], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=open(tmp_path / "stderr.txt", "w"),
                           start_new_session=True)
    db = tmp_path / "mlflow.db"
    try:
        deadline = time.monotonic() + 240  # a loaded machine: start-up alone can take a minute
        runs = []
        while not runs and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.1)
            if db.exists():  # read-only, plain sqlite: an MlflowClient here would race the schema creation
                try:
                    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                        runs = conn.execute("SELECT run_uuid FROM runs").fetchall()
                except sqlite3.Error:
                    runs = []
        assert runs, (job.poll(), (tmp_path / "stderr.txt").read_text()[-2000:])
        time.sleep(1.0)  # the run's first second; no periodic flush before 3600 s
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    (stored,) = MlflowClient(f"sqlite:///{db}").search_runs(["1"])
    assert stored.data.params["trainer.epochs"] == "100000" and stored.data.params["activation"] == "relu"
    assert stored.data.tags[T.RUN_UID_TAG]
