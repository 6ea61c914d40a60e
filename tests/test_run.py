"""The task function ``train(cfg)`` in-process, read back from a temporary MLflow store."""
import io

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

import nnlab.core
from nnlab.spec import ConfigError
from nnlab.run import CONF_DIR, train

RECORD = {"train_loss", "train_acc", "val_loss", "val_acc", "grad_norm/global"}
FINAL = {"test_loss", "test_acc", "best_val_acc", "epochs_run", "train_seconds"}


@pytest.fixture
def make_cfg(tmp_path, fresh_store):
    store = fresh_store(tmp_path / "mlflow.db")

    def make(*overrides):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=[f"tracking.uri={store}", "tracking.experiment=t", *overrides])

    make.client = MlflowClient(store)
    return make


def runs(client):
    experiment = client.get_experiment_by_name("t")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def test_one_epoch_run_is_recorded_whole(make_cfg):
    final = train(make_cfg("trainer.epochs=2", "model.depth=3", "model.width=16", "init=xavier", "activation=tanh"))
    assert set(final) == FINAL and final["epochs_run"] == 2
    (run,) = runs(make_cfg.client)
    assert run.info.status == "FINISHED" and run.info.run_name == "tanh-xavier-d3-s0"
    # params: the group choices and every resolved leaf by dotted path
    params = run.data.params
    assert {params[g] for g in ("init", "activation", "optimizer", "dataset")} == {"xavier", "tanh", "adam", "digits"}
    assert params["model.depth"] == "3" and params["optimizer.lr"] == "0.001" and params["trainer.epochs"] == "2"
    # metrics: the record's names, steps 0..N (0 = at initialisation), final metrics
    names = set(run.data.metrics)
    per_layer = {f"grad_norm/layer_{i}" for i in range(1, 5)} | {
        f"act_{s}/layer_{i}" for s in ("mean", "std", "saturation") for i in range(1, 4)}
    per_layer |= {f"dist_init/layer_{i}" for i in range(1, 5)} | {"grad_noise_scale"}  # default instruments
    after_a_step = {f"update_ratio/layer_{i}" for i in range(1, 5)}
    jacobian = {f"jacobian_sv_{s}" for s in ("mean", "std", "min", "max")}
    theory = {f"{p}/layer_{i}" for p in ("preact_std", "theory/preact_std", "theory/act_std", "theory/chi")
              for i in range(1, 4)} | {f"theory/grad_ratio/layer_{i}" for i in range(1, 5)} | {
        "theory/chi_star", "theory/xi_grad"}  # xavier tanh without bias: q* = 0, xi_c is no correlation scale
    at_init = {"act_len_logvar"}  # the activation length's spread across the probe batch, at initialisation
    at_init |= {f"{p}/layer_{i}" for p in ("lr_mult", "init_std") for i in range(1, 5)}  # the parametrisation's scales
    assert names == RECORD | per_layer | after_a_step | FINAL | jacobian | theory | at_init
    for name in theory | at_init:  # predictions and the measurement they predict: at initialisation only
        assert [m.step for m in make_cfg.client.get_metric_history(run.info.run_id, name)] == [0], name
    for name in RECORD | per_layer | after_a_step | jacobian:
        steps = sorted(m.step for m in make_cfg.client.get_metric_history(run.info.run_id, name))
        assert steps == ([1, 2] if name in after_a_step else [0, 1, 2]), name
    assert run.data.metrics["test_acc"] == pytest.approx(final["test_acc"])
    # artifacts: resolved config and the weights as a plain npz (no pickle)
    paths = {a.path for a in make_cfg.client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "weights.npz"} <= paths
    weights = make_cfg.client.download_artifacts(run.info.run_id, "weights.npz")
    with np.load(weights, allow_pickle=False) as npz:
        assert [npz[f"W{i}"].shape for i in range(1, 5)] == [(64, 16), (16, 16), (16, 16), (16, 10)]
    config_text = open(make_cfg.client.download_artifacts(run.info.run_id, "config.yaml")).read()
    assert "depth: 3" in config_text
    assert "mlflow.parentRunId" not in run.data.tags  # a single run has no parent


