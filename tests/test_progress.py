"""The sweep-level progress every job's line carries: done/total, failures, time left."""
import os
import threading

from nnlab.sweep.progress import PROGRESS_FILE, Progress, duration, record


def test_progress_counts_every_job_and_estimates_the_rest(tmp_path):
    (tmp_path / "multirun.yaml").write_text("x")
    start = (tmp_path / "multirun.yaml").stat().st_mtime
    first = record(tmp_path, True, total=4, now=start + 10)
    assert (first.done, first.failed, first.counter()) == (1, 0, "[1/4]")
    assert first.eta == 30 and first.status() == "ETA 30s"
    second = record(tmp_path, False, total=4, now=start + 20)
    assert second.status() == "1 failed, ETA 20s"
    record(tmp_path, True, total=4, now=start + 30)
    last = record(tmp_path, True, total=4, now=start + 125)
    assert last.counter() == "[4/4]" and last.eta is None and last.status() == "1 failed, all jobs in 2m05s"


def test_parallel_jobs_never_lose_a_count(tmp_path):
    threads = [threading.Thread(target=record, args=(tmp_path, i % 3 != 0, 64)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / PROGRESS_FILE).read_text().split()
    assert len(lines) == 64 and lines.count("failed") == 22


def test_unknown_total_and_durations():
    assert Progress(3, None, 0, 5.0).counter() == "[3/?]" and Progress(3, None, 0, 5.0).eta is None
    assert [duration(s) for s in (4.4, 125, 3725)] == ["4s", "2m05s", "1h02m"]
