"""python -m nnlab.report: figures + index.md from a synthetic sweep; bad input leaves nothing behind."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from nnlab.analysis.fake import log_fake_sweep
from nnlab.report import FIGURES, main

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    client = MlflowClient(uri)
    log_fake_sweep(client, "fake", depths=(1, 4), fail=[("random", "tanh", 4, 2)])
    client.create_experiment("empty")
    exp = client.create_experiment("no_curves")  # a finished run with curves but no per-layer record
    run = client.create_run(exp, run_name="bare")
    client.log_batch(run.info.run_id, metrics=[Metric(k, 0.9, 0, 0) for k in ("test_acc", "train_loss", "val_loss")])
    client.log_param(run.info.run_id, "seed", "0")
    client.set_terminated(run.info.run_id, "FINISHED")
    return uri


def test_report_writes_figures_and_index(uri, tmp_path, capsys):
    out = tmp_path / "reports" / "fake"
    assert main(["--experiment", "fake", "--tracking-uri", uri, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*FIGURES, "index.md", "index.html"])
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = (out / "index.md").read_text()
    assert "| init | activation | model.depth | runs | failed | test_acc mean" in index
    assert "24 runs: 8 configurations x 3 seeds; 1 failed (1 diverged)." in index
    assert all(f"]({name})" in index for name in FIGURES)
    printed = capsys.readouterr().out.splitlines()  # one line before the slow part, one after
    assert len(printed) == 2 and printed[0].startswith("nnlab-report: reading experiment 'fake' from ")
    assert printed[0].endswith(f"into {out}/ ...") and re.match(r"nnlab-report: wrote .* in \d+\.\d s$", printed[1])
    assert [p.name for p in out.parent.iterdir()] == ["fake"]  # no temporary folder left next to it


def test_report_replaces_an_existing_report(uri, tmp_path):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old")
    assert main(["--experiment", "fake", "--tracking-uri", uri, "--out", str(out)]) == 0
    assert not (out / "stale.png").exists() and (out / "index.md").exists()


@pytest.mark.parametrize("experiment, message", [
    ("nope", "no experiment named 'nope'.*existing experiments: .*empty, fake"),
    ("empty", "'empty' has no runs"),
    ("no_curves", r"1 finished run.*no per-epoch metric 'grad_norm/layer_\{i\}': bare"),
])
def test_bad_experiment_one_message_nothing_written(uri, tmp_path, capsys, experiment, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.md").write_text("previous report")
    assert main(["--experiment", experiment, "--tracking-uri", uri, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nnlab-report: error: ")
    assert re.search(message, err), err
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["keep.md"]


def test_unreachable_store(tmp_path, capsys):
    missing = tmp_path / "none" / "mlflow.db"
    assert main(["--experiment", "x", "--tracking-uri", f"sqlite:///{missing}", "--out", str(tmp_path / "o")]) == 2
    assert "no MLflow database at" in capsys.readouterr().err
    assert main(["--experiment", "x", "--tracking-uri", "http://127.0.0.1:9", "--out", str(tmp_path / "o")]) == 2
    assert "cannot reach the MLflow tracking store 'http://127.0.0.1:9'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_module_exit_code(uri, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nnlab.report", "--experiment", "nope", "--tracking-uri", uri,
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("nnlab-report: error: no experiment named 'nope'")
    assert not (tmp_path / "o").exists()


def test_sweep_report_draws_one_sweep_only(tmp_path):
    from nnlab.report import SweepReportError, write_sweep_report

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    first = log_fake_sweep(client, "two_sweeps", depths=(1, 4), fail=[])
    log_fake_sweep(client, "two_sweeps", inits=("xavier",), depths=(2,), fail=[])  # another sweep, same experiment
    parent = client.get_run(next(iter(first))).data.tags["mlflow.parentRunId"]
    experiment_id = client.get_experiment_by_name("two_sweeps").experiment_id
    files = write_sweep_report(client, experiment_id, parent, tmp_path / "report")
    assert [p.name for p in files] == ["index.md", "index.html", *FIGURES] and all(p.is_file() for p in files)
    index = files[0].read_text()
    assert "24 runs: 8 configurations x 3 seeds." in index and "xavier" not in index
    # a sweep whose report cannot be drawn: one clear exception, nothing written
    lonely = client.create_run(experiment_id, run_name="no children").info.run_id
    with pytest.raises(SweepReportError, match=f"no report for sweep {lonely}: .*has no child runs"):
        write_sweep_report(uri, experiment_id, lonely, tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_default_folder_is_not_the_committed_reports(uri, tmp_path, monkeypatch):
    """Without --out the report goes to ./nnlab-report/<experiment>/ (git-ignored), never reports/."""
    monkeypatch.chdir(tmp_path)
    assert main(["--experiment", "fake", "--tracking-uri", uri]) == 0
    assert (tmp_path / "nnlab-report" / "fake" / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nnlab-report"]
    ignored = subprocess.run(["git", "check-ignore", "-q", "nnlab-report/fake/index.md"],
                             cwd=Path(__file__).resolve().parents[1])
    assert ignored.returncode == 0  # the repository's .gitignore covers it


def test_figures_drawn_by_two_processes_are_the_files_one_draws(uri, tmp_path):
    """draw() in 2 forked workers writes byte-for-byte the figures it writes alone, each figure once."""
    from nnlab.report import draw, load_study

    study = load_study("fake", uri)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    assert draw(study, tmp_path / "one", workers=1) == list(FIGURES)
    assert draw(study, tmp_path / "two", workers=2) == list(FIGURES)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(FIGURES)
    for name in FIGURES:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_figure_that_fails_in_a_worker_fails_the_report_nothing_written(uri, tmp_path, capsys, monkeypatch,
                                                                            workers):
    from nnlab.analysis import plots

    def broken(*args, **kwargs):
        raise ValueError("drawing failed on purpose")

    monkeypatch.setattr(plots, "accuracy_heatmap", broken)  # the forked workers inherit the patch
    with pytest.raises(ValueError, match="drawing failed on purpose"):
        main(["--experiment", "fake", "--tracking-uri", uri, "--out", str(tmp_path / "out"), "--workers", workers])
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_ctrl_c_while_workers_draw_stops_them_at_once(uri, tmp_path):
    """SIGINT to the process group while 2 workers are inside their figures: the command ends within a few
    seconds with KeyboardInterrupt, and no process of its group is left (the workers ignore SIGINT and are
    stopped by the process that started them)."""
    script = "\n".join([
        "import pathlib, time",
        "from nnlab.analysis import plots",
        "from nnlab.report import draw, load_study",
        "plots.final_accuracy = plots.accuracy_heatmap = lambda *args, **kwargs: time.sleep(60)",
        f"study = load_study('fake', {uri!r})",
        "print('drawing', flush=True)",
        f"draw(study, pathlib.Path({str(tmp_path)!r}), workers=2)",
    ])
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, "MPLBACKEND": "Agg"})
    try:
        assert proc.stdout.readline().strip() == "drawing", proc.stderr.read()
        time.sleep(1.5)  # both workers asleep in their figure
        start = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: every process of the group
        proc.wait(timeout=20)
        took = time.monotonic() - start
        err = proc.stderr.read()
        assert proc.returncode != 0 and "KeyboardInterrupt" in err, err[-2000:]
        assert took < 5, took
        time.sleep(0.5)
        with pytest.raises(ProcessLookupError):  # nothing of the group left
            os.killpg(proc.pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


_IMPORT = """
import gc, json
{before}
full = []
gc.callbacks.append(lambda phase, info: full.append(1) if phase == "start" and info["generation"] == 2 else None)
import nnlab.report
print(json.dumps({{"full": len(full), "enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}}))
"""


@pytest.mark.parametrize("case", ["first-import", "mlflow-imported-already"])
def test_the_report_command_imports_its_library_without_garbage_collection(case):
    """``import nnlab.report`` (what ``python -m nnlab.report`` runs first) imports MLflow, pandas and matplotlib
    with no full collection over the ~200k objects they leave, which are then frozen out of later ones; a
    process that imported MLflow before (a test session, a notebook) is left as it was."""
    before = "import mlflow" if case == "mlflow-imported-already" else ""
    out = subprocess.run([sys.executable, "-c", _IMPORT.format(before=before)], capture_output=True, text=True,
                         env={**os.environ, "MPLBACKEND": "Agg"}, timeout=120)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["enabled"] is True
    if case == "first-import":
        assert seen["full"] == 0 and seen["frozen"] > 100_000
    else:
        assert seen["full"] > 0 and seen["frozen"] == 0


def test_the_page_says_which_sweeps_built_the_record(tmp_path):
    """One sentence per parent run, oldest first: its overrides, its grid's jobs, the runs of the record that
    came from it (failed ones counted) and its wall time; a run outside any sweep adds nothing."""
    import pandas as pd
    from mlflow import MlflowClient

    from nnlab.analysis.report import sweeps_built

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("s")
    first = client.create_run(exp, start_time=1_000, tags={"nnlab.role": "sweep", "nnlab.jobs": "4",
                                                           "overrides": "+experiment=smoke"})
    client.set_terminated(first.info.run_id, end_time=1_000 + 125_000)
    second = client.create_run(exp, start_time=200_000, tags={"nnlab.role": "sweep", "nnlab.jobs": "6",
                                                              "overrides": "+experiment=smoke resume=true"})
    client.set_terminated(second.info.run_id, end_time=200_000 + 9_000)
    runs = pd.DataFrame({"parent_run_id": [first.info.run_id] * 3 + [second.info.run_id] * 2 + [None],
                         "failed": [False, True, False, False, False, False]})
    assert sweeps_built(client, exp, runs) == (
        "`python -m nnlab.run -m +experiment=smoke`: 4 jobs, 3 of the record's runs from it (1 failed) in 2 min 5 s",
        "`python -m nnlab.run -m +experiment=smoke resume=true`: 6 jobs, 2 of the record's runs from it (0 failed) in 9 s")