def test_diagnostics_off_means_absent_and_the_same_numbers(make_cfg):
    on = train(make_cfg("trainer.epochs=2", "model.depth=2", "model.width=16", "init=variance_scaling",
                        "init.sigma_w=1.3", "init.sigma_b=0.2", "activation=tanh"))
    off = train(make_cfg("trainer.epochs=2", "model.depth=2", "model.width=16", "init=variance_scaling",
                         "init.sigma_w=1.3", "init.sigma_b=0.2", "activation=tanh", "diagnostics.theory=false",
                         "diagnostics.jacobian=false"))
    assert on["test_acc"] == off["test_acc"] and on["test_loss"] == off["test_loss"]  # measuring changes nothing
    with_diag, without = sorted(runs(make_cfg.client), key=lambda r: len(r.data.metrics), reverse=True)
    extra = set(with_diag.data.metrics) - set(without.data.metrics)
    assert not any(k.startswith(("theory/", "preact_std/", "jacobian_sv_")) for k in without.data.metrics)
    assert {"theory/chi_star", "theory/xi_c", "jacobian_sv_mean", "preact_std/layer_2"} <= extra
    assert with_diag.data.metrics["theory/chi_star"] < 1  # tanh, sigma_w^2 = 1.69, sigma_b^2 = 0.04: ordered


def test_depth_zero_has_no_theory_and_no_jacobian(make_cfg):
    train(make_cfg("trainer.epochs=1", "model.depth=0"))
    (run,) = runs(make_cfg.client)
    assert not any(k.startswith(("theory/", "preact_std/", "jacobian_sv_")) for k in run.data.metrics)


def test_tracking_does_not_change_the_numbers(make_cfg):
    """The tracker only records: train() returns what the core computes for the same seed."""
    from nnlab.core import MLP, TrainConfig, evaluate, fit, make_optimizer
    from nnlab.data import load_dataset

    final = train(make_cfg("trainer.epochs=2", "model.width=16", "seed=3"))
    ds = load_dataset("digits")
    model = MLP.from_shape(ds.n_features, ds.n_classes, 2, 16, seed=3)
    fit(model, make_optimizer("adam", lr=1e-3), ds.x_train, ds.y_train, ds.x_val, ds.y_val,
        TrainConfig(epochs=2, weight_decay=0.01), seed=3)
    assert final["test_acc"] == evaluate(model, ds.x_test, ds.y_test)[1]


def test_divergence_fails_the_run_with_its_epoch(make_cfg):
    with pytest.raises(nnlab.core.DivergenceError):
        train(make_cfg("trainer.epochs=3", "optimizer=sgd", "optimizer.lr=1e6", "model.width=16"))
    (run,) = runs(make_cfg.client)
    assert run.info.status == "FAILED"
    assert run.data.tags["nnlab.failure"] == "diverged" and run.data.tags["nnlab.failure_epoch"] == "1"
    assert "val_acc" in run.data.metrics  # epoch 0 was recorded before the failure


