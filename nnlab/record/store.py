"""MLflow only: where runs go, a run's lifecycle, batched metric logging, artifacts.

The tracker only records: every number it logs was computed by ``nnlab.core``. Metrics are
buffered and sent with ``MlflowClient.log_batch`` at most every ``flush_seconds`` (one sqlite
transaction instead of one per value), so a 100-epoch run costs a few dozen writes yet stays live
in the UI. On MLflow's SQL store the metric points go straight into its tables instead
(``nnlab.record.sql_metrics``: the same rows, at about a seventh of ``log_batch``'s CPU per value).
A run is closed on every path out of it: FINISHED, or FAILED with an ``nnlab.failure`` tag
(``diverged`` + ``nnlab.failure_epoch``, else the exception's class, ``KeyboardInterrupt`` included).

Tracking URI precedence: an explicit ``tracking.uri`` > ``$MLFLOW_TRACKING_URI`` >
``sqlite:///mlflow.db`` in the current directory (MLflow 3's own default file).

When the store fails (a server that went away, a full or read-only disk) training goes on: the
record is kept, retried with backoff, and, if the store cannot take it by the time the run closes,
written to the local spool (``nnlab.record.spool``) and replayed later by ``python -m nnlab.sync``.
A store that cannot be used when a command starts raises ``StoreUnavailable`` (one line).
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import getpass
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from nnlab._cli import first_import_without_collection
from nnlab.record.names import (EXPERIMENT_KIND, FAILURE_EPOCH_TAG, FAILURE_MESSAGE_TAG, FAILURE_TAG, GIT_COMMIT_TAG, GIT_DIRTY_TAG,
                                HOST_TAG, PARENT_TAG, PID_TAG, ROLE_TAG, RUN_UID_TAG, SWEEP_TAG)
from nnlab.record.signals import deliver, held, signal_of
from nnlab.record.ui import missing_view


DEFAULT_URI = "sqlite:///mlflow.db"
# MLflow 3.17's UI chooses its navigation (GenAI or model training) from this URL parameter, else from
# the browser's last choice in the sidebar switch (GenAI by default); it does not read the experiment's
# mlflow.experimentKind tag. So every link nnlab prints carries it.
UI_WORKFLOW = "workflowType=machine_learning"
UI_BEST_FIRST = "orderByKey=metrics.%60test_acc%60&orderByAsc=false"  # runs table sorted best first
_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100  # MLflow's per-log_batch limits
_SQL_POINTS = 20_000  # metric points per transaction written straight into a SQL store (sql_metrics)


# --- where --------------------------------------------------------------------------------------
def resolve_uri(explicit: str | None = None, base: str | Path | None = None) -> str:
    """``tracking.uri`` > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///mlflow.db``; a relative sqlite path is
    made absolute against ``base`` (the directory the command was run from; default: the cwd)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    path = sqlite_path(uri, base)
    return f"sqlite:///{path}" if path is not None else uri


VALID_URIS = ("sqlite:///path/to/file.db, http(s)://host:port, postgresql[+driver]://..., "
              "mysql[+driver]://..., mssql[+driver]://... (MLflow's file store, a plain path or file:, is not supported: "
              "use sqlite:///path)")
_SCHEMES = re.compile(r"^(sqlite|https?|postgresql|mysql|mssql)(\+\w+)?://")


def check_uri(uri: str) -> None:
    """Refuse a URI that is not a store nnlab records into (``BadStoreURI``, naming the valid kinds)."""
    if not _SCHEMES.match(uri) or (uri.startswith("sqlite") and not uri.startswith("sqlite:///")):
        raise BadStoreURI(uri)


def redact(uri: str) -> str:
    """The URI without its credentials (``http://user:token@host`` -> ``http://***@host``)."""
    return re.sub(r"//[^/@]+@", "//***@", uri)


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
    from nnlab.record.ui import view_query

    return f"#/experiments/{experiment_id}/runs?{UI_WORKFLOW}&{view_query()}"  # the view sorts best first


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
    from nnlab.record.ui import ui_base, ui_command

    return (f"Open the MLflow UI:  {ui_command(shown)}\n"
            f"            then:  {ui_base()}/{runs}")


