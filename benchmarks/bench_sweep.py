"""What a sweep costs beyond its training: Hydra + MLflow per job, and the joblib launcher's speed-up.

    .venv/bin/python benchmarks/bench_sweep.py [--epochs 20,100] [--workers 2] [--stores new,existing]

Runs the same 24-job grid (2 inits x 3 activations x 4 depths), for each ``--epochs`` value and
each kind of store, twice from the command line: sequentially (Hydra's basic launcher,
in-process) and with ``hydra/launcher=joblib`` on ``--workers`` processes. Each sweep runs in a
fresh temporary directory with its own ./mlflow.db: ``new`` = the sweep creates the store (the
first sweep in a directory), ``existing`` = an earlier command already created the store and the
experiment (every later sweep of a study). The core's own training time of every job is read
back from MLflow (``train_seconds``), so

    per-job overhead = (sweep phase - sum of train_seconds) / jobs

where the sweep phase runs from the parent run's creation to its end (Hydra composing each job,
nnlab building the network, test evaluation, every MLflow write and artifact). What lies outside
it — process start, imports, checking the grid, opening the store, process exit — is paid once
per command and shown as start + exit. Two speed-ups, both sequential / joblib measured side by
side in this run: of the whole command (wall clock), and of the sweep phase (the jobs' throughput).
A third, the ceiling, is the wall-clock speed-up joblib would reach if its jobs' Hydra + MLflow work cost
what it costs sequentially and split perfectly over the workers: sequential wall / (joblib's start + exit
+ (its jobs' training + the sequential per-job overhead x jobs) / workers). The two costs it keeps, the
command's start and the training slowed by a second busy core, are measured, not assumed; the gap between
the ceiling and the real speed-up is all that making a job's Hydra and MLflow work faster could win.
Targets: per-job overhead <= 0.15 s; joblib on 2 workers >= 1.7x the sequential speed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = ["init=he,xavier", "activation=relu,tanh,sigmoid", "model.depth=1,2,4,8"]


def start_sweep(workdir: Path, epochs: int, launcher: list[str]) -> subprocess.Popen:
    """Start the grid from the command line in ``workdir``."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "nnlab.run", "-m", *GRID, f"trainer.epochs={epochs}",
           "tracking.experiment=bench_sweep", *launcher]
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> None:
    _, stderr = process.communicate()
    if process.returncode != 0:
        sys.exit(f"sweep failed ({' '.join(process.args)}):\n{stderr[-3000:]}")


def run_sweep(workdir: Path, epochs: int, launcher: list[str]) -> float:
    """Run the grid from the command line in ``workdir``; return its wall-clock seconds."""
    start = time.perf_counter()
    finish(start_sweep(workdir, epochs, launcher))
    return time.perf_counter() - start


def side_by_side(epochs: int) -> dict[str, float]:
    """Two sequential sweeps at once, each with its own store: what two busy cores cost each process."""
    with tempfile.TemporaryDirectory(prefix="nnlab-bench-") as a, tempfile.TemporaryDirectory(prefix="nnlab-bench-") as b:
        processes = [start_sweep(Path(d), epochs, []) for d in (a, b)]
        for process in processes:
            finish(process)
        results = [read_back(Path(d)) for d in (a, b)]
    return {key: sum(r[key] for r in results) / 2 for key in ("jobs", "phase", "train")}


def read_back(workdir: Path) -> dict[str, float]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bench_sweep")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert all(r.info.status == "FINISHED" for r in children), "a job failed"
    return {"jobs": len(children),
            "phase": (parent.info.end_time - parent.info.start_time) / 1000,
            "train": sum(r.data.metrics["train_seconds"] for r in children),
            "test_acc": sum(r.data.metrics["test_acc"] for r in children) / len(children)}


def create_store(workdir: Path) -> None:
    """What an earlier command leaves behind: the store and the (tagged) experiment."""
    subprocess.run([sys.executable, "-c", "from nnlab.record.store import Tracker; Tracker().experiment_id('bench_sweep')"],
                   cwd=workdir, check=True, capture_output=True)


