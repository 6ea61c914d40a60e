"""The report's figures as a reader sees them: sizes that read at the width shown, titles inside the
canvas, intervals inside the quantity's range, zeros on log axes marked, chance levels drawn."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from nnlab.analysis import plots, summarize  # noqa: E402
from nnlab.analysis.fake import log_fake_sweep  # noqa: E402
from nnlab.analysis.reading import gradient_flow  # noqa: E402
from nnlab.report import FIGURES, draw, load_study  # noqa: E402

DPI = 110  # what nnlab.report saves with
EIGHT = ("relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid", "softsign", "identity")


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """Two designs: 8 activations x 2 inits (one factor with many levels) and init x activation x depth."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('fig')}/mlflow.db"
    client = MlflowClient(uri)
    log_fake_sweep(client, "wide", inits=("he", "xavier"), activations=EIGHT, depths=(4,), fail=[])
    log_fake_sweep(client, "grid", inits=("he", "xavier", "random"), activations=("relu", "tanh", "sigmoid"),
                   depths=(1, 4, 16), seeds=(0, 1, 2), fail=[])
    return {name: load_study(name, uri) for name in ("wide", "grid")}


def _inside(fig, artist) -> bool:
    box = artist.get_window_extent(fig.canvas.get_renderer())
    canvas = fig.bbox
    return box.x0 >= canvas.x0 - 1 and box.x1 <= canvas.x1 + 1 and box.y0 >= canvas.y0 - 1 and box.y1 <= canvas.y1 + 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["wide", "grid"])
def test_every_figure_reads_at_the_width_shown_with_titles_inside(studies, name, tmp_path):
    draw(studies[name], tmp_path)
    for figure in FIGURES:
        image = plt.imread(tmp_path / figure)
        height, width = image.shape[:2]
        assert width <= 1150, (figure, width)  # index.md and GitHub show ~1000 px without shrinking text
        assert height <= 1500 and height / width < 2.5, (figure, width, height)  # no 495x2200 column
        if figure != "accuracy_heatmap.png":  # a heatmap of 2 rows is rightly wide
            assert width / height < 3.5, (figure, width, height)
    # the titles' text extents (figure title and every panel title) lie inside the canvas
    study = studies[name]
    ok = study.runs[~study.runs["failed"]]
    for fig in (plots.final_accuracy(study.runs, study.design), plots.accuracy_heatmap(study.runs, study.design),
                plots.learning_curves(study.history, ok, study.design),
                plots.layer_profile(study.layers, ok, study.design, "grad_norm")):
        fig.set_dpi(DPI)
        fig.canvas.draw()
        titles = [fig._suptitle] if fig._suptitle is not None else []
        titles += [ax.title for ax in fig.axes if ax.get_visible() and ax.get_title()]
        assert titles and all(_inside(fig, t) for t in titles), [t.get_text() for t in titles if not _inside(fig, t)]
        assert all(_inside(fig, legend) for legend in fig.legends)  # a legend beside or below, never cut
        plt.close(fig)


def test_wide_factor_wraps_into_rows(studies):
    study = studies["wide"]
    ok = study.runs[~study.runs["failed"]]
    fig = plots.layer_profile(study.layers, ok, study.design, "act_std")
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert len(visible) == 16  # 8 activations x 2 phases, in 4 columns
    assert len({round(ax.get_position().x0, 3) for ax in visible}) == plots.MAX_COLS
    plt.close(fig)


@pytest.mark.parametrize("values", [[0.99, 1.0, 0.97], [0.0, 0.02, 0.0], [0.5, 0.9, 0.1]])
def test_fraction_intervals_stay_in_0_1(values):
    plain = summarize(values)
    bounded = summarize(values, scale="fraction")
    assert 0.0 <= bounded["ci_low"] <= bounded["mean"] <= bounded["ci_high"] <= 1.0
    assert bounded["mean"] == pytest.approx(plain["mean"])
    if plain["ci_high"] > 1 or plain["ci_low"] < 0:  # the plain t-interval leaves the range: cut, not moved
        assert bounded["ci_low"] == pytest.approx(max(0.0, plain["ci_low"]))
        assert bounded["ci_high"] == pytest.approx(min(1.0, plain["ci_high"]))