@functools.lru_cache(maxsize=4)
def git_tags(here: Path = Path(__file__).resolve().parent) -> dict[str, str]:
    """The commit of the checkout holding ``here`` (nnlab's own), and whether it has local changes.

    Empty outside a git repository or without git: a missing commit never fails a run.
    """
    commands = (["git", "rev-parse", "HEAD"], ["git", "status", "--porcelain", "--untracked-files=no"])
    started: list[subprocess.Popen] = []
    try:
        # both at once: a run's start waits for one git process instead of two in a row
        for argv in commands:
            started.append(subprocess.Popen(argv, cwd=here, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                            text=True))
        commit, dirty = (process.communicate(timeout=5)[0] for process in started)
        if started[0].returncode != 0:
            return {}
    except (OSError, subprocess.SubprocessError):
        return {}
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()
    return {GIT_COMMIT_TAG: commit.strip(), GIT_DIRTY_TAG: str(bool(dirty.strip()))}


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
        return {FAILURE_TAG: "diverged", FAILURE_EPOCH_TAG: str(error.epoch), FAILURE_MESSAGE_TAG: message}
    signum = signal_of(error)
    if signum is not None:
        return {FAILURE_TAG: signal.Signals(signum).name, FAILURE_MESSAGE_TAG: message or "interrupted"}
    return {FAILURE_TAG: type(error).__name__, FAILURE_MESSAGE_TAG: message}


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
    pending: list[int] = []
    try:
        with held() as pending:
            yield
    finally:
        deliver(pending)  # now handled as usual (KeyboardInterrupt, ...), each once


# --- when the store fails -----------------------------------------------------------------------
class StoreUnavailable(RuntimeError):
    """The MLflow store cannot be used (unreachable, read-only, full, not a store). ``str()`` is one
    line naming the URI (credentials hidden) and the reason."""

    def __init__(self, uri: str, reason: str):
        self.uri, self.reason = uri, reason
        super().__init__(f"cannot use the MLflow store {redact(uri)}: {reason}")


class BadStoreURI(StoreUnavailable, ValueError):
    """``tracking.uri`` is not a kind of store nnlab can record into."""

    def __init__(self, uri: str):
        super().__init__(uri, f"not a tracking store URI; valid: {VALID_URIS}")


class RunSpooled(RuntimeError):
    """The run trained but the store could not take its record: it was written to the spool."""

    def __init__(self, name: str, folder: Path, spool_dir: Path, uri: str):
        self.folder = folder
        super().__init__(f"run {name} was not recorded in {redact(uri)}; it is in the spool {folder} "
                         f"(replay: python -m nnlab.sync {spool_dir} --uri {redact(uri)})")


def _reason(err: BaseException) -> str:
    """A short reason for a store error: MLflow's HTTP errors are a page long."""
    if isinstance(err, StoreUnavailable):
        return err.reason
    text = str(err)
    for needle, short in (("Connection refused", "connection refused"), ("timed out", "no answer in time"),
                          # the server went away in the middle of an answer
                          ("Connection broken", "connection lost"), ("Connection reset", "connection lost"),
                          ("RemoteDisconnected", "connection lost"),
                          ("Name or service not known", "unknown host"),
                          ("Failed to resolve", "unknown host"), ("disk is full", "disk full"),
                          ("readonly database", "read-only database"), ("Read-only file system", "read-only file system"),
                          ("unable to open database file", "cannot open the database file"),
                          ("file is not a database", "not an sqlite database")):
        if needle in text:
            return short
    first = (text.splitlines() or [""])[0]
    return f"{type(err).__name__}: {first[:200]}"


@dataclass(frozen=True)
class StoreSettings:
    """Where runs go and how hard to try the store (the ``tracking.*`` keys: this dataclass is their
    one definition; nnlab.spec derives the config schema from it)."""

    uri: str | None = None  # null -> $MLFLOW_TRACKING_URI -> sqlite:///mlflow.db in the directory the command runs from
    experiment: str = "nnlab"  # the MLflow experiment runs go to
    flush_seconds: float = 1.0  # buffered metrics reach MLflow at least this often (live UI)
    log_weights: bool = True  # trained weights as a weights.npz artifact
    offline: bool = False  # never contact a store: every run goes to the spool (replay with nnlab.sync)
    spool_dir: str | None = None  # null -> ./nnlab-spool in the directory the command runs from
    connect_timeout: float = 5.0  # seconds one HTTP request to a tracking server may take
    retries: int = 2  # HTTP retries of one request (connection errors, 5xx), with backoff
    retry_seconds: float = 30.0  # how long a closing run keeps retrying a failing store before spooling
    sweep_report: bool = True  # a sweep's report (nnlab.report) attached to its parent run


_HTTP_ENV = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")


