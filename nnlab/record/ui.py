"""What nnlab tells the MLflow UI: the port a local ``mlflow ui`` listens on, the saved view of the
runs table an experiment opens with, and the parent run's description linking to its report.

MLflow only (no Hydra, no nnlab config): the record's presentation in MLflow's own web UI.

* **Port.** ``mlflow ui`` listens on ``--port`` or, without it, on ``$MLFLOW_PORT`` (MLflow's own
  variable), else 5000. nnlab's printed command and link read the same variable, so
  ``MLFLOW_PORT=5001`` (what ``make ui PORT=5001`` / ``make demo PORT=5001`` set) makes both agree.
* **Saved view.** MLflow 3.x's UI (``viewStateShareKey=<key>`` in the runs page's URL) opens the
  runs page with the view stored in the experiment tag ``mlflow.sharedViewState.<key>``: chosen
  columns and sort order. nnlab stores one such view per experiment and its link carries the key.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

DEFAULT_UI_PORT = 5000
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."  # MLflow UI's experiment tag of a saved view
VIEW_KEY = "nnlab-runs"  # ``viewStateShareKey=nnlab-runs``: the view nnlab saves in each experiment
# the runs table's columns in the saved view, as the UI keys them (``metrics.`test_acc```)
VIEW_METRICS = ("test_acc", "best_val_acc", "epochs_run")
VIEW_PARAMS = ("activation", "init", "model.depth", "optimizer", "optimizer.lr", "seed")


def ui_port() -> int:
    """The port ``mlflow ui`` listens on when started without ``--port``: ``$MLFLOW_PORT`` or 5000.

    A value that is not a port number is ignored (5000), as nnlab only prints it."""
    value = os.environ.get("MLFLOW_PORT", "").strip()
    return int(value) if value.isdigit() and 0 < int(value) < 65536 else DEFAULT_UI_PORT


def ui_command(shown_uri: str, port: int | None = None) -> str:
    """``mlflow ui --backend-store-uri URI`` (plus ``--port N`` when not 5000)."""
    port = ui_port() if port is None else port
    return f"mlflow ui --backend-store-uri {shown_uri}" + (f" --port {port}" if port != DEFAULT_UI_PORT else "")


def ui_base(port: int | None = None) -> str:
    """``http://127.0.0.1:PORT`` of a local ``mlflow ui``."""
    return f"http://127.0.0.1:{ui_port() if port is None else port}"


def lock_path(db: Path) -> Path:
    """Where the lock serialising a sqlite store's first opening lives: the temporary folder, named by
    the database's absolute path (one lock per store and machine), never beside the database,
    where it would show in ``git status`` and in the user's folder."""
    digest = hashlib.sha256(str(Path(db).resolve()).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"nnlab-locks-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / f"{Path(db).name}-{digest}.lock"


# --- the saved view -------------------------------------------------------------------------------
def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"


def view_state(params: Iterable[str] = VIEW_PARAMS, metrics: Iterable[str] = VIEW_METRICS) -> dict[str, Any]:
    """The runs page's state in the MLflow UI's own shape: the table's columns (metrics, then params),
    best ``test_acc`` first. (Chart panels cannot be chosen this way: MLflow 3.17 regenerates its
    chart sections, one per metric prefix, over any ``compareRunCharts`` a shared view carries.)"""
    return {"orderByKey": _column("metrics", "test_acc"), "orderByAsc": False,
            "selectedColumns": [*(_column("metrics", m) for m in metrics), *(_column("params", p) for p in params)]}


def view_tag(state: dict[str, Any] | None = None) -> tuple[str, str]:
    """(experiment tag key, value) of nnlab's shared view: the state as plain JSON, the form the UI
    applies in full when a link carries ``viewStateShareKey`` (MLflow 3.17's named "saved view"
    envelope ``{name, createdAt, state}`` is listed in the Views menu but opened from a link it
    applied the sort order only, not the columns)."""
    return SHARED_VIEW_PREFIX + VIEW_KEY, json.dumps(view_state() if state is None else state)


def view_query() -> str:
    """The runs page's URL parameter that opens nnlab's saved view. The link must carry no sort or
    filter parameter (``orderByKey``, ``searchFilter``, ...): with one, the UI ignores the view."""
    return f"viewStateShareKey={quote(VIEW_KEY)}"


# --- the parent run's description -----------------------------------------------------------------
def artifact_path(experiment_id: str, run_id: str, path: str) -> str:
    """The UI's address (after the server) of one artifact of a run: the run page's Artifacts tab
    opened on ``path`` (MLflow 3.x: ``#/experiments/E/runs/R/artifacts/PATH``)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}/artifacts/{quote(path)}?workflowType=machine_learning"


def report_description(experiment_id: str, run_id: str, report: str = "report/index.html") -> str:
    """Markdown for the parent run's description (``mlflow.note.content``): a link to its report,
    relative to the UI's own address so it works on any host and port."""
    return (f"Sweep report: [{report}]({artifact_path(experiment_id, run_id, report)}) "
            f"(figures and tables of this sweep; also under Artifacts → `{report.split('/')[0]}/`).")


def missing_view(experiment_tags: dict[str, str]) -> dict[str, str]:
    """The experiment tags to add so that nnlab's saved view exists: {} when it does (a view the
    user changed in the UI is theirs and stays)."""
    key, value = view_tag()
    return {} if key in experiment_tags else {key: value}
