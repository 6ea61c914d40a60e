"""hydra/launcher=joblib selects nnlab's launcher (same options as the stock plugin's), and how it
names the job a dead worker was running."""
import dataclasses
import warnings

from hydra import compose, initialize_config_dir

from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.nnlab_launcher.joblib_launcher import NnlabJoblibLauncher, _victims, exit_reason, run_in_worker
from nnlab.run import CONF_DIR


def test_joblib_selects_nnlabs_launcher_with_the_stock_options_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Hydra's automatic schema matching deprecation
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"],
                          return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == f"{NnlabJoblibLauncher.__module__}.{NnlabJoblibLauncher.__name__}"
    assert set(launcher) == {f.name for f in dataclasses.fields(JobLibLauncherConf)}
    assert launcher.n_jobs == 3


def test_a_dead_worker_names_the_job_it_was_running(tmp_path, monkeypatch):
    # what each job does in its worker before it runs: its pid -> its job number
    monkeypatch.setattr("hydra_plugins.hydra_joblib_launcher._core.execute_job", lambda idx, overrides, *a: "ran")
    monkeypatch.setattr("os.getpid", lambda: 4242)
    assert run_in_worker(7, ["seed=1"], str(tmp_path)) == (7, "ran")
    assert (tmp_path / "4242").read_text() == "7"
    # 4242 died by SIGKILL while job 7 was pending; 5151 died before any job; 6161 ran job 3, already returned
    (tmp_path / "6161").write_text("3")
    found = _victims({4242: -9, 5151: -9, 6161: 1}, tmp_path, pending={5, 7})
    assert found == {7: (4242, "SIGKILL")}


def test_exit_reasons():
    assert exit_reason(-9) == "SIGKILL" and exit_reason(-15) == "SIGTERM"
    assert exit_reason(3) == "exit 3" and exit_reason(None) == "unknown"
