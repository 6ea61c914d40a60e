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
place); ``process`` is the command's wall clock from outside, interpreter start and exit included.
Target: ``after`` process <= 10 s on the init_depth study.
"""
from __future__ import annotations

import argparse
import json
import os
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
t0 = time.perf_counter()
import matplotlib
matplotlib.use("Agg")
from matplotlib.figure import Figure
import nnlab.report as report
marks = [("import", time.perf_counter())]
save = Figure.savefig
def stamped_savefig(self, fname, *args, **kwargs):
    save(self, fname, *args, **kwargs)
    marks.append((Path(str(fname)).name, time.perf_counter()))
Figure.savefig = stamped_savefig
load = report.load_study
def stamped_load(*args, **kwargs):
    study = load(*args, **kwargs)
    marks.append(("load", time.perf_counter()))
    return study
report.load_study = stamped_load
code = report.main(sys.argv[1:])
marks.append(("rest", time.perf_counter()))
steps, last = {}, t0
for name, t in marks:
    steps[name] = steps.get(name, 0.0) + t - last
    last = t
print("BENCH " + json.dumps({"code": code, "steps": steps, "nnlab": report.__file__}))
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
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, "--experiment", experiment, "--tracking-uri", uri,
                           "--out", str(out)], capture_output=True, text=True, env=env, cwd=out.parent)
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"bench_report: the report failed ({path}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("BENCH "):])
    if result["code"] != 0 or not result["nnlab"].startswith(str(path)):
        sys.exit(f"bench_report: exit {result['code']}, nnlab from {result['nnlab']} (wanted {path})")
    return {**result["steps"], "process": wall}


def table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per step (import, load, each figure, rest, process), one column per variant."""
    names = list(results)
    rows = ["import", "load"]
    for steps in results.values():
        rows += [k for k in steps if k.endswith(".png") and k not in rows]
    rows += ["rest", "process"]
    head = "| step | " + " | ".join(f"{n} (s)" for n in names) + " |"
    lines = [head, "|---|" + "---:|" * len(names)]
    for row in rows:
        cells = [f"{results[n][row]:.2f}" if row in results[n] else "—" for n in names]
        label = f"**{row}** (wall clock)" if row == "process" else row
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
                best[name] = {k: min(v, best.get(name, {}).get(k, v)) for k, v in steps.items()}
    load = os.getloadavg()[0]
    print(f"Report of experiment `{args.experiment}` from `{args.uri}`, fastest of {args.repeat} run(s) each, "
          f"load average {load:.1f} on {os.cpu_count()} cores:\n")
    print(table(best))
    if "before" in best:
        print(f"\nspeed-up of the command: {best['before']['process'] / best['after']['process']:.1f}x "
              f"({best['before']['process']:.1f} s -> {best['after']['process']:.1f} s; target <= 10 s)")


if __name__ == "__main__":
    main()
