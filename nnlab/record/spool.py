"""The offline spool: runs written to local files when no MLflow store can take them.

A run lands here when ``tracking.offline=true`` (compute nodes with no route to the server) or when
the store stopped answering and the run could not be recorded before it closed. ``python -m
nnlab.sync`` replays the spool into any store. One folder per run::

    <spool_dir>/<uid>/
        manifest.json   what the run is: format, uid, experiment name, run name, status, start/end
                        time (ms), parent id, store URI and run id if the run exists there, why it
                        is here, and the writing process (host, pid) while it is RUNNING
        params.json     {name: value}
        tags.json       {name: value} (MLflow's own tags included: mlflow.parentRunId, ...)
        metrics.jsonl   one point per line: {"key", "value", "timestamp" (ms), "step"}
        artifacts/      the run's artifact tree, as MLflow would hold it

JSON files are replaced atomically (temporary file + rename), so a reader never sees half of one;
``metrics.jsonl`` is only appended to, and a torn last line (a killed writer) is skipped when read.
``manifest.json`` is written last when a folder is created: a folder without one is ignored.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

FORMAT = 1
MANIFEST, PARAMS, TAGS, METRICS, ARTIFACTS = "manifest.json", "params.json", "tags.json", "metrics.jsonl", "artifacts"
DEFAULT_DIR = "nnlab-spool"


def default_dir(base: str | Path | None = None) -> Path:
    """``<base or cwd>/nnlab-spool``."""
    return (Path(base or Path.cwd()) / DEFAULT_DIR).resolve()


def write_json(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically (temporary file in the same folder + rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class SpooledRun:
    """One run as the spool holds it; ``metrics`` are (key, value, timestamp ms, step) tuples."""

    folder: Path
    manifest: dict[str, Any]
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)

    @property
    def uid(self) -> str:
        return self.manifest["uid"]

    @property
    def parent(self) -> str | None:
        return self.manifest.get("parent")

    def artifact_files(self) -> list[tuple[Path, str]]:
        """(file on disk, its artifact path relative to the run's artifact root)."""
        root = self.folder / ARTIFACTS
        if not root.is_dir():
            return []
        return sorted((p, p.relative_to(root).as_posix()) for p in root.rglob("*") if p.is_file())

    def owner_alive(self) -> bool:
        """Whether the process that writes this RUNNING run still exists (on this host)."""
        owner = self.manifest.get("owner") or {}
        if owner.get("host") != socket.gethostname() or not owner.get("pid"):
            return False  # another machine: cannot tell; treat a RUNNING run there as interrupted
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class SpoolWriter:
    """Writes one run's folder: the whole record at once, or incrementally (offline runs)."""

    def __init__(self, spool_dir: str | Path, uid: str):
        self.folder = Path(spool_dir) / uid
        self._metrics_written = 0

    def artifacts_dir(self) -> Path:
        path = self.folder / ARTIFACTS
        path.mkdir(parents=True, exist_ok=True)
        return path

    def add_artifact(self, path: Path, artifact_path: str | None) -> None:
        """Copy a file or a folder into the run's artifact tree, under ``artifact_path``."""
        target = self.artifacts_dir() / (artifact_path or "")
        if path.is_dir():
            shutil.copytree(path, target, dirs_exist_ok=True)
        elif path.exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / path.name)

    def write(self, manifest: dict[str, Any], params: dict[str, str], tags: dict[str, str],
              metrics: list[tuple[str, float, int, int]]) -> Path:
        """Bring the folder up to date: metrics not yet written are appended, then params, tags, manifest."""
        self.folder.mkdir(parents=True, exist_ok=True)
        new = metrics[self._metrics_written:]
        if new:
            with open(self.folder / METRICS, "a") as f:
                f.writelines(json.dumps({"key": k, "value": v, "timestamp": t, "step": s}) + "\n"
                             for k, v, t, s in new)
                f.flush()
                os.fsync(f.fileno())
            self._metrics_written = len(metrics)
        write_json(self.folder / PARAMS, params)
        write_json(self.folder / TAGS, tags)
        write_json(self.folder / MANIFEST, {"format": FORMAT, **manifest})
        return self.folder


def owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _metrics(path: Path) -> Iterator[tuple[str, float, int, int]]:
    if not path.exists():
        return
    with open(path) as f:
        for line in f:
            try:
                point = json.loads(line)
                yield point["key"], float(point["value"]), int(point["timestamp"]), int(point["step"])
            except (ValueError, KeyError):
                continue  # a line torn by a killed writer


def read_run(folder: Path) -> SpooledRun | None:
    """One run folder, or None if it has no manifest (being created, or not a run)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{folder}: spool format {manifest.get('format')!r}, this nnlab reads format {FORMAT}")

    def load(name: str) -> dict:
        try:
            return json.loads((folder / name).read_text())
        except (OSError, ValueError):
            return {}

    return SpooledRun(folder, manifest, load(PARAMS), load(TAGS), list(_metrics(folder / METRICS)))


def read_manifests(spool_dir: str | Path) -> Iterator[dict[str, Any]]:
    """Every run's manifest only (cheap: no metrics read)."""
    spool_dir = Path(spool_dir)
    if not spool_dir.is_dir():
        return
    for folder in sorted(spool_dir.iterdir()):
        try:
            yield json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            continue


def read_spool(spool_dir: str | Path) -> list[SpooledRun]:
    """Every run in the spool, parents before their children (the order a replay needs)."""
    spool_dir = Path(spool_dir)
    runs = [r for r in (read_run(p) for p in sorted(spool_dir.iterdir()) if p.is_dir()) if r is not None]
    return parents_first(runs)


def parents_first(runs: Iterable[SpooledRun]) -> list[SpooledRun]:
    runs = list(runs)
    uids = {r.uid for r in runs}
    done: set[str] = set()
    ordered: list[SpooledRun] = []
    pending = runs
    while pending:
        ready = [r for r in pending if r.parent not in uids or r.parent in done]
        if not ready:  # a cycle cannot happen with real ids; keep the rest in their order
            ready = pending
        ordered.extend(ready)
        done.update(r.uid for r in ready)
        taken = {id(r) for r in ready}
        pending = [r for r in pending if id(r) not in taken]
    return ordered
