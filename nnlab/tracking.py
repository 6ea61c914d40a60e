"""MLflow only: where runs go, a run's lifecycle, batched metric logging, artifacts.

The tracker only records: every number it logs was computed by ``nnlab.core``. Metrics are
buffered and sent with ``MlflowClient.log_batch`` at most every ``flush_seconds`` (one sqlite
transaction instead of one per value), so a 100-epoch run costs a few dozen writes yet stays live
in the UI. A run is closed on every path out of it: FINISHED, or FAILED with an ``nnlab.failure``
tag (``diverged`` + ``nnlab.failure_epoch``, else the exception's class, ``KeyboardInterrupt``
included).

Tracking URI precedence: an explicit ``tracking.uri`` > ``$MLFLOW_TRACKING_URI`` >
``sqlite:///mlflow.db`` in the current directory (MLflow 3's own default file).
"""
from __future__ import annotations

import contextlib
import functools
import getpass
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from nnlab.signals import signal_of


DEFAULT_URI = "sqlite:///mlflow.db"
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # MLflow 3 UI: open on training runs
# MLflow 3.17's UI chooses its navigation (GenAI or model training) from this URL parameter, else from
# the browser's last choice in the sidebar switch (GenAI by default); it does not read the experiment's
# mlflow.experimentKind tag. So every link nnlab prints carries it.
UI_WORKFLOW = "workflowType=machine_learning"
UI_BEST_FIRST = "orderByKey=metrics.%60test_acc%60&orderByAsc=false"  # runs table sorted best first
PARENT_TAG = "mlflow.parentRunId"
FAILURE_TAG = "nnlab.failure"
HOST_TAG, PID_TAG = "nnlab.host", "nnlab.pid"
ROLE_TAG = "nnlab.role"  # "sweep" on a sweep's parent run
_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100  # MLflow's per-log_batch limits


# --- where --------------------------------------------------------------------------------------
def resolve_uri(explicit: str | None = None, base: str | Path | None = None) -> str:
    """``tracking.uri`` > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///mlflow.db``; a relative sqlite path is
    made absolute against ``base`` (the directory the command was run from; default: the cwd)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    path = sqlite_path(uri, base)
    return f"sqlite:///{path}" if path is not None else uri


def sqlite_path(uri: str, base: str | Path | None = None) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri[len("sqlite:///"):].split("?", 1)[0]).expanduser()
    return (Path(base or Path.cwd()) / path).resolve()


def ui_path(experiment_id: str, run_id: str | None = None) -> str:
    """The UI's address (after the server) of an experiment's runs, best ``test_acc`` first, or of one
    run, both in the model-training navigation: ``#/experiments/1/runs?workflowType=machine_learning&...``."""
    if run_id is not None:
        return f"#/experiments/{experiment_id}/runs/{run_id}?{UI_WORKFLOW}"
    return f"#/experiments/{experiment_id}/runs?{UI_WORKFLOW}&{UI_BEST_FIRST}"


def ui_hint(uri: str, experiment_id: str) -> str:
    """The command that opens the MLflow UI on this store, and the link to the experiment's runs."""
    runs = ui_path(experiment_id)
    if uri.startswith(("http://", "https://")):
        return f"MLflow runs: {uri.rstrip('/')}/{runs}"
    shown = uri
    path = sqlite_path(uri)
    if path is not None:
        try:
            shown = f"sqlite:///{path.relative_to(Path.cwd())}"
        except ValueError:
            pass
    return (f"Open the MLflow UI:  mlflow ui --backend-store-uri {shown}\n"
            f"            then:  http://127.0.0.1:5000/{runs}")


@functools.lru_cache(maxsize=4)
def git_tags(here: Path = Path(__file__).resolve().parent) -> dict[str, str]:
    """The commit of the checkout holding ``here`` (nnlab's own), and whether it has local changes.

    Empty outside a git repository or without git: a missing commit never fails a run.
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return {}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit.stdout.strip(), "nnlab.git_dirty": str(bool(dirty.stdout.strip()))}


def process_tags() -> dict[str, str]:
    """Which process owns a RUNNING run (``nnlab.host``, ``nnlab.pid``): how a later command tells a
    run still being written from one whose process is gone (``python -m nnlab.runs clean``)."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no USER/LOGNAME and no passwd entry (some containers)
        return "unknown"


