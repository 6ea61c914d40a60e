"""Fault injection with real processes and real signals: ``python -m nnlab.run -m ...`` in a
subprocess (its own session), killed or interrupted from outside, then the store (the sqlite file
MLflow writes) and the process table are inspected.

* SIGKILL of the whole command after k of n jobs, then ``resume=true``: exactly n FINISHED
  children, one per config (no duplicate ``nnlab.fingerprint``), every step of every metric, one
  parent, nothing RUNNING.
* SIGTERM / SIGINT at seeded random moments (between jobs included), to the command or to its
  process group, both launchers: exit 143 / 130 within seconds, nothing RUNNING, no process of the
  command left, nothing holding its stdout open (``communicate`` returns).
* SIGKILL of one joblib worker: the sweep goes on, exits 1; that job FAILED ``worker_died``, every
  other job FINISHED once.
"""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnlab.analysis.records import logged_steps

pytestmark = pytest.mark.slow

JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
LAUNCHERS = {"basic": [], "joblib": JOBLIB}
SMALL = ["model.width=16", "trainer.probe_size=64", "tracking.log_weights=false"]
FINAL = {"test_loss", "test_acc", "best_val_acc", "epochs_run", "train_seconds"}
EXIT_BOUND_S = 10.0  # a command must be gone this long after the signal (loaded 2-core machine)


# --- processes ------------------------------------------------------------------------------------
def start(workdir: Path, *args: str) -> subprocess.Popen:
    """The CLI in its own session (its pid is its process group), cwd=workdir (./mlflow.db there)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    return subprocess.Popen([sys.executable, "-m", "nnlab.run", "-m", *args], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    try:
        return process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


def session_processes(sid: int) -> set[int]:
    """Live (not zombie) processes of session ``sid`` (Linux /proc): the command and whatever it started."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[3] == str(sid) and fields[0] != "Z":  # fields: state ppid pgrp session ...
            found.add(int(stat.parent.name))
    return found


