"""The edge-of-stability study end to end at reduced size: the real CLI sweep into a temporary store, then the
report with its sharpness figure and its per-run reading."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_edge_of_stability_study_runs_and_reports(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from nnlab.report import main

    monkeypatch.setenv("MPLBACKEND", "Agg")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run(
        [sys.executable, "-m", "nnlab.run", "-m", "+experiment=edge_of_stability", f"tracking.uri={uri}",
         "trainer.epochs=12", "model.width=16", "diagnostics.sharpness_every=4", "diagnostics.sharpness_iters=5",
         "optimizer.lr=0.3,2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("edge_of_stability")
    runs = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert sorted((r.data.params["activation"], r.data.params["optimizer.lr"]) for r in runs) == [
        ("relu", "0.3"), ("relu", "2.0"), ("tanh", "0.3"), ("tanh", "2.0")]
    for run in runs:
        assert run.data.params["trainer.batch_size"] == "100000"  # full-batch gradient descent
        sharp = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "sharpness")}
        scaled = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "sharpness_x_lr")}
        assert sorted(sharp) == [0, 4, 8, 12]  # every 4 epochs, from initialisation
        lr = float(run.data.params["optimizer.lr"])
        assert all(scaled[s] == pytest.approx(sharp[s] * lr / 2) for s in sharp)
    out = tmp_path / "report"
    assert main(["--experiment", "edge_of_stability", "--tracking-uri", uri, "--out", str(out)]) == 0
    for name in ("edge_of_stability.png", "update_ratio_by_layer.png", "dist_init_by_layer.png",
                 "grad_noise_scale.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    index = (out / "index.md").read_text()
    assert "### Edge of stability" in index and "](edge_of_stability.png)" in index
    readings = re.findall(r"^- (tanh|relu), lr (0\.3|2) \(2/lr = (6\.67|1)\): sharpness .* steps\.$", index, flags=re.M)
    assert sorted(readings) == [("relu", "0.3", "6.67"), ("relu", "2", "1"), ("tanh", "0.3", "6.67"), ("tanh", "2", "1")]
