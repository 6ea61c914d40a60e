"""nnlab.analysis against a synthetic sweep logged with the record's exact names (no training)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from scipy import stats as sps

from nnlab.analysis import (AnalysisError, aggregate, at_step, check_metrics, connect, get_experiment_id, layer_frame,
                            load_history, load_runs, parse_param, summarize, varying_params, with_params)
from nnlab.analysis import records
from nnlab.analysis.design import CONFIG, infer_design
from nnlab.analysis.fake import fake_epoch, fake_test_acc, log_fake_sweep
from nnlab.analysis.reading import reading
from nnlab.analysis.stats import summary_table, to_markdown

EPOCHS = 3


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, dict[str, str]]:
    """A sqlite store with one fake sweep (2 inits x 2 activations x depths 1, 3 x 3 seeds, one FAILED run),
    an empty experiment and a single run without a parent."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    client = MlflowClient(uri)
    children = log_fake_sweep(client, "fake", epochs=EPOCHS)
    client.create_experiment("empty")
    exp = client.create_experiment("no_test_acc")
    run = client.create_run(exp, run_name="lonely")
    client.log_batch(run.info.run_id, metrics=[Metric("train_loss", 1.0, 0, 0)], params=[Param("seed", "0")])
    client.set_terminated(run.info.run_id, "FINISHED")
    aborted = client.create_run(exp, run_name="sweep-that-never-started")  # a parent without children or params
    client.set_terminated(aborted.info.run_id, "FAILED")
    return uri, children


@pytest.fixture(scope="module")
def runs(store) -> pd.DataFrame:
    return load_runs("fake", store[0])


@pytest.fixture(scope="module")
def history(store) -> pd.DataFrame:
    return load_history("fake", store[0])


def test_runs_one_row_per_child_parents_excluded(runs, store):
    _, children = store
    assert sorted(runs["run_id"]) == sorted(children)
    assert runs["parent_run_id"].nunique() == 1
    assert not runs["run_id"].isin(runs["parent_run_id"]).any()


def test_runs_params_are_typed_and_named_by_path(runs):
    assert runs["model.depth"].dtype == "Int64" and runs["seed"].dtype == "Int64"
    assert runs["optimizer.lr"].dtype == float
    assert set(runs["init"]) == {"he", "random"}
    assert runs.loc[runs["init"] == "he", "init.std"].isna().all()  # only random has a std
    assert (runs.loc[runs["init"] == "random", "init.std"] == 0.01).all()


def test_runs_final_metrics_match_what_was_logged(runs):
    ok = runs[~runs["failed"]]
    assert len(ok) == 23
    for _, r in ok.iterrows():
        assert r["test_acc"] == pytest.approx(fake_test_acc(r["init"], r["activation"], r["model.depth"], r["seed"]))
        assert r["epochs_run"] == EPOCHS


def test_failed_run_is_kept_and_flagged(runs):
    failed = runs[runs["failed"]]
    assert len(failed) == 1
    row = failed.iloc[0]
    assert row["status"] == "FAILED" and row["failure"].startswith("diverged")
    assert (row["init"], row["activation"], row["model.depth"], row["seed"]) == ("random", "tanh", 3, 2)
    assert np.isnan(row["test_acc"])


def test_history_is_tidy_with_every_step_and_value(history, runs):
    assert list(history.columns) == ["run_id", "metric", "step", "value"]
    assert not history.duplicated(["run_id", "metric", "step"]).any()
    row = runs[(runs["init"] == "he") & (runs["activation"] == "relu") & (runs["model.depth"] == 3)
               & (runs["seed"] == 1)].iloc[0]
    mine = history[history["run_id"] == row["run_id"]]
    for epoch in range(EPOCHS + 1):
        for key, value in fake_epoch("he", "relu", 3, 1, epoch).items():
            got = mine[(mine["metric"] == key) & (mine["step"] == epoch)]["value"]
            assert got.tolist() == [pytest.approx(value)], (key, epoch)


def test_history_bulk_and_per_run_paths_agree(store, history):
    slow = load_history("fake", store[0], bulk=False)
    pd.testing.assert_frame_equal(history, slow)


def test_an_mlflow_release_the_columns_were_not_checked_against_is_read_through_search_runs(store, monkeypatch):
    import mlflow

    client = MlflowClient(store[0])
    exp_id = get_experiment_id(client, "fake")
    assert records._runs_columns(records._bulk_store(client), exp_id) is not None
    monkeypatch.setattr(mlflow, "__version__", "3.99.0")
    assert records._runs_columns(records._bulk_store(client), exp_id) is None
    assert [r.info.run_id for r in records.search_all_runs(client, exp_id)] == \
        [r.info.run_id for r in records._search_runs_api(client, exp_id)]


