"""Housekeeping of the record: ``python -m nnlab.runs clean`` closes runs whose process is gone.

A run is RUNNING while a process writes it. A process killed with SIGKILL, a node that lost power,
a Slurm job past its time limit cannot close their runs, which then stay RUNNING for ever and read
as "still training" in the UI. ``clean`` marks them KILLED (``nnlab.failure=stale``):

    python -m nnlab.runs clean                      # this machine's runs whose process is gone
    python -m nnlab.runs clean --experiment init_depth --dry-run
    python -m nnlab.runs clean --all-hosts --older-than 24   # runs from other machines, started > 24 h ago

A run records its host and process id (``nnlab.host``, ``nnlab.pid``) when it starts, so on this
machine "gone" is certain; for other machines nothing can be known from here but the run's age.
``resume=true`` does the same for the experiment it resumes.
"""
from __future__ import annotations

import argparse
import sys

from nnlab._cli import exit_without_final_collection


def clean(experiment: str | None, uri: str | None, all_hosts: bool, older_than_h: float | None,
          dry_run: bool) -> list[tuple[str, str, str]]:
    """Mark stale RUNNING runs KILLED; returns (experiment, run name, run id) of each one."""
    from nnlab.sweep.callback import stale_runs
    from nnlab.record.store import Tracker

    tracker = Tracker(uri)
    if experiment is not None:
        found = tracker.client.get_experiment_by_name(experiment)
        if found is None:
            names = sorted(e.name for e in tracker.client.search_experiments())
            raise ValueError(f"no experiment {experiment!r} in {tracker.uri}; experiments: {', '.join(names) or 'none'}")
        experiments = [found]
    else:
        experiments = tracker.client.search_experiments()
    older_than_s = older_than_h * 3600 if older_than_h is not None else None
    cleaned = []
    for exp in experiments:
        for run in stale_runs(tracker, exp.experiment_id, all_hosts=all_hosts, older_than_s=older_than_s):
            if not dry_run:
                tracker.mark_ended(run.info.run_id, "KILLED", "stale")
            cleaned.append((exp.name, run.info.run_name, run.info.run_id))
    return cleaned


def main(argv: list[str] | None = None) -> int:
    """``python -m nnlab.runs clean [...]``; exit 0 done, 2 bad arguments or an unusable store."""
    parser = argparse.ArgumentParser(prog="python -m nnlab.runs", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("clean", help="mark RUNNING runs whose process is gone as KILLED")
    cmd.add_argument("--experiment", help="only this MLflow experiment (default: all)")
    cmd.add_argument("--tracking-uri", help="the store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    cmd.add_argument("--all-hosts", action="store_true",
                     help="also runs started on other machines (needs --older-than: their process cannot be checked)")
    cmd.add_argument("--older-than", type=float, metavar="HOURS",
                     help="runs with no process information (or, with --all-hosts, from other machines) count as "
                          "stale once started this many hours ago")
    cmd.add_argument("--dry-run", action="store_true", help="list them, change nothing")
    args = parser.parse_args(argv)
    if args.all_hosts and args.older_than is None:
        parser.error("--all-hosts needs --older-than HOURS: a run on another machine may still be training")
    if args.older_than is not None and args.older_than <= 0:
        parser.error(f"--older-than must be > 0 hours, got {args.older_than}")
    try:
        cleaned = clean(args.experiment, args.tracking_uri, args.all_hosts, args.older_than, args.dry_run)
    except Exception as err:
        print(f"nnlab: {(str(err).splitlines() or [type(err).__name__])[0]}", file=sys.stderr)
        return 2
    verb = "would be marked" if args.dry_run else "marked"
    for experiment, name, run_id in cleaned:
        print(f"{experiment}/{name} ({run_id}) {verb} KILLED")
    print(f"{len(cleaned)} stale run(s) {verb} KILLED" if cleaned else "no stale runs", file=sys.stderr)
    return 0


def cli() -> None:
    exit_without_final_collection()
    sys.exit(main())


if __name__ == "__main__":
    cli()
