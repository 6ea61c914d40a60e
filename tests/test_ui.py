"""What nnlab tells the MLflow UI (nnlab.record.ui): the port, the saved view, the report link; the
sqlite store's lock outside the user's folder."""
from __future__ import annotations

import json
import subprocess

from nnlab.record import store as T
from nnlab.record import ui


def test_the_printed_command_and_link_carry_mlflow_port(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_PORT", "5001")  # what `make ui PORT=5001` / `make demo PORT=5001` export
    hint = T.ui_hint(T.resolve_uri("sqlite:///mlflow.db"), "7")
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5001\n" in hint
    assert "then:  http://127.0.0.1:5001/#/experiments/7/runs?" in hint
    monkeypatch.setenv("MLFLOW_PORT", "not-a-port")
    assert ui.ui_port() == 5000 and "--port" not in ui.ui_command("sqlite:///mlflow.db")


def test_make_ui_takes_port():
    out = subprocess.run(["make", "-n", "ui", "PORT=5001", "STAMP=/dev/null"], capture_output=True, text=True,
                         check=True).stdout
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5001" in out


def test_the_store_lock_is_not_beside_the_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracker = T.Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker.experiment_id("nnlab")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert ui.lock_path(tmp_path / "mlflow.db").exists()


def test_experiment_carries_the_saved_view_the_link_opens(tmp_path):
    tracker = T.Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = tracker.client.get_experiment(tracker.experiment_id("study"))
    state = json.loads(experiment.tags[ui.SHARED_VIEW_PREFIX + ui.VIEW_KEY])
    assert {"metrics.`test_acc`", "params.`init`", "params.`activation`", "params.`model.depth`"} <= \
        set(state["selectedColumns"])
    assert state["orderByKey"] == "metrics.`test_acc`" and state["orderByAsc"] is False
    assert "orderByKey" not in T.ui_path(experiment.experiment_id)  # a sort in the link: the UI ignores the view
    assert f"viewStateShareKey={ui.VIEW_KEY}" in T.ui_path(experiment.experiment_id)


def test_report_description_links_the_artifact():
    text = ui.report_description("3", "abc")
    assert "](#/experiments/3/runs/abc/artifacts/report/index.html?workflowType=machine_learning)" in text
