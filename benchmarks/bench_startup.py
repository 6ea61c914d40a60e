"""How long one quick command takes, and where the time goes: ``python -m nnlab.run trainer.epochs=1``.

    .venv/bin/python benchmarks/bench_startup.py [--rounds 5] [--repo before=/path/a --repo after=/path/b]

Each ``--repo`` (``label=path``, default: this checkout) is a checkout of nnlab; its commands run with
``PYTHONPATH=path`` and ``--python``. For each repo, in a temporary folder of its own:

* **existing store**: ``./mlflow.db`` and its experiment are created by one untimed command first, so
  the timed commands find a store, an experiment and nnlab's per-user cache (``NNLAB_CACHE_DIR``, a
  temporary folder of the benchmark's) as a user's second command does;
  With ``--earlier-runs N`` that store also holds N copies of the first run (its name, tags, params and
  metrics), as after running the same configuration N times;
* **new store**: each round in a fresh folder (the schema is created), the per-user cache kept.

Rounds are interleaved (repo A, repo B, repo A, ...) so both see the same load. Reported: the median
wall time and the median CPU time (user + sys of the child, ``getrusage(RUSAGE_CHILDREN)`` deltas). On a
machine shared with other work the CPU time is the honest figure; the wall time is what a user waits.

``--breakdown`` (on by default) then times the parts of one command, ``--rounds`` times per repo,
interleaved, medians; CPU and wall each:

* interpreter start (``python -c pass``), and standalone ``import mlflow`` / ``import nnlab.run``
  (Hydra + nnlab) / scikit-learn's data imports, each in a fresh process, less the interpreter's start;
* then a probe process runs ``nnlab.run.cli()`` in-process with timers wrapped around the functions
  that make up a command (Hydra's composition, the spec, the data, the store, the experiment, the run
  name's check, the run's creation and writes, the dataset digests, the epoch, the artifacts). Time is
  exclusive: a phase inside another counts once. Imports done during the command are counted apart, by
  package (scikit-learn and SciPy; ``mlflow`` itself, with all its ``__init__`` imports, where the command
  first imports it; then the store's modules: the rest of MLflow, SQLAlchemy and alembic), as are the
  garbage collector's passes (``gc.callbacks``) and the time from ``cli()``'s end to the process's end
  (process exit). "the rest of the command" is what no timer covers: Hydra's own run, nnlab's glue.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
COMMAND = ["-m", "nnlab.run", "trainer.epochs=1"]


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """(wall s, CPU s of the child, its stdout); raises with its stderr if it fails."""
    cpu, start = child_cpu(), time.perf_counter()
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, child_cpu() - cpu
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {out.returncode}:\n{out.stderr[-2000:]}")
    return wall, cpu, out.stdout


# --- the probe: nnlab.run.cli() in-process, with exclusive timers ------------------------------------
PROBE = textwrap.dedent(r'''
    import gc, json, os, resource, sys, time
    t_start, c_start = time.time(), time.process_time()
    import importlib, importlib._bootstrap as boot

    totals, counts, stack = {}, {}, []

    def push(label):
        stack.append([label, time.perf_counter(), time.process_time(), 0.0, 0.0])

    def pop():
        label, w0, c0, cw, cc = stack.pop()
        w, c = time.perf_counter() - w0, time.process_time() - c0
        tw, tc = totals.get(label, (0.0, 0.0))
        totals[label] = (tw + w - cw, tc + c - cc)  # exclusive of the phases inside it
        counts[label] = counts.get(label, 0) + 1
        if stack:
            stack[-1][3] += w
            stack[-1][4] += c

    SKLEARN, MLFLOW, STORE = ("scikit-learn's imports (+ SciPy's)", "import mlflow (its __init__, all it imports)",
                              "MLflow's imports (store modules)")
    FAMILIES = {"sklearn": SKLEARN, "scipy": SKLEARN, "mlflow": STORE, "sqlalchemy": STORE, "alembic": STORE}
    original_find_and_load = boot._find_and_load

    def find_and_load(name, import_):
        family = FAMILIES.get(name.partition(".")[0]) if name not in sys.modules else None
        if name == "mlflow" and family:
            family = MLFLOW  # the package, wherever the command first imports it from
        # an import inside another family's counts as that one's (SciPy imported by MLflow: MLflow's)
        if family is None or any(frame[0] in (SKLEARN, MLFLOW, STORE) for frame in stack):
            return original_find_and_load(name, import_)
        push(family)
        try:
            return original_find_and_load(name, import_)
        finally:
            pop()

    def wrap(owner, attr, label):
        raw = owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr, None)
        if raw is None:
            return  # not in this version of nnlab
        kind = type(raw) if isinstance(raw, (classmethod, staticmethod)) else None
        func = raw.__func__ if kind else raw

        def timed(*args, **kwargs):
            push(label)
            try:
                return func(*args, **kwargs)
            finally:
                pop()
        timed.__wrapped__ = func
        for name in ("__name__", "__qualname__", "__doc__", "__module__"):
            setattr(timed, name, getattr(func, name, None))
        setattr(owner, attr, kind(timed) if kind else timed)

    def step(label, statement):
        push(label)
        exec(statement, {})
        pop()

    def collecting(phase, info):  # the cyclic garbage collector's passes, wherever they fall
        if phase == "start":
            push("garbage collection (gc passes)")
        elif stack and stack[-1][0] == "garbage collection (gc passes)":
            pop()

    gc.callbacks.append(collecting)
    step("import nnlab.run (Hydra + nnlab)", "import nnlab.run")
    boot._find_and_load = find_and_load
    import hydra._internal.hydra as hh
    import nnlab.core, nnlab.job, nnlab.record.store as store, nnlab.run, nnlab.spec
    import nnlab.record.run_names as run_names
    wrap(hh.Hydra, "compose_config", "Hydra's composition")
    wrap(nnlab.spec.RunSpec, "from_cfg", "the spec (RunSpec.from_cfg)")
    wrap(nnlab.job, "load_data", "data load")
    wrap(nnlab.job, "build", "network and optimiser")
    wrap(nnlab.job, "init_diagnostics", "epoch 0's theory")
    wrap(store.Tracker, "__init__", "store open (MlflowClient, schema check)")
    wrap(store.Tracker, "experiment_id", "experiment lookup")
    wrap(run_names, "distinct_run_name", "run name check (search_runs)")
    wrap(store.Tracker, "start_run", "run creation")
    wrap(store, "git_tags", "git commit tags")
    wrap(store.RunLogger, "flush", "run writes (log_batch, inputs, status)")
    wrap(store.RunLogger, "log_inputs", "run writes (log_batch, inputs, status)")
    wrap(store.RunLogger, "close", "run writes (log_batch, inputs, status)")
    wrap(nnlab.job, "dataset_inputs", "dataset digests")
    wrap(nnlab.core, "fit", "the training epoch")
    wrap(nnlab.job.Job, "_log_artifacts", "artifacts (config.yaml, .hydra/, weights.npz)")
    sys.argv = ["nnlab.run", *sys.argv[1:]]
    push("the rest of the command (Hydra's run, nnlab's glue)")
    try:
        nnlab.run.cli()
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    finally:
        pop()
    boot._find_and_load = original_find_and_load
    gc.callbacks.remove(collecting)
    report = {"totals": totals, "counts": counts, "t_start": t_start, "cpu_at_start": c_start,
              "t_end": time.time(), "cpu_at_end": time.process_time()}
    sys.stdout.write("\nPROBE " + json.dumps(report) + "\n")
    sys.stdout.flush()
''')


def probe(python: str, cwd: Path, env: dict[str, str]) -> dict[str, tuple[float, float]]:
    """One probed command: {phase: (wall s, CPU s)} including interpreter start and process exit."""
    script = cwd / "_probe.py"
    script.write_text(PROBE)
    cpu0, spawned = child_cpu(), time.time()
    out = subprocess.run([python, str(script), *COMMAND[2:]], cwd=cwd, env=env, capture_output=True, text=True)
    ended, cpu = time.time(), child_cpu() - cpu0
    if out.returncode != 0:
        raise RuntimeError(f"probe exited {out.returncode}:\n{out.stderr[-2000:]}")
    report = json.loads(out.stdout.rsplit("PROBE ", 1)[1])
    phases = {k: tuple(v) for k, v in report["totals"].items()}
    phases["interpreter start (to the probe's first line)"] = (report["t_start"] - spawned, report["cpu_at_start"])
    phases["process exit (after cli() returned)"] = (ended - report["t_end"], cpu - report["cpu_at_end"])
    phases["whole command"] = (ended - spawned, cpu)
    return phases


# --- a repo under test ---------------------------------------------------------------------------------
# the existing store's one run, copied (its name, tags, params and metrics): the runs a user's store holds
# after running the same configuration again and again
COPY_RUN = textwrap.dedent(r'''
    import sys, time
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag
    client = MlflowClient("sqlite:///mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    now = int(time.time() * 1000)
    for _ in range(int(sys.argv[1])):
        copy = client.create_run(run.info.experiment_id, run_name=run.info.run_name, tags=run.data.tags)
        client.log_batch(copy.info.run_id, params=[Param(k, v) for k, v in run.data.params.items()],
                         metrics=[Metric(k, v, now, 0) for k, v in run.data.metrics.items()])
        client.set_terminated(copy.info.run_id)
''')


class Repo:
    def __init__(self, label: str, path: Path, python: str, root: Path, earlier_runs: int = 0):
        self.label, self.path, self.python = label, path, python
        self.root = root / label
        self.root.mkdir()
        self.env = {**os.environ, "PYTHONPATH": str(path), "NNLAB_CACHE_DIR": str(root / "cache")}
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.existing = self.root / "existing"
        self.existing.mkdir()
        timed([python, *COMMAND], self.existing, self.env)  # the store, its experiment, the cache: untimed
        if earlier_runs:
            timed([python, "-c", COPY_RUN, str(earlier_runs)], self.existing, self.env)
        self.fresh = 0

    def new_store(self) -> Path:
        self.fresh += 1
        folder = self.root / f"new-{self.fresh}"
        folder.mkdir()
        return folder

    def run(self, store: str) -> tuple[float, float]:
        cwd = self.existing if store == "existing" else self.new_store()
        wall, cpu, out = timed([self.python, *COMMAND], cwd, self.env)
        assert "test_acc=" in out, out
        if store == "new":
            shutil.rmtree(cwd, ignore_errors=True)
        return wall, cpu

    def python_c(self, code: str) -> tuple[float, float]:
        wall, cpu, _ = timed([self.python, "-c", code], self.existing, self.env)
        return wall, cpu


def med(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--repo", action="append", metavar="LABEL=PATH",
                        help=f"a checkout of nnlab to time (repeatable); default: this one ({HERE})")
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false")
    parser.add_argument("--earlier-runs", type=int, default=0, metavar="N",
                        help="the existing store starts with N more runs of the command's configuration "
                             "(copies of its first run), as after running it N times before")
    args = parser.parse_args()
    specs = [r.split("=", 1) for r in (args.repo or [f"this={HERE}"])]
    root = Path(tempfile.mkdtemp(prefix="nnlab-bench-startup-"))
    try:
        repos = [Repo(label, Path(path).resolve(), args.python, root, args.earlier_runs) for label, path in specs]
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for store in ("existing", "new"):
                for repo in repos:
                    times.setdefault((repo.label, store), []).append(repo.run(store))
        load = os.getloadavg()
        earlier = f", existing store with {args.earlier_runs} earlier runs of it" if args.earlier_runs else ""
        print(f"`python -m nnlab.run trainer.epochs=1`{earlier}, median of {args.rounds}, rounds interleaved "
              f"(load average at the end {load[0]:.1f} on {os.cpu_count()} cores)\n")
        print("| store | " + " | ".join(f"{r.label}: wall s | {r.label}: CPU s" for r in repos) + " |")
        print("|---|" + "---:|---:|" * len(repos))
        for store in ("existing", "new"):
            cells = []
            for repo in repos:
                rows = times[(repo.label, store)]
                cells += [f"{med([w for w, _ in rows]):.2f}", f"{med([c for _, c in rows]):.2f}"]
            print(f"| {store} | " + " | ".join(cells) + " |")
        if args.breakdown:
            breakdown(repos, args.rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)


STANDALONE = {
    "python -c pass (interpreter start)": "pass",
    "import mlflow": "import mlflow",
    "import nnlab.run (Hydra + nnlab)": "import nnlab.run",
    "import scikit-learn's data modules (after mlflow)":
        "import mlflow; import sklearn.datasets, sklearn.model_selection, sklearn.preprocessing",
}


def breakdown(repos: list[Repo], rounds: int) -> None:
    alone: dict[tuple[str, str], list[tuple[float, float]]] = {}
    probed: dict[str, list[dict[str, tuple[float, float]]]] = {r.label: [] for r in repos}
    for _ in range(rounds):
        for repo in repos:
            for label, code in STANDALONE.items():
                alone.setdefault((repo.label, label), []).append(repo.python_c(code))
            probed[repo.label].append(probe(repo.python, repo.existing, repo.env))
    print(f"\nStandalone processes (existing store's folder), median of {rounds}; imports less `python -c pass`:\n")
    print("| process | " + " | ".join(f"{r.label}: wall s | {r.label}: CPU s" for r in repos) + " |")
    print("|---|" + "---:|---:|" * len(repos))
    for label in STANDALONE:
        cells = []
        for repo in repos:
            rows = alone[(repo.label, label)]
            base = alone[(repo.label, "python -c pass (interpreter start)")]
            w, c = med([w for w, _ in rows]), med([c for _, c in rows])
            if label != "python -c pass (interpreter start)":
                w, c = w - med([w for w, _ in base]), c - med([c for _, c in base])
                if label.startswith("import scikit"):
                    mlf = alone[(repo.label, "import mlflow")]
                    w, c = w - med([w for w, _ in mlf]) + med([w for w, _ in base]), \
                        c - med([c for _, c in mlf]) + med([c for _, c in base])
            cells += [f"{w:.2f}", f"{c:.2f}"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    names = list(dict.fromkeys(k for rows in probed.values() for p in rows for k in p))
    order = ["interpreter start (to the probe's first line)", "import nnlab.run (Hydra + nnlab)",
             "import mlflow (its __init__, all it imports)"]
    tail = ["the rest of the command (Hydra's run, nnlab's glue)", "process exit (after cli() returned)", "whole command"]
    names = order + [n for n in names if n not in order + tail] + tail
    print(f"\nOne command, probed in-process (existing store), median of {rounds} per phase (exclusive):\n")
    print("| phase | " + " | ".join(f"{r.label}: wall s | {r.label}: CPU s" for r in repos) + " |")
    print("|---|" + "---:|---:|" * len(repos))
    for name in names:
        cells = []
        for repo in repos:
            rows = [p.get(name, (0.0, 0.0)) for p in probed[repo.label]]
            cells += [f"{med([w for w, _ in rows]):.3f}", f"{med([c for _, c in rows]):.3f}"]
        bold = "**" if name == "whole command" else ""
        print(f"| {bold}{name}{bold} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
