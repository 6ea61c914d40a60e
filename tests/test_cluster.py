"""Sweeps beyond one process, against real daemons started here on 127.0.0.1 and stopped at the end:
PostgreSQL + ``mlflow server`` (nnlab.server), a one-node Slurm (tests/daemons.py), a local Ray head.

Each test launches ``python -m nnlab.run -m ...`` as a lab would and reads back what reached the
server: one parent, every job a FINISHED child with its full metric history, nothing left RUNNING.
Missing daemons skip these tests with the reason, except under CI=true, where they fail.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from daemons import SERVER_ENV, SLURM_BINARIES, missing_binaries, skip_or_fail, slurm_node
from nnlab import server as S

pytestmark = pytest.mark.slow

EPOCHS = 3
GRID = ["activation=relu,tanh", "init=he,xavier"]
FAST = [f"trainer.epochs={EPOCHS}", "model.width=8", "trainer.probe_size=64"]
PER_EPOCH = ["train_loss", "train_acc", "val_loss", "val_acc", "grad_norm/global", "grad_norm/layer_1",
             "grad_norm/layer_3", "act_std/layer_1", "act_saturation/layer_2"]


# --- daemons ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL 127.0.0.1:<free port> (initdb + pg_ctl, as `postgres` when root)."""
    try:
        S._pg_bin("initdb"), S._pg_bin("pg_ctl")
    except S.ServerError as err:
        skip_or_fail(str(err))
    if importlib.util.find_spec("psycopg") is None:
        skip_or_fail("psycopg is not installed: pip install 'nnlab[server]'")
    folder = Path(tempfile.mkdtemp(prefix="nnlab-pg-"))  # /tmp: reachable by the postgres user
    try:
        with S.local_postgres(folder / "data") as pg:
            yield pg
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def tracking_server(postgres, tmp_path_factory):
    """``mlflow server`` on that PostgreSQL with proxied artifacts, as ``python -m nnlab.server`` runs it."""
    folder = tmp_path_factory.mktemp("server")
    config = S.ServerConfig(postgres.uri, folder / "mlartifacts", port=S.free_port(), workers=2)
    with S.tracking_server(config, {**postgres.env, **SERVER_ENV}, log=folder / "server.log", timeout=300) as server:
        yield server.url, config.artifacts_destination
    assert server.process.poll() is not None  # stopped with the fixture


@pytest.fixture(scope="session")
def slurm():
    missing = missing_binaries(SLURM_BINARIES)
    if missing:
        skip_or_fail(f"Slurm/munge binaries missing: {', '.join(missing)} "
                     "(Debian: apt-get install slurmctld slurmd slurm-client munge)")
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        skip_or_fail("hydra-submitit-launcher is not installed: pip install 'nnlab[slurm]'")
    with slurm_node() as node:
        yield node


# --- helpers ------------------------------------------------------------------------------------
def sweep(cwd: Path, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "nnlab.run", "-m", *args], cwd=cwd, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def experiment_runs(url: str, experiment: str) -> list:
    client = MlflowClient(url)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment} on {url}"
    return client.search_runs([found.experiment_id], run_view_type=ViewType.ALL, max_results=1000)


def check_one_parent_and_finished_children(url: str, experiment: str, n_jobs: int, result) -> tuple:
    """One FINISHED parent, n_jobs FINISHED children under it, each with every epoch of every metric."""
    runs = experiment_runs(url, experiment)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1, result.stderr[-3000:]
    (parent,) = parents
    assert len(children) == n_jobs, result.stderr[-3000:]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert all(c.data.tags["sweep_id"] == parent.data.tags["sweep_id"] for c in children)
    assert [c.info.status for c in children] == ["FINISHED"] * n_jobs
    assert parent.info.status == "FINISHED" and parent.data.tags["nnlab.jobs_finished"] == str(n_jobs)
    client = MlflowClient(url)
    for child in children:
        for key in PER_EPOCH:
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, key))
            assert steps == list(range(EPOCHS + 1)), (child.info.run_name, key, steps)
        assert {"test_acc", "best_val_acc", "epochs_run"} <= set(child.data.metrics)
    return parent, children


