"""Fault injection: what a sweep loses to SIGKILL, SIGTERM, Ctrl-C and a dead worker, after resume=true.

Each trial starts ``python -m nnlab.run -m seed=range(0,N) ...`` in a fresh directory (its own
sqlite store) and its own session, injects one fault with real signals, waits for the command to
end, then runs the same command with ``resume=true``, and reads the store and the process table:

* SIGKILL of the command (its whole process group) once ``--kill-after`` jobs have FINISHED;
* SIGTERM to the command, or SIGINT to the command or its process group (Ctrl-C), at a seeded
  random moment 0-3 s after the sweep's parent run exists: mid-job or between jobs;
* SIGKILL of one joblib worker while it trains (the sweep goes on; resume re-runs that one job).

Counted after the resume (all should be 0): jobs without a FINISHED run (runs lost), missing
(metric, step) points of the FINISHED runs (each metric at the steps the record defines for it,
``nnlab.analysis.records.logged_steps``: per-epoch metrics at 0..epochs, the final ones once),
duplicates (two FINISHED runs of one config, or a (metric, step) written twice), runs left
RUNNING, and processes of the faulted command still alive 3 s after it exited. Also the exit
statuses of the faulted commands and how long each took to exit after SIGTERM / SIGINT.

    python benchmarks/bench_faults.py                 # the README table (~15 min on a busy 2-core box)
    python benchmarks/bench_faults.py --signal-trials 1 --kill-trials 1
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nnlab.analysis.records import logged_steps

JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
SMALL = ["model.width=16", "trainer.probe_size=64", "tracking.log_weights=false"]


def start(workdir: Path, args: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    return subprocess.Popen([sys.executable, "-m", "nnlab.run", "-m", *args], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def query(db: Path, sql: str, *params) -> list[tuple]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute(sql, params).fetchall()
    except sqlite3.Error:
        return []


def runs(db: Path) -> list[dict]:
    rows = query(db, "select run_uuid, status from runs")
    tags: dict[str, dict] = {run_id: {} for run_id, _ in rows}
    for run_id, key, value in query(db, "select run_uuid, key, value from tags"):
        if run_id in tags:
            tags[run_id][key] = value
    return [{"id": i, "status": s, "tags": tags[i], "child": "mlflow.parentRunId" in tags[i]} for i, s in rows]


def session_alive(sid: int, patience: float = 3.0) -> int:
    """Live processes of session ``sid``, ``patience`` seconds after its leader exited."""
    deadline = time.monotonic() + patience
    while True:
        alive = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            alive += fields[3] == str(sid) and fields[0] != "Z"
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def wait_for(predicate, process: subprocess.Popen, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def audit(db: Path, n: int, epochs: int) -> dict[str, int]:
    """What the store lacks or holds twice, after the resume."""
    record = runs(db)
    done = [r for r in record if r["child"] and r["status"] == "FINISHED"]
    fingerprints = [r["tags"].get("nnlab.fingerprint") for r in done]
    keys = {k for run in done for (k,) in query(db, "select distinct key from metrics where run_uuid = ?", run["id"])}
    missing = duplicated = 0
    for run in done:
        rows = query(db, "select key, step, count(*) from metrics where run_uuid = ? group by key, step", run["id"])
        have = {(k, s) for k, s, _ in rows}
        duplicated += sum(c - 1 for *_, c in rows)
        expected = {(k, s) for k in keys for s in (logged_steps(k, epochs) or ())}  # steps the record defines
        missing += len(expected - have)
    return {"lost": n - len(set(fingerprints)), "points": missing,
            "dups": len(fingerprints) - len(set(fingerprints)) + duplicated,
            "running": sum(r["status"] == "RUNNING" for r in record),
            "parents": sum(not r["child"] for r in record)}


def trial(kind: str, launcher: list[str], n: int, epochs: int, rng: random.Random, kill_after: int) -> dict:
    """One fault, then resume=true; the audit, the exit status and the seconds to exit after a signal."""
    with tempfile.TemporaryDirectory(prefix="nnlab-faults-") as tmp:
        workdir, db = Path(tmp), Path(tmp) / "mlflow.db"
        args = [f"seed=range(0,{n})", f"trainer.epochs={epochs}", *SMALL, *launcher]
        process = start(workdir, args)
        took = None
        try:
            if kind == "SIGKILL command":
                wait_for(lambda: sum(r["child"] and r["status"] == "FINISHED" for r in runs(db)) >= kill_after, process)
                os.killpg(process.pid, signal.SIGKILL)
            elif kind == "worker SIGKILL":
                busy = lambda: [r for r in runs(db) if r["child"] and r["status"] == "RUNNING" and "nnlab.pid" in r["tags"]]
                while wait_for(busy, process):  # a job found running mid-training (0.3 s in) is the victim
                    time.sleep(0.3)
                    victims = busy()
                    if victims:
                        os.kill(int(victims[0]["tags"]["nnlab.pid"]), signal.SIGKILL)
                        break
            else:
                signum = signal.Signals[kind.split()[0]]
                wait_for(lambda: any(not r["child"] for r in runs(db)), process)
                time.sleep(rng.uniform(0.0, 3.0))
                group = signum == signal.SIGINT and rng.random() < 0.5  # Ctrl-C in a terminal: the group
                sent = time.monotonic()
                (os.killpg if group else os.kill)(process.pid, signum)
            process.communicate(timeout=600)
            if kind.startswith("SIGTERM") or kind.startswith("SIGINT"):
                took = time.monotonic() - sent
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
        left = session_alive(process.pid)
        resumed = start(workdir, [*args, "resume=true"])
        resumed.communicate(timeout=900)
        result = audit(db, n, epochs)
        result.update(status=process.returncode, resume_status=resumed.returncode, left=left, took=took)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--signal-trials", type=int, default=3, help="per signal and launcher")
    parser.add_argument("--kill-trials", type=int, default=2, help="SIGKILL of the command, and of a worker")
    parser.add_argument("--kill-after", type=int, default=2, help="FINISHED jobs before the command is killed")
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args()
    rng = random.Random(opts.seed)
    plan = [("SIGKILL command", "sequential", opts.kill_trials), ("SIGKILL command", "joblib", opts.kill_trials),
            ("SIGTERM", "sequential", opts.signal_trials), ("SIGTERM", "joblib", opts.signal_trials),
            ("SIGINT", "sequential", opts.signal_trials), ("SIGINT", "joblib", opts.signal_trials),
            ("worker SIGKILL", "joblib", opts.kill_trials)]
    print(f"{opts.jobs} jobs of {opts.epochs} epochs per sweep; joblib = 2 workers; every fault followed by "
          "resume=true; counts summed over the trials\n")
    print("| fault | launcher | workers | faults injected | exit status (faulted / resume) | runs lost "
          "| metric points lost | duplicates | runs left RUNNING | processes left | exit after signal s, median / max |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, launcher, trials in plan:
        results = [trial(kind, JOBLIB if launcher == "joblib" else [], opts.jobs, opts.epochs, rng, opts.kill_after)
                   for _ in range(trials)]
        total = {k: sum(r[k] for r in results) for k in ("lost", "points", "dups", "running", "left")}
        statuses = "/".join(sorted({str(r["status"]) for r in results}))
        resumes = "/".join(sorted({str(r["resume_status"]) for r in results}))
        took = [r["took"] for r in results if r["took"] is not None]
        timing = f"{statistics.median(took):.1f} / {max(took):.1f}" if took else "-"
        parents = {r["parents"] for r in results}
        assert parents == {1}, f"{kind}: parents per sweep {parents}"
        print(f"| {kind} | {launcher} | {2 if launcher == 'joblib' else 1} | {trials} | {statuses} / {resumes} "
              f"| {total['lost']} | {total['points']} | {total['dups']} | {total['running']} | {total['left']} "
              f"| {timing} |", flush=True)


if __name__ == "__main__":
    main()
