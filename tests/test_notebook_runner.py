"""``python -m nnlab.notebook``: a notebook's own one-line error is the one line printed (not
papermill's traceback), exit 1; without papermill: its install command, exit 2. Real processes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def runner(tmp_path: Path, *args: str, hide: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    paths = [str(ROOT)]
    if hide:
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in hide))
        paths.insert(0, str(site))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return subprocess.run([sys.executable, "-m", "nnlab.notebook", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_notebook_error_is_one_line(tmp_path):
    pytest.importorskip("papermill")
    store = f"sqlite:///{tmp_path / 'empty.db'}"
    result = runner(tmp_path, str(ROOT / "notebooks" / "ablation.ipynb"), str(tmp_path / "out.ipynb"),
                    "-p", "tracking_uri", store)
    assert result.returncode == 1, result.stderr
    # the Jupyter kernel's own start-up warnings (IPKernelApp) aside, nnlab says it in one line
    lines = [x for x in result.stderr.splitlines() if x.strip() and not x.startswith("[IPKernelApp]")]
    assert len(lines) == 1 and "AnalysisError: " in lines[0] and "stopped at cell" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and (tmp_path / "out.ipynb").exists()


def test_without_papermill_the_install_command(tmp_path):
    result = runner(tmp_path, str(ROOT / "notebooks" / "ablation.ipynb"), hide=("papermill",))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "pip install 'nnlab[dev]'" in result.stderr and "papermill" in result.stderr
