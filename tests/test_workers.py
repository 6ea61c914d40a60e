"""Prestarting joblib workers: same Parallel arguments as the launcher, so its executor is reused."""
import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from joblib import Parallel, delayed

from nnlab.run import CONF_DIR
from nnlab.workers import _joblib_kwargs, prestart


def compose_hydra(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def child_pids() -> set[int]:
    """Live child processes of this one (Linux /proc)."""
    me, children = str(os.getpid()), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            children.add(int(stat.parent.name))
    return children


def test_nothing_to_prestart_for_the_in_process_launcher():
    assert _joblib_kwargs(compose_hydra()) is None
    assert prestart(compose_hydra()) is None


def test_prestarted_workers_are_the_ones_the_launcher_uses():
    cfg = compose_hydra("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    kwargs = _joblib_kwargs(cfg)
    assert kwargs["backend"] == "loky" and kwargs["n_jobs"] == 2
    thread = prestart(cfg)
    thread.join(timeout=120)
    assert not thread.is_alive()
    prestarted = child_pids()
    assert len(prestarted) >= 2
    # the launcher builds Parallel from the same config: its jobs run in the prestarted processes
    used = set(Parallel(**_joblib_kwargs(cfg))(delayed(os.getpid)() for _ in range(8)))
    assert used and used <= prestarted
