"""Ctrl-C (SIGINT to the process group, as a terminal sends it) and SIGTERM (to the launching
process) in a joblib sweep, early, mid-sweep and late: exit 130/143 within 2 s of the signal, no
traceback, the summary's counts equal to the statuses in the store, nothing RUNNING, no process
of the command left. Real processes and signals; the sweep is kept small so that a loaded 2-core
machine still has its workers and store answering within the bound."""
from __future__ import annotations

import random
import re
import signal
import subprocess
import time

import pytest

from tests.test_faults import JOBLIB, SMALL, assert_no_process_left, children, finish, parents, runs, start

pytestmark = pytest.mark.slow

EXIT_WITHIN_S = 2.0
N_JOBS = 4
SUMMARY = re.compile(r"sweep stopped by (SIG\w+): (\d+) finished, (\d+) failed(?:, (\d+) stopped)?, (\d+) not run "
                     r"-- of (\d+) jobs")
# when the signal is sent: once the parent run exists, once a job finished, once the last job started
MOMENTS = ("early", "mid", "late")
CASES = [(moment, sig) for moment in MOMENTS for sig in ("SIGINT", "SIGTERM")]


def store_counts(record: list[dict], sig: str) -> tuple[int, int, int, int]:
    """(finished, failed, stopped, not run) per job (fingerprint), as the summary defines them."""
    by_fp: dict[str, list[dict]] = {}
    for run in children(record):
        by_fp.setdefault(run["tags"]["nnlab.fingerprint"], []).append(run)
    finished = sum(any(r["status"] == "FINISHED" for r in rs) for rs in by_fp.values())
    stopped = sum(not any(r["status"] == "FINISHED" for r in rs)
                  and all(r["status"] == "KILLED" and r["tags"].get("nnlab.failure") == sig for r in rs)
                  for rs in by_fp.values())
    failed = len(by_fp) - finished - stopped
    return finished, failed, stopped, N_JOBS - len(by_fp)


def wait_until(predicate, process: subprocess.Popen, timeout: float = 240) -> bool:
    """True once ``predicate()`` holds; False if the command ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.02)
    raise AssertionError("timed out waiting for the moment to signal")


@pytest.mark.parametrize("moment,sig", CASES, ids=[f"{m}-{s}" for m, s in CASES])
def test_a_signal_stops_a_joblib_sweep_within_two_seconds(tmp_path, moment, sig):
    rng = random.Random(f"{moment}-{sig}")
    signum, group = signal.Signals[sig], sig == "SIGINT"  # Ctrl-C reaches the group; kill(1) the command
    db = tmp_path / "mlflow.db"
    experiment = f"{moment}-{sig}"
    process = start(tmp_path, f"seed=range(0,{N_JOBS})", "trainer.epochs=20", *SMALL, *JOBLIB,
                    f"tracking.experiment={experiment}", "tracking.sweep_report=false")
    try:
        def reached() -> bool:
            record = runs(db, experiment)
            kids = children(record)
            if moment == "early":
                return bool(parents(record))
            if moment == "mid":
                return any(r["status"] == "FINISHED" for r in kids)
            return len(kids) >= N_JOBS  # the last job has started
        if not wait_until(reached, process):
            pytest.skip(f"the sweep ended before the {moment} moment")
        time.sleep(rng.uniform(0.0, 0.1 if moment == "late" else 0.3))  # a job takes ~0.3 s: late is in the last one
        sent = time.monotonic()
        (lambda: __import__("os").killpg(process.pid, signum) if group else process.send_signal(signum))()
        _, stderr = process.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        finish(process)
    where = f"{sig} {moment}, {took:.2f}s after the signal"
    if process.returncode == 0:
        pytest.skip(f"{where}: the sweep had already closed")  # the signal landed after its end
    assert process.returncode == 128 + signum, f"{where}\n{stderr}"
    assert took <= EXIT_WITHIN_S, f"{where}\n{stderr}"
    assert "Traceback" not in stderr, f"{where}\n{stderr}"
    assert_no_process_left(process.pid, patience=0.5)
    record = runs(db, experiment)
    assert [r for r in record if r["status"] == "RUNNING"] == [], where
    parent = parents(record)[0]
    if parent["status"] == "FINISHED":
        # the signal came while the sweep was closing after its last job: SweepCallback.close holds it until
        # the parent is closed (every job finished, the normal summary printed), then acts on it (128 + signal)
        done = re.search(r"sweep done: (\d+) finished, (\d+) failed -- of (\d+) jobs", stderr)
        assert done is not None and done.groups() == (str(N_JOBS), "0", str(N_JOBS)), f"{where}\n{stderr}"
        assert store_counts(record, sig) == (N_JOBS, 0, 0, 0), where
        return
    assert parent["status"] == "KILLED" and parent["tags"]["nnlab.failure"] == sig, where
    found = SUMMARY.search(stderr)
    assert found is not None, f"{where}\n{stderr}"
    said = (int(found[2]), int(found[3]), int(found[4] or 0), int(found[5]))
    assert found[1] == sig and int(found[6]) == N_JOBS, where
    assert said == store_counts(record, sig), f"{where}: summary {said}, store {store_counts(record, sig)}\n{stderr}"


@pytest.mark.parametrize("seed", range(3))
def test_ctrl_c_just_after_the_summary_ends_the_command_with_its_own_status_or_130(tmp_path, seed):
    """Ctrl-C within 60 ms of the sweep's last line, while the process exits: a finished sweep stays
    finished, and the status is the sweep's own (0: the signal came after everything) or 130, never a bare
    -2 (Python puts the default action back before it tears its modules down) nor a traceback."""
    delay = random.Random(seed).uniform(0.0, 0.06)
    db = tmp_path / "mlflow.db"
    process = start(tmp_path, "seed=range(0,2)", "trainer.epochs=2", *SMALL, *JOBLIB, "tracking.sweep_report=false")
    try:
        for line in process.stderr:
            if line.lstrip().startswith("then:"):  # the last line: the UI link
                break
        time.sleep(delay)
        __import__("os").killpg(process.pid, signal.SIGINT)
        _, rest = process.communicate(timeout=30)
    finally:
        finish(process)
    assert process.returncode in (0, 128 + signal.SIGINT), f"{delay:.3f}s after the last line\n{rest}"
    assert "Traceback" not in rest, rest
    assert_no_process_left(process.pid, patience=0.5)
    record = runs(db)
    assert [r["status"] for r in parents(record)] == ["FINISHED"]
    assert sorted(r["status"] for r in children(record)) == ["FINISHED", "FINISHED"]
