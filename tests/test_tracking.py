"""The tracker on its own, against a temporary sqlite store: URIs, batching, run lifecycle."""
import signal

import pytest
from mlflow import MlflowClient

from nnlab.record import store as T
from nnlab.record.signals import Interrupted
from nnlab.core import DivergenceError


@pytest.fixture
def store(tmp_path, fresh_store):
    return fresh_store(tmp_path / "mlflow.db")


def test_uri_precedence_explicit_then_env_then_default(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert T.resolve_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert T.resolve_uri(None) == "http://tracking.example:5000"
    assert T.resolve_uri("sqlite:///other.db") == f"sqlite:///{tmp_path / 'other.db'}"
    assert T.resolve_uri("http://localhost:5000") == "http://localhost:5000"


def test_ui_hint_gives_the_command_and_the_runs_link(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_PORT", raising=False)
    hint = T.ui_hint(T.resolve_uri("sqlite:///mlflow.db"), "7")
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in hint
    assert "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning" in hint
    assert T.ui_hint("http://host:5000/", "3") == \
        "MLflow runs: http://host:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=nnlab-runs"
    assert T.ui_path("3", "abc") == "#/experiments/3/runs/abc?workflowType=machine_learning"


def test_experiment_is_created_once_tagged_as_model_training(store, tmp_path):
    tracker = T.Tracker(store)
    first = tracker.experiment_id("study")
    assert tracker.experiment_id("study") == first
    experiment = MlflowClient(store).get_experiment(first)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location.startswith((tmp_path / "mlartifacts").as_uri())


class CountingClient:
    """Wraps MlflowClient and counts the calls that write metrics."""

    def __init__(self, client):
        self.client, self.metric_batches = client, 0

    def log_batch(self, run_id, metrics=(), **kw):
        self.metric_batches += bool(metrics)
        return self.client.log_batch(run_id, metrics=metrics, **kw)

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_metrics_are_buffered_and_all_arrive_with_their_steps(store):
    tracker = T.Tracker(store)
    run = tracker.start_run(tracker.experiment_id("e"), "buffered", flush_seconds=3600)
    run.client = counting = CountingClient(run.client)
    with run:
        for epoch in range(101):
            run.log_metrics({f"m{i}": epoch + i / 100 for i in range(15)}, step=epoch)
        assert counting.metric_batches == 0  # nothing written per call
    assert counting.metric_batches == 2  # 1515 values flushed at close, in chunks of <= 1000
    history = MlflowClient(store).get_metric_history(run.run_id, "m3")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(101))
    assert MlflowClient(store).get_run(run.run_id).info.status == "FINISHED"


def test_flush_every_interval_keeps_the_run_live(store):
    tracker = T.Tracker(store)
    with tracker.start_run(tracker.experiment_id("e"), "live", flush_seconds=0) as run:
        run.log_metrics({"val_acc": 0.5}, step=0)
        assert MlflowClient(store).get_run(run.run_id).data.metrics == {"val_acc": 0.5}


@pytest.mark.parametrize("error, reason, status", [(DivergenceError(4, float("nan")), "diverged", "FAILED"),
                                                   (ValueError("bad"), "ValueError", "FAILED"),
                                                   (KeyboardInterrupt(), "SIGINT", "KILLED"),
                                                   (Interrupted(signal.SIGTERM), "SIGTERM", "KILLED")])
def test_a_run_left_by_an_exception_is_closed_with_a_reason_and_its_metrics(store, error, reason, status):
    tracker = T.Tracker(store)
    with pytest.raises(type(error)):
        with tracker.start_run(tracker.experiment_id("e"), "broken", flush_seconds=3600) as run:
            run.log_metrics({"train_loss": 2.3}, step=0)
            raise error
    stored = MlflowClient(store).get_run(run.run_id)
    assert stored.info.status == status
    assert stored.data.tags["nnlab.failure"] == reason
    assert stored.data.metrics["train_loss"] == 2.3  # flushed before it was marked failed
    if reason == "diverged":
        assert stored.data.tags["nnlab.failure_epoch"] == "4"


def test_child_runs_point_at_their_parent(store):
    tracker = T.Tracker(store)
    experiment = tracker.experiment_id("e")
    with tracker.start_run(experiment, "parent") as parent:
        with tracker.start_run(experiment, "child", parent_id=parent.run_id) as child:
            child.log_params({f"p{i}": i for i in range(150)})  # more than one log_batch's worth
    assert [r.info.run_id for r in tracker.children(experiment, parent.run_id)] == [child.run_id]
    assert len(MlflowClient(store).get_run(child.run_id).data.params) == 150


def test_git_tags_never_fail_outside_a_repository(tmp_path):
    assert T.git_tags(tmp_path) == {}


@pytest.mark.parametrize("dirty", [False, True], ids=["clean", "dirty"])
def test_git_tags_name_the_commit_and_whether_tracked_files_changed(tmp_path, dirty):
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout

    git("init", "-q")
    (tmp_path / "tracked.txt").write_text("one\n")
    git("add", "tracked.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    (tmp_path / "untracked.txt").write_text("not counted\n")
    if dirty:
        (tmp_path / "tracked.txt").write_text("two\n")
    tags = T.git_tags.__wrapped__(tmp_path)  # not the per-process cache
    assert tags == {"mlflow.source.git.commit": git("rev-parse", "HEAD").strip(), "nnlab.git_dirty": str(dirty)}


class InterruptedClient(CountingClient):
    """Ctrl-C arrives while MLflow is inside its metric write (as a user's keypress can)."""

    def log_batch(self, run_id, metrics=(), **kw):
        import os
        import signal

        if metrics:
            os.kill(os.getpid(), signal.SIGINT)
        return super().log_batch(run_id, metrics=metrics, **kw)


def test_ctrl_c_during_a_write_lets_the_write_finish_then_fails_the_run(store):
    tracker = T.Tracker(store)
    run = tracker.start_run(tracker.experiment_id("e"), "interrupted", flush_seconds=0)
    run.client = InterruptedClient(run.client)
    with pytest.raises(KeyboardInterrupt):
        with run:
            run.log_metrics({"train_loss": 2.3}, step=0)  # the interrupt surfaces after this write
            raise AssertionError("not reached: the interrupt is delivered when the write returns")
    stored = MlflowClient(store).get_run(run.run_id)
    assert stored.data.metrics == {"train_loss": 2.3}  # the interrupted write is whole
    assert (stored.info.status, stored.data.tags["nnlab.failure"]) == ("KILLED", "SIGINT")


def test_uninterrupted_holds_signals_and_delivers_each_once_after():
    import os
    import signal

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda number, frame: seen.append(number))
    try:
        with T.uninterrupted():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            assert seen == []  # held
        assert seen == [signal.SIGTERM]  # delivered once the block is done
        with pytest.raises(KeyboardInterrupt), T.uninterrupted():
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)