def failure_tags(error: BaseException) -> dict[str, str]:
    """Why a run failed: ``diverged`` (+ epoch) for a NaN/inf loss, ``SIGINT``/``SIGTERM`` for an
    interrupt, else the exception's class."""
    from nnlab.core import DivergenceError

    message = (str(error).splitlines() or [""])[0][:500]
    if isinstance(error, DivergenceError):
        return {FAILURE_TAG: "diverged", "nnlab.failure_epoch": str(error.epoch), "nnlab.failure_message": message}
    signum = signal_of(error)
    if signum is not None:
        return {FAILURE_TAG: signal.Signals(signum).name, "nnlab.failure_message": message or "interrupted"}
    return {FAILURE_TAG: type(error).__name__, "nnlab.failure_message": message}


def end_status(error: BaseException | None) -> str:
    """FINISHED; KILLED when a signal stopped the run (it did not fail: it was stopped); else FAILED."""
    if error is None:
        return "FINISHED"
    return "KILLED" if signal_of(error) is not None else "FAILED"


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while MLflow writes; deliver them as soon as the write is done.

    An interrupt raised inside SQLAlchemy's transaction on a sqlite store leaves that connection
    holding the database's write lock, and the next write (the run's FAILED status) then waits on
    it for ever. Main thread only (Python delivers signals there); elsewhere a plain block.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler is not None:  # None: installed outside Python, leave it alone
            previous[signum] = handler
            signal.signal(signum, lambda number, frame: held.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)  # now handled as usual (KeyboardInterrupt, ...)


