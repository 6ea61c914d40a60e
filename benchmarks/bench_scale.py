"""How many concurrent jobs one tracking server carries: sqlite against PostgreSQL behind ``mlflow server``.

    .venv/bin/python benchmarks/bench_scale.py [--jobs 200] [--workers 4] [--epochs 5] [--server-workers 4]

For each backend (sqlite file, then a private PostgreSQL started here), starts ``mlflow server`` the
way ``python -m nnlab.server`` does (127.0.0.1, proxied artifacts, ``--server-workers`` processes) and
after a warm-up sweep (each server worker imports and opens its store on its first requests),
runs one sweep of ``--jobs`` short jobs (``seed=0..jobs-1``) on ``--workers`` joblib workers against
it, from the command line, as a lab would. Measured:

* jobs per minute over the sweep phase (parent run created -> closed) and the whole command;
* tracking requests per job and their latency as the jobs see it (p50, p99): every HTTP request the
  sweep's processes make is timed in the client (a ``sitecustomize`` put on the sweep's PYTHONPATH
  wraps ``requests.Session.request``; the server gets nothing injected);
* the server's CPU seconds per job (mlflow server's processes, plus PostgreSQL's for that backend),
  read from /proc before and after: the work one job costs the tracking side;
* runs lost (children not FINISHED) and metric points lost (values the jobs sent in accepted
  ``log-batch`` requests, minus the rows the database holds for the experiment): both must be 0.

The capacity estimate: one worker finishes a job every ``job_seconds`` (workers x sweep phase / jobs);
a server with ``C`` cores saturates at ``C / server_cpu_per_job`` jobs per second, so it keeps up with
about ``C x job_seconds / server_cpu_per_job`` concurrent workers. For sqlite every write also holds
the file's single write lock; PostgreSQL writes rows concurrently.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nnlab import server as S  # noqa: E402

EXPERIMENT = "bench_scale"

SITECUSTOMIZE = '''\
# written by benchmarks/bench_scale.py: time every HTTP request this process makes
import os, time


def _install(folder):
    import json
    import requests

    request = requests.Session.request

    def timed(self, method, url, *args, **kwargs):
        start = time.perf_counter()
        status, sent = None, 0
        try:
            response = request(self, method, url, *args, **kwargs)
            status = response.status_code
            return response
        finally:
            body = kwargs.get("json")
            if isinstance(body, str):
                body = json.loads(body)
            if isinstance(body, dict):
                sent = len(body.get("metrics") or ())
            path = url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
            with open(os.path.join(folder, f"{os.getpid()}.tsv"), "a") as log:
                log.write(f"{method}\\t/{path}\\t{status}\\t{time.perf_counter() - start:.6f}\\t{sent}\\n")

    requests.Session.request = timed


if os.environ.get("NNLAB_BENCH_REQUESTS"):
    _install(os.environ["NNLAB_BENCH_REQUESTS"])
'''


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU of these processes and all their children (alive now)."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def postmaster_pid(data: Path) -> int:
    return int((data / "postmaster.pid").read_text().split()[0])


def run_sweep(workdir: Path, url: str, jobs: int, workers: int, epochs: int,
              experiment: str = EXPERIMENT) -> tuple[float, Path]:
    workdir.mkdir()
    requests_dir = workdir / "requests"
    requests_dir.mkdir()
    hook = workdir / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")])),
               NNLAB_BENCH_REQUESTS=str(requests_dir))
    cmd = [sys.executable, "-m", "nnlab.run", "-m", f"seed=range(0,{jobs})", f"trainer.epochs={epochs}",
           "model.width=32", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={workers}",
           f"tracking.uri={url}", f"tracking.experiment={experiment}"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"sweep failed:\n{done.stderr[-3000:]}")
    return wall, requests_dir


def read_requests(folder: Path) -> list[tuple[str, str, str, float, int]]:
    rows = []
    for path in folder.glob("*.tsv"):
        for line in path.read_text().splitlines():
            method, endpoint, status, seconds, sent = line.split("\t")
            rows.append((method, endpoint, status, float(seconds), int(sent)))
    return rows


def stored_points(backend: str, where: Path | S.Postgres, run_ids: list[str]) -> int:
    """Metric rows the database holds for these runs (read directly, not through the server)."""
    marks = ",".join(["%s" if backend == "postgresql" else "?"] * len(run_ids))
    query = f"SELECT count(*) FROM metrics WHERE run_uuid IN ({marks})"
    if backend == "sqlite":
        with sqlite3.connect(f"file:{where}?mode=ro", uri=True) as conn:
            return conn.execute(query, run_ids).fetchone()[0]
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=where.port, user=S.PG_USER, dbname=S.PG_DATABASE,
                         passfile=str(where.passfile)) as conn:
        return conn.execute(query, run_ids).fetchone()[0]


def measure(backend: str, args: argparse.Namespace, folder: Path) -> dict:
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    with contextlib.ExitStack() as stack:
        env, db_pids, where = {}, [], None
        if backend == "postgresql":
            pg = stack.enter_context(S.local_postgres(folder / "pg"))
            uri, env, where = pg.uri, pg.env, pg
            db_pids = [postmaster_pid(folder / "pg")]
        else:
            where = folder / "server.db"
            uri = f"sqlite:///{where}"
        config = S.ServerConfig(uri, folder / "mlartifacts", port=S.free_port(), workers=args.server_workers)
        server = stack.enter_context(S.tracking_server(config, env, log=folder / "server.log", timeout=600))
        # warm-up, not measured: each server worker imports and opens its store on its first requests
        run_sweep(folder / "warmup", server.url, 4 * args.server_workers, args.workers, args.epochs, "warmup")
        MlflowClient(server.url).create_experiment(EXPERIMENT)
        cpu_before = cpu_seconds([server.process.pid, *db_pids])
        wall, requests_dir = run_sweep(folder / "work", server.url, args.jobs, args.workers, args.epochs)
        server_cpu = cpu_seconds([server.process.pid, *db_pids]) - cpu_before

        client = MlflowClient(server.url)
        experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
        runs, token = [], None
        while True:
            page = client.search_runs([experiment], run_view_type=ViewType.ALL, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        requests = read_requests(requests_dir)
        sent = sum(r[4] for r in requests if r[1].endswith("/runs/log-batch") and r[2] == "200")
        stored = stored_points(backend, where, [r.info.run_id for r in runs])
    (parent,) = parents
    phase = (parent.info.end_time - parent.info.start_time) / 1000
    latencies = sorted(r[3] for r in requests)
    job_seconds = args.workers * phase / args.jobs
    return {
        "backend": backend, "jobs": args.jobs, "wall": wall, "phase": phase,
        "jobs_per_min": 60 * args.jobs / phase, "jobs_per_min_wall": 60 * args.jobs / wall,
        "requests_per_job": len(requests) / args.jobs,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "errors": sum(1 for r in requests if r[2] != "200"),
        "server_cpu_per_job": server_cpu / args.jobs, "job_seconds": job_seconds,
        "runs_lost": args.jobs - sum(1 for c in children if c.info.status == "FINISHED"),
        "points_sent": sent, "points_lost": sent - stored,
        "endpoints": _by_endpoint(requests, args.jobs),
        "not_200": _by_endpoint(requests, 1, lambda status: status != "200"),
    }


def _endpoint(method: str, endpoint: str) -> str:
    if "/mlflow-artifacts/artifacts/" in endpoint:  # one path per file: group them
        return f"{method} mlflow-artifacts"
    return f"{method} {endpoint.split('/mlflow/', 1)[-1]}"


def _by_endpoint(requests: list, jobs: int, which=lambda status: True) -> str:
    counts: dict[str, int] = {}
    for method, endpoint, status, *_ in requests:
        if which(status):
            name = _endpoint(method, endpoint) + ("" if status == "200" else f" -> {status}")
            counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{name} {n / jobs:.2f}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--server-workers", type=int, default=4)
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    results = []
    for backend in args.backends.split(","):
        folder = Path(tempfile.mkdtemp(prefix=f"nnlab-scale-{backend}-"))
        try:
            results.append(measure(backend, args, folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print(f"{backend}: done", file=sys.stderr, flush=True)
    print(f"\n{args.jobs} jobs ({args.epochs} epochs, width 32), {args.workers} joblib workers, mlflow server with "
          f"{args.server_workers} workers, all on this {cores}-core machine\n")
    print("| backend | jobs/min (sweep phase) | jobs/min (wall) | requests/job | p50 ms | p99 ms | "
          "server CPU s/job | runs lost | metric points lost (of sent) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['backend']} | {r['jobs_per_min']:.0f} | {r['jobs_per_min_wall']:.0f} | {r['requests_per_job']:.1f} | "
              f"{r['p50_ms']:.1f} | {r['p99_ms']:.0f} | {r['server_cpu_per_job']:.3f} | {r['runs_lost']} | "
              f"{r['points_lost']} (of {r['points_sent']}) |")
    print()
    for r in results:
        print(f"- {r['backend']}: requests per job by endpoint: {r['endpoints']}")
        print(f"  answers other than 200: {r['errors']} ({r['not_200'] or 'none'})")
        print(f"  one worker finishes a job every {r['job_seconds']:.2f} s; the server spends "
              f"{r['server_cpu_per_job']:.3f} CPU s per job -> one server core keeps up with "
              f"~{r['job_seconds'] / r['server_cpu_per_job']:.0f} workers running jobs like these")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
