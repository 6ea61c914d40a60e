"""Resume and the record's housekeeping: fingerprints, resume=true, stale runs, duplicates, refusals."""
import os
import signal
import socket
import subprocess
import sys
import time
import warnings

import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from nnlab import spec as C
from nnlab.run import CONF_DIR
from test_sweep import FAST, all_runs, nnlab_run, split


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


# --- the fingerprint --------------------------------------------------------------------------
def test_fingerprint_ignores_how_a_run_is_recorded_but_not_what_is_trained():
    base = C.fingerprint(composed())
    assert C.fingerprint(composed("tracking.uri=sqlite:///x.db", "tracking.experiment=other",
                                  "tracking.flush_seconds=5", "resume=true", "blas_threads=null")) == base
    for change in ("seed=1", "model.depth=3", "activation=tanh", "optimizer.lr=0.01", "trainer.epochs=2"):
        assert C.fingerprint(composed(change)) != base, change


def test_a_sweeps_plan_and_its_jobs_agree_on_every_fingerprint():
    """resume compares the fingerprints of the checked grid with those the jobs record: they must match."""
    from omegaconf import open_dict

    grid = ["activation=relu,tanh", "optimizer.lr=0.1,0.01", "model.width=8"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        sweep = compose("config", return_hydra_config=True)  # what the launching process holds
        with open_dict(sweep):
            sweep.hydra.overrides.task = grid
            sweep.hydra.job.config_name = "config"
        jobs, specs = C.sweep_jobs(sweep)
        planned = [spec.fingerprint for spec in specs]
        own = [C.fingerprint(compose("config", overrides=job)) for job in jobs]
    assert planned == own and len(set(planned)) == 4


def test_added_keys_nnlab_does_not_read_are_refused_by_name():
    with pytest.raises(C.ConfigError, match=r"\+typo=5 .*does not use this key"):
        C.check_added_keys(["+typo=5"])
    with pytest.raises(C.ConfigError, match=r"\+\+model.dpeth=3"):
        C.check_added_keys(["++model.dpeth=3"])
    C.check_added_keys(["+trainer.schedule_params.step_size=10", "+experiment=smoke", "model.depth=3",
                        "+hydra.launcher.ray.init.object_store_memory=null"])


# --- resume ------------------------------------------------------------------------------------
def child_statuses(db) -> list[str]:
    """Statuses of the child runs, read straight from sqlite (an MLflow client here could race the
    sweep's own creation of the store's schema)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return [s for (s,) in conn.execute("select status from runs where run_uuid in "
                                               "(select run_uuid from tags where key = 'mlflow.parentRunId')")]
    except sqlite3.Error:
        return []


@pytest.mark.slow
def test_resume_skips_finished_jobs_rejoins_the_parent_and_marks_the_stale_run(tmp_path):
    grid = ["-m", "seed=0,1,2", "trainer.epochs=400", "model.width=8", "trainer.probe_size=64"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    process = subprocess.Popen([sys.executable, "-m", "nnlab.run", *grid], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:  # wait for the first job to finish and the second to start, then kill everything
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and child_statuses(tmp_path / "mlflow.db").count("FINISHED") < 1:
            time.sleep(0.3)
        while time.monotonic() < deadline and len(child_statuses(tmp_path / "mlflow.db")) < 2:
            time.sleep(0.3)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    parents, children = split(all_runs(tmp_path))
    assert [p.info.status for p in parents] == ["RUNNING"]  # what SIGKILL leaves behind
    assert sorted(c.info.status for c in children) == ["FINISHED", "RUNNING"]

    plain = nnlab_run(tmp_path, "--cfg", "job")  # the resume itself:
    assert plain.returncode == 0
    result = nnlab_run(tmp_path, *grid[:2], "trainer.epochs=400", "model.width=8", "trainer.probe_size=64",
                       "resume=true")
    assert result.returncode == 0, result.stderr
    assert "resume: 1 skipped (FINISHED before), 2 to run, rejoining parent run" in result.stderr
    assert "1 stale RUNNING run(s) marked KILLED" in result.stderr
    parents, children = split(all_runs(tmp_path))
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["nnlab.jobs_finished"] == "3" and parents[0].data.tags["nnlab.jobs_failed"] == "0"
    by_status = {}
    for c in children:
        by_status.setdefault(c.info.status, []).append(c)
    assert len(by_status["FINISHED"]) == 3 and len(by_status["KILLED"]) == 1
    assert by_status["KILLED"][0].data.tags["nnlab.failure"] == "stale"
    assert len({c.data.tags["nnlab.fingerprint"] for c in by_status["FINISHED"]}) == 3  # no duplicate
    assert {c.data.tags["sweep_id"] for c in children} == {parents[0].data.tags["sweep_id"]}

    again = nnlab_run(tmp_path, *grid[:2], "trainer.epochs=400", "model.width=8", "trainer.probe_size=64")
    # every job FINISHED before: no hint about resume=true, which would run nothing
    assert "already have a FINISHED run" not in again.stderr and "resume" not in again.stderr


@pytest.mark.slow
def test_two_sweeps_started_together_get_their_own_folders(tmp_path):
    assert nnlab_run(tmp_path, *FAST).returncode == 0  # the store exists (its creation is another test's)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [subprocess.Popen([sys.executable, "-m", "nnlab.run", "-m", f"seed={a},{b}", *FAST], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for a, b in ((0, 1), (2, 3))]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    parents, children = split(all_runs(tmp_path))
    parents = [p for p in parents if p.data.tags.get("nnlab.role") == "sweep"]  # not the first single run
    dirs = {p.data.tags["nnlab.sweep_dir"] for p in parents}
    assert len(parents) == 2 and len(dirs) == 2
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for parent in parents:
        mine = [c for c in children if c.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        seeds = {c.data.params["seed"] for c in mine}
        local = client.download_artifacts(parent.info.run_id, "multirun.yaml", str(tmp_path / parent.info.run_id))
        text = open(local).read()
        assert f"seed={','.join(sorted(seeds))}" in text  # its own grid, not the other sweep's


# --- refusals ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["+typo=5"], "+typo=5"),
    (["-m", "seed=0,1", "+typo=5"], "+typo=5"),
    (["model.depth=="], "model.depth=="),                 # Hydra cannot parse the override
    (["+experiment=nope"], "experiment=nope is not an option"),  # no such study
])
def test_refusals_exit_2_with_one_line_and_no_run(tmp_path, args, needle):
    result = nnlab_run(tmp_path, *args, *FAST)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("nnlab:"), result.stderr
    assert all_runs(tmp_path) == []


def test_a_malformed_experiment_file_is_one_line(tmp_path):
    study = tmp_path / "studies" / "experiment"
    study.mkdir(parents=True)
    (study / "broken.yaml").write_text("# @package _global_\ntrainer:\n  epochs: [1, 2\n")
    result = nnlab_run(tmp_path, f"hydra.searchpath=[file://{tmp_path / 'studies'}]", "+experiment=broken", *FAST)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "broken" in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert all_runs(tmp_path) == []


# --- stale runs ------------------------------------------------------------------------------------
def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_runs_clean_closes_only_runs_whose_process_is_gone(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("e")
    host = socket.gethostname()
    old = int((time.time() - 48 * 3600) * 1000)
    gone = client.create_run(exp, run_name="gone", tags={"nnlab.host": host, "nnlab.pid": str(dead_pid())})
    alive = client.create_run(exp, run_name="alive", tags={"nnlab.host": host, "nnlab.pid": str(os.getpid())})
    remote = client.create_run(exp, run_name="remote", start_time=old,
                               tags={"nnlab.host": "node-17", "nnlab.pid": "4242"})
    cmd = [sys.executable, "-m", "nnlab.runs", "clean", "--tracking-uri", uri]

    dry = subprocess.run([*cmd, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and "e/gone" in dry.stdout and "would be marked KILLED" in dry.stdout
    assert client.get_run(gone.info.run_id).info.status == "RUNNING"

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    status = {r.info.run_name: r.info.status for r in (client.get_run(x.info.run_id) for x in (gone, alive, remote))}
    assert status == {"gone": "KILLED", "alive": "RUNNING", "remote": "RUNNING"}
    assert client.get_run(gone.info.run_id).data.tags["nnlab.failure"] == "stale"

    refused = subprocess.run([*cmd, "--all-hosts"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--all-hosts needs --older-than" in refused.stderr
    remote_too = subprocess.run([*cmd, "--all-hosts", "--older-than", "24"], capture_output=True, text=True,
                                timeout=120)
    assert remote_too.returncode == 0
    assert client.get_run(remote.info.run_id).info.status == "KILLED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"  # never a live process's run
    missing = subprocess.run([*cmd, "--experiment", "nope"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no experiment 'nope'" in missing.stderr and "e" in missing.stderr


# --- the analysis never counts a configuration twice ---------------------------------------------------
def test_analysis_keeps_the_latest_finished_run_of_each_configuration(tmp_path):
    from nnlab.analysis import load_history, load_runs
    from nnlab.analysis.records import DuplicateRunsWarning

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("dup")
    ids = {}
    for name, fp, status, acc, start in [("a-first", "A", "FINISHED", 0.5, 1), ("a-again", "A", "FINISHED", 0.7, 2),
                                         ("a-killed", "A", "KILLED", None, 3), ("b", "B", "FINISHED", 0.9, 1)]:
        run = client.create_run(exp, run_name=name, start_time=start * 1000,
                                tags={"nnlab.fingerprint": fp, **({"nnlab.failure": "SIGTERM"} if status != "FINISHED" else {})})
        client.log_param(run.info.run_id, "seed", "0")
        if acc is not None:
            client.log_metric(run.info.run_id, "test_acc", acc, step=1)
        client.set_terminated(run.info.run_id, status)
        ids[name] = run.info.run_id
    with pytest.warns(DuplicateRunsWarning, match="2 run"):
        runs = load_runs("dup", uri)
    assert sorted(runs["run_name"]) == ["a-again", "b"] and runs.attrs["duplicates_dropped"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DuplicateRunsWarning)
        history = load_history("dup", uri)
    assert set(history["run_id"]) == {ids["a-again"], ids["b"]}


# --- a failing callback is a failing command ---------------------------------------------------------
def test_a_sweep_whose_close_fails_exits_1_instead_of_hydras_warning(capsys):
    """Hydra turns a callback's exception into a warning: nnlab's callback must exit by itself."""
    from nnlab.sweep.callback import SweepCallback

    class Parent:
        status, run_id = "RUNNING", "p"

    class BrokenStore:
        def __getattr__(self, name):
            raise OSError("disk I/O error")

    callback = SweepCallback()
    callback.parent, callback.tracker = Parent(), BrokenStore()
    with pytest.raises(SystemExit) as exit_:
        callback.on_multirun_end(config=None)
    assert exit_.value.code == 1
    assert "nnlab: the sweep could not be closed: OSError: disk I/O error" in capsys.readouterr().err


def test_a_sweep_that_cannot_start_exits_2_before_any_run(monkeypatch, capsys):
    from nnlab.sweep import callback as sweep

    def broken(config):
        raise RuntimeError("the store said no")

    monkeypatch.setattr(sweep, "_checked_plan", broken)
    with pytest.raises(SystemExit) as exit_:
        sweep.SweepCallback().on_multirun_start(config=None)
    assert exit_.value.code == 2
    assert "the sweep could not start: RuntimeError: the store said no -- no run was created" in capsys.readouterr().err