# --- one run ------------------------------------------------------------------------------------
class RunLogger:
    """One MLflow run: buffered params, tags and metrics, artifacts; a context manager that always
    closes it. Everything buffered goes out in one ``log_batch`` per ``flush_seconds`` (and at close)."""

    def __init__(self, client: Any, run_id: str, flush_seconds: float = 1.0):
        self.client, self.run_id, self.flush_seconds = client, run_id, flush_seconds
        self._metrics: list = []
        self._params: list = []
        self._tags: list = []
        self._last_flush = time.monotonic()
        self.status: str = "RUNNING"

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self._params.extend(Param(k, str(v)) for k, v in params.items())

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._tags.extend(RunTag(k, str(v)) for k, v in tags.items())

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer one step's metrics; send the buffers when ``flush_seconds`` have passed."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Send everything buffered, in as few ``log_batch`` calls as MLflow's limits allow."""
        metrics, params, tags = self._metrics, self._params, self._tags
        self._metrics, self._params, self._tags = [], [], []
        while metrics or params or tags:
            with uninterrupted():
                self.client.log_batch(self.run_id, metrics=metrics[:_MAX_METRICS], params=params[:_MAX_PARAMS],
                                      tags=tags[:_MAX_TAGS])
            metrics, params, tags = metrics[_MAX_METRICS:], params[_MAX_PARAMS:], tags[_MAX_TAGS:]
        self._last_flush = time.monotonic()

    def log_inputs(self, datasets: list) -> None:
        """Record ``mlflow.entities.DatasetInput``s (see :func:`dataset_inputs`): the runs table's
        Dataset column and its ``dataset.name`` / ``dataset.digest`` filters."""
        with uninterrupted():
            self.client.log_inputs(self.run_id, datasets=datasets)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.exists():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def close(self, error: BaseException | None = None) -> None:
        """Flush, then FINISHED, or KILLED / FAILED with the reason tags. Idempotent."""
        if self.status != "RUNNING":
            return
        self.status = end_status(error)
        try:
            if error is not None:
                self.set_tags(failure_tags(error))
            self.flush()
        finally:
            with uninterrupted():
                self.client.set_terminated(self.run_id, status=self.status)

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None:
            exc.nnlab_run_id = self.run_id  # the run existed (and is now closed): for the one-line report
        self.close(exc)
        return False


# --- what a run trained on -----------------------------------------------------------------------
DATASET_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}  # mlflow.data.context


def dataset_inputs(name: str, splits: Mapping[str, tuple[Any, Any]], source: Mapping[str, str]) -> list:
    """One MLflow dataset input per split: ``name``, a digest of the split's arrays (features
    (N, n_features) and labels (N,), as the model sees them), its shapes in the profile, and the
    split as ``mlflow.data.context`` (``training``, ``validation``, ``testing``). ``source``: how
    the data was made (``load_dataset``'s arguments), shown as the dataset's code source."""
    import mlflow.data
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for split, (x, y) in splits.items():
        dataset = mlflow.data.from_numpy(x, source=CodeDatasetSource(dict(source)), targets=y, name=name)
        context = DATASET_CONTEXTS.get(split, split)
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    return inputs


@functools.lru_cache(maxsize=8)
def _client(uri: str) -> Any:
    # one client per store and process: creating one costs ~50 ms (store set-up, schema check),
    # which an in-process sweep would otherwise pay for every job
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


@functools.lru_cache(maxsize=8)
def _sweep_parent(uri: str, experiment_id: str, sweep_id: str) -> str | None:
    from mlflow.entities import ViewType

    runs = _client(uri).search_runs([experiment_id], f"tags.`{ROLE_TAG}` = 'sweep' and tags.sweep_id = '{sweep_id}'",
                                    run_view_type=ViewType.ALL, max_results=1)
    return runs[0].info.run_id if runs else None


class Tracker:
    """An MLflow store (by URI) and the experiments and runs nnlab creates in it."""

    _experiments: dict[tuple[str, str], str] = {}  # (uri, name) -> id, known to exist in this process

    def __init__(self, uri: str | None = None, base: str | Path | None = None):
        self.uri = resolve_uri(uri, base)
        self.client = _client(self.uri)

    def _artifact_location(self, experiment: str) -> str | None:
        # next to the sqlite file (not in whatever directory the process runs from)
        path = sqlite_path(self.uri)
        if path is None:
            return None
        return (path.parent / "mlartifacts" / re.sub(r"[^\w.-]+", "_", experiment)).as_uri()

    def experiment_id(self, name: str) -> str:
        """Get or create the experiment (tagged as model training); creating the store on first use."""
        key = (self.uri, name)
        if key not in self._experiments:
            self._experiments[key] = self._get_or_create_experiment(name)
        return self._experiments[key]

    def _get_or_create_experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                with uninterrupted():
                    return self.client.create_experiment(name, artifact_location=self._artifact_location(name),
                                                         tags=dict([EXPERIMENT_KIND]))
            except MlflowException as err:  # another process created it in between
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise err
        if experiment.lifecycle_stage == "deleted":
            raise ValueError(f"MLflow experiment {name!r} is deleted in {self.uri}; restore it "
                             f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) "
                             "or choose another tracking.experiment")
        if experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
            self.client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
        return experiment.experiment_id

    def start_run(self, experiment_id: str, name: str, tags: Mapping[str, Any] | None = None,
                  parent_id: str | None = None, flush_seconds: float = 1.0) -> RunLogger:
        """Create a RUNNING run (a child of ``parent_id`` if given) with the standard context tags."""
        from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

        base = {MLFLOW_SOURCE_NAME: "nnlab.run", MLFLOW_SOURCE_TYPE: "LOCAL",
                MLFLOW_USER: _user(), **git_tags(), **process_tags()}
        if parent_id:
            base[PARENT_TAG] = parent_id
        tags = {**base, **{k: str(v) for k, v in (tags or {}).items()}}
        with uninterrupted():
            run = self.client.create_run(experiment_id, run_name=name, tags=tags)
        return RunLogger(self.client, run.info.run_id, flush_seconds)

    def sweep_parent(self, experiment_id: str, sweep_id: str) -> str | None:
        """The id of sweep ``sweep_id``'s parent run (looked up once per process), or None."""
        return _sweep_parent(self.uri, experiment_id, sweep_id)

    def children(self, experiment_id: str, parent_id: str) -> list:
        """All child runs of a parent (any status)."""
        return self.search(experiment_id, f"tags.`{PARENT_TAG}` = '{parent_id}'")

    def search(self, experiment_id: str, filter_string: str = "", max_results: int | None = None) -> list:
        """Every run of the experiment matching ``filter_string`` (any status), newest first."""
        from mlflow.entities import ViewType

        runs, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], filter_string, run_view_type=ViewType.ALL,
                                           max_results=min(max_results or 1000, 1000), page_token=token,
                                           order_by=["attributes.start_time DESC"])
            runs.extend(page)
            token = page.token
            if not token or (max_results is not None and len(runs) >= max_results):
                return runs

    def reopen(self, run_id: str, flush_seconds: float = 1.0) -> RunLogger:
        """Set a closed (or abandoned) run RUNNING again and return its logger: a resumed sweep's parent."""
        with uninterrupted():
            self.client.update_run(run_id, status="RUNNING")
            self.client.log_batch(run_id, tags=[_tag(k, v) for k, v in process_tags().items()])
        return RunLogger(self.client, run_id, flush_seconds)

    def mark_ended(self, run_id: str, status: str, reason: str) -> None:
        """Close a run some other process left RUNNING: ``status`` (KILLED/FAILED) and the reason tag."""
        with uninterrupted():
            self.client.set_tag(run_id, FAILURE_TAG, reason)
            self.client.set_terminated(run_id, status=status)


def _tag(key: str, value: Any):
    from mlflow.entities import RunTag

    return RunTag(key, str(value))
