"""Replay the spool into an MLflow store: ``python -m nnlab.sync [SPOOL_DIR] [--uri URI]``.

Runs written offline (``tracking.offline=true``) or while the store was down go into the store as
if they had been recorded live: params, tags, every metric point with its step and timestamp,
artifacts, start and end time, final status, and the sweep's parent (created first; children link
to its id in this store). Idempotent: a run is found again by its ``nnlab.run_uid`` tag, and only
what the store lacks is added — so running it twice adds nothing, and a run partly recorded before
an outage is completed, not duplicated. The spool is left as it is (delete it once synced).

Exit status: 0 every run synced; 1 some runs could not be; 2 bad arguments or an unusable store.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnlab.record.spool import DEFAULT_DIR, SpooledRun, read_spool
from nnlab.record.names import FAILURE_TAG, PARENT_TAG, ROLE_TAG, RUN_UID_TAG, SWEEP_ROLE
from nnlab.record.store import StoreUnavailable, Tracker, redact  # tracker.client guards every call

_BATCH = 1000  # MLflow's metric points per log_batch


@dataclass
class Outcome:
    uid: str
    run_id: str | None
    action: str  # created | completed | unchanged | skipped


def _find(tracker: Tracker, experiment_id: str, tag: str, value: str) -> Any | None:
    from mlflow.entities import ViewType

    runs = tracker.client.search_runs([experiment_id], f"tags.`{tag}` = '{value}'", run_view_type=ViewType.ALL,
                                      max_results=2)
    return runs[0] if runs else None


def _parent_id(tracker: Tracker, experiment_id: str, run: SpooledRun, synced: dict[str, str]) -> str | None:
    """The parent's id in this store: a spooled parent just synced, a run carrying the parent's uid,
    the very id (same store), or the sweep's parent run by name."""
    parent = run.parent
    if parent:
        if parent in synced:
            return synced[parent]
        found = _find(tracker, experiment_id, RUN_UID_TAG, parent)
        if found is not None:
            return found.info.run_id
        try:
            return tracker.client.get_run(parent).info.run_id
        except Exception:
            pass
    sweep_id = run.manifest.get("sweep_id")
    if sweep_id and run.tags.get(ROLE_TAG) != SWEEP_ROLE:  # a job whose parent is in the store, not the spool
        return tracker.sweep_parent(experiment_id, sweep_id)
    return None


def _status(run: SpooledRun) -> tuple[str, dict[str, str]]:
    """The status to record, and tags to add: a RUNNING run whose process is gone was interrupted."""
    status = run.manifest["status"]
    if status == "RUNNING" and not run.owner_alive():
        return "FAILED", {FAILURE_TAG: "interrupted"}
    return status, {}


