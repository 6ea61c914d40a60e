"""Shared by every test module: the tiers, the signal state between tests, and stores built once.

The tiers (markers registered in pyproject.toml, ``--strict-markers``):

* no marker -- the fast tier, ``make test-fast`` (``pytest -m "not slow"``): unit tests, in-process tests
  (``train(cfg)``, the tracker, the spool, the analysis against temporary sqlite stores) and real-process
  tests that run one short command each (``python -m nnlab.run --help``, a refused config, one epoch).
  No daemon, no sweep of many jobs, no notebook.
* ``slow`` -- a real process that runs long: command-line sweeps and their faults (real SIGKILL, SIGTERM,
  SIGINT at random moments, a killed worker), the studies and notebooks end to end, the full-size theory
  checks, and every ``daemon`` test.
* ``daemon`` (always also ``slow``) -- starts a daemon: a real ``mlflow server``, PostgreSQL, a one-node
  Slurm (munged, slurmctld, slurmd), a Ray head. ``pytest -m daemon`` runs just those.

``make test`` (what CI runs through ``.ci/run``) runs all tiers.

What is built once and shared, and why that is safe:

* ``sqlite_template``: an empty MLflow sqlite store, schema created by MLflow itself once per session.
  Creating a store runs MLflow's ~70 schema migrations (~1.5 s of CPU); a test that only needs *a* store
  gets a byte copy of this one (``fresh_store``), which is the file MLflow would have created. Tests of
  creating a new store (two sweeps racing on a new file, the schema lock, a command on a missing file)
  keep creating theirs.
* the PostgreSQL + ``mlflow server`` pair and the Slurm node are session fixtures (tests/test_cluster.py):
  every test records into its own experiment, so they need not own the daemons. A test that stops or
  restarts a server (tests/test_outages.py) or needs a server configured its own way (basic auth) starts
  its own.
"""
from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Callable

import pytest

from nnlab.record import signals


def pytest_configure(config):
    """Python's own SIGINT handler, however pytest was started. A shell without job control starts a
    background command (``make test &``, ``nohup ...``, some CI runners) with SIGINT and SIGQUIT ignored;
    Python then keeps SIGINT ignored, and so does every process a test starts (an ignored signal stays
    ignored across exec). Tests that Ctrl-C a sweep or hold SIGINT around a write would fail for a reason
    that is not nnlab's, and Ctrl-C would not stop the suite."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _signal_state_is_per_test():
    """A test that runs a command in-process (``cli()`` installs a SIGTERM handler for good) or sends
    itself signals must not change how the next test's process handles them."""
    handlers = {s: signal.getsignal(s) for s in signals.SIGNALS}
    yield
    for s, h in handlers.items():
        if h is not None:
            signal.signal(s, h)
    signals.received.clear()


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items):
    """A daemon test is a slow test: ``-m "not slow"`` never starts a daemon."""
    for item in items:
        if item.get_closest_marker("daemon") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store (schema created and migrated by MLflow), built once per session."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("sqlite-template")
    path = folder / "mlflow.db"
    store = SqlAlchemyStore(f"sqlite:///{path}", str(folder / "mlruns"))
    store.engine.dispose()  # nothing open on the file while it is copied
    return path


@pytest.fixture
def fresh_store(sqlite_template) -> Callable[[Path], str]:
    """``fresh_store(path)`` puts a new, empty, migrated MLflow store at ``path`` and returns its URI."""
    def make(path: Path) -> str:
        shutil.copyfile(sqlite_template, path)
        return f"sqlite:///{path}"

    return make
