"""MLflow: where runs go, their lifecycle, batched metric logging, and one parent run per sweep.

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

import atexit
import contextlib
import functools
import getpass
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

DEFAULT_URI = "sqlite:///mlflow.db"
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # MLflow 3 UI: open on training runs
# MLflow 3.17's UI chooses its navigation (GenAI or model training) from this URL parameter, else from
# the browser's last choice in the sidebar switch (GenAI by default); it does not read the experiment's
# mlflow.experimentKind tag. So every link nnlab prints carries it.
UI_WORKFLOW = "workflowType=machine_learning"
UI_BEST_FIRST = "orderByKey=metrics.%60test_acc%60&orderByAsc=false"  # runs table sorted best first
PARENT_TAG = "mlflow.parentRunId"
FAILURE_TAG = "nnlab.failure"
# how a sweep's launching process tells its jobs (in-process or joblib workers) where they belong
ENV_PARENT, ENV_SWEEP_ID, ENV_SWEEP_SIZE = "NNLAB_PARENT_RUN_ID", "NNLAB_SWEEP_ID", "NNLAB_SWEEP_SIZE"
ENV_SWEEP_KEYS = "NNLAB_SWEEP_KEYS"  # the keys the sweep varies (they go into the run names)
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


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no USER/LOGNAME and no passwd entry (some containers)
        return "unknown"


def failure_tags(error: BaseException) -> dict[str, str]:
    """Why a run failed: ``diverged`` (+ epoch) for a NaN/inf loss, else the exception's class."""
    from nnlab.core import DivergenceError

    message = (str(error).splitlines() or [""])[0][:500]
    if isinstance(error, DivergenceError):
        return {FAILURE_TAG: "diverged", "nnlab.failure_epoch": str(error.epoch), "nnlab.failure_message": message}
    return {FAILURE_TAG: type(error).__name__, "nnlab.failure_message": message}


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
        """Flush, then FINISHED, or FAILED with the reason tags. Idempotent."""
        if self.status != "RUNNING":
            return
        self.status = "FAILED" if error is not None else "FINISHED"
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
    runs = _client(uri).search_runs([experiment_id], f"attributes.run_name = '{sweep_run_name(sweep_id)}'",
                                    max_results=1)
    return runs[0].info.run_id if runs else None


def sweep_run_name(sweep_id: str) -> str:
    return f"sweep-{sweep_id}"


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
                MLFLOW_USER: _user(), **git_tags()}
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
        from mlflow.entities import ViewType

        runs, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}'",
                                           run_view_type=ViewType.ALL, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs


# --- a sweep: Hydra callback in the launching process --------------------------------------------
class JobsFailed(RuntimeError):
    """Some jobs of a sweep failed (the parent run's ``nnlab.failure`` tag)."""


class SweepAborted(RuntimeError):
    """The sweep stopped before its end (Ctrl-C, or an error raised through Hydra)."""


class SweepCallback(Callback):
    """One MLflow parent run per multirun; jobs (in-process or joblib workers) become its children.

    ``on_multirun_start`` validates every job first (a refused config creates no run), then
    creates the store, the experiment and the parent run *before* any worker starts (parallel
    first-time schema creation on one sqlite file is a known MLflow race). ``on_multirun_end`` —
    or, when a job raises through Hydra or Ctrl-C stops the sweep, an ``atexit`` hook — closes the
    parent: FINISHED if every child finished, else FAILED; children a killed worker left RUNNING are
    marked FAILED (``nnlab.failure=interrupted``). A sweep with failed jobs still runs every job,
    then exits with status 1.
    """

    def __init__(self) -> None:
        self.tracker: Tracker | None = None
        self.parent: RunLogger | None = None
        self.experiment_id = ""
        self.sweep_dir: Path | None = None
        self.n_jobs: int | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exceptions into warnings and carries on: so exit here explicitly
        from hydra.errors import HydraException

        try:
            jobs, configs, axes = _checked_jobs(config)
        except HydraException:
            return  # e.g. activation=relu,foo: Hydra's sweeper reports it (with the options) before any job
        from nnlab.workers import prestart, uses_joblib

        _check_data(configs or [config], load=not uses_joblib(config))
        self.n_jobs = len(jobs) if jobs is not None else None
        sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        size = str(self.n_jobs) if self.n_jobs is not None else "?"
        # set before any worker starts: workers inherit the environment they were spawned with
        os.environ.update({ENV_SWEEP_ID: sweep_id, ENV_SWEEP_KEYS: ",".join(axes), ENV_SWEEP_SIZE: size})
        warming = prestart(config)  # joblib workers start and import while the store opens
        try:
            self._open_experiment(config)
        finally:
            if warming is not None:
                warming.join()
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        tags = {"sweep_id": sweep_id, "overrides": " ".join(config.hydra.overrides.task),
                "nnlab.sweep_axes": " ".join(axes), "nnlab.sweep_dir": str(self.sweep_dir), "nnlab.jobs": size}
        self.parent = self.tracker.start_run(self.experiment_id, sweep_run_name(sweep_id), tags)
        # in-process jobs read the parent's id from here; prestarted workers look it up by name
        os.environ[ENV_PARENT] = self.parent.run_id
        atexit.register(self.close, aborted=True)

    def _open_experiment(self, config: DictConfig) -> None:
        """Create the store and the experiment here, before any worker exists (or exit with one line)."""
        try:
            self.tracker = Tracker(config.tracking.uri)
            self.experiment_id = self.tracker.experiment_id(config.tracking.experiment)
        except Exception as err:
            sys.stderr.write(f"nnlab: cannot use the MLflow store {resolve_uri(config.tracking.uri)}: "
                             f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}\n")
            sys.exit(1)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from nnlab.workers import stop, uses_joblib

        if self.parent is not None and uses_joblib(config):
            stop()  # every job has returned: release the worker processes before the summary
        failed = self.close()
        if failed:
            sys.exit(1)

    def close(self, aborted: bool = False) -> int:
        """Close the parent once; print the sweep's summary and the UI hint. Returns #failed jobs."""
        if self.parent is None or self.parent.status != "RUNNING":
            return 0
        for key in (ENV_PARENT, ENV_SWEEP_ID, ENV_SWEEP_SIZE, ENV_SWEEP_KEYS):
            os.environ.pop(key, None)
        children = self.tracker.children(self.experiment_id, self.parent.run_id)
        for run in children:
            if run.info.status == "RUNNING":  # its worker was killed before it could close it
                with uninterrupted():
                    self.tracker.client.set_tag(run.info.run_id, FAILURE_TAG, "interrupted")
                    self.tracker.client.set_terminated(run.info.run_id, status="FAILED")
        finished = [r for r in children if r.info.status == "FINISHED"]
        failed = [r for r in children if r.info.status != "FINISHED"]
        # jobs that failed before their run existed (e.g. missing data files) leave no run: count them
        n_failed = max(len(failed), self.n_jobs - len(finished)) if self.n_jobs is not None else len(failed)
        self.parent.set_tags({"nnlab.jobs_finished": len(finished), "nnlab.jobs_failed": n_failed})
        if self.sweep_dir is not None:
            self.parent.log_artifact(self.sweep_dir / "multirun.yaml")
        error = SweepAborted("the sweep stopped before all jobs ran") if aborted else (
            JobsFailed(f"{n_failed} of {len(finished) + n_failed} jobs failed") if n_failed else None)
        self.parent.close(error)
        print(sweep_summary(self.parent.run_id, finished, failed, n_failed, aborted), file=sys.stderr)
        print(ui_hint(self.tracker.uri, self.experiment_id), file=sys.stderr)
        return n_failed


