"""The notebooks run end to end (papermill) against a real smoke sweep in a temporary store, and are
committed without outputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


@pytest.fixture(scope="module")
def smoke_uri(tmp_path_factory) -> str:
    """``python -m nnlab.run -m +experiment=smoke`` into a tmp sqlite store (16 runs of 3 epochs)."""
    work = tmp_path_factory.mktemp("smoke")
    uri = f"sqlite:///{work}/mlflow.db"
    proc = subprocess.run([sys.executable, "-m", "nnlab.run", "-m", "+experiment=smoke", f"tracking.uri={uri}"],
                          cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return uri


@pytest.mark.parametrize("name", ["ablation.ipynb", "inspect_run.ipynb"])
def test_committed_without_outputs(name):
    nb = json.loads((NOTEBOOKS / name).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert "parameters" in code[0]["metadata"].get("tags", [])  # papermill injects after this cell


@pytest.mark.slow
@pytest.mark.parametrize("name, parameters", [
    ("ablation.ipynb", {"experiment": "smoke"}),
    ("inspect_run.ipynb", {"experiment": "smoke", "run_id": None}),
])
def test_notebook_runs_on_a_smoke_sweep(smoke_uri, tmp_path, name, parameters, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    out = tmp_path / name
    papermill.execute_notebook(str(NOTEBOOKS / name), str(out), parameters={"tracking_uri": smoke_uri, **parameters},
                               kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False)
    nb = json.loads(out.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= (9 if name == "ablation.ipynb" else 4)  # ablation: 6 + the 3 instrument figures
    text = json.dumps(outputs)
    if name == "ablation.ipynb":
        assert "16 runs: 8 configurations x 2 seeds" in text
    else:
        assert "rebuilt network" in text


@pytest.mark.slow
def test_rebuilt_run_reproduces_its_recorded_test_accuracy(smoke_uri):
    from nnlab.analysis import connect
    from nnlab.analysis.inspect import open_run, pick_run, predictions

    client = connect(smoke_uri)
    run = pick_run("smoke", client=client)
    preds = predictions(open_run(client, run))
    assert preds["correct"].mean() == pytest.approx(run["test_acc"], abs=1e-9)


@pytest.mark.slow
def test_a_missing_experiment_stops_the_first_cell_with_one_line(smoke_uri, tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(str(NOTEBOOKS / "ablation.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"tracking_uri": smoke_uri, "experiment": "init_depth"},
                                   kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False)
    err = info.value
    assert err.ename == "AnalysisError" and "no experiment named 'init_depth'" in err.evalue
    assert len(err.traceback) == 1 and "smoke" in err.traceback[0]  # one line, naming what exists
    nb = json.loads((tmp_path / "out.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    failed = [i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c["outputs"])]
    first_own = next(i for i, c in enumerate(code) if not {"parameters", "injected-parameters"}
                     & set(c["metadata"].get("tags", [])))
    assert failed == [first_own]
