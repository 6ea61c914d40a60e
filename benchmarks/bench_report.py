"""How long ``python -m nnlab.report`` takes on a real study, figure by figure, before and after.

    .venv/bin/python benchmarks/bench_report.py sqlite:////tmp/init_depth.db [--experiment init_depth]
        [--baseline 62e3db2 | --baseline none] [--repeat 1]

The store is a real record of the 135-run ``init_depth`` study; build it once (a few minutes on 2 cores):

    python -m nnlab.run -m +experiment=init_depth hydra/launcher=joblib hydra.launcher.n_jobs=2 \\
        tracking.uri=sqlite:////tmp/init_depth.db tracking.sweep_report=false

Each variant runs as its own process, exactly as a user runs the command: ``after`` is this checkout's
``nnlab``; ``before`` is ``nnlab/`` of the ``--baseline`` commit (default: the last commit before the fast
report), unpacked with ``git archive`` into a temporary folder. Both read the same store and write into a
temporary folder, alternately, ``--repeat`` times each; the table keeps each row's fastest time. Inside each
process ``Figure.savefig`` and ``nnlab.report.load_study`` are wrapped to stamp the clock, so a figure's time
runs from the end of the previous step to the end of its own ``savefig`` (building it + laying it out +
rendering the PNG). ``rest`` is what follows the last figure (index.md, index.html, moving the folder into
place); ``process`` is the command's wall clock from outside, interpreter start and exit included, and ``CPU``
its user + system time (per step: the process' own CPU clock): on a shared machine the wall clock is the CPU time stretched by whatever else runs
(the load average is printed), so compare both columns of one run, not runs on different days.
Target: ``after`` process <= 10 s on the init_depth study.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
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
def now():
    return time.perf_counter(), time.process_time()
marks = [("import", *now())]
save = Figure.savefig
def stamped_savefig(self, fname, *args, **kwargs):
    save(self, fname, *args, **kwargs)
    marks.append((Path(str(fname)).name, *now()))
Figure.savefig = stamped_savefig
load = report.load_study
def stamped_load(*args, **kwargs):
    study = load(*args, **kwargs)
    marks.append(("load", *now()))
    return study
report.load_study = stamped_load
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


def measure(path: Path, uri: str, experiment: str, out: Path) -> dict:
    """Run the report once with ``path`` first on PYTHONPATH; its steps' seconds and the process' wall clock."""
    env = {**os.environ, "PYTHONPATH": str(path), "MPLBACKEND": "Agg"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, "--experiment", experiment, "--tracking-uri", uri,
                           "--out", str(out)], capture_output=True, text=True, env=env, cwd=out.parent)
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
    """A Markdown table: one row per step (import, load, each figure, rest, the whole process), wall clock and
    CPU seconds of each variant."""
    names = list(results)
    rows = ["import", "load"]
    for steps in results.values():
        rows += [k for k in steps if k.endswith(".png") and k not in rows]
    rows += ["rest", "process"]
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
    parser.add_argument("--baseline", default=BASELINE, help=f"commit to compare with (default {BASELINE}; none)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each variant (fastest kept; default 1)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_report-") as tmp:
        tmp = Path(tmp)
        variants = {"after": ROOT}
        if args.baseline.lower() != "none":
            variants = {"before": unpack(args.baseline, tmp / "before"), **variants}
        best: dict[str, dict[str, float]] = {}
        for i in range(args.repeat):
            for name, path in variants.items():
                print(f"bench_report: {name} ({path}), run {i + 1} of {args.repeat} ...", file=sys.stderr, flush=True)
                steps = measure(path, args.uri, args.experiment, tmp / f"out-{name}")
                best[name] = {k: tuple(map(min, v, best.get(name, {}).get(k, v))) for k, v in steps.items()}
    load = os.getloadavg()[0]
    print(f"Report of experiment `{args.experiment}` from `{args.uri}`, fastest of {args.repeat} run(s) each, "
          f"load average {load:.1f} on {os.cpu_count()} cores:\n")
    print(table(best))
    if "before" in best:
        (bw, bc), (aw, ac) = best["before"]["process"], best["after"]["process"]
        print(f"\nspeed-up of the command: {bw / aw:.1f}x wall clock ({bw:.1f} s -> {aw:.1f} s; target <= 10 s), "
              f"{bc / ac:.1f}x CPU ({bc:.1f} s -> {ac:.1f} s)")


if __name__ == "__main__":
    main()
