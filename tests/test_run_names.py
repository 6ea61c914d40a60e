"""Run names unique within an experiment for different configurations; the sweep's parent run
carries its fixed configuration and axes as params and links to its report."""
from __future__ import annotations

import pytest

from nnlab.spec import RunSpec
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from nnlab.run import CONF_DIR, train
from nnlab.sweep.callback import Plan, sweep_params

SMALL = ["trainer.epochs=1", "model.width=8", "trainer.probe_size=32", "tracking.log_weights=false",
         "diagnostics.jacobian=false", "diagnostics.theory=false"]


@pytest.fixture
def make_cfg(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def make(*overrides):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=[f"tracking.uri={store}", "tracking.experiment=t", *SMALL, *overrides])

    make.client = MlflowClient(store)
    return make


def names(client) -> list[tuple[str, str]]:
    experiment = client.get_experiment_by_name("t")
    return sorted((r.info.run_name, r.data.tags["nnlab.fingerprint"])
                  for r in client.search_runs([experiment.experiment_id]))


def test_another_configuration_under_a_taken_name_gets_a_fingerprint_suffix(make_cfg):
    first, other = make_cfg("optimizer.lr=3e-4"), make_cfg("optimizer.lr=1e-3")
    train(first)
    train(other)  # same readable name (lr is not an axis of a sweep here): suffixed
    train(first)  # the same configuration again keeps its plain name
    recorded = names(make_cfg.client)
    plain = [n for n, _ in recorded if n == "relu-he-d2-s0"]
    suffixed = [(n, fp) for n, fp in recorded if n != "relu-he-d2-s0"]
    assert len(plain) == 2 and len(suffixed) == 1
    name, fp = suffixed[0]
    assert name == f"relu-he-d2-s0-{fp[:4]}"
    assert len({fp for n, fp in recorded if n == "relu-he-d2-s0"}) == 1  # one name, one configuration


def test_parent_params_are_the_values_every_job_shares_and_the_axes(make_cfg):
    configs = [make_cfg(f"activation={a}", f"seed={s}") for a in ("relu", "tanh") for s in (0, 1)]
    plan = Plan(jobs=[[]] * 4, specs=[RunSpec.from_cfg(c) for c in configs], axes=["activation", "seed"])
    params = sweep_params(plan, plan.axes)
    assert params["sweep.axes"] == "activation seed"
    assert params["model.depth"] == "2" and params["init"] == "he" and params["optimizer.lr"] == configs[0].optimizer.lr.__str__()
    assert "activation" not in params and "seed" not in params and "activation.name" not in params