def sync_run(tracker: Tracker, run: SpooledRun, synced: dict[str, str]) -> Outcome:
    """Bring one spooled run into the store (create it, or complete the run already there)."""
    from mlflow.entities import Metric, Param, RunTag

    status, extra_tags = _status(run)
    if status == "RUNNING":
        return Outcome(run.uid, None, "skipped")  # still being written by a live process
    client = tracker.client
    experiment_id = tracker.experiment_id(run.manifest["experiment"])
    parent_id = _parent_id(tracker, experiment_id, run, synced)
    tags = {**run.tags, **extra_tags, RUN_UID_TAG: run.uid}
    tags.pop(PARENT_TAG, None)
    if parent_id:
        tags[PARENT_TAG] = parent_id
    existing = _find(tracker, experiment_id, RUN_UID_TAG, run.uid)
    changed = existing is None
    if existing is None:
        created = client.create_run(experiment_id, start_time=run.manifest.get("start_time"),
                                    run_name=run.manifest.get("run_name"), tags=tags)
        run_id, have_params, have_tags, have_points = created.info.run_id, {}, dict(tags), set()
    else:
        run_id = existing.info.run_id
        have_params, have_tags = existing.data.params, existing.data.tags
        # a point is (key, step, timestamp): its value may not compare equal after the round trip
        # (inf is stored as 1.8e308, NaN never equals itself)
        have_points = {(m.key, m.step, m.timestamp) for key in {k for k, *_ in run.metrics}
                       for m in client.get_metric_history(run_id, key)}
    params = [Param(k, v) for k, v in run.params.items() if k not in have_params]
    new_tags = [RunTag(k, v) for k, v in tags.items() if have_tags.get(k) != v]
    points = [Metric(k, v, t, s) for k, v, t, s in run.metrics if (k, s, t) not in have_points]
    changed |= bool(params or new_tags or points)
    while params or new_tags or points:
        client.log_batch(run_id, metrics=points[:_BATCH], params=params[:100], tags=new_tags[:100])
        points, params, new_tags = points[_BATCH:], params[100:], new_tags[100:]
    if FAILURE_TAG in have_tags and FAILURE_TAG not in tags:  # "not_recorded": it is recorded now
        client.delete_tag(run_id, FAILURE_TAG)
        changed = True
    changed |= _sync_artifacts(client, run_id, run)
    info = client.get_run(run_id).info
    if info.status != status or info.end_time != run.manifest.get("end_time"):
        client.set_terminated(run_id, status=status, end_time=run.manifest.get("end_time"))
        changed = True
    synced[run.uid] = run_id
    return Outcome(run.uid, run_id, "created" if existing is None else ("completed" if changed else "unchanged"))


def _artifact_paths(client: Any, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def _sync_artifacts(client: Any, run_id: str, run: SpooledRun) -> bool:
    files = run.artifact_files()
    if not files:
        return False
    have = _artifact_paths(client, run_id)
    missing = [(path, rel) for path, rel in files if rel not in have]
    for path, rel in missing:
        folder = rel.rsplit("/", 1)[0] if "/" in rel else None
        client.log_artifact(run_id, str(path), folder)
    return bool(missing)


def sync(spool_dir: str | Path, uri: str | None = None) -> list[Outcome]:
    """Replay every run of ``spool_dir`` into the store ``uri`` (resolved like ``tracking.uri``)."""
    tracker = Tracker(uri)
    synced: dict[str, str] = {}
    outcomes = []
    for run in read_spool(spool_dir):
        try:
            outcomes.append(sync_run(tracker, run, synced))
        except StoreUnavailable:
            raise
        except Exception as err:  # one run's trouble does not stop the others; reported, exit 1
            print(f"nnlab.sync: run {run.manifest.get('run_name')} ({run.folder}) not synced: "
                  f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}", file=sys.stderr)
            outcomes.append(Outcome(run.uid, None, "failed"))
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnlab.sync", description=__doc__.splitlines()[0])
    parser.add_argument("spool_dir", nargs="?", default=DEFAULT_DIR, help=f"the spool (default: ./{DEFAULT_DIR})")
    parser.add_argument("--uri", default=None,
                        help="the store to record into (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    args = parser.parse_args(argv)
    spool_dir = Path(args.spool_dir)
    if not spool_dir.is_dir():
        print(f"nnlab.sync: no spool at {spool_dir.resolve()} (a folder written by tracking.offline=true "
              "or by runs the store could not take)", file=sys.stderr)
        return 2
    try:
        outcomes = sync(spool_dir, args.uri)
    except StoreUnavailable as err:
        print(f"nnlab.sync: {err} -- nothing was synced", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"nnlab.sync: {err}", file=sys.stderr)
        return 2
    counts = {a: sum(o.action == a for o in outcomes)
              for a in ("created", "completed", "unchanged", "skipped", "failed")}
    uri = redact(Tracker(args.uri).uri)
    print(f"nnlab.sync: {len(outcomes)} runs from {spool_dir}: {counts['created']} created, "
          f"{counts['completed']} completed, {counts['unchanged']} already complete, "
          f"{counts['skipped']} still running (skipped), {counts['failed']} failed -> {uri}", file=sys.stderr)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
