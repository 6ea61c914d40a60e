"""Prestarting joblib workers: same Parallel arguments as the launcher, so its executor is reused."""
import multiprocessing.forkserver
import os
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from joblib import Parallel, delayed

from nnlab.run import CONF_DIR
from nnlab.sweep.workers import _joblib_kwargs, prestart, stop


def compose_hydra(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def children_of(pid: int) -> set[int]:
    """Live (not zombie) child processes of ``pid`` (Linux /proc)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            children.add(int(stat.parent.name))
    return children


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def probe():
    """(pid, parent pid, whether MLflow was imported before this task arrived)"""
    return os.getpid(), os.getppid(), "mlflow" in sys.modules


def test_nothing_to_prestart_for_the_in_process_launcher():
    assert _joblib_kwargs(compose_hydra()) is None
    assert prestart(compose_hydra()) is None


def test_prestarted_workers_are_forked_preloaded_and_reused_by_the_launcher():
    cfg = compose_hydra("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    kwargs = _joblib_kwargs(cfg)
    assert kwargs["backend"] == "loky" and kwargs["n_jobs"] == 2
    thread = prestart(cfg)
    thread.join(timeout=120)
    assert not thread.is_alive()
    server = multiprocessing.forkserver._forkserver._forkserver_pid
    assert server is not None and alive(server)
    prestarted = children_of(server)
    assert len(prestarted) == 2
    # the launcher builds Parallel from the same config: its jobs run in the prestarted processes,
    # forked from the server with MLflow already imported
    used = Parallel(**_joblib_kwargs(cfg))(delayed(probe)() for _ in range(8))
    assert {pid for pid, _, _ in used} <= prestarted
    assert all(parent == server and preloaded for _, parent, preloaded in used)

    stop()  # the sweep's end: workers and server exit at once (signals arrive asynchronously)
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in prestarted | {server}) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert {pid for pid in prestarted | {server} if alive(pid)} == set()