def test_runs_read_as_columns_match_mlflow_search(store):
    """The SQL store's column read (records._runs_columns) returns what MlflowClient.search_runs returns:
    the same runs in the same order, with the same info, params, tags and latest metrics (NaN included);
    deleted runs and other experiments' runs stay out."""
    client = MlflowClient(store[0])
    exp = client.create_experiment("columns")
    for name, value in (("b", float("nan")), ("a", 0.5), ("gone", 1.0)):
        run = client.create_run(exp, run_name=name, tags={"mlflow.note.content": f"note {name}"})
        client.log_batch(run.info.run_id, metrics=[Metric("val_acc", value, 0, 3), Metric("val_acc", 0.1, 0, 1)],
                         params=[Param("seed", "0"), Param("init", name)])
        client.set_terminated(run.info.run_id, "FINISHED")
        if name == "gone":
            client.delete_run(run.info.run_id)
    for experiment in ("fake", "columns", "no_test_acc"):
        exp_id = get_experiment_id(client, experiment)
        fast, slow = records._runs_columns(records._bulk_store(client), exp_id), records._search_runs_api(client, exp_id)
        assert fast is not None and [r.info.run_id for r in fast] == [r.info.run_id for r in slow], experiment
        for mine, theirs in zip(fast, slow):
            assert dict(mine.info) == dict(theirs.info)
            assert mine.data.params == theirs.data.params and mine.data.tags == theirs.data.tags
            assert mine.data.metrics.keys() == theirs.data.metrics.keys()
            for key, value in theirs.data.metrics.items():
                assert mine.data.metrics[key] == value or (np.isnan(value) and np.isnan(mine.data.metrics[key]))
    names = [r.info.run_name for r in records.search_all_runs(client, get_experiment_id(client, "columns"))]
    assert sorted(names) == ["a", "b"]
    fast = load_history("columns", store[0])  # NaN read back as NaN from the columns, as from the public API
    pd.testing.assert_frame_equal(fast, load_history("columns", store[0], bulk=False))
    assert fast["value"].isna().sum() == 1


def test_history_metric_patterns_and_run_filter(store, runs):
    some = runs["run_id"].iloc[:2].tolist()
    h = load_history("fake", store[0], metrics=["val_acc", "grad_norm/layer_*"], run_ids=some)
    assert set(h["run_id"]) == set(some)
    assert set(h["metric"]) - {"val_acc"} <= {f"grad_norm/layer_{i}" for i in range(1, 5)}
    assert "grad_norm/global" not in set(h["metric"])


def test_layer_frame_parses_layer_index(history):
    layers = layer_frame(history)
    assert set(layers["stat"]) == {"grad_norm", "act_mean", "act_std", "act_saturation"}
    assert layers["layer"].dtype == "int64"
    assert layers[layers["stat"] == "grad_norm"]["layer"].max() == 4  # depth 3 + output layer
    assert layers[layers["stat"] == "act_std"]["layer"].max() == 3  # hidden layers only


def test_at_step_init_and_last(history):
    init, last = at_step(history, "init"), at_step(history, "last")
    assert (init["step"] == 0).all()
    per_run_last = last.groupby("run_id")["step"].max()
    assert set(per_run_last) == {EPOCHS, 1}  # the failed run stopped after epoch 1
    with pytest.raises(ValueError, match="'init', 'last'"):
        at_step(history, "middle")


def test_aggregate_exact_mean_std_and_t_interval(runs):
    agg = aggregate(runs, ["init", "activation", "model.depth"], "test_acc")
    row = agg[(agg["init"] == "he") & (agg["activation"] == "relu") & (agg["model.depth"] == 1)].iloc[0]
    values = np.array([fake_test_acc("he", "relu", 1, s) for s in (0, 1, 2)])
    half = sps.t.ppf(0.975, 2) * values.std(ddof=1) / np.sqrt(3)
    assert row["n"] == 3 and row["n_missing"] == 0
    assert row["mean"] == pytest.approx(values.mean())
    assert row["std"] == pytest.approx(0.01)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(values.mean() - half), pytest.approx(values.mean() + half))


def test_aggregate_counts_failed_seed_as_missing(runs):
    agg = aggregate(runs, ["init", "activation", "model.depth"], "test_acc")
    row = agg[(agg["init"] == "random") & (agg["activation"] == "tanh") & (agg["model.depth"] == 3)].iloc[0]
    assert (row["n"], row["n_missing"]) == (2, 1)
    assert row["mean"] == pytest.approx(np.mean([fake_test_acc("random", "tanh", 3, s) for s in (0, 1)]))


