"""How long ``python -m nnlab.report`` takes on a real study, step by step, before and after.

    .venv/bin/python benchmarks/bench_report.py sqlite:////tmp/init_depth.db [--experiment init_depth]
        [--baseline 62e3db2 | --baseline main | --baseline none] [--repeat 1] [--serial]

The store is a real record of the 135-run ``init_depth`` study; build it once (a few minutes on 2 cores):

    python -m nnlab.run -m +experiment=init_depth hydra/launcher=joblib hydra.launcher.n_jobs=2 \\
        tracking.uri=sqlite:////tmp/init_depth.db tracking.sweep_report=false

Each variant runs as its own process, exactly as a user runs the command: ``after`` is this checkout's
``nnlab``; ``before`` is ``nnlab/`` of the ``--baseline`` commit (default: the last commit before the fast
report), unpacked with ``git archive`` into a temporary folder; ``--serial`` adds ``after, 1 worker``: this
checkout drawing its figures in its own process (``--workers 1``), for a figure-by-figure account. All read the
same store and write into a temporary folder, in turn, ``--repeat`` times each; the table shows each row's
median over the runs. Inside each process the report module's ``load_study`` and ``draw`` and
``Figure.savefig`` are wrapped to stamp the clock: ``load`` is reading the store; a figure's row runs from the
end of the previous step to the end of its own ``savefig`` (building it + laying it out + rendering the PNG);
``draw`` is the rest of drawing the figures, all of it when worker processes draw them (their CPU time is not
the measured process' own: the step's CPU column leaves it out, the command's includes it). ``rest`` is what
follows (index.md, index.html, moving the folder into place); ``process`` is the command's wall clock from
outside, interpreter start and exit included, and ``CPU`` its user + system time with its children's: on a
shared machine the wall clock is the CPU time stretched by whatever else runs (the load average is printed), so
compare the columns of one run, not runs on different days. Target: ``after`` process <= 10 s on init_depth.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "62e3db2"  # the last commit before the fast report (issue 19)

# runs inside the measured process: stamp the clock at the steps of nnlab.report's own main()
PROBE = r"""
import json, sys, time
from pathlib import Path
t0, c0 = time.perf_counter(), time.process_time()
import matplotlib
matplotlib.use("Agg")
from matplotlib.figure import Figure
import nnlab.report as report
lib = sys.modules[report.write_report.__module__]  # where write_report finds load_study and draw
def now():
    return time.perf_counter(), time.process_time()
marks = [("import", *now())]
save = Figure.savefig
def stamped_savefig(self, fname, *args, **kwargs):
    save(self, fname, *args, **kwargs)
    marks.append((Path(str(fname)).name, *now()))
Figure.savefig = stamped_savefig
def stamped(step, function):
    def wrapper(*args, **kwargs):
        out = function(*args, **kwargs)
        marks.append((step, *now()))
        return out
    return wrapper
lib.load_study = stamped("load", lib.load_study)
lib.draw = stamped("draw", lib.draw)
code = report.main(sys.argv[1:])
marks.append(("rest", *now()))
steps, cpu, last, last_cpu = {}, {}, t0, c0
for name, t, c in marks:
    steps[name] = steps.get(name, 0.0) + t - last
    cpu[name] = cpu.get(name, 0.0) + c - last_cpu
    last, last_cpu = t, c
print("BENCH " + json.dumps({"code": code, "steps": steps, "cpu": cpu, "nnlab": report.__file__}))
"""


def unpack(ref: str, into: Path) -> Path:
    """``nnlab/`` of commit ``ref`` under ``into``; returns ``into`` (a PYTHONPATH entry)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref, "nnlab"],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        sys.exit(f"bench_report: cannot read nnlab/ of commit {ref!r}: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def measure(path: Path, uri: str, experiment: str, out: Path, extra: list[str]) -> dict:
    """Run the report once with ``path`` first on PYTHONPATH; its steps' seconds and the process' wall clock."""
    env = {**os.environ, "PYTHONPATH": str(path), "MPLBACKEND": "Agg"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, "--experiment", experiment, "--tracking-uri", uri,
                           "--out", str(out), *extra], capture_output=True, text=True, env=env, cwd=out.parent)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"bench_report: the report failed ({path}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("BENCH "):])
    if result["code"] != 0 or not result["nnlab"].startswith(str(path)):
        sys.exit(f"bench_report: exit {result['code']}, nnlab from {result['nnlab']} (wanted {path})")
    steps = {k: (v, result["cpu"][k]) for k, v in result["steps"].items()}
    return {**steps, "process": (wall, cpu)}


def table(results: dict[str, dict[str, tuple[float, float]]]) -> str:
    """A Markdown table: one row per step (import, load, each figure, draw, rest, the whole process), wall clock
    and CPU seconds of each variant."""
    names = list(results)
    rows = ["import", "load"]
    for steps in results.values():
        rows += [k for k in steps if k.endswith(".png") and k not in rows]
    rows += ["draw", "rest", "process"]
    head = "| step | " + " | ".join(f"{n} wall (s) | {n} CPU (s)" for n in names) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(names)]
    for row in rows:
        cells = [f"{results[n][row][0]:.2f} | {results[n][row][1]:.2f}" if row in results[n] else "— | —"
                 for n in names]
        label = "**whole command** (interpreter start to exit)" if row == "process" else row
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("uri", help="tracking URI of the study's store, e.g. sqlite:////tmp/init_depth.db")
    parser.add_argument("--experiment", default="init_depth")
    parser.add_argument("--baseline", default=BASELINE,
                        help=f"commit (or branch) to compare with (default {BASELINE}; none)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each variant (median kept; default 1)")
    parser.add_argument("--serial", action="store_true",
                        help="also run this checkout with --workers 1 (every figure drawn in the measured process)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_report-") as tmp:
        tmp = Path(tmp)
        variants = {"after": (ROOT, [])}
        if args.serial:
            variants["after, 1 worker"] = (ROOT, ["--workers", "1"])
        if args.baseline.lower() != "none":
            variants = {"before": (unpack(args.baseline, tmp / "before"), []), **variants}
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        for i in range(args.repeat):
            for k, (name, (path, extra)) in enumerate(variants.items()):
                print(f"bench_report: {name} ({path}), run {i + 1} of {args.repeat} ...", file=sys.stderr, flush=True)
                runs[name].append(measure(path, args.uri, args.experiment, tmp / f"out-{k}-{i}", extra))
    median = {name: {step: tuple(statistics.median(r[step][j] for r in done if step in r) for j in (0, 1))
                     for step in done[0]} for name, done in runs.items()}
    load = os.getloadavg()[0]
    print(f"Report of experiment `{args.experiment}` from `{args.uri}`, median of {args.repeat} run(s) each, "
          f"load average {load:.1f} on {os.cpu_count()} cores:\n")
    print(table(median))
    print("\nthe whole command, each run (wall s): " + "; ".join(
        f"{name} " + ", ".join(f"{r['process'][0]:.2f}" for r in done) for name, done in runs.items()))
    if "before" in median:
        (bw, bc), (aw, ac) = median["before"]["process"], median["after"]["process"]
        print(f"\nspeed-up of the command: {bw / aw:.1f}x wall clock ({bw:.1f} s -> {aw:.1f} s; target <= 10 s), "
              f"{bc / ac:.1f}x CPU ({bc:.1f} s -> {ac:.1f} s)")


if __name__ == "__main__":
    main()