def assert_no_process_left(sid: int, patience: float = 3.0) -> None:
    deadline = time.monotonic() + patience
    while session_processes(sid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session_processes(sid) == set(), "processes of the sweep left behind"


# --- the store, read as MLflow wrote it ------------------------------------------------------------
def query(db: Path, sql: str, *params) -> list[tuple]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute(sql, params).fetchall()
    except sqlite3.Error:  # tables not created yet, or locked for longer than the timeout
        return []


def runs(db: Path, experiment: str = "nnlab") -> list[dict]:
    """Every run of the experiment: id, status, tags."""
    rows = query(db, "select r.run_uuid, r.status from runs r join experiments e on r.experiment_id = e.experiment_id "
                     "where e.name = ?", experiment)
    tags: dict[str, dict] = {run_id: {} for run_id, _ in rows}
    for run_id, key, value in query(db, "select run_uuid, key, value from tags"):
        if run_id in tags:
            tags[run_id][key] = value
    return [{"id": run_id, "status": status, "tags": tags[run_id]} for run_id, status in rows]


def children(all_runs: list[dict]) -> list[dict]:
    return [r for r in all_runs if "mlflow.parentRunId" in r["tags"]]


def parents(all_runs: list[dict]) -> list[dict]:
    return [r for r in all_runs if "mlflow.parentRunId" not in r["tags"]]


def wait_for(predicate, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"the command ended first (exit {process.returncode}): {process.stderr.read()}")
        time.sleep(0.1)
    raise AssertionError("timed out")


def assert_complete_histories(db: Path, run_ids: list[str], epochs: int) -> None:
    """Every metric at each step the record defines for it (``logged_steps``), once."""
    for run_id in run_ids:
        rows = query(db, "select key, step, count(*) from metrics where run_uuid = ? group by key, step", run_id)
        keys = {key for key, *_ in rows}
        assert FINAL <= keys and {"train_loss", "val_acc", "grad_norm/global"} <= keys, (run_id, keys)
        assert [(key, step) for key, step, count in rows if count != 1] == [], run_id  # nothing written twice
        for key in keys:
            steps, expected = sorted(s for k, s, _ in rows if k == key), logged_steps(key, epochs)
            assert steps == list(expected) if expected is not None else set(steps) <= set(range(epochs + 1)), \
                (run_id, key, steps)


# --- SIGKILL of the command, then resume=true ---------------------------------------------------------
@pytest.mark.parametrize("launcher", LAUNCHERS.values(), ids=LAUNCHERS.keys())
def test_sigkill_after_k_of_n_then_resume(tmp_path, launcher):
    n, k, epochs = 6, 2, 8
    args = [f"seed=range(0,{n})", f"trainer.epochs={epochs}", *SMALL, *launcher]
    db = tmp_path / "mlflow.db"
    process = start(tmp_path, *args)
    try:
        wait_for(lambda: sum(r["status"] == "FINISHED" for r in children(runs(db))) >= k, process)
        os.killpg(process.pid, signal.SIGKILL)  # the command and every process it started, at once
    finally:
        finish(process)
    assert process.returncode == -signal.SIGKILL
    before = children(runs(db))
    finished_before = sum(r["status"] == "FINISHED" for r in before)
    assert k <= finished_before < n  # killed mid-sweep

    resumed = start(tmp_path, *args, "resume=true")
    _, stderr = finish(resumed)
    assert resumed.returncode == 0, stderr
    assert f"resume: {finished_before} skipped (FINISHED before), {n - finished_before} to run" in stderr
    after = runs(db)
    assert len(parents(after)) == 1 and parents(after)[0]["status"] == "FINISHED"
    assert all(r["status"] != "RUNNING" for r in after)  # the killed attempts: KILLED, stale
    done = [r for r in children(after) if r["status"] == "FINISHED"]
    fingerprints = [r["tags"]["nnlab.fingerprint"] for r in done]
    assert len(done) == n and len(set(fingerprints)) == n  # every job once, no duplicate
    assert {r["tags"]["nnlab.fingerprint"] for r in before} <= set(fingerprints)
    assert_complete_histories(db, [r["id"] for r in done], epochs)


# --- SIGTERM / SIGINT at random moments -------------------------------------------------------------
TRIALS = int(os.environ.get("NNLAB_FAULT_TRIALS", "2"))
CASES = [(launcher, sig) for launcher in LAUNCHERS for sig in ("SIGTERM", "SIGINT")]


@pytest.mark.parametrize("launcher,sig", CASES, ids=[f"{a}-{b}" for a, b in CASES])
def test_signal_at_a_random_moment(tmp_path, launcher, sig):
    """Short jobs (~0.3 s), signal 0-3 s after the sweep's parent run exists: lands mid-job or between jobs."""
    rng = random.Random(f"{launcher}-{sig}")
    signum = signal.Signals[sig]
    db = tmp_path / "mlflow.db"
    for trial in range(TRIALS):
        experiment = f"trial{trial}"
        delay, group = rng.uniform(0.0, 3.0), rng.random() < 0.5  # the command alone, or its process group
        process = start(tmp_path, "seed=range(0,40)", "trainer.epochs=3", *SMALL, *LAUNCHERS[launcher],
                        f"tracking.experiment={experiment}")
        try:
            wait_for(lambda: parents(runs(db, experiment)), process)
            time.sleep(delay)
            sent = time.monotonic()
            (os.killpg if group else os.kill)(process.pid, signum)
            where = f"trial {trial}: {sig} to the {'group' if group else 'command'} after {delay:.2f}s"
            try:
                _, stderr = process.communicate(timeout=60)  # returns: nothing holds the command's output open
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                _, stderr = process.communicate()
                pytest.fail(f"{where}: output still open 60 s after the signal (exit {process.returncode})\n{stderr}")
            took = time.monotonic() - sent
        finally:
            finish(process)
        assert process.returncode == 128 + signum, f"{where}\n{stderr}"
        assert took < EXIT_BOUND_S, f"{where}: exited {took:.1f}s after the signal"
        assert_no_process_left(process.pid)
        record = runs(db, experiment)
        assert len(parents(record)) == 1, where
        assert [r for r in record if r["status"] == "RUNNING"] == [], where
        assert parents(record)[0]["status"] == "KILLED" and parents(record)[0]["tags"]["nnlab.failure"] == sig, where
        for run in children(record):
            why = {k: v for k, v in run["tags"].items() if k.startswith("nnlab.failure")}
            assert run["status"] in ("FINISHED", "KILLED"), f"{where}: a child {run['status']} {why}\n{stderr}"
            if run["status"] == "KILLED":
                assert run["tags"]["nnlab.failure"] == sig, (where, run)
        assert f"sweep stopped by {sig}" in stderr, where


# --- SIGKILL of one joblib worker ------------------------------------------------------------------
def test_a_dead_worker_takes_only_its_own_job(tmp_path):
    n, epochs = 6, 300  # long enough that the job found running is still running when it is killed
    db = tmp_path / "mlflow.db"
    process = start(tmp_path, f"seed=range(0,{n})", f"trainer.epochs={epochs}", *SMALL, *JOBLIB)
    try:
        def running_child():
            return [r for r in children(runs(db)) if r["status"] == "RUNNING" and "nnlab.pid" in r["tags"]]

        wait_for(running_child, process)
        time.sleep(0.5)  # into its training
        wait_for(running_child, process)
        victim = int(running_child()[0]["tags"]["nnlab.pid"])
        os.kill(victim, signal.SIGKILL)
        _, stderr = process.communicate(timeout=300)
    finally:
        finish(process)
    assert process.returncode == 1, stderr  # a job failed; the sweep went on
    assert_no_process_left(process.pid)
    record = runs(db)
    assert len(parents(record)) == 1 and [r for r in record if r["status"] == "RUNNING"] == []
    died = [r for r in children(record) if r["tags"].get("nnlab.failure") == "worker_died"]
    assert len(died) == 1 and died[0]["status"] == "FAILED", stderr
    assert died[0]["tags"]["nnlab.worker_pid"] == str(victim) and died[0]["tags"]["nnlab.worker_exit"] == "SIGKILL"
    dead_fp = died[0]["tags"]["nnlab.fingerprint"]
    done = [r for r in children(record) if r["status"] == "FINISHED"]
    fingerprints = [r["tags"]["nnlab.fingerprint"] for r in done]
    assert len(done) == n - 1 and len(set(fingerprints)) == n - 1 and dead_fp not in fingerprints
    others = [r for r in children(record) if r not in done and r not in died]
    assert all(r["status"] == "KILLED" and r["tags"]["nnlab.failure"] == "requeued" for r in others)
    assert_complete_histories(db, [r["id"] for r in done], epochs)
    assert "5 finished, 1 failed" in stderr and f"worker_died (worker pid {victim}: SIGKILL)" in stderr


# --- a signal swallowed on its way ----------------------------------------------------------------
@pytest.mark.parametrize("job", [1, 3], ids=["mid-sweep", "last-job"])
def test_a_signal_swallowed_by_other_code_still_stops_the_sweep(tmp_path, monkeypatch, job):
    """A SIGTERM whose interrupt some other code catches and drops (here a Hydra callback at the end of
    job ``job`` of 4) still stops the sweep: no job starts after it, the parent is KILLED, exit 143."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    db = tmp_path / "mlflow.db"
    process = start(tmp_path, "seed=range(0,4)", "trainer.epochs=2", *SMALL,
                    "+hydra.callbacks.swallow._target_=swallowing_callback.SwallowsASignal",
                    f"+hydra.callbacks.swallow.job={job}")
    _, stderr = finish(process, timeout=120)
    assert process.returncode == 143, stderr
    record = runs(db)
    (parent,) = parents(record)
    assert (parent["status"], parent["tags"]["nnlab.failure"]) == ("KILLED", "SIGTERM"), stderr
    assert sorted(r["status"] for r in children(record)) == ["FINISHED"] * (job + 1), stderr  # none after it
    assert "sweep stopped by SIGTERM" in stderr