def test_a_net_that_overflows_at_initialisation_fails_without_runtime_warnings(make_cfg):
    """relu with branch scale 1 at depth 256: the signal overflows in the initial probe; one
    DivergenceError, no numpy RuntimeWarning (a sweep of such nets would flood the console)."""
    import warnings

    cfg = make_cfg("model.residual=true", "model.branch_scale=1.0", "model.depth=256", "model.width=64",
                   "optimizer=sgd", "optimizer.lr=0.01", "trainer.epochs=1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(nnlab.core.DivergenceError):
            train(cfg)
    (run,) = runs(make_cfg.client)
    assert run.info.status == "FAILED" and run.data.tags["nnlab.failure"] == "diverged"


def test_ctrl_c_mid_training_leaves_no_running_run(make_cfg, monkeypatch):
    real_fit = nnlab.core.fit

    def interrupted_fit(*args, callback, **kwargs):
        def stop(epoch, metrics):
            callback(epoch, metrics)
            if epoch == 1:
                raise KeyboardInterrupt

        return real_fit(*args, callback=stop, **kwargs)

    monkeypatch.setattr(nnlab.core, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg("trainer.epochs=5", "model.width=16"))
    (run,) = runs(make_cfg.client)
    assert run.info.status == "KILLED" and run.data.tags["nnlab.failure"] == "SIGINT"
    steps = sorted(m.step for m in make_cfg.client.get_metric_history(run.info.run_id, "val_acc"))
    assert steps == [0, 1]


@pytest.mark.parametrize("override", ["model.depth=-1", "optimizer.lr=0", "trainer.batch_size=0"])
def test_refused_config_creates_no_run(make_cfg, override):
    with pytest.raises(ConfigError):
        train(make_cfg(override))
    assert runs(make_cfg.client) == []


def test_summary_line_without_a_terminal(make_cfg, capsys):
    train(make_cfg("trainer.epochs=1", "model.width=8"))
    out = capsys.readouterr()
    assert out.out.startswith("[1/1] relu-he-d2-s0  test_acc=") and out.out.count("\n") == 1
    assert "it/s" not in out.err and "runs?workflowType=machine_learning" in out.err


def test_progress_bar_in_a_terminal(make_cfg, capsys, monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    fake = Tty()
    monkeypatch.setattr("sys.stderr", fake)
    train(make_cfg("trainer.epochs=3", "model.width=8"))
    assert "relu-he-d2-s0:" in fake.getvalue() and "/3 [" in fake.getvalue()  # a tqdm bar over 3 epochs


def test_default_config_reaches_97_5_percent_over_five_seeds(make_cfg):
    accuracies = [train(make_cfg(f"seed={seed}"))["test_acc"] for seed in range(5)]
    assert np.mean(accuracies) >= 0.975, accuracies


def test_blas_threads_limit_applies_during_fit_and_joblib_workers_get_one(make_cfg, monkeypatch):
    from threadpoolctl import threadpool_info

    from nnlab.job import Job, JobContext
    from nnlab.spec import RunSpec

    seen = []
    real_fit = nnlab.core.fit

    def spy_fit(*args, **kwargs):
        seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(nnlab.core, "fit", spy_fit)
    train(make_cfg("trainer.epochs=1", "model.width=8", "blas_threads=1"))
    assert seen and set(seen) == {1}
    spec = RunSpec.from_cfg(make_cfg("blas_threads=null"))
    in_worker = Job(spec, JobContext(parallel=True), None, None, None, None, spec.name)
    assert in_worker.blas_limit == 1 and Job(spec, JobContext(), None, None, None, None, spec.name).blas_limit is None


def test_command_line_exit_skips_the_final_garbage_collection():
    import subprocess
    import sys

    # exit handlers run last-registered first: one registered before ours sees what ours did
    code = ("import atexit, gc; atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0)); "
            "from nnlab.run import cli; import nnlab._cli as c; c.exit_without_final_collection(); "
            "c.exit_without_final_collection(); print('handlers', atexit._ncallbacks())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[1] == "frozen True"
    handlers = int(out[0].split()[1])
    plain = subprocess.run([sys.executable, "-c", "import atexit; from nnlab.run import cli; print(atexit._ncallbacks())"],
                           capture_output=True, text=True, check=True).stdout
    assert handlers == int(plain) + 2  # the probe and ours, once however often it is asked


@pytest.mark.parametrize("args, frozen", [(["trainer.epochs=1", "model.width=8"], "True"), (["--cfg", "job"], "False")],
                         ids=["a-job-ran", "no-job"])
def test_a_process_that_runs_a_job_freezes_its_start_up_heap(tmp_path, args, frozen):
    import subprocess
    import sys

    # the exit-time freeze is registered first, so the probe (run before it) sees only the job's freeze
    code = ("import atexit, gc, sys; import nnlab._cli as c; c.exit_without_final_collection(); "
            "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0)); "
            f"sys.argv = ['nnlab.run', *{args!r}]; from nnlab.run import cli; cli()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == f"frozen {frozen}"


def test_the_record_says_which_config_and_which_process_and_how_many_blas_threads(make_cfg):
    import os
    import socket

    from nnlab.spec import fingerprint

    cfg = make_cfg("trainer.epochs=1", "model.width=8", "blas_threads=null")
    train(cfg)
    (run,) = runs(make_cfg.client)
    tags = run.data.tags
    assert tags["nnlab.fingerprint"] == fingerprint(cfg)
    assert (tags["nnlab.host"], tags["nnlab.pid"]) == (socket.gethostname(), str(os.getpid()))
    assert tags["nnlab.blas_threads"].startswith("default (") and tags["nnlab.blas_threads"][9:-1].isdigit()
    assert "resume" not in run.data.params  # how a sweep runs is not a hyperparameter
    train(make_cfg("trainer.epochs=1", "model.width=8", "blas_threads=1", "seed=1"))
    assert {r.data.tags["nnlab.blas_threads"] for r in runs(make_cfg.client)} == {"1", tags["nnlab.blas_threads"]}


def test_params_and_tags_are_stored_when_the_run_starts(make_cfg, monkeypatch):
    """A run killed in its first second is still found, with its config."""
    seen = {}

    def stop_at_once(*args, **kwargs):
        (run,) = runs(make_cfg.client)  # read back from the store before any epoch
        seen.update(params=run.data.params, tags=run.data.tags)
        raise KeyboardInterrupt

    monkeypatch.setattr(nnlab.core, "fit", stop_at_once)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg("trainer.epochs=1", "model.width=8", "tracking.flush_seconds=3600"))
    assert seen["params"]["model.width"] == "8" and "nnlab.fingerprint" in seen["tags"]
def test_run_records_its_dataset_as_an_mlflow_input(make_cfg):
    """The runs table's Dataset column and ``dataset.name`` filter: name, digest and size per split."""
    train(make_cfg("trainer.epochs=1", "model.width=8"))
    (run,) = runs(make_cfg.client)
    inputs = {[t.value for t in i.tags if t.key == "mlflow.data.context"][0]: i.dataset
              for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "testing"}
    assert {d.name for d in inputs.values()} == {"digits"}
    assert len({d.digest for d in inputs.values()}) == 3  # three different splits, three digests
    import json
    sizes = {k: json.loads(d.profile)["features_shape"] for k, d in inputs.items()}
    assert sizes == {"training": [1257, 64], "validation": [180, 64], "testing": [360, 64]}
    assert "split_seed=0" in inputs["training"].source
    found = make_cfg.client.search_runs([run.info.experiment_id], "dataset.name = 'digits'")
    assert [r.info.run_id for r in found] == [run.info.run_id]


def test_an_interrupt_that_comes_out_as_another_error_still_stops_with_its_signal(monkeypatch, capsys):
    """A signal landing inside Hydra's or OmegaConf's code between two jobs can surface as another
    error raised while that code unwinds (seen: an AttributeError from a half-updated config)."""
    import signal

    import nnlab.run
    from nnlab.record.signals import Interrupted

    def main():
        try:
            raise Interrupted(signal.SIGTERM)
        except KeyboardInterrupt:
            raise AttributeError("'NoneType' object has no attribute '_invalidate_flags_cache'")

    monkeypatch.setattr(nnlab.run, "main", main)
    with pytest.raises(SystemExit) as stopped:
        nnlab.run.cli()
    assert stopped.value.code == 143
    assert capsys.readouterr().err.strip() == "nnlab: stopped by SIGTERM"
