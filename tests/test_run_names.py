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


def test_a_run_of_that_name_without_a_fingerprint_counts_as_another_configuration(make_cfg):
    cfg = make_cfg()
    experiment = make_cfg.client.create_experiment("t")
    make_cfg.client.create_run(experiment, run_name="relu-he-d2-s0")  # logged by hand: no nnlab.fingerprint
    train(cfg)
    fingerprint = RunSpec.from_cfg(cfg).fingerprint
    runs = make_cfg.client.search_runs([experiment])
    recorded = {(r.info.run_name, r.data.tags.get("nnlab.fingerprint")) for r in runs}
    assert recorded == {("relu-he-d2-s0", None), (f"relu-he-d2-s0-{fingerprint[:4]}", fingerprint)}


def test_the_name_check_reads_at_most_one_run_whatever_the_runs_of_that_name(make_cfg):
    """A name run many times is checked at a cost that does not grow with those runs: the store is
    asked for one run of another configuration (or none) at most, not for every run of the name."""
    from nnlab.record.run_names import distinct_run_name
    from nnlab.record.store import Tracker

    first, other = make_cfg(), make_cfg("optimizer.lr=0.0123")
    for _ in range(3):
        train(first)
    tracker = Tracker(make_cfg.client.tracking_uri)
    read = []
    search = tracker.search
    tracker.search = lambda *args, **kwargs: read.append(len(found := search(*args, **kwargs))) or found
    mine, another = (RunSpec.from_cfg(c).fingerprint for c in (first, other))
    assert distinct_run_name(tracker, "t", "relu-he-d2-s0", mine) == "relu-he-d2-s0"
    assert distinct_run_name(tracker, "t", "relu-he-d2-s0", another) == f"relu-he-d2-s0-{another[:4]}"
    assert read and max(read) <= 1  # three runs of that name exist


def test_parent_params_are_the_values_every_job_shares_and_the_axes(make_cfg):
    configs = [make_cfg(f"activation={a}", f"seed={s}") for a in ("relu", "tanh") for s in (0, 1)]
    plan = Plan(jobs=[[]] * 4, specs=[RunSpec.from_cfg(c) for c in configs], axes=["activation", "seed"])
    params = sweep_params(plan, plan.axes)
    assert params["sweep.axes"] == "activation seed"
    assert params["model.depth"] == "2" and params["init"] == "he" and params["optimizer.lr"] == configs[0].optimizer.lr.__str__()
    assert "activation" not in params and "seed" not in params and "activation.name" not in params