def measure(epochs: int, workers: int, store: str) -> dict[str, dict[str, float]]:
    launchers = {"sequential (basic)": [],
                 f"joblib, {workers} workers": ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={workers}"]}
    rows = {}
    for name, launcher in launchers.items():
        with tempfile.TemporaryDirectory(prefix="nnlab-bench-") as tmp:
            if store == "existing":
                create_store(Path(tmp))
            wall = run_sweep(Path(tmp), epochs, launcher)
            rows[name] = {"wall": wall, **read_back(Path(tmp))}
    return rows


def ideal_seconds(row: dict[str, float], overhead: float, workers: int) -> float:
    """A command's wall clock if its jobs' Hydra + MLflow work cost ``overhead`` seconds in all (the
    sequential launcher's) and every job's work split perfectly over ``workers``."""
    return (row["wall"] - row["phase"]) + (row["train"] + overhead) / workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", default="20,100", help="comma-separated; one pair of sweeps each")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stores", default="new,existing", help="comma-separated: new, existing")
    parser.add_argument("--contention", type=int, default=20, metavar="EPOCHS",
                        help="also run two sequential sweeps at once, to see what a second busy core costs (0: skip)")
    args = parser.parse_args()
    print(f"24-job grid ({' '.join(GRID)}), {os.cpu_count()} CPUs, BLAS 1 thread per job "
          "(blas_threads=1, the default)")
    print("| epochs | store | launcher | wall s | start + exit s | sweep phase s | sum of train_seconds "
          "| overhead per job s | speed-up, wall | speed-up, sweep phase | ceiling, perfect scaling "
          "| mean test_acc |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for epochs in [int(e) for e in args.epochs.split(",")]:
        for store in args.stores.split(","):
            rows = measure(epochs, args.workers, store)
            seq = rows["sequential (basic)"]
            overhead = seq["phase"] - seq["train"]  # all jobs' Hydra + MLflow work, run one after another
            for name, r in rows.items():
                sequential = name.startswith("sequential")
                per_job = f"{(r['phase'] - r['train']) / r['jobs']:.3f}" if sequential else "(parallel)"
                ceiling = seq["wall"] / ideal_seconds(r, overhead, 1 if sequential else args.workers)
                print(f"| {epochs} | {store} | {name} | {r['wall']:.1f} | {r['wall'] - r['phase']:.1f} "
                      f"| {r['phase']:.1f} | {r['train']:.1f} | {per_job} | {seq['wall'] / r['wall']:.2f}x "
                      f"| {seq['phase'] / r['phase']:.2f}x | {ceiling:.2f}x | {r['test_acc']:.4f} |", flush=True)
    alone = measure(args.contention, args.workers, "new")["sequential (basic)"] if args.contention else None
    if alone is not None:
        both = side_by_side(args.contention)
        print(f"\nTwo busy cores ({args.contention} epochs): the sequential sweep alone, then two of them at once "
              "(own directories and stores, nothing shared), means per sweep:")
        print("| sweeps at once | sweep phase s | sum of train_seconds | overhead per job s |")
        print("|---:|---:|---:|---:|")
        for n, r in ((1, alone), (2, both)):
            print(f"| {n} | {r['phase']:.1f} | {r['train']:.1f} | {(r['phase'] - r['train']) / r['jobs']:.3f} |")
    print("\noverhead per job = (sweep phase - sum of train_seconds) / 24, sequential launcher (target <= 0.15 s);"
          "\nstart + exit = process start, imports, checking the grid, opening the store, the parent run, exit;"
          "\nspeed-up = sequential / this, both measured in this run; ceiling = the wall-clock speed-up if the jobs'"
          "\nHydra + MLflow work cost what it does sequentially, split perfectly over the workers "
          f"(target >= 1.7x on {args.workers} workers).")


if __name__ == "__main__":
    main()
