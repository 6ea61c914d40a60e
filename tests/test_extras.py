"""A launcher whose optional extra is not installed: one line with its install command, exit 2, and
nothing created (no sweep folder, no MLflow run). Real processes, in a Python where the extras'
modules are hidden (``sys.modules[name] = None`` from a sitecustomize), so nothing is uninstalled."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnlab import extras

HIDDEN = ("hydra_plugins.hydra_submitit_launcher", "submitit", "hydra_plugins.hydra_ray_launcher", "ray")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def without_extras(tmp_path):
    """An environment whose Python cannot import the slurm and ray extras."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in HIDDEN))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    return env


def nnlab_run(workdir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnlab.run", "-m", "activation=relu,tanh", "trainer.epochs=1",
                           *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("launcher,extra", [("submitit_local", "slurm"), ("slurm", "slurm"), ("ray", "ray")])
def test_a_launcher_without_its_extra_is_refused_before_anything_exists(tmp_path, without_extras, launcher, extra):
    work = tmp_path / "work"
    work.mkdir()
    started = time.monotonic()
    result = nnlab_run(work, without_extras, f"hydra/launcher={launcher}")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"nnlab: hydra/launcher={launcher} needs nnlab's '{extra}' extra")
    assert f"pip install 'nnlab[{extra}]'" in lines[0] and "no run was created" in lines[0]
    assert sorted(p.name for p in work.iterdir()) == []  # no mlflow.db, no multirun/ folder
    assert time.monotonic() - started < 60


def test_a_launcher_target_from_the_config_is_checked_before_the_parent_run(tmp_path, without_extras):
    """The launcher set by a config rather than by `hydra/launcher=` on the command line: the sweep's
    own check refuses it before the store or the parent run exist."""
    work = tmp_path / "work"
    work.mkdir()
    target = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    result = nnlab_run(work, without_extras, f"hydra.launcher._target_={target}")
    assert result.returncode == 2, result.stderr
    assert "needs nnlab's 'slurm' extra" in result.stderr and "pip install 'nnlab[slurm]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (work / "mlflow.db").exists()


def test_hydra_refusals_of_an_absent_plugin_name_the_extra(monkeypatch):
    monkeypatch.setattr(extras, "missing_modules", lambda extra: list(extras.EXTRAS[extra]))
    line = extras.hint_for_hydra_error("In 'hydra/launcher/slurm': Could not load 'hydra/launcher/submitit_slurm'.")
    assert line.startswith("hydra/launcher=slurm needs nnlab's 'slurm' extra") and "nnlab[slurm]" in line
    assert extras.hint_for_hydra_error("Could not override 'model.dept'.") == "Could not override 'model.dept'."


def test_an_installed_extra_passes():
    # the venv the tests run in has the extras (pip install -e '.[dev,slurm,ray,server]')
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    extras.check_launcher("submitit_local")
    assert extras.launcher_extra("joblib") is None and extras.launcher_extra("basic") is None