def count_runs_in_postgres(postgres: S.Postgres, experiment: str) -> int:
    """Read PostgreSQL directly: the runs really are in that database."""
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=postgres.port, user=S.PG_USER, dbname=S.PG_DATABASE,
                         passfile=str(postgres.passfile)) as conn:
        return conn.execute("SELECT count(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                            "WHERE e.name = %s", (experiment,)).fetchone()[0]


# --- the tests ----------------------------------------------------------------------------------
@pytest.mark.daemon
def test_submitit_local_sweep_records_to_the_postgres_server(tracking_server, postgres, tmp_path):
    url, artifacts = tracking_server
    experiment = f"local-{uuid.uuid4().hex[:6]}"
    result = sweep(tmp_path, *GRID, *FAST, "hydra/launcher=submitit_local", f"tracking.uri={url}",
                   f"tracking.experiment={experiment}")
    assert result.returncode == 0, result.stderr[-3000:]
    _, children = check_one_parent_and_finished_children(url, experiment, 4, result)
    assert count_runs_in_postgres(postgres, experiment) == 5
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to a local store
    # each job ran in its own submitit process, its log under the sweep folder
    (sweep_dir,) = (tmp_path / "multirun").glob("*/*")
    assert len(list((sweep_dir / "submitit").glob("*/*_log.out"))) == 4
    # artifacts went through the server into its --artifacts-destination
    client = MlflowClient(url)
    assert {a.path for a in client.list_artifacts(children[0].info.run_id)} >= {"config.yaml", "weights.npz"}
    assert len(list(artifacts.rglob("weights.npz"))) == 4


@pytest.mark.daemon
def test_slurm_sweep_through_sbatch_records_to_the_postgres_server(tracking_server, slurm, tmp_path):
    url, _ = tracking_server
    experiment = f"slurm-{uuid.uuid4().hex[:6]}"
    # the server's address comes from the environment: sbatch must hand it (and nnlab's sweep
    # variables, which group the jobs under the parent) to every job
    result = sweep(tmp_path, *GRID, *FAST, "hydra/launcher=slurm", "hydra.launcher.mem_gb=1",
                   f"tracking.experiment={experiment}", env={**slurm.env, "MLFLOW_TRACKING_URI": url})
    assert result.returncode == 0, result.stderr[-3000:] + slurm.log()
    check_one_parent_and_finished_children(url, experiment, 4, result)
    (sweep_dir,) = (tmp_path / "multirun").glob("*/*")
    logs = sorted(p.name for p in (sweep_dir / "slurm").glob("*/*_log.out"))
    assert len(logs) == 4 and all("_" in name for name in logs), logs  # <array job>_<task>: one sbatch --array
    ctl = (slurm.folder / "slurmctld.log").read_text()
    assert ctl.count("Allocate JobId=") >= 4 or ctl.count("sched: Allocate") >= 4 or "array" in ctl
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.daemon
def test_ray_local_head_records_to_the_postgres_server(tracking_server, tmp_path):
    if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None:
        skip_or_fail("hydra-ray-launcher is not installed: pip install 'nnlab[ray]'")
    url, _ = tracking_server
    experiment = f"ray-{uuid.uuid4().hex[:6]}"
    result = sweep(tmp_path, *GRID, *FAST, "hydra/launcher=ray", "hydra.launcher.ray.init.num_cpus=2",
                   f"tracking.uri={url}", f"tracking.experiment={experiment}",
                   env={"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
    assert result.returncode == 0, result.stderr[-3000:]
    check_one_parent_and_finished_children(url, experiment, 4, result)


@pytest.mark.daemon
def test_credentials_come_from_the_environment_and_are_never_recorded(tmp_path, fresh_store):
    """A basic-auth server: no credentials -> refused; with them the run is recorded, and the
    password appears in no param, tag or artifact."""
    if importlib.util.find_spec("flask_wtf") is None:  # what mlflow[auth] adds
        skip_or_fail("mlflow[auth] is not installed: pip install 'nnlab[server]'")
    password = f"pw-{uuid.uuid4().hex}"
    server_env = {"MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex, "MLFLOW_AUTH_ADMIN_PASSWORD": password}
    os.environ.update(server_env)
    try:
        config = S.ServerConfig(fresh_store(tmp_path / "server.db"), tmp_path / "mlartifacts",
                                port=S.free_port(), workers=1, auth=True)
        with S.tracking_server(config, SERVER_ENV, log=tmp_path / "server.log", timeout=300) as server:
            refused = sweep(tmp_path, "seed=0", *FAST, f"tracking.uri={server.url}", "tracking.experiment=auth")
            assert refused.returncode != 0 and "401" in refused.stderr, refused.stderr[-2000:]
            creds = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
            result = sweep(tmp_path, "seed=0,1", *FAST, f"tracking.uri={server.url}", "tracking.experiment=auth",
                           env=creds)
            assert result.returncode == 0, result.stderr[-3000:]
            os.environ.update(creds)
            try:
                runs = experiment_runs(server.url, "auth")
                assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
                for run in runs:
                    recorded = {**run.data.params, **run.data.tags}
                    assert not [k for k, v in recorded.items() if password in v or "MLFLOW_TRACKING" in k]
                    assert run.data.tags.get("mlflow.user") != password
            finally:
                for key in creds:
                    os.environ.pop(key, None)
        stored = [p for p in (tmp_path / "mlartifacts").rglob("*") if p.is_file()]
        assert stored and not [p for p in stored if password.encode() in p.read_bytes()]
        assert password not in (tmp_path / "server.db").read_bytes().decode("latin-1")
    finally:
        for key in server_env:
            os.environ.pop(key, None)


def test_server_refuses_to_share_without_auth_and_oversized_pools(tmp_path):
    base = S.ServerConfig("sqlite:///x.db", tmp_path)
    with pytest.raises(S.ServerError, match="--host 0.0.0.0 shares the server"):
        S.check(S.ServerConfig("sqlite:///x.db", tmp_path, host="0.0.0.0"))
    S.check(S.ServerConfig("sqlite:///x.db", tmp_path, host="0.0.0.0", no_auth=True))
    S.check(base)
    with pytest.raises(S.ServerError, match=r"8 workers x \(pool_size=10 \+ max_overflow=5\) = 120"):
        S.pool_env(8, 10, 5, max_connections=100)
    assert S.pool_env(4, 5, 5)["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"] == "5"
    result = subprocess.run([sys.executable, "-m", "nnlab.server", "--pgdata", str(tmp_path / "pg"),
                             "--artifacts-destination", str(tmp_path / "a"), "--host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("nnlab.server: --host 0.0.0.0"), result.stderr
    assert not (tmp_path / "pg").exists() and not (tmp_path / "a").exists()  # refused before creating anything


# --- kill a Slurm job mid-run, then resume --------------------------------------------------------
def _wait_until(predicate, what: str, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}: {process.stderr.read()[-3000:]}")
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.daemon
def test_scancel_a_slurm_job_mid_run_then_resume(tracking_server, slurm, tmp_path):
    """Job 3 of 4 trains long; it is cancelled with scancel while the others are FINISHED. Its run
    is closed (never left RUNNING), and ``resume=true`` re-runs that job alone: one FINISHED run per
    configuration, nothing lost, nothing duplicated."""
    url, _ = tracking_server
    experiment = f"scancel-{uuid.uuid4().hex[:6]}"
    args = ["trainer.epochs=3,4,5,4000", "model.width=8", "trainer.probe_size=64", "hydra/launcher=slurm",
            "hydra.launcher.mem_gb=1", f"tracking.uri={url}", f"tracking.experiment={experiment}",
            "hydra.sweep.dir=multirun/scancel"]
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **slurm.env}
    process = subprocess.Popen([sys.executable, "-m", "nnlab.run", "-m", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    client = MlflowClient(url)

    def children():
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id], run_view_type=ViewType.ALL) if found else []
        return [r for r in runs if "mlflow.parentRunId" in r.data.tags]

    def long_job_running_after_the_others():
        runs = children()
        finished = [r for r in runs if r.info.status == "FINISHED"]
        long = [r for r in runs if r.data.params.get("trainer.epochs") == "4000"]
        return len(finished) == 3 and long and long[0].info.status == "RUNNING" and \
            len(client.get_metric_history(long[0].info.run_id, "train_loss")) > 2

    try:
        _wait_until(long_job_running_after_the_others, "the long job to run while the others finished", process)
        queue = slurm.run("squeue", "-h", "-o", "%i %j").stdout.split()
        (task,) = [job for job in queue[::2] if job.endswith("_3")]
        assert slurm.run("scancel", task).returncode == 0
        _, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode != 0  # the launcher reports the cancelled job
    runs = children()
    statuses = [r.info.status for r in runs]
    # closed, never left RUNNING: FAILED here, KILLED with the signal handling of the reliable-sweeps issue
    closed = [s for s in statuses if s != "FINISHED"]
    assert statuses.count("FINISHED") == 3 and closed in (["FAILED"], ["KILLED"]), (statuses, stderr[-2000:])
    (killed,) = [r for r in runs if r.info.status != "FINISHED"]
    assert killed.data.params["trainer.epochs"] == "4000"
    assert "RUNNING" not in {r.info.status for r in experiment_runs(url, experiment)}  # parent closed too

    from hydra import compose, initialize_config_dir

    from nnlab.run import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        if "resume" not in compose("config"):
            pytest.xfail("resume=true (the reliable-sweeps issue) is not on this branch yet")
    resumed = sweep(tmp_path, *args, "resume=true", env=slurm.env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = children()
    finished = [r for r in runs if r.info.status == "FINISHED"]
    by_fingerprint = {}
    for run in finished:
        by_fingerprint.setdefault(run.data.tags["nnlab.fingerprint"], []).append(run.data.params["trainer.epochs"])
    assert sorted(sum(by_fingerprint.values(), [])) == ["3", "4", "4000", "5"]  # each configuration once
    assert all(len(v) == 1 for v in by_fingerprint.values())