class InterruptedOnClose(CountingClient):
    """A signal arrives while the run's closing flush is inside its write (a sweep stopped just
    as a job ends): the first metric write after ``armed`` is set."""

    armed = False

    def log_batch(self, run_id, metrics=(), **kw):
        import os

        if metrics and self.armed:
            self.armed = False
            os.kill(os.getpid(), signal.SIGTERM)
        return super().log_batch(run_id, metrics=metrics, **kw)


def test_a_signal_during_the_closing_flush_of_a_finished_run_keeps_it_finished_and_goes_on(store):
    tracker = T.Tracker(store)
    run = tracker.start_run(tracker.experiment_id("e"), "ending", flush_seconds=3600)
    run.client = client = InterruptedOnClose(run.client)
    previous = signal.signal(signal.SIGTERM, lambda number, frame: (_ for _ in ()).throw(Interrupted(number)))
    try:
        with pytest.raises(Interrupted):  # the stop goes on to the sweep, once the record is whole
            with run:
                run.log_metrics({"test_acc": 0.9}, step=3)
                client.armed = True
    finally:
        signal.signal(signal.SIGTERM, previous)
    stored = MlflowClient(store).get_run(run.run_id)
    assert stored.data.metrics == {"test_acc": 0.9}
    assert stored.info.status == "FINISHED"  # its training ended before the signal; nothing was lost
    assert "nnlab.failure" not in stored.data.tags
    assert run.spooled is None


_FIRST_OPEN = """
import gc, json, sys
from nnlab.record import store
{before}
full = []
gc.callbacks.append(lambda phase, info: full.append(1) if phase == "start" and info["generation"] == 2 else None)
error = None
try:
    store.Tracker(sys.argv[1])
except store.StoreUnavailable as err:
    error = str(err)
print(json.dumps({{"full": len(full), "enabled": gc.isenabled(), "frozen": gc.get_freeze_count(), "error": error}}))
"""


@pytest.mark.parametrize("case", ["first-import", "mlflow-imported-already", "store-unusable"])
def test_the_first_import_of_mlflow_runs_without_garbage_collection_then_freezes_what_it_left(tmp_path, case):
    """A command imports MLflow and its store once, leaving ~300k objects that are never garbage:
    no full collection walks them during the import, and they are frozen out of later ones. Only
    there: a process that imported MLflow before (a session, a notebook) is left as it was, and a
    store that fails to open leaves the collector running and nothing frozen."""
    import json
    import subprocess
    import sys

    db = tmp_path / "mlflow.db"
    if case == "store-unusable":
        db.write_bytes(b"not a sqlite database, " * 100)
    before = "import mlflow" if case == "mlflow-imported-already" else ""
    out = subprocess.run([sys.executable, "-c", _FIRST_OPEN.format(before=before), f"sqlite:///{db}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["enabled"] is True
    if case == "first-import":
        assert seen["error"] is None
        assert seen["full"] == 0
        assert seen["frozen"] > 100_000  # MLflow, SQLAlchemy, alembic, pydantic, pandas, ...
    elif case == "mlflow-imported-already":
        assert seen["error"] is None
        assert seen["full"] > 0 and seen["frozen"] == 0  # the store's modules, imported now, as before
    else:
        assert seen["error"] is not None and seen["frozen"] == 0
