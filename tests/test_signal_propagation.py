"""The signal_propagation study end to end at a reduced size (a real command-line sweep into a
temporary store), then its report: the theory figures, the dashed theory overlays and the reading."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

from nnlab.analysis import plots, theory_plots  # noqa: E402
from nnlab.report import FIGURES, THEORY_FIGURES, TRAINABILITY_FIGURE, load_study, main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study_uri(tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("signal_propagation")
    uri = f"sqlite:///{work}/mlflow.db"
    # 3 sigma_w^2 (ordered, near-critical, chaotic) x 2 depths x 2 seeds, 2 epochs
    proc = subprocess.run([sys.executable, "-m", "nnlab.run", "-m", "+experiment=signal_propagation",
                           "init.sigma_w=0.70710678,1.32287566,2.0", "model.depth=2,8", "seed=0,1",
                           "trainer.epochs=2", f"tracking.uri={uri}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "12 finished, 0 failed" in proc.stdout + proc.stderr
    return uri


@pytest.mark.slow
def test_signal_propagation_report_draws_the_theory(study_uri, tmp_path):
    out = tmp_path / "report"
    assert main(["--experiment", "signal_propagation", "--tracking-uri", study_uri, "--out", str(out)]) == 0
    instruments = {"update_ratio_by_layer.png", "dist_init_by_layer.png", "grad_noise_scale.png"}  # on by default
    expected = {*FIGURES, *THEORY_FIGURES, *TRAINABILITY_FIGURE, *instruments, "index.md", "index.html"}
    assert {p.name for p in out.iterdir()} == expected
    index = (out / "index.md").read_text()
    assert "differs from the mean-field prediction by" in index and "6 xi_c" in index
    assert "theory's critical point: sigma_w^2 = 1.76" in index


@pytest.mark.slow
def test_by_layer_figures_carry_dashed_theory_lines(study_uri):
    study = load_study("signal_propagation", study_uri)
    ok = study.runs[~study.runs["failed"]]
    for stat in ("act_std", "grad_norm"):
        line = theory_plots.predicted_profile(study.history, stat)
        assert len(line) and (line["value"] > 0).all()
        fig = plots.layer_profile(study.layers, ok, study.design, stat, theory=line)
        top_row = fig.axes[: len(fig.axes) // 2]  # at initialisation
        dashed = [ln for ax in top_row for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert len(dashed) == len(top_row) * ok[study.design.hue].nunique(), stat  # one per line and panel
        bottom = [ln for ax in fig.axes[len(fig.axes) // 2:] for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert not bottom  # the theory is about initialisation only
    errors = theory_plots.prediction_errors(study.history)
    assert errors["rel_error"].abs().median() < 0.15  # width 64: a few % to ~10 % finite-width deviations


@pytest.mark.slow
def test_trainability_lines_come_from_the_theory(study_uri):
    study = load_study("signal_propagation", study_uri)
    table = theory_plots.trainability_table(study.runs)
    assert list(table.index) == [2, 8] and list(table.columns) == [0.5, 1.75, 4.0]
    critical, six_xi = theory_plots.theory_lines("tanh", 0.05, table.columns.to_numpy(float))
    assert critical == pytest.approx(1.761, abs=1e-3)
    assert six_xi[1] > six_xi[0] and six_xi[1] > six_xi[2]  # xi_c peaks at the critical point
