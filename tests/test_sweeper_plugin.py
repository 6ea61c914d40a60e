"""nnlab's grid sweeper: Hydra's basic sweeper that skips re-composing jobs nnlab already checked."""
import pytest
from hydra import compose, initialize_config_dir

from hydra_plugins.nnlab_sweeper.sweeper import CHECKED_ENV, NnlabSweeper, estimated_cost
from nnlab.run import CONF_DIR


@pytest.fixture
def base_checks(monkeypatch):
    calls = []
    # the class NnlabSweeper derives from (Hydra's plugin scan may have re-imported BasicSweeper's module)
    base = NnlabSweeper.__bases__[0]
    assert base.__name__ == "BasicSweeper"
    monkeypatch.setattr(base, "validate_batch_is_legal", lambda self, batch: calls.append(batch))
    return calls


def test_skips_hydras_check_only_after_nnlabs_own(monkeypatch, base_checks):
    sweeper = NnlabSweeper.__new__(NnlabSweeper)  # the check needs no state
    monkeypatch.delenv(CHECKED_ENV, raising=False)
    sweeper.validate_batch_is_legal([["activation=tanh"]])
    assert base_checks == [[["activation=tanh"]]]
    monkeypatch.setenv(CHECKED_ENV, "20261124-120000-abcd")
    sweeper.validate_batch_is_legal([["activation=relu"]])
    assert base_checks == [[["activation=tanh"]]]


def test_the_app_uses_it():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    assert cfg.hydra.sweeper._target_ == f"{NnlabSweeper.__module__}.{NnlabSweeper.__name__}"


def sweeper_for(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    sweeper = NnlabSweeper.__new__(NnlabSweeper)  # as Hydra's setup leaves it, without a launcher
    sweeper.config, sweeper.batch_index, sweeper.overrides = cfg, 0, None
    return sweeper


GRID = [["model.depth=1", "trainer.epochs=5"], ["model.depth=8", "trainer.epochs=5"],
        ["model.depth=1", "trainer.epochs=100"], ["model.depth=2", "trainer.epochs=5"]]


def test_parallel_launcher_gets_the_longest_jobs_first():
    sweeper = sweeper_for("hydra/launcher=joblib")
    sweeper.overrides = [GRID]
    assert sweeper.get_job_batch() == [GRID[2], GRID[1], GRID[3], GRID[0]]
    assert sweeper.is_done()


def test_in_process_launcher_keeps_the_grid_order():
    sweeper = sweeper_for()
    sweeper.overrides = [GRID]
    assert sweeper.get_job_batch() == GRID


def test_cost_estimate_follows_epochs_depth_width_and_dataset():
    cfg = sweeper_for().config  # defaults: depth 2, width 128, 30 epochs, digits
    base = estimated_cost(cfg, [])
    assert base == 30 * 1437 * (64 * 128 + 128 * 128 + 128 * 10)
    assert estimated_cost(cfg, ["trainer.epochs=60"]) == 2 * base
    assert estimated_cost(cfg, ["model.width=[16,32]"]) == 30 * 1437 * (64 * 16 + 16 * 32 + 32 * 10)
    assert estimated_cost(cfg, ["dataset=mnist"]) > 10 * base
    assert estimated_cost(cfg, ["model.depth=abc"]) == 0.0  # unparseable: no order, no crash