@pytest.mark.parametrize("scale", ["linear", "fraction", "log"])
def test_aggregate_of_all_groups_at_once_is_summarize_per_group(scale):
    """aggregate's vectorised t statistics equal summarize on each group: groups of one value, all missing,
    all zero, with inf and NaN (missing), with zeros beside positive values (log: left out, counted)."""
    rng = np.random.default_rng(3)
    groups = {"one": [0.4], "missing": [np.nan, np.nan], "zeros": [0.0, 0.0, 0.0], "inf": [0.2, np.inf, 0.3, np.nan],
              "mixed": [0.0, 0.5, 0.25, 0.125], "many": list(rng.uniform(0.0, 1.0, 40)), "two": [0.9, 0.95]}
    frame = pd.DataFrame([(g, v) for g, values in groups.items() for v in values], columns=["g", "v"])
    frame = frame.sample(frac=1.0, random_state=1).reset_index(drop=True)  # groups interleaved
    got = aggregate(frame, ["g"], "v", scale=scale).set_index("g")
    assert list(got.index) == sorted(groups)
    for name, values in groups.items():
        expected = summarize(values, scale=scale)
        for column, value in expected.items():
            assert got.loc[name, column] == pytest.approx(value, rel=1e-12, nan_ok=True), (name, column)


def test_summarize_bootstrap_and_edge_cases():
    values = [0.9, 0.92, 0.94, 0.96]
    boot = summarize(values, method="bootstrap", n_boot=4000, seed=1)
    assert 0.9 <= boot["ci_low"] < np.mean(values) < boot["ci_high"] <= 0.96
    assert summarize(values, method="bootstrap", seed=1) == summarize(values, method="bootstrap", seed=1)
    one = summarize([0.5])
    assert one["n"] == 1 and one["mean"] == 0.5 and np.isnan(one["std"]) and np.isnan(one["ci_low"])
    none = summarize([np.nan, np.nan])
    assert (none["n"], none["n_missing"]) == (0, 2) and np.isnan(none["mean"])
    with pytest.raises(ValueError, match="'t' or 'bootstrap'"):
        summarize(values, method="jackknife")


def test_aggregate_over_history_gives_seed_bands(history, runs):
    frame = with_params(history[history["metric"] == "train_loss"], runs, ["init", "model.depth"])
    agg = aggregate(frame, ["init", "model.depth", "step"], "value")
    row = agg[(agg["init"] == "he") & (agg["model.depth"] == 1) & (agg["step"] == 2)].iloc[0]
    expected = [fake_epoch("he", a, 1, s, 2)["train_loss"] for a in ("relu", "tanh") for s in (0, 1, 2)]
    assert row["n"] == 6 and row["mean"] == pytest.approx(np.mean(expected))


def test_with_params_drops_runs_not_given(history, runs):
    ok = runs[~runs["failed"]]
    joined = with_params(history, ok, ["init"])
    assert set(joined["run_id"]) == set(ok["run_id"])
    with pytest.raises(KeyError, match="no column"):
        with_params(history, runs, ["nope"])


def test_varying_params_and_design(runs):
    assert varying_params(runs) == ["init", "activation", "model.depth"]  # init.std follows init; seed excluded
    _, design = infer_design(runs)
    assert (design.hue, design.x, design.col) == ("init", "activation", "model.depth")
    assert design.by == ["init", "activation", "model.depth"]


def test_design_folds_many_factors_into_a_label(runs):
    many = runs.assign(**{"model.width": np.where(runs["seed"] == 0, 16, 32)}, extra=runs["seed"] % 2)
    out, design = infer_design(many.drop(columns=["seed"]))
    assert design.hue == CONFIG and design.x is None and len(design.factors) == 5
    assert out[CONFIG].iloc[0].count(" / ") == 4


def test_summary_table_and_markdown(runs):
    table = summary_table(runs, ["init", "activation", "model.depth"])
    assert table["test_acc mean"].is_monotonic_decreasing
    assert table["runs"].sum() == len(runs) and table["failed"].sum() == 1
    text = to_markdown(table)
    assert text.splitlines()[0].startswith("| init | activation | model.depth | runs")
    assert len(text.splitlines()) == len(table) + 2