def test_log_intervals_are_positive_geometric_and_count_zeros():
    values = [1e-3, 1e-1, 10.0]
    plain, logged = summarize(values), summarize(values, scale="log")
    assert plain["ci_low"] < 0 < logged["ci_low"] < logged["mean"] < logged["ci_high"]  # the plain one crosses 0
    assert logged["mean"] == pytest.approx(0.1)  # geometric mean
    zeros = summarize([0.0, 0.0, 0.0], scale="log")
    assert zeros["mean"] == 0.0 and zeros["n_zero"] == 3 and math.isnan(zeros["ci_low"])


def test_every_band_of_a_figure_is_inside_the_range(studies):
    """Saturation (a fraction) and gradient norms (log axis): no band below 0 or above 1."""
    study = studies["grid"]
    ok = study.runs[~study.runs["failed"]]
    for stat, low, high in (("act_saturation", 0.0, 1.0), ("grad_norm", 1e-300, np.inf)):
        fig = plots.layer_profile(study.layers, ok, study.design, stat)
        bands = [c for ax in fig.axes for c in ax.collections if c.get_paths()]
        assert bands
        for band in bands:
            ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
            ys = ys[np.isfinite(ys)]
            assert ys.min() >= low and ys.max() <= high, (stat, ys.min(), ys.max())
        plt.close(fig)


def test_zero_on_a_log_axis_is_marked(studies):
    study = studies["grid"]
    ok = study.runs[~study.runs["failed"]]
    layers = study.layers.copy()
    vanished = ok.loc[ok["init"] == "random", "run_id"]
    layers.loc[layers["run_id"].isin(vanished) & (layers["stat"] == "grad_norm") & (layers["layer"] == 1),
               "value"] = 0.0  # float32 underflow, as random init with sigmoid at depth 16
    fig = plots.layer_profile(layers, ok, study.design, "grad_norm")
    marks = [line for ax in fig.axes for line in ax.get_lines() if line.get_label().startswith("= 0")]
    assert marks and all(list(m.get_xdata()) == [1] for m in marks)
    assert "exactly 0" in " ".join(fig._suptitle.get_text().replace("\u00a0", " ").split())  # however it wraps
    plt.close(fig)


def test_loss_curves_show_chance_and_accuracy_curves_follow_the_data(studies):
    study = studies["grid"]
    ok = study.runs[~study.runs["failed"]]
    fig = plots.learning_curves(study.history, ok, study.design)
    chance = [line for ax in fig.axes for line in ax.get_lines() if line.get_label() == "chance"]
    assert chance and all(np.allclose(line.get_ydata(), np.log(10)) for line in chance)
    plt.close(fig)
    acc = plots.learning_curves(study.history, ok, study.design, ("train_acc", "val_acc"))
    low, high = acc.axes[0].get_ylim()
    shown = study.history[study.history["metric"].isin(["train_acc", "val_acc"])]["value"]
    assert low <= shown.min() and high >= shown.max() and 0.0 <= low and high <= 1.05
    plt.close(acc)


def test_final_accuracy_axis_follows_the_data_and_draws_seeds(studies):
    study = studies["wide"]  # fake accuracies 0.86-0.93: a 0-1 axis would hide their differences
    fig = plots.final_accuracy(study.runs, study.design)
    low, high = fig.axes[0].get_ylim()
    assert low > 0.5 and high <= 1.0
    seeds = [c for c in fig.axes[0].collections if c.get_label() == "_seed"]
    assert sum(len(c.get_offsets()) for c in seeds) == len(study.runs)  # every seed's value, 3 seeds each
    plt.close(fig)


def test_gradient_reading_says_what_it_leaves_out(studies):
    wide = studies["wide"]  # 16 configurations: too many to list
    ok = wide.runs[~wide.runs["failed"]]
    (sentence,) = gradient_flow(wide.layers, ok, wide.design)
    assert "4 smallest and 4 largest of 16 configurations" in sentence and "… 8 more between" in sentence
    grid = studies["grid"]  # 9 configurations: every one listed
    (sentence,) = gradient_flow(grid.layers, grid.runs[~grid.runs["failed"]], grid.design)
    assert "all 9 configurations" in sentence and sentence.count(" (x") == 9