def _checked_jobs(config: DictConfig) -> tuple[list | None, list | None, list[str]]:
    """(every job's overrides, their configs, the keys the sweep varies); exits with one line on a
    refused config."""
    from nnlab.config import ConfigError, sweep_jobs, validate, varying_keys

    try:
        plan = sweep_jobs(config)  # None for sweepers other than the basic one
        if plan is None:
            validate(config)  # at least the keys no sweep changes (each job validates itself too)
            return None, None, []
    except ConfigError as err:
        sys.stderr.write(f"nnlab: {err} -- no run was created\n")
        sys.exit(2)
    return plan[0], plan[1], varying_keys(plan[0])


def _check_data(configs: list[DictConfig], load: bool) -> None:
    """Every dataset the sweep uses is there, before any run exists (else one line and exit 2).

    ``load``: in-process jobs share this process's dataset cache, so load (and split) each dataset
    here, once; parallel workers load their own, so only check the files (no scikit-learn import).
    """
    from nnlab.config import dataset_kwargs
    from nnlab.data import check_dataset

    seen: set[tuple] = set()
    for cfg in configs:
        kwargs = dataset_kwargs(cfg)
        key = tuple(sorted((k, str(v)) for k, v in kwargs.items()))
        if key in seen:
            continue
        seen.add(key)
        try:
            if load:
                from nnlab.run import load_data

                load_data(cfg)  # checks, then loads into the cache the jobs read
            else:
                check_dataset(**kwargs)
        except (OSError, ValueError) as err:
            sys.stderr.write(f"nnlab: dataset={kwargs['name']} cannot be loaded: {(str(err).splitlines() or [''])[0]}"
                             " -- no run was created\n")
            sys.exit(2)


def sweep_summary(parent_id: str, finished: list, failed: list, n_failed: int, aborted: bool = False) -> str:
    """A few lines: counts, the best finished run, and each failed run with its reason."""
    state = "aborted" if aborted else "done"
    lines = [f"sweep {state}: {len(finished)} finished, {n_failed} failed (parent run {parent_id})"]
    scored = [r for r in finished if "test_acc" in r.data.metrics]
    if scored:
        best = max(scored, key=lambda r: r.data.metrics["test_acc"])
        lines.append(f"  best: {best.info.run_name}  test_acc={best.data.metrics['test_acc']:.4f}")
    for run in failed:
        tags = run.data.tags
        why = tags.get(FAILURE_TAG, "interrupted")
        if why == "diverged":
            why += f" at epoch {tags.get('nnlab.failure_epoch', '?')}"
        lines.append(f"  FAILED {run.info.run_name}: {why}")
    if n_failed > len(failed):
        lines.append(f"  {n_failed - len(failed)} job(s) failed before their run was created: see the log above")
    return "\n".join(lines)


def job_context() -> dict[str, Any]:
    """What Hydra knows about the current job (empty when ``train`` is called without Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    output = Path(hc.runtime.output_dir) / hc.output_subdir if hc.output_subdir else None
    return {
        "cwd": hc.runtime.cwd,  # where the command ran: ./mlflow.db is there even with hydra.job.chdir=True
        "choices": OmegaConf.to_container(hc.runtime.choices),
        "overrides": list(hc.overrides.task),
        "multirun": multirun,
        "job_num": int(hc.job.num) if multirun else 0,
        "launcher": str(OmegaConf.select(hc, "launcher._target_", default="")),
        "hydra_dir": output,
        "parent_id": os.environ.get(ENV_PARENT) if multirun else None,
        "sweep_id": os.environ.get(ENV_SWEEP_ID) if multirun else None,
        "sweep_size": os.environ.get(ENV_SWEEP_SIZE, "?") if multirun else "1",
        "varying": [k for k in os.environ.get(ENV_SWEEP_KEYS, "").split(",") if k] if multirun else [],
    }
