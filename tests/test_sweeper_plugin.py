"""nnlab's grid sweeper: Hydra's basic sweeper that skips re-composing jobs nnlab already checked."""
import pytest
from hydra import compose, initialize_config_dir

from hydra_plugins.nnlab_sweeper.sweeper import CHECKED_ENV, NnlabSweeper
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
