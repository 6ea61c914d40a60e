"""The CLI: ``python -m nnlab.run [-m] ...`` in a subprocess, its exit status and what lands in MLflow."""
import os
import time
import subprocess
import sys

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

FAST = ["trainer.epochs=1", "model.width=8", "trainer.probe_size=64"]


def nnlab_run(tmp_path, *args, timeout=300):
    """Run the CLI with cwd=tmp_path, so the default ./mlflow.db and ./multirun land there."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["HYDRA_FULL_ERROR"] = "0"
    return subprocess.run([sys.executable, "-m", "nnlab.run", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def all_runs(tmp_path):
    if not (tmp_path / "mlflow.db").exists():
        return []
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return client.search_runs(ids, run_view_type=ViewType.ALL)


def split(runs):
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def check_sweep(tmp_path, result, n_children, n_failed=0):
    parents, children = split(all_runs(tmp_path))
    assert len(parents) == 1 and len(children) == n_children, result.stderr
    (parent,) = parents
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert all(c.data.tags["sweep_id"] == parent.data.tags["sweep_id"] for c in children)
    statuses = sorted(c.info.status for c in children)
    assert statuses == sorted(["FAILED"] * n_failed + ["FINISHED"] * (n_children - n_failed))
    assert parent.info.status == ("FAILED" if n_failed else "FINISHED")  # closed either way
    assert parent.data.tags["nnlab.jobs_failed"] == str(n_failed)
    assert "runs?workflowType=machine_learning" in result.stderr
    assert result.returncode == (1 if n_failed else 0), result.stderr
    return parent, children


@pytest.mark.slow
def test_grid_gives_one_parent_and_a_child_per_job(tmp_path):
    result = nnlab_run(tmp_path, "-m", "activation=relu,tanh", "init=he,xavier", *FAST)
    _, children = check_sweep(tmp_path, result, 4)
    assert {c.info.run_name for c in children} == {"relu-he-d2-s0", "relu-xavier-d2-s0",
                                                   "tanh-he-d2-s0", "tanh-xavier-d2-s0"}
    assert all(c.data.params["trainer.epochs"] == "1" for c in children)
    for line in ("[1/4] relu-he-d2-s0", "[4/4] tanh-xavier-d2-s0"):  # jobs done so far / all
        assert line in result.stdout
    assert "ETA " in result.stdout and "all jobs in " in result.stdout
    artifacts = {a.path for a in MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").list_artifacts(
        children[0].info.run_id, ".hydra")}
    assert artifacts == {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"}


@pytest.mark.slow
def test_a_diverging_job_fails_alone_and_the_sweep_reports_it(tmp_path):
    result = nnlab_run(tmp_path, "-m", "optimizer=sgd", "optimizer.lr=1e6,0.05", "seed=0,1", *FAST)
    _, children = check_sweep(tmp_path, result, 4, n_failed=2)
    failed = [c for c in children if c.info.status == "FAILED"]
    assert all(c.data.params["optimizer.lr"] == "1000000.0" for c in failed)
    assert all(c.data.tags["nnlab.failure"] == "diverged" for c in failed)
    assert "FAILED relu-he-d2-s0-lr1000000.0: diverged at epoch 1" in result.stderr
    assert "sweep done: 2 finished, 2 failed -- of 4 jobs" in result.stderr


@pytest.mark.slow
def test_joblib_two_workers_share_one_sqlite_file(tmp_path):
    result = nnlab_run(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                       "activation=relu,tanh", "optimizer=sgd", "optimizer.lr=0.05,1e6", *FAST)
    _, children = check_sweep(tmp_path, result, 4, n_failed=2)
    # the console: no runpy warning from the workers, no Hydra "#n : overrides" list, one line per job
    assert "RuntimeWarning" not in result.stderr and "Warning" not in result.stderr, result.stderr
    assert " : " not in result.stdout + result.stderr and "[HYDRA]" not in result.stdout + result.stderr
    job_lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.startswith("[")]
    assert sorted(ln.split("]")[0] for ln in job_lines) == ["[1/4", "[2/4", "[3/4", "[4/4"], job_lines
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for child in children:  # no metric lost: every record name at every step
        if child.info.status == "FINISHED":
            assert len(client.get_metric_history(child.info.run_id, "grad_norm/layer_3")) == 2


def test_single_run_from_the_command_line(tmp_path):
    result = nnlab_run(tmp_path, *FAST)
    assert result.returncode == 0, result.stderr
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED" and "mlflow.parentRunId" not in run.data.tags
    assert run.data.tags["overrides"] == " ".join(FAST)
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in result.stderr


BAD = [  # (override, text that must be on one line of stderr)
    ("model.depth=-1", "model.depth=-1"),
    ("optimizer.lr=0", "optimizer.lr=0.0"),
    ("trainer.epochs=abc", "trainer.epochs=abc"),
    ("model.width=[8]", "model.width=[8]"),
    ("activation=foo", "activation=foo is not an option"),
]


def check_refused(tmp_path, result, needle):
    assert result.returncode != 0
    assert any(needle in line for line in result.stderr.splitlines()), result.stderr
    assert "Traceback" not in result.stderr
    assert all_runs(tmp_path) == []  # no run at all: neither a child nor a parent
    if "is not an option" in needle:  # Hydra's refusal in nnlab's words, listing the options
        assert "(choices: " in result.stderr and "leaky_relu" in result.stderr


@pytest.mark.parametrize("override, needle", BAD)
def test_bad_input_single_run(tmp_path, override, needle):
    check_refused(tmp_path, nnlab_run(tmp_path, *FAST, override), needle)


@pytest.mark.slow
@pytest.mark.parametrize("override, needle", BAD + [("model.depth=1,-1", "model.depth=-1"),
                                                    ("trainer.epochs=1,abc", "trainer.epochs=abc"),
                                                    ("activation=relu,foo", "activation=foo is not an option")])
def test_bad_input_joblib_sweep(tmp_path, override, needle):
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", *FAST, override]
    check_refused(tmp_path, nnlab_run(tmp_path, *args), needle)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]],
                         ids=["basic", "joblib"])
def test_sweep_with_missing_data_is_refused_before_any_run(tmp_path, launcher):
    result = nnlab_run(tmp_path, "-m", *launcher, "dataset=mnist", "dataset.path=nowhere/mnist", "seed=0,1", *FAST)
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("nnlab:")]
    assert "dataset=mnist" in line and "'nowhere/mnist'" in line and "no run was created" in line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # not even the store


def test_help_and_cfg_job(tmp_path):
    help_text = nnlab_run(tmp_path, "--help")
    assert help_text.returncode == 0 and "activation=     relu | leaky_relu | elu" in help_text.stdout
    job = nnlab_run(tmp_path, "--cfg", "job", "model.depth=4")
    assert job.returncode == 0 and "depth: 4" in job.stdout
    assert all_runs(tmp_path) == []


def wait_for_child_run(db, process, timeout=60.0):
    """Poll the sqlite file (plain sqlite3, read-only) until a child run exists."""
    import sqlite3
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                if conn.execute("select count(*) from tags where key = 'mlflow.parentRunId'").fetchone()[0]:
                    return
        except sqlite3.Error:
            pass
    raise AssertionError("no child run appeared")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]],
                         ids=["basic", "joblib"])
def test_ctrl_c_mid_sweep_leaves_nothing_running(tmp_path, launcher):
    import signal

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    args = [sys.executable, "-m", "nnlab.run", "-m", "seed=0,1,2,3", "trainer.epochs=5000", *launcher]
    process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        wait_for_child_run(tmp_path / "mlflow.db", process)
        time.sleep(1.0)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr  # 128 + SIGINT
    runs = all_runs(tmp_path)
    parents, children = split(runs)
    assert len(parents) == 1 and children, stderr
    assert all(r.info.status == "KILLED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert {r.data.tags["nnlab.failure"] for r in runs} == {"SIGINT"}
    assert "sweep stopped by SIGINT" in stderr and "resume=true" in stderr


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.daemon
@pytest.mark.slow
def test_sweep_to_a_remote_tracking_server(tmp_path, fresh_store):
    import signal
    import urllib.request

    from daemons import SERVER_ENV

    port = free_port()
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    fresh_store(server_dir / "server.db")  # MLflow's schema, created once per session (conftest)
    mlflow_cli = os.path.join(os.path.dirname(sys.executable), "mlflow")
    # one worker: two jobs in sequence need no more, and each worker imports all of MLflow's server
    server = subprocess.Popen([mlflow_cli, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                               "--backend-store-uri", "sqlite:///server.db"], cwd=server_dir,
                              env={**os.environ, **SERVER_ENV},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a loaded 2-core machine: the server may take a minute to start
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start")
        result = nnlab_run(tmp_path, "-m", "activation=relu,tanh", f"tracking.uri={uri}", *FAST)
        assert result.returncode == 0, result.stderr
        assert f"MLflow runs: {uri}/#/experiments/" in result.stderr
        assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local default
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("nnlab").experiment_id])
        parents, children = split(runs)
        assert len(parents) == 1 and len(children) == 2
        assert all(r.info.status == "FINISHED" for r in runs)
        assert {a.path for a in client.list_artifacts(children[0].info.run_id)} >= {"config.yaml", "weights.npz"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow
def test_the_parent_names_the_sweep_and_carries_its_summary_and_report(tmp_path):
    result = nnlab_run(tmp_path, "-m", "activation=relu,tanh", "init=he,xavier", *FAST)
    parent, children = check_sweep(tmp_path, result, 4)
    assert parent.info.run_name.startswith("nnlab: activation×init 20")  # study: axes, then the time
    best = max(children, key=lambda c: c.data.metrics["test_acc"])
    assert parent.data.metrics["sweep/jobs_finished"] == 4 and parent.data.metrics["sweep/jobs_failed"] == 0
    assert parent.data.metrics["sweep/best_test_acc"] == best.data.metrics["test_acc"]
    assert parent.data.tags["nnlab.best_run"] == best.info.run_name
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/index.md", "report/final_accuracy.png", "report/grad_norm_by_layer.png"} <= report
    off = nnlab_run(tmp_path, "-m", "seed=5,6", "tracking.sweep_report=false", *FAST)
    assert off.returncode == 0, off.stderr
    newest = max((r for r in all_runs(tmp_path) if r.data.tags.get("nnlab.role") == "sweep"),
                 key=lambda r: r.info.start_time)
    assert [a.path for a in client.list_artifacts(newest.info.run_id)] == ["multirun.yaml"]


def test_the_summary_counts_runs_cut_short_by_the_signal_as_stopped_not_failed():
    import signal
    from types import SimpleNamespace

    from nnlab.record.signals import Interrupted
    from nnlab.sweep.callback import summarize

    def run(name, status, failure=None):
        tags = {"nnlab.fingerprint": name, **({"nnlab.failure": failure} if failure else {})}
        return SimpleNamespace(info=SimpleNamespace(run_id=name, run_name=name, status=status),
                               data=SimpleNamespace(tags=tags, metrics={"test_acc": 0.9} if status == "FINISHED" else {}))

    children = [run("a", "FINISHED"), run("b", "KILLED", "SIGTERM"), run("c", "FAILED", "diverged")]
    summary = summarize(children, ["a", "b", "c", "d"], aborted=True)
    text = summary.text("p", Interrupted(signal.SIGTERM), skipped=0, seconds=3)
    assert text.splitlines()[0].startswith("sweep stopped by SIGTERM: 1 finished, 1 failed, 1 stopped, 1 not run")
    assert "KILLED b: SIGTERM" in text and "FAILED c: diverged" in text
    assert summary.failed == 2  # the record's sweep/jobs_failed still counts both
