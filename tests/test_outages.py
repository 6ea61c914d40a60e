"""The tracking store failing, with real processes: a real ``mlflow server`` stopped and restarted or
never back, an unreachable server, offline mode and ``nnlab.sync``, read-only and full disks, two
sweeps creating one new store, bad store URIs. Exit statuses and the record are asserted."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from daemons import SERVER_ENV

FAST = ["trainer.epochs=1", "model.width=8", "trainer.probe_size=64"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["HYDRA_FULL_ERROR"] = "0"
    return env


def start(tmp_path, *args, module="nnlab.run"):
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=tmp_path, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def run(tmp_path, *args, module="nnlab.run", timeout=300):
    process = start(tmp_path, *args, module=module)
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


class Server:
    """``mlflow server`` on 127.0.0.1 with a sqlite backend; can be stopped and started again."""

    def __init__(self, folder: Path, template: Path | None = None):
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process = None
        folder.mkdir(exist_ok=True)
        if template is not None:  # an empty store with MLflow's schema (conftest): no migration at start
            shutil.copyfile(template, folder / "server.db")

    def start(self) -> None:
        mlflow_cli = os.path.join(os.path.dirname(sys.executable), "mlflow")
        self.process = subprocess.Popen(
            [mlflow_cli, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", "sqlite:///server.db"], cwd=self.folder, env={**clean_env(), **SERVER_ENV},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1)
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # gone at once, as a crashed or cut-off server
            self.process.wait(timeout=30)
        self.process = None

    def runs(self):
        client = MlflowClient(self.uri)
        ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        return client.search_runs(ids, run_view_type=ViewType.ALL) if ids else []


@pytest.fixture
def server(tmp_path, sqlite_template):
    srv = Server(tmp_path / "server", sqlite_template)
    srv.start()
    yield srv
    srv.stop()


def wait_for(predicate, timeout=60.0, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def split(runs):
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def assert_complete(client, run, epochs):
    """FINISHED, its params, and every metric at every step 0..epochs, once each."""
    assert run.info.status == "FINISHED", (run.info.run_name, run.info.status, run.data.tags)
    assert run.data.params["trainer.epochs"] == str(epochs)
    for key in ("train_loss", "val_acc", "grad_norm/global"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(epochs + 1)), (key, steps)
    assert "test_acc" in run.data.metrics and "train_seconds" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.yaml", "weights.npz"}


def metric_points(client, runs):
    return sum(len(client.get_metric_history(r.info.run_id, k)) for r in runs for k in r.data.metrics)


# --- a server that goes away ----------------------------------------------------------------------
@pytest.mark.daemon
@pytest.mark.slow
def test_server_stopped_mid_sweep_and_restarted_loses_nothing(tmp_path, server):
    epochs = 60
    # the first job's close waits for the store up to retry_seconds: longer than a restart takes here
    sweep = start(tmp_path, "-m", "seed=0,1", f"tracking.uri={server.uri}", f"trainer.epochs={epochs}",
                  "model.width=64", "trainer.probe_size=64", "tracking.flush_seconds=0", "tracking.retry_seconds=180")
    try:
        wait_for(lambda: [r for r in server.runs() if "val_acc" in r.data.metrics])  # mid-run
        server.stop()
        time.sleep(2)  # the job keeps training meanwhile
        server.start()
        out, err = sweep.communicate(timeout=240)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    assert sweep.returncode == 0, err
    # one line, whether the server was gone before the request (refused) or went in the middle of its answer (lost)
    assert len(re.findall(r"failed \(connection (refused|lost)\); run relu-he-d2-s0 keeps training", err)) == 1, err
    assert "answers again" in err and "written to the spool" not in err
    parents, children = split(server.runs())
    assert len(parents) == 1 and len(children) == 2
    client = MlflowClient(server.uri)
    for child in children:
        assert_complete(client, child, epochs)
    assert not (tmp_path / "nnlab-spool").exists()


@pytest.mark.daemon
@pytest.mark.slow
def test_server_that_never_returns_spools_then_sync_completes_it_once(tmp_path, server):
    epochs = 60
    job = start(tmp_path, f"tracking.uri={server.uri}", f"trainer.epochs={epochs}", "model.width=64",
                "trainer.probe_size=64", "tracking.flush_seconds=0", "tracking.retry_seconds=2")
    try:
        wait_for(lambda: [r for r in server.runs() if "val_acc" in r.data.metrics])  # partly recorded
        server.stop()
        out, err = job.communicate(timeout=240)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 1, err
    spool = tmp_path / "nnlab-spool"
    (folder,) = [p for p in spool.iterdir() if p.is_dir()]
    assert f"written to the spool {folder}" in err and err.count("python -m nnlab.sync") == 1  # one line
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "FINISHED" and manifest["store"]["run_id"]

    server.start()
    (partial,) = server.runs()  # the store holds the run as FAILED (not_recorded) or RUNNING, never FINISHED
    assert partial.info.status != "FINISHED"
    first = run(tmp_path, str(spool), "--uri", server.uri, module="nnlab.sync")
    assert first.returncode == 0, first.stderr
    assert "0 created, 1 completed" in first.stderr
    client = MlflowClient(server.uri)
    (synced,) = server.runs()  # completed in place, not duplicated
    assert synced.info.run_id == partial.info.run_id
    assert "nnlab.failure" not in synced.data.tags
    assert_complete(client, synced, epochs)
    points = metric_points(client, [synced])

    second = run(tmp_path, str(spool), "--uri", server.uri, module="nnlab.sync")
    assert second.returncode == 0 and "0 created, 0 completed, 1 already complete" in second.stderr
    (again,) = server.runs()
    assert metric_points(client, [again]) == points


@pytest.mark.slow
def test_unreachable_server_at_start_exits_2_within_seconds_and_creates_nothing(tmp_path):
    started = time.monotonic()
    baseline = run(tmp_path, "-m", "seed=0,1", "tracking.uri=bogus://x", *FAST)  # start-up, refused at once
    startup = time.monotonic() - started
    assert baseline.returncode == 2
    started = time.monotonic()
    result = run(tmp_path, "-m", "seed=0,1", f"tracking.uri=http://127.0.0.1:{free_port()}", *FAST)
    elapsed = time.monotonic() - started - startup  # time spent trying the server
    assert result.returncode == 2, result.stderr
    lines = [l for l in result.stderr.splitlines() if l.startswith("nnlab:")]
    assert len(lines) == 1 and "connection refused -- no run was created" in lines[0], result.stderr
    assert "Retrying" not in result.stderr
    assert elapsed < 12, elapsed  # ~3 s of retries (2, with backoff); MLflow's defaults: minutes
    assert not (tmp_path / "nnlab-spool").exists() and not (tmp_path / "mlflow.db").exists()


# --- offline ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_offline_sweep_spools_and_sync_makes_one_parent_with_four_children(tmp_path):
    result = run(tmp_path, "-m", "activation=relu,tanh", "seed=0,1", "tracking.offline=true",
                 "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *FAST)
    assert result.returncode == 0, result.stderr
    assert "sweep done: 4 finished, 0 failed" in result.stderr
    assert "python -m nnlab.sync" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # offline: no store touched
    assert len([p for p in (tmp_path / "nnlab-spool").iterdir()]) == 5

    for attempt in range(2):
        synced = run(tmp_path, module="nnlab.sync")
        assert synced.returncode == 0, synced.stderr
        assert ("5 created" if attempt == 0 else "5 already complete") in synced.stderr
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("nnlab").experiment_id])
        parents, children = split(runs)
        assert len(parents) == 1 and len(children) == 4
        assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
        assert parents[0].data.tags["nnlab.jobs_finished"] == "4"
        for child in children:
            assert_complete(client, child, 1)


# --- sqlite stores: read-only, full, new --------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()

    def mount_it(size: str, options: str = "") -> Path:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs", str(mount)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
        return mount

    yield mount_it
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_read_only_store_is_refused_in_seconds_with_one_line(tmp_path, tmpfs):
    disk = tmpfs("16m")
    first = run(tmp_path, f"tracking.uri=sqlite:///{disk}/mlflow.db", *FAST)
    assert first.returncode == 0, first.stderr
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    started = time.monotonic()
    result = run(tmp_path, f"tracking.uri=sqlite:///{disk}/mlflow.db", "seed=1", *FAST)
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - started < 30
    assert f"cannot use the MLflow store sqlite:///{disk}/mlflow.db: {disk}/mlflow.db is not writable -- no run was created" \
        in result.stderr
    client = MlflowClient(f"sqlite:///{disk}/mlflow.db")
    assert len(client.search_runs([client.get_experiment_by_name("nnlab").experiment_id])) == 1


@pytest.mark.slow
def test_full_disk_ends_runs_failed_or_spooled_never_finished_and_empty(tmp_path, tmpfs):
    disk = tmpfs("8m")
    uri = f"tracking.uri=sqlite:///{disk}/mlflow.db"
    assert run(tmp_path, uri, *FAST).returncode == 0  # the store exists; now leave ~150 kB free
    with open(disk / "filler", "wb") as f:
        while os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize > 150_000:
            f.write(b"\0" * 4096)
            f.flush()
    result = run(tmp_path, "-m", "seed=0,1,2", uri, "trainer.epochs=30", "model.width=64",
                 "tracking.flush_seconds=0", "tracking.retry_seconds=1")
    assert result.returncode != 0, result.stderr
    client = MlflowClient(f"sqlite:///{disk}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], run_view_type=ViewType.ALL)
    spooled = list((tmp_path / "nnlab-spool").iterdir()) if (tmp_path / "nnlab-spool").exists() else []
    assert spooled, result.stderr  # the spool is on another disk: the runs the store could not take are there
    assert "disk full" in result.stderr
    for r in runs:
        assert r.info.status != "RUNNING", r.info.run_name
        if r.info.status == "FINISHED" and "mlflow.parentRunId" in r.data.tags and r.data.params.get("trainer.epochs") == "30":
            assert_complete(client, r, 30)  # FINISHED only with the whole record


@pytest.mark.slow
def test_two_sweeps_started_together_on_a_new_store_both_succeed(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    uri = f"tracking.uri=sqlite:///{tmp_path / 'new.db'}"
    sweeps = [start(d, "-m", "seed=0,1", uri, *FAST) for d in (a, b)]
    results = [p.communicate(timeout=240) for p in sweeps]
    for process, (out, err) in zip(sweeps, results):
        assert process.returncode == 0, err
    client = MlflowClient(f"sqlite:///{tmp_path / 'new.db'}")
    parents, children = split(client.search_runs([client.get_experiment_by_name("nnlab").experiment_id]))
    assert len(parents) == 2 and len(children) == 4


# --- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("uri, needle", [
    ("bogus://x", "bogus://x: not a tracking store URI; valid: sqlite:///path/to/file.db, http(s)://host:port"),
    ("mlruns", "mlruns: not a tracking store URI; valid: sqlite:///"),
    ("sqlite:///no/such/folder/m.db", "no/such/folder/m.db: folder "),
])
@pytest.mark.parametrize("multirun", [False, True], ids=["run", "sweep"])
def test_bad_store_uri_one_line_exit_2_nothing_created(tmp_path, uri, needle, multirun):
    result = run(tmp_path, *(["-m", "seed=0,1"] if multirun else []), f"tracking.uri={uri}", *FAST)
    assert result.returncode == 2, result.stderr
    lines = [l for l in result.stderr.splitlines() if l.startswith("nnlab:")]
    assert len(lines) == 1 and needle in lines[0] and lines[0].endswith("-- no run was created"), result.stderr
    assert "model registry" not in result.stderr.lower()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "nnlab-spool").exists()


def test_sync_without_a_spool_says_so(tmp_path):
    result = run(tmp_path, str(tmp_path / "nowhere"), module="nnlab.sync")
    assert result.returncode == 2 and "no spool at" in result.stderr