def test_summary_tables_write_config_values_as_they_are_and_statistics_to_3_decimals():
    """A learning rate of 2^-11 is 0.000488281, not 0.000 (the lr_transfer report's table)."""
    from nnlab.analysis.report import _table_html

    runs = pd.DataFrame({"run_id": ["a", "b", "c", "d"], "optimizer.lr": [0.000488281, 0.000488281, 0.015625, 0.015625],
                         "seed": [0, 1, 0, 1], "failed": False, "test_acc": [0.81234, 0.8, 0.9, 0.91],
                         "best_val_acc": 0.8, "train_seconds": 1.23456})
    table = summary_table(runs, ["optimizer.lr"])
    md = to_markdown(table, exact=["optimizer.lr"]).splitlines()
    assert md[2].startswith("| 0.015625 | 2 | 0 | 0.905 |") and md[3].startswith("| 0.000488281 | 2 | 0 | 0.806 |")
    page = _table_html(table)
    assert '<td class="num">0.000488281</td>' in page and '<td class="num">0.806</td>' in page
    assert '<td class="num">1.235</td>' in page


def test_reading_states_numbers_from_the_data(runs, history):
    runs2, design = infer_design(runs)
    text = "\n".join(reading(runs2, layer_frame(history), design))
    assert "24 runs: 8 configurations x 3 seeds; 1 failed (1 diverged)" in text
    assert "Best configuration: **he / relu / depth 1**, test_acc 0.950" in text
    assert "random / relu 0.001" in text  # layer-1 / output gradient ratio 0.1**3 at init


def test_reading_counts_every_run_and_reads_the_chosen_ones(runs, history):
    """``read=``: the overview still counts the whole study; the per-configuration sentences read only the
    runs passed (the depth study passes each cell at its tuned rate)."""
    runs2, design = infer_design(runs)
    chosen = runs2[~((runs2["init"] == "he") & (runs2["activation"] == "relu") & (runs2["model.depth"] == 1))]
    text = "\n".join(reading(runs2, layer_frame(history), design, read=chosen))
    assert "24 runs: 8 configurations x 3 seeds; 1 failed (1 diverged)" in text
    assert "Best configuration: **he / relu / depth 1**" not in text and "Best configuration: **" in text


def test_parse_param():
    assert [parse_param(v) for v in ("3", "0.5", "True", "None", "he", "[32, 20]", None)] == \
        [3, 0.5, True, None, "he", "[32, 20]", None]


# --- clear errors --------------------------------------------------------------------------------

def test_unknown_experiment_lists_existing(store):
    with pytest.raises(AnalysisError, match=r"no experiment named 'nope'.*existing experiments: .*fake"):
        load_runs("nope", store[0])


def test_empty_experiment(store):
    with pytest.raises(AnalysisError, match="'empty' has no runs"):
        load_runs("empty", store[0])


def test_runs_missing_a_metric(store):
    with pytest.raises(AnalysisError, match="1 finished run.*no metric 'test_acc': lonely"):
        load_runs("no_test_acc", store[0], require=["test_acc"])
    runs = load_runs("no_test_acc", store[0])  # without require: loads, NaN where absent
    assert runs["run_name"].tolist() == ["lonely"]  # the param-less aborted sweep parent is not a training run
    assert np.isnan(runs["test_acc"].iloc[0])
    with pytest.raises(AnalysisError, match="no metric 'not_logged'"):
        check_metrics(runs, ["not_logged"])


def test_missing_history_metric(store):
    with pytest.raises(AnalysisError, match="no run .* logged a metric matching"):
        load_history("fake", store[0], metrics=["nope/*"])


def test_unreachable_stores_raise_without_creating_anything(tmp_path):
    missing = tmp_path / "nowhere" / "mlflow.db"
    with pytest.raises(AnalysisError, match="no MLflow database at"):
        connect(f"sqlite:///{missing}")
    assert not missing.parent.exists()
    with pytest.raises(AnalysisError, match="cannot reach the MLflow tracking store 'http://127.0.0.1:9'"):
        connect("http://127.0.0.1:9")


def test_the_initial_jacobian_spectrum_rebuilds_a_net_with_a_width_list():
    """The baseline study's classic net has ``model.width=[32, 20]`` (stored by MLflow as text): the spectrum
    is rebuilt from it, and equals the one of the same net built directly."""
    from nnlab.analysis.theory_plots import initial_spectra
    from nnlab.core import MLP
    from nnlab.core.jacobian import jacobian_singular_values
    from nnlab.data import load_dataset

    row = {"run_id": "r", "init": "he", "activation": "relu", "model.depth": 2, "model.width": "[32, 20]",
           "seed": 3, "init.distribution": "normal"}
    sv = initial_spectra(pd.DataFrame([row]), n_inputs=2)["sv"].to_numpy()
    data = load_dataset("digits", split_seed=0)
    model = MLP.from_shape(data.n_features, data.n_classes, 2, [32, 20], activation="relu", init="he",
                           init_params={"distribution": "normal"}, seed=3)
    assert model.sizes[1:3] == [32, 20]
    np.testing.assert_allclose(np.sort(sv), np.sort(jacobian_singular_values(model, data.x_train[:2], exact=True).ravel()))