def bound_http_requests(settings: StoreSettings) -> None:
    """Bound MLflow's HTTP requests (by default up to 7 retries of 120 s each, with backoff): set its
    environment variables, read at every request and inherited by worker processes."""
    import logging

    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # nnlab says it once, in one line
    os.environ.update({"MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(settings.connect_timeout))),
                       "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(settings.retries),
                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"})


@contextlib.contextmanager
def _single_attempt(on: bool) -> Iterator[None]:
    """While ``on``: one HTTP attempt per request (a store already known to be down is not retried
    inside a training step; the run retries it later, with its own backoff)."""
    key = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
    if not on:
        yield
        return
    before = os.environ.get(key)
    os.environ[key] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


@contextlib.contextmanager
def _quiet_store() -> Iterator[None]:
    """MLflow's sqlite store logs a page-long traceback for each failed write (a full disk, a
    read-only file) before raising; nnlab reports the failure itself, in one line."""
    import logging

    logger = logging.getLogger("mlflow.store.db.utils")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _warn(message: str) -> None:
    print(f"nnlab: {message}", file=sys.stderr, flush=True)


# --- one run ------------------------------------------------------------------------------------
def _now_ms() -> int:
    return int(time.time() * 1000)


class RunLogger:
    """One run: buffered params, tags and metrics, artifacts; a context manager that always closes it.

    Everything buffered goes out in one ``log_batch`` per ``flush_seconds`` (and at close). The run
    also keeps its whole record in memory (params, tags, every metric point), so that whatever the
    store does, the run ends in one of three ways: FINISHED in the store (only if its final flush
    succeeded), FAILED there with a reason tag, or written to the spool (``nnlab.record.spool``) when the
    store cannot take it — offline by design, or a store that went away.

    While the store fails, training goes on: each later flush makes one bounded attempt, spaced by
    a doubling backoff (1 s .. 60 s). At close the run retries for ``retry_seconds``, then spools.
    """

    def __init__(self, client: Any, run_id: str | None, flush_seconds: float = 1.0, *,
                 tracker: "Tracker | None" = None, experiment_id: str | None = None, experiment: str = "",
                 name: str = "", tags: Mapping[str, str] | None = None, parent_id: str | None = None,
                 uid: str | None = None):
        self.client, self.flush_seconds, self.tracker = client, flush_seconds, tracker
        self.uid = uid or uuid.uuid4().hex
        self.created = run_id is not None  # the run exists in the store
        self.run_id = run_id or self.uid  # the store's id, or (not created yet / offline) nnlab's own
        self.experiment_id, self.experiment, self.name, self.parent_id = experiment_id, experiment, name, parent_id
        self.start_time, self.end_time = _now_ms(), None
        self.status: str = "RUNNING"
        # the whole record (for the spool) and what the store has not received yet
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = dict(tags or {})
        self.metrics: list[tuple[str, float, int, int]] = []  # (key, value, timestamp ms, step)
        # what the store has not received yet, as positions in the record above (kept once)
        self._metrics_sent = 0
        self._params_unsent: list[str] = []
        self._tags_unsent: list[str] = []
        self._last_flush = time.monotonic()
        self.healthy = True
        self._delay, self._next_try = 0.0, 0.0
        self.spooled: Path | None = None
        self._writer = None
        self._sql: tuple | None = None  # (client, its SqlMetricWriter or None)
        self._staged = False  # artifacts waiting in the spool folder for the store to come back

    @property
    def offline(self) -> bool:
        return self.tracker is not None and self.tracker.offline

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = {k: str(v) for k, v in params.items()}
        self.params.update(items)
        self._params_unsent.extend(items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = {k: str(v) for k, v in tags.items()}
        self.tags.update(items)
        self._tags_unsent.extend(items)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer one step's metrics; send the buffers when ``flush_seconds`` have passed."""
        now, step = _now_ms(), int(step)
        self.metrics.extend((k, float(v), now, step) for k, v in metrics.items())
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> bool:
        """Send everything buffered (as few ``log_batch`` calls as MLflow's limits allow); True if
        the store has it all. A failing store is not retried before its backoff has passed."""
        self._last_flush = time.monotonic()
        if self.offline:
            self._write_spool("offline")
            return True
        if not self.healthy and time.monotonic() < self._next_try:
            return False
        return self._attempt()

    def _attempt(self) -> bool:
        try:
            with _single_attempt(not self.healthy), _quiet_store():
                if not self.created:
                    self._create()
                while self._metrics_sent < len(self.metrics) or self._params_unsent or self._tags_unsent:
                    if self._write_sql():
                        continue
                    metrics, params, tags = self._next_batch()
                    with uninterrupted():  # a held Ctrl-C is delivered after the buffers know what was sent
                        self.client.log_batch(self.run_id, metrics=metrics, params=params, tags=tags)
                        self._metrics_sent += len(metrics)
                        del self._params_unsent[:self._params_taken], self._tags_unsent[:self._tags_taken]
        except Exception as err:  # unreachable, full, read-only, locked: keep everything and go on
            self._failed(err)
            return False
        if not self.healthy:
            _warn(f"the MLflow store {redact(self.tracker.uri if self.tracker else '')} answers again; "
                  f"run {self.name} is up to date")
        self.healthy, self._delay = True, 0.0
        return True

    def _write_sql(self) -> bool:
        """Send the next unsent metric points straight into MLflow's SQL store (``nnlab.record.sql_metrics``:
        the rows ``log_batch`` writes, at about a seventh of its cost per value); False when there are none,
        the client is not nnlab's own on a SQL store, or the store already holds one of them (then
        ``log_batch``, which skips it, sends them)."""
        if self._metrics_sent >= len(self.metrics):
            return False
        if self._sql is None or self._sql[0] is not self.client:
            self._sql = (self.client, _sql_writer(self.client))
        writer = self._sql[1]
        if writer is None or _active_model():
            return False
        start = self._metrics_sent
        points = self.metrics[start:start + _SQL_POINTS]
        with uninterrupted():  # a held Ctrl-C is delivered after the buffers know what was sent
            if not writer.write(self.run_id, points):
                return False
            self._metrics_sent += len(points)
        return True

    def _next_batch(self) -> tuple[list, list, list]:
        """The next ``log_batch``'s entities (within MLflow's limits), from the unsent part of the record."""
        from mlflow.entities import Metric, Param, RunTag

        start = self._metrics_sent
        metrics = [Metric(k, v, t, s) for k, v, t, s in self.metrics[start:start + _MAX_METRICS]]
        params_keys = list(dict.fromkeys(self._params_unsent[:_MAX_PARAMS]))  # a key set twice: its last value
        tags_keys = list(dict.fromkeys(self._tags_unsent[:_MAX_TAGS]))
        self._params_taken, self._tags_taken = min(len(self._params_unsent), _MAX_PARAMS), min(len(self._tags_unsent), _MAX_TAGS)
        return (metrics, [Param(k, self.params[k]) for k in params_keys], [RunTag(k, self.tags[k]) for k in tags_keys])

    def _failed(self, err: BaseException) -> None:
        if self.healthy:
            _warn(f"the MLflow store {redact(self.tracker.uri if self.tracker else '')} failed ({_reason(err)}); "
                  f"run {self.name} keeps training, its record is kept and retried")
        self.healthy = False
        self.last_error = _reason(err)
        self._delay = min(60.0, max(1.0, 2 * self._delay))
        self._next_try = time.monotonic() + self._delay

    def _create(self) -> None:
        """Create the run in the store (when the store was down at the run's start)."""
        if self.experiment_id is None:
            self.experiment_id = self.tracker.experiment_id(self.experiment)
        tags = dict(self.tags)
        if self.parent_id is None and tags.get(SWEEP_TAG):
            self.parent_id = self.tracker.sweep_parent(self.experiment_id, tags[SWEEP_TAG])
        if self.parent_id:
            tags[PARENT_TAG] = self.parent_id
        with uninterrupted():
            run = self.client.create_run(self.experiment_id, start_time=self.start_time, run_name=self.name, tags=tags)
            self.run_id, self.created = run.info.run_id, True
            self._tags_unsent = [k for k in self._tags_unsent if k not in tags]  # sent with the run

    def log_inputs(self, datasets: list) -> None:
        """Record ``mlflow.entities.DatasetInput``s (see :func:`dataset_inputs`): the runs table's
        Dataset column and its ``dataset.name`` / ``dataset.digest`` filters. Metadata, not the record:
        not spooled, and a store that fails here only costs the Dataset column."""
        if self.offline or not self.created or not self.healthy:
            return
        try:
            with _quiet_store():
                self.client.log_inputs(self.run_id, datasets=datasets)
        except Exception as err:
            _warn(f"run {self.name}: its dataset inputs were not recorded ({_reason(err)})")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file or a folder (its content) into the run's artifacts; kept in the spool folder if the
        store cannot take it now (sent at close if the store is back, else replayed by nnlab.sync)."""
        path = Path(path)
        if not path.exists():
            return
        if not self.offline and self.healthy and self.created:
            try:
                if path.is_dir():
                    self.client.log_artifacts(self.run_id, str(path), artifact_path)
                else:
                    self.client.log_artifact(self.run_id, str(path), artifact_path)
                return
            except Exception as err:
                self._failed(err)
        self._spool_writer().add_artifact(path, artifact_path)
        self._staged = True

    def close(self, error: BaseException | None = None) -> None:
        """Flush, then FINISHED; or KILLED / FAILED with the reason tags; or, when the store cannot take the
        record within ``retry_seconds``, the spool (``self.spooled``). Idempotent."""
        if self.status != "RUNNING":
            return
        self.status = end_status(error)
        if error is not None:
            self.set_tags(failure_tags(error))
        self.end_time = _now_ms()
        if self.offline:
            try:
                self.spooled = self._write_spool("offline")
            except OSError as err:
                _warn(f"run {self.name}: the spool {self.tracker.spool_dir} cannot be written "
                      f"({err.strerror or err}): its record is lost")
            return
        stopping = isinstance(error, (KeyboardInterrupt, SystemExit))  # one attempt: the user waits
        recorded, interrupt = False, None
        try:
            recorded = self._flush_until(time.monotonic() + (0.0 if stopping else self._retry_seconds()))
            recorded = recorded and self._send_staged() and self._terminate()
        except KeyboardInterrupt as err:
            # Ctrl-C while waiting for the store, or a signal held during a write and delivered right
            # after it (the write went through): one last attempt, as a stopping run gets, signals
            # held; the record is complete (its status unchanged) or spooled, and the interrupt goes on
            interrupt = err
            with held(), _single_attempt(True):
                recorded = self._attempt() and self._send_staged() and self._terminate()
        if not recorded:
            self._fall_back_to_spool()
        if interrupt is not None:
            raise interrupt

    def _retry_seconds(self) -> float:
        return self.tracker.settings.retry_seconds if self.tracker is not None else 0.0

    def _flush_until(self, deadline: float) -> bool:
        """Attempt until the store takes the record or ``deadline`` passes (the last attempt at it);
        at most 10 s apart, so a server that is back (its first answers can be slow) is found."""
        told = False
        while True:
            if self._attempt():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if not told:
                _warn(f"run {self.name}: retrying the store for up to {remaining:.0f} s before writing it to the spool")
                told = True
            time.sleep(min(self._delay, 10.0, remaining))

    def _send_staged(self) -> bool:
        if not self._staged:
            return True
        folder = self._spool_writer().artifacts_dir()
        try:
            with _quiet_store():
                self.client.log_artifacts(self.run_id, str(folder))
        except Exception as err:
            self._failed(err)
            return False
        folder = self._spool_writer().folder
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()  # the spool itself, if nothing else is in it
        self._staged = False
        return True

    def _terminate(self) -> bool:
        try:
            with _single_attempt(not self.healthy), _quiet_store():
                self.client.set_terminated(self.run_id, status=self.status, end_time=self.end_time)
        except Exception as err:
            self._failed(err)
            return False
        return True

    def _fall_back_to_spool(self) -> None:
        """The store cannot take this run: write it to the spool, mark it FAILED in the store if the
        store still answers that much (never FINISHED with half a record), and say where it is."""
        uri = self.tracker.uri if self.tracker is not None else ""
        why = getattr(self, "last_error", "the store failed")
        try:
            self.spooled = self._write_spool(why)
        except OSError as err:
            _warn(f"run {self.name} could not be recorded in {redact(uri)} ({why}) and the spool "
                  f"could not be written either ({err.strerror or err}): its record is lost")
        if self.created:  # best effort, one attempt each
            for write in (lambda: self.client.set_tag(self.run_id, FAILURE_TAG, "not_recorded"),
                          lambda: self.client.set_terminated(self.run_id, status="FAILED")):
                try:
                    with _single_attempt(True), _quiet_store():
                        write()
                except Exception:
                    pass
        if self.spooled is not None:
            spool_dir = self.spooled.parent
            _warn(f"run {self.name} could not be recorded in {redact(uri)} ({why}); written to the spool "
                  f"{self.spooled} -- replay it with: python -m nnlab.sync {spool_dir} --uri {redact(uri)}")

    def _spool_writer(self):
        from nnlab.record.spool import SpoolWriter, default_dir

        if self._writer is None:
            spool_dir = self.tracker.spool_dir if self.tracker is not None else default_dir()
            self._writer = SpoolWriter(spool_dir, self.uid)
        return self._writer

    def _write_spool(self, reason: str) -> Path:
        from nnlab.record.spool import owner

        tags = dict(self.tags)
        if self.parent_id:
            tags[PARENT_TAG] = self.parent_id
        manifest = {"uid": self.uid, "experiment": self.experiment, "run_name": self.name, "status": self.status,
                    "start_time": self.start_time, "end_time": self.end_time, "parent": self.parent_id,
                    "sweep_id": self.tags.get(SWEEP_TAG), "reason": reason,
                    "store": {"uri": redact(self.tracker.uri) if self.tracker else None,
                              "run_id": self.run_id if self.created else None},
                    "owner": owner() if self.status == "RUNNING" else None}
        return self._spool_writer().write(manifest, self.params, tags, self.metrics)

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
# --- a store ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _schema_lock(uri: str) -> Iterator[None]:
    """Serialise opening a sqlite store across processes: MLflow creates (and migrates) the schema
    when it first opens a file, and two processes doing it at once collide (an alembic error)."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    from nnlab.record.ui import lock_path

    with open(lock_path(path), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check_sqlite(uri: str) -> None:
    """A sqlite store nnlab can write: its folder exists and is writable, and so is the file."""
    path = sqlite_path(uri)
    if path is None:
        return
    if not path.parent.is_dir():
        raise StoreUnavailable(uri, f"folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise StoreUnavailable(uri, f"{path if path.exists() else path.parent} is not writable")


@functools.lru_cache(maxsize=8)
def _client(uri: str) -> Any:
    # one client per store and process: creating one costs ~50 ms (store set-up, schema check),
    # which an in-process sweep would otherwise pay for every job. MLflow's first import (its store's
    # modules with it) leaves ~300k objects alive that are never garbage, and CPython walked them all in
    # five full collections of a one-epoch command (0.33 s of 1.86 s CPU; 0.04 s with the collector paused
    # and them frozen, docs/speed.md, start-up)
    with _schema_lock(uri), first_import_without_collection("mlflow"):
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        if sqlite_path(uri) is not None:
            client.search_experiments(max_results=1)  # the schema exists before the lock is released
    return GuardedClient(client)


class GuardedClient:
    """An ``MlflowClient`` whose every call -- reads included -- finishes before SIGINT/SIGTERM is
    acted on (``uninterrupted``), the one place the guard is applied to a single call (elsewhere
    ``uninterrupted`` only makes a few calls and their bookkeeping one step): an interrupt inside any SQLAlchemy transaction on a sqlite store,
    not only a write's, can leave the connection holding a lock that the run's closing writes then
    wait on, and fail. Each call is bounded (sqlite's busy timeout, ``tracking.connect_timeout``)."""

    def __init__(self, client: Any):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            with uninterrupted():
                return attr(*args, **kwargs)
        return guarded


# The MLflow releases whose SQL tables nnlab writes and reads directly were checked against: the metric rows
# ``SqlMetricWriter`` writes (row by row against log_batch, tests/test_sql_metrics.py) and the runs the report
# reads as columns (against search_runs, tests/test_analysis.py). Under another release both go through
# MLflow's API: slower, never different. After upgrading MLflow, run those tests and add its minor version.
SQL_WRITER_MLFLOW = ("3.17",)


def sql_tables_checked() -> bool:
    """The installed MLflow is one of ``SQL_WRITER_MLFLOW``."""
    import mlflow

    return ".".join(mlflow.__version__.split(".")[:2]) in SQL_WRITER_MLFLOW


def _sql_writer(client: Any) -> Any:
    """A ``SqlMetricWriter`` for nnlab's own client (``GuardedClient``) on MLflow's SQL store, else None:
    an HTTP store, any other client (a test's wrapper that watches ``log_batch``) or an MLflow release not
    in ``SQL_WRITER_MLFLOW`` goes through ``log_batch``."""
    if type(client) is not GuardedClient or not sql_tables_checked():
        return None
    store = getattr(getattr(client._client, "_tracking_client", None), "store", None)
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        from nnlab.record.sql_metrics import SqlMetricWriter
    except ImportError:  # pragma: no cover - an MLflow without its SQL store
        return None
    return SqlMetricWriter(store) if isinstance(store, SqlAlchemyStore) else None


def _active_model() -> bool:
    """Whether MLflow links metrics to an active logged model (``mlflow.set_active_model``): ``log_batch``
    then records them against it too, which the SQL writer does not."""
    try:
        from mlflow.tracking.fluent import get_active_model_id
    except ImportError:  # pragma: no cover
        return False
    return get_active_model_id() is not None


@functools.lru_cache(maxsize=8)
def _sweep_parent(uri: str, experiment_id: str, sweep_id: str) -> str | None:
    from mlflow.entities import ViewType

    runs = _client(uri).search_runs([experiment_id], f"tags.`{ROLE_TAG}` = 'sweep' and tags.sweep_id = '{sweep_id}'",
                                    run_view_type=ViewType.ALL, max_results=1)
    return runs[0].info.run_id if runs else None


class Tracker:
    """An MLflow store (by URI) and the experiments and runs nnlab creates in it; or, offline, the
    spool that stands in for it (``settings.offline``)."""

    _experiments: dict[tuple[str, str], str] = {}  # (uri, name) -> id, known to exist in this process

    def __init__(self, uri: str | None = None, base: str | Path | None = None,
                 settings: StoreSettings | None = None):
        from nnlab.record.spool import default_dir

        self.settings = settings or StoreSettings()
        self.offline = self.settings.offline
        self.uri = resolve_uri(uri, base)
        check_uri(self.uri)
        spool = self.settings.spool_dir
        self.spool_dir = (Path(base or Path.cwd()) / spool).resolve() if spool else default_dir(base)
        self._names: dict[str, str] = {}
        self.client = None
        if not self.offline:
            if self.uri.startswith(("http://", "https://")):
                bound_http_requests(self.settings)
            _check_sqlite(self.uri)
            try:
                self.client = _client(self.uri)
            except Exception as err:
                raise StoreUnavailable(self.uri, _reason(err)) from err

    @classmethod
    def from_settings(cls, settings: StoreSettings, base: str | Path | None = None) -> "Tracker":
        """The store (or spool) the settings name; ``base``: where a relative sqlite path or spool lives."""
        return cls(settings.uri, base, settings)

    def _artifact_location(self, experiment: str) -> str | None:
        # next to the sqlite file (not in whatever directory the process runs from)
        path = sqlite_path(self.uri)
        if path is None:
            return None
        return (path.parent / "mlartifacts" / re.sub(r"[^\w.-]+", "_", experiment)).as_uri()

    def experiment_id(self, name: str) -> str:
        """Get or create the experiment (tagged as model training); creating the store on first use.
        Offline: the name stands in for the id. Raises ``StoreUnavailable``."""
        if self.offline:
            self._names[name] = name
            return name
        key = (self.uri, name)
        if key not in self._experiments:
            try:
                with _quiet_store():
                    self._experiments[key] = self._get_or_create_experiment(name)
            except ValueError:
                raise
            except Exception as err:
                raise StoreUnavailable(self.uri, _reason(err)) from err
        self._names[self._experiments[key]] = name
        return self._experiments[key]

    def _get_or_create_experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self.client.create_experiment(name, artifact_location=self._artifact_location(name),
                                                     tags={**dict([EXPERIMENT_KIND]), **missing_view({})})
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
        for key, value in missing_view(experiment.tags).items():  # the UI's saved view (nnlab.record.ui)
            self.client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id

    def _base_tags(self, tags: Mapping[str, Any] | None, uid: str) -> dict[str, str]:
        from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

        base = {MLFLOW_SOURCE_NAME: "nnlab.run", MLFLOW_SOURCE_TYPE: "LOCAL", MLFLOW_USER: _user(),
                **git_tags(), **process_tags(), RUN_UID_TAG: uid}
        return {**base, **{k: str(v) for k, v in (tags or {}).items()}}

    def start_run(self, experiment_id: str, name: str, tags: Mapping[str, Any] | None = None,
                  parent_id: str | None = None, flush_seconds: float = 1.0) -> RunLogger:
        """Create a RUNNING run (a child of ``parent_id`` if given) with the standard context tags.
        Offline: a run in the spool (its ``run_id`` is its spool uid). Raises ``StoreUnavailable``."""
        uid = uuid.uuid4().hex
        tags = self._base_tags(tags, uid)
        experiment = self._names.get(experiment_id, experiment_id)
        common = dict(tracker=self, experiment_id=experiment_id, experiment=experiment, name=name, uid=uid)
        if self.offline:
            run = RunLogger(None, None, flush_seconds, tags=tags, parent_id=parent_id, **common)
            run.flush()  # the folder exists from the start
            return run
        created = dict(tags, **({PARENT_TAG: parent_id} if parent_id else {}))
        try:
            run = self.client.create_run(experiment_id, run_name=name, tags=created)
        except Exception as err:
            raise StoreUnavailable(self.uri, _reason(err)) from err
        return RunLogger(self.client, run.info.run_id, flush_seconds, tags=tags, parent_id=parent_id, **common)

    def open_run(self, experiment: str, name: str, tags: Mapping[str, Any] | None = None,
                 parent_id: str | None = None, flush_seconds: float = 1.0, spool_if_unreachable: bool = False
                 ) -> RunLogger:
        """A job's run: experiment (by name), the sweep's parent (by ``tags['sweep_id']`` if
        ``parent_id`` is unknown), the run. With ``spool_if_unreachable`` (a job of a sweep whose
        store answered at its start) a store that fails now does not stop the job: the run is
        created when the store is back, or spooled at close."""
        try:
            experiment_id = self.experiment_id(experiment)
            if parent_id is None and tags and tags.get(SWEEP_TAG):
                parent_id = self.sweep_parent(experiment_id, str(tags[SWEEP_TAG]))
            return self.start_run(experiment_id, name, tags, parent_id, flush_seconds)
        except StoreUnavailable as err:
            if not spool_if_unreachable:
                raise
            uid = uuid.uuid4().hex
            run = RunLogger(self.client, None, flush_seconds, tracker=self, experiment_id=None, experiment=experiment,
                            name=name, tags=self._base_tags(tags, uid), parent_id=parent_id, uid=uid)
            run._failed(err)
            return run

    def sweep_parent(self, experiment_id: str, sweep_id: str) -> str | None:
        """The id of sweep ``sweep_id``'s parent run (looked up once per process), or None."""
        if self.offline:
            from nnlab.record.spool import read_manifests

            return next((m["uid"] for m in read_manifests(self.spool_dir)
                         if m.get("sweep_id") == sweep_id and not m.get("parent")), None)  # the sweep's parent
        try:
            return _sweep_parent(self.uri, experiment_id, sweep_id)
        except Exception as err:
            raise StoreUnavailable(self.uri, _reason(err)) from err

    def children(self, experiment_id: str, parent_id: str) -> list:
        """All child runs of a parent (any status); offline, those in the spool (the same shape:
        ``.info.run_id/.run_name/.status``, ``.data.metrics/.tags/.params``)."""
        if self.offline:
            return spooled_children(self.spool_dir, parent_id)
        return self.search(experiment_id, f"tags.`{PARENT_TAG}` = '{parent_id}'")

    def search(self, experiment_id: str, filter_string: str = "", max_results: int | None = None) -> list:
        """Every run of the experiment matching ``filter_string`` (any status), newest first."""
        from mlflow.entities import ViewType

        runs, token = [], None
        while True:
            try:
                page = self.client.search_runs([experiment_id], filter_string, run_view_type=ViewType.ALL,
                                               max_results=min(max_results or 1000, 1000), page_token=token,
                                               order_by=["attributes.start_time DESC"])
            except Exception as err:
                raise StoreUnavailable(self.uri, _reason(err)) from err
            runs.extend(page)
            token = page.token
            if not token or (max_results is not None and len(runs) >= max_results):
                return runs

    def reopen(self, run_id: str, flush_seconds: float = 1.0) -> RunLogger:
        """Set a closed (or abandoned) run RUNNING again and return its logger: a resumed sweep's parent."""
        try:
            run = self.client.get_run(run_id)
            with uninterrupted():
                self.client.update_run(run_id, status="RUNNING")
                self.client.log_batch(run_id, tags=[_tag(k, v) for k, v in process_tags().items()])
        except Exception as err:
            raise StoreUnavailable(self.uri, _reason(err)) from err
        experiment = self._names.get(run.info.experiment_id, run.info.experiment_id)
        return RunLogger(self.client, run_id, flush_seconds, tracker=self, experiment_id=run.info.experiment_id,
                         experiment=experiment, name=run.info.run_name, tags=run.data.tags,
                         uid=run.data.tags.get(RUN_UID_TAG))

    def mark_ended(self, run_id: str, status: str, reason: str, tags: Mapping[str, Any] | None = None) -> None:
        """Close a run some other process left RUNNING: ``status`` (KILLED/FAILED), the reason tag and
        any further ``tags``, in one step."""
        with uninterrupted():
            self.client.log_batch(run_id, tags=[_tag(k, v) for k, v in {**(tags or {}), FAILURE_TAG: reason}.items()])
            self.client.set_terminated(run_id, status=status)

    def where(self, experiment_id: str) -> str:
        """Where to look at the runs: the UI hint, or (offline) the spool and the command that replays it."""
        if self.offline:
            return (f"Runs are in the spool {self.spool_dir} (tracking.offline=true); record them with:\n"
                    f"  python -m nnlab.sync {self.spool_dir} --uri {redact(self.uri)}")
        return ui_hint(self.uri, experiment_id)


def spooled_children(spool_dir: Path, parent_id: str) -> list:
    """The spooled runs whose parent is ``parent_id``, shaped like MLflow's ``Run`` for reading."""
    from types import SimpleNamespace

    from nnlab.record.spool import read_spool

    if not Path(spool_dir).is_dir():
        return []
    out = []
    for run in read_spool(spool_dir):
        if run.parent != parent_id:
            continue
        last: dict[str, tuple[int, float]] = {}
        for key, value, _, step in run.metrics:
            if key not in last or step >= last[key][0]:
                last[key] = (step, value)
        info = SimpleNamespace(run_id=run.uid, run_name=run.manifest.get("run_name"), status=run.manifest["status"])
        data = SimpleNamespace(metrics={k: v for k, (_, v) in last.items()}, tags=run.tags, params=run.params)
        out.append(SimpleNamespace(info=info, data=data))
    return out


def _tag(key: str, value: Any):
    from mlflow.entities import RunTag

    return RunTag(key, str(value))
