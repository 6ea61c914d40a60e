"""A sweep's progress as its jobs end: done/total, failures so far, and the time left.

Every job of a multirun appends one line (``ok`` or ``failed``) to ``<sweep dir>/.nnlab-progress``
when it ends, wherever it runs (in the launching process, a joblib worker, a cluster node sharing
the sweep directory); appends of a few bytes are atomic, so no lock is needed. The count of lines
is how many jobs are done; the sweep's start is the time Hydra wrote ``multirun.yaml``, so the
estimate (elapsed / done x remaining) counts every worker's jobs, not just this one's.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROGRESS_FILE = ".nnlab-progress"


@dataclass(frozen=True)
class Progress:
    """Where a sweep stands after a job: ``done`` of ``total`` (None if unknown), ``failed`` so far,
    ``elapsed`` seconds since the sweep started."""

    done: int
    total: int | None
    failed: int
    elapsed: float

    @property
    def eta(self) -> float | None:
        """Seconds left at the pace so far (None when unknown or finished)."""
        if self.total is None or self.done == 0 or self.done >= self.total:
            return None
        return self.elapsed / self.done * (self.total - self.done)

    def counter(self) -> str:
        """``[37/135]``"""
        return f"[{self.done}/{self.total if self.total is not None else '?'}]"

    def status(self) -> str:
        """``1 failed, ETA 2m05s`` / ``done in 3m12s`` (empty while nothing is worth saying)."""
        parts = [f"{self.failed} failed"] if self.failed else []
        if self.eta is not None:
            parts.append(f"ETA {duration(self.eta)}")
        elif self.total is not None and self.done >= self.total:
            parts.append(f"all jobs in {duration(self.elapsed)}")
        return ", ".join(parts)


def duration(seconds: float) -> str:
    """``45s``, ``2m05s``, ``1h03m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def record(sweep_dir: str | Path, ok: bool, total: int | None, now: float | None = None) -> Progress:
    """Note that one job of the sweep in ``sweep_dir`` ended (``ok`` or failed); return the sweep's progress."""
    folder = Path(sweep_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PROGRESS_FILE
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"ok\n" if ok else b"failed\n")
    finally:
        os.close(fd)
    lines = path.read_text().split()
    now = time.time() if now is None else now
    start = folder / "multirun.yaml"
    started = start.stat().st_mtime if start.exists() else path.stat().st_ctime
    return Progress(len(lines), total, lines.count("failed"), max(0.0, now - started))
